//! `sluicectl endpoints`: the local endpoints as the datapath knows them
//! (`ENDPOINTS` and `POLICY_STATE`), with the plugin's attachment records:
//! pod, addresses, host veth, endpoint id, isolation, programmed.

use std::{net::IpAddr, path::Path};

use cni_ebpf_common::policy::{
    POLICY_F_ALLOW_HOST, POLICY_F_EGRESS_ISOLATED, POLICY_F_INGRESS_ISOLATED, POLICY_F_PROGRAMMED,
};
use serde::Serialize;

use super::{
    output::{json, table, Format},
    view::View,
};
use crate::bpffs::PinLayout;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    endpoint_id: String,
    pod: Option<String>,
    ips: Vec<IpAddr>,
    veth: Option<String>,
    container_id: Option<String>,
    ingress_isolated: bool,
    egress_isolated: bool,
    allow_host: bool,
    programmed: bool,
    /// Revision the entry was programmed at.
    revision: Option<u32>,
    /// In `ENDPOINTS` (the plugin's entry).
    in_datapath: bool,
    /// Has an attachment record.
    has_record: bool,
}

/// Runs the verb.
pub fn run(layout: &PinLayout, state_dir: &Path, format: Format) -> anyhow::Result<String> {
    let view = View::load(layout, state_dir)?;
    let rows: Vec<Row> = view
        .endpoints
        .values()
        .map(|e| {
            let flags = e.state.map_or(0, |s| s.flags);
            Row {
                endpoint_id: format!("{:016x}", e.id),
                pod: e.pod.as_ref().map(ToString::to_string),
                ips: e.ips.clone(),
                veth: e.veth.clone(),
                container_id: e.container_id.clone(),
                ingress_isolated: flags & POLICY_F_INGRESS_ISOLATED != 0,
                egress_isolated: flags & POLICY_F_EGRESS_ISOLATED != 0,
                allow_host: flags & POLICY_F_ALLOW_HOST != 0,
                programmed: flags & POLICY_F_PROGRAMMED != 0,
                revision: e.state.map(|s| s.revision),
                in_datapath: !e.ips.is_empty(),
                has_record: e.has_record,
            }
        })
        .collect();
    match format {
        Format::Json => json(&rows),
        Format::Table => {
            let yes = |b: bool, y: &str, n: &str| if b { y.to_owned() } else { n.to_owned() };
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
                    vec![
                        r.endpoint_id.clone(),
                        r.pod.clone().unwrap_or_else(|| "-".into()),
                        if ips.is_empty() {
                            "-".into()
                        } else {
                            ips.join(",")
                        },
                        r.veth.clone().unwrap_or_else(|| "-".into()),
                        yes(r.ingress_isolated, "isolated", "open"),
                        yes(r.egress_isolated, "isolated", "open"),
                        yes(r.programmed, "yes", "NO"),
                        r.revision.map_or_else(|| "-".into(), |v| v.to_string()),
                    ]
                })
                .collect();
            let mut out = table(
                &[
                    "ENDPOINT",
                    "POD",
                    "IPS",
                    "VETH",
                    "INGRESS",
                    "EGRESS",
                    "PROGRAMMED",
                    "REVISION",
                ],
                &cells,
            );
            out.push_str(&format!(
                "\npolicy enforcement: {} (revision {})\n",
                if view.enforcing() { "on" } else { "off" },
                view.config.revision
            ));
            Ok(out)
        }
    }
}
