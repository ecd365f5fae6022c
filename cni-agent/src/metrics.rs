//! Prometheus text exposition on `--metrics-addr`, read straight from the
//! pinned maps on each scrape (no caching: a scrape is the datapath's truth).

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{
    attach::pinned_xdp_links,
    bpffs::PinLayout,
    maps::{counters::read_reasons, prefilter::PrefilterMaps},
};

/// Renders every metric.
pub fn render(layout: &PinLayout) -> anyhow::Result<String> {
    let mut out = String::new();
    out.push_str("# HELP sluice_verdict_packets_total Packets by datapath verdict reason.\n");
    out.push_str("# TYPE sluice_verdict_packets_total counter\n");
    let reasons = read_reasons(layout)?;
    for r in &reasons {
        let verdict = if r.drop { "drop" } else { "pass" };
        writeln!(
            out,
            "sluice_verdict_packets_total{{reason=\"{}\",code=\"{}\",verdict=\"{verdict}\"}} {}",
            r.reason, r.code, r.packets
        )?;
    }
    out.push_str("# HELP sluice_verdict_bytes_total Bytes by datapath verdict reason.\n");
    out.push_str("# TYPE sluice_verdict_bytes_total counter\n");
    for r in &reasons {
        let verdict = if r.drop { "drop" } else { "pass" };
        writeln!(
            out,
            "sluice_verdict_bytes_total{{reason=\"{}\",code=\"{}\",verdict=\"{verdict}\"}} {}",
            r.reason, r.code, r.bytes
        )?;
    }
    let rules = PrefilterMaps::open(layout)?.list()?;
    out.push_str("# HELP sluice_prefilter_rules Installed prefilter rules.\n");
    out.push_str("# TYPE sluice_prefilter_rules gauge\n");
    writeln!(out, "sluice_prefilter_rules {}", rules.len())?;
    out.push_str(
        "# HELP sluice_prefilter_rule_packets_total Packets matched per prefilter rule.\n",
    );
    out.push_str("# TYPE sluice_prefilter_rule_packets_total counter\n");
    for r in &rules {
        writeln!(
            out,
            "sluice_prefilter_rule_packets_total{{id=\"{}\",rule=\"{}\"}} {}",
            r.id, r.rule, r.packets
        )?;
    }
    out.push_str("# HELP sluice_prefilter_uplinks Interfaces with the XDP prefilter attached.\n");
    out.push_str("# TYPE sluice_prefilter_uplinks gauge\n");
    writeln!(
        out,
        "sluice_prefilter_uplinks {}",
        pinned_xdp_links(layout)?.len()
    )?;
    Ok(out)
}

/// Binds `addr` and returns the serving future (bind errors surface at
/// start, not on the first scrape).
pub async fn serve(
    addr: SocketAddr,
    layout: PinLayout,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-addr {addr}"))?;
    tracing::info!(%addr, "serving metrics");
    Ok(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let layout = layout.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /metrics ")
                    || request.starts_with("GET / ")
                {
                    match render(&layout) {
                        Ok(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Err(err) => {
                            let body = format!("{err:#}\n");
                            format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                        }
                    }
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    })
}
