//! `sluicectl explain --from NS/POD|IP --to NS/POD|IP --port N --proto tcp`:
//! the verdict the datapath gives the first packet of such a flow,
//! computed from the maps it reads (`ENDPOINTS`, `IPCACHE4/6`,
//! `POLICY_STATE`, `POLICY`, `POLICY_PORT_RANGES`) in its lookup order, with
//! the policy and rule that allowed it, or for a denial the policies that
//! isolate the endpoint that denies it.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::{
    output::{json, Format},
    view::{parse_protocol, protocol_name, View},
};
use crate::{
    bpffs::PinLayout,
    policy::{explain, Check, Direction, ObjectKey, Outcome, Verdict},
};

/// The flow to explain.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Source: NAMESPACE/POD or an IP address.
    #[arg(long)]
    pub from: String,
    /// Destination: NAMESPACE/POD or an IP address.
    #[arg(long)]
    pub to: String,
    /// Destination port (tcp, udp, sctp).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Protocol: tcp, udp, sctp, icmp or a number.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Explained {
    verdict: &'static str,
    enforcing: bool,
    protocol: String,
    port: u16,
    from_pod: Option<String>,
    to_pod: Option<String>,
    from_identity_name: String,
    to_identity_name: String,
    /// One line per check, as printed.
    lines: Vec<String>,
    #[serde(flatten)]
    detail: Verdict,
}

/// Runs the verb.
pub fn run(
    layout: &PinLayout,
    state_dir: &Path,
    args: &ExplainArgs,
    format: Format,
) -> anyhow::Result<String> {
    let view = View::load(layout, state_dir)?;
    let protocol = parse_protocol(&args.proto)?;
    let from = view.party(&args.from).context("--from")?;
    let to = view.party(&args.to).context("--to")?;
    let compiled = view.compiled();
    let v = explain(&compiled, from, to, protocol, args.port)?;
    let what = if matches!(protocol, 6 | 17 | 132) {
        format!("{}/{}", protocol_name(protocol), args.port)
    } else {
        protocol_name(protocol)
    };
    let mut lines = Vec::new();
    for c in v.egress.iter().chain(v.ingress.iter()) {
        lines.push(check_line(&view, &compiled, &v, c, &what));
    }
    if lines.is_empty() {
        lines.push(if v.from == v.to || v.reason.contains("itself") {
            "a pod's traffic to itself stays in its network namespace".to_owned()
        } else {
            "neither end is a local endpoint: no policy of this node applies".to_owned()
        });
    }
    let out = Explained {
        verdict: if v.allowed { "allowed" } else { "denied" },
        enforcing: view.enforcing(),
        protocol: protocol_name(protocol),
        port: args.port,
        from_pod: view.pod_of(v.from),
        to_pod: view.pod_of(v.to),
        from_identity_name: view.identity_name(v.from_identity),
        to_identity_name: view.identity_name(v.to_identity),
        lines,
        detail: v,
    };
    match format {
        Format::Json => json(&out),
        Format::Table => {
            let end = |pod: &Option<String>, ip, id, name: &str| {
                format!(
                    "{}{ip} (identity {id}: {name})",
                    pod.as_ref().map_or_else(String::new, |p| format!("{p} "))
                )
            };
            let mut text = format!(
                "verdict: {} (first packet of {} {} -> {})\n",
                out.verdict.to_uppercase(),
                what,
                out.detail.from,
                out.detail.to
            );
            text.push_str(&format!(
                "  from: {}\n",
                end(
                    &out.from_pod,
                    out.detail.from,
                    out.detail.from_identity,
                    &out.from_identity_name
                )
            ));
            text.push_str(&format!(
                "  to:   {}\n",
                end(
                    &out.to_pod,
                    out.detail.to,
                    out.detail.to_identity,
                    &out.to_identity_name
                )
            ));
            for l in &out.lines {
                text.push_str(&format!("  {l}\n"));
            }
            if !out.enforcing {
                text.push_str(
                    "  note: policy enforcement is off: the datapath passes everything now; \
                     this is what it would do with enforcement on\n",
                );
            }
            Ok(text)
        }
    }
}

fn check_line(
    view: &View,
    compiled: &crate::policy::Compiled,
    v: &Verdict,
    c: &Check,
    what: &str,
) -> String {
    let who = match &c.pod {
        Some(p) => p.to_string(),
        None => format!("endpoint {:016x}", c.endpoint_id),
    };
    let (peer_id, peer_ip) = match c.direction {
        Direction::Egress => (v.to_identity, v.to),
        Direction::Ingress => (v.from_identity, v.from),
    };
    let peer = match view.pod_of(peer_ip) {
        Some(p) => format!("{p} ({})", view.identity_name(peer_id)),
        None => format!("{peer_ip} ({})", view.identity_name(peer_id)),
    };
    let names = |p: &[ObjectKey]| {
        p.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &c.outcome {
        Outcome::NotProgrammed => format!(
            "{} of {who}: endpoint not programmed (no PROGRAMMED in POLICY_STATE): dropped, fail-closed",
            c.direction
        ),
        Outcome::NotIsolated => format!("{} of {who}: open (no policy selects it for {})", c.direction, c.direction),
        Outcome::HostAllowed => format!("{} of {who}: allowed: traffic from the node (allow-host)", c.direction),
        Outcome::Allowed { rule_index } => match compiled.rule(*rule_index) {
            Some(r) => format!("{} of {who}: allowed by {r}", c.direction),
            None => format!("{} of {who}: allowed by rule {rule_index} (not in the rule table)", c.direction),
        },
        Outcome::Denied => format!(
            "{} of {who}: no rule allows {peer} on {what} (policies selecting {who}: {})",
            c.direction,
            if c.policies.is_empty() {
                "unknown: no agent snapshot".to_owned()
            } else {
                names(&c.policies)
            }
        ),
    }
}
