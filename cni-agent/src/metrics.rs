//! Prometheus text exposition on `--metrics-addr`, read straight from the
//! pinned maps on each scrape (no caching: a scrape is the datapath's truth).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{
    attach::pinned_xdp_links,
    bpffs::PinLayout,
    maps::{counters::read_reasons, policy::map_fill, prefilter::PrefilterMaps},
    policy::sync::{PolicyStats, SYNC_BUCKETS},
};

/// Renders every metric; `policy` adds the policy engine's.
pub fn render(layout: &PinLayout, policy: Option<&PolicyStats>) -> anyhow::Result<String> {
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
    out.push_str("# HELP sluice_map_entries Entries in a pinned map (policy, ipcache, conntrack, endpoints).\n");
    out.push_str("# TYPE sluice_map_entries gauge\n");
    let fill = map_fill(layout)?;
    for m in &fill {
        writeln!(out, "sluice_map_entries{{map=\"{}\"}} {}", m.map, m.entries)?;
    }
    out.push_str("# HELP sluice_map_capacity Capacity (max_entries) of a pinned map.\n");
    out.push_str("# TYPE sluice_map_capacity gauge\n");
    for m in &fill {
        writeln!(
            out,
            "sluice_map_capacity{{map=\"{}\"}} {}",
            m.map, m.max_entries
        )?;
    }
    out.push_str("# HELP sluice_map_fill_ratio Entries / capacity of a pinned map.\n");
    out.push_str("# TYPE sluice_map_fill_ratio gauge\n");
    for m in &fill {
        let ratio = if m.max_entries == 0 {
            0.0
        } else {
            m.entries as f64 / f64::from(m.max_entries)
        };
        writeln!(out, "sluice_map_fill_ratio{{map=\"{}\"}} {ratio}", m.map)?;
    }
    if let Some(p) = policy {
        render_policy(&mut out, p)?;
    }
    Ok(out)
}

fn render_policy(out: &mut String, p: &PolicyStats) -> anyhow::Result<()> {
    out.push_str("# HELP sluice_policy_sync_duration_seconds Time to sync policy into the maps (read endpoints, compile, write).\n");
    out.push_str("# TYPE sluice_policy_sync_duration_seconds histogram\n");
    let mut cumulative = 0;
    for (bound, count) in SYNC_BUCKETS.iter().zip(p.sync_buckets.iter()) {
        cumulative += count;
        writeln!(
            out,
            "sluice_policy_sync_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        )?;
    }
    let total = p.syncs_ok;
    writeln!(
        out,
        "sluice_policy_sync_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
    )?;
    writeln!(
        out,
        "sluice_policy_sync_duration_seconds_sum {}",
        p.sync_seconds_sum
    )?;
    writeln!(out, "sluice_policy_sync_duration_seconds_count {total}")?;
    out.push_str(
        "# HELP sluice_policy_last_sync_duration_seconds Duration of the last policy sync.\n",
    );
    out.push_str("# TYPE sluice_policy_last_sync_duration_seconds gauge\n");
    writeln!(
        out,
        "sluice_policy_last_sync_duration_seconds {}",
        p.last_sync.map_or(0.0, |d| d.as_secs_f64())
    )?;
    out.push_str("# HELP sluice_policy_syncs_total Policy syncs by result.\n");
    out.push_str("# TYPE sluice_policy_syncs_total counter\n");
    writeln!(
        out,
        "sluice_policy_syncs_total{{result=\"ok\"}} {}",
        p.syncs_ok
    )?;
    writeln!(
        out,
        "sluice_policy_syncs_total{{result=\"error\"}} {}",
        p.syncs_failed
    )?;
    out.push_str("# HELP sluice_policy_syncs_changed_total Policy syncs that changed the maps (and the revision).\n");
    out.push_str("# TYPE sluice_policy_syncs_changed_total counter\n");
    writeln!(out, "sluice_policy_syncs_changed_total {}", p.syncs_changed)?;
    out.push_str(
        "# HELP sluice_policy_source_errors_total Policy sources refused (invalid manifests).\n",
    );
    out.push_str("# TYPE sluice_policy_source_errors_total counter\n");
    writeln!(out, "sluice_policy_source_errors_total {}", p.source_errors)?;
    out.push_str("# HELP sluice_endpoints Local endpoints (attachment records).\n");
    out.push_str("# TYPE sluice_endpoints gauge\n");
    writeln!(out, "sluice_endpoints {}", p.endpoints)?;
    out.push_str(
        "# HELP sluice_endpoints_programmed Local endpoints whose policy is programmed.\n",
    );
    out.push_str("# TYPE sluice_endpoints_programmed gauge\n");
    writeln!(out, "sluice_endpoints_programmed {}", p.programmed)?;
    out.push_str("# HELP sluice_policy_revision Current policy revision.\n");
    out.push_str("# TYPE sluice_policy_revision gauge\n");
    writeln!(out, "sluice_policy_revision {}", p.revision)?;
    out.push_str("# HELP sluice_policy_enforcing Whether NetworkPolicy is enforced (1) or only observed (0).\n");
    out.push_str("# TYPE sluice_policy_enforcing gauge\n");
    writeln!(out, "sluice_policy_enforcing {}", u8::from(p.enforcing))?;
    out.push_str("# HELP sluice_policy_rules Rules in the rule table.\n");
    out.push_str("# TYPE sluice_policy_rules gauge\n");
    writeln!(out, "sluice_policy_rules {}", p.rules)?;
    out.push_str("# HELP sluice_policy_identities Identities allocated.\n");
    out.push_str("# TYPE sluice_policy_identities gauge\n");
    writeln!(out, "sluice_policy_identities {}", p.identities)?;
    Ok(())
}

/// Binds `addr` and returns the serving future (bind errors surface at
/// start, not on the first scrape).
pub async fn serve(
    addr: SocketAddr,
    layout: PinLayout,
    policy: Option<Arc<Mutex<PolicyStats>>>,
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
            let policy = policy.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /metrics ")
                    || request.starts_with("GET / ")
                {
                    let stats = policy
                        .as_ref()
                        .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone());
                    match render(&layout, stats.as_ref()) {
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
