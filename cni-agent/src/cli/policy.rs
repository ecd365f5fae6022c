//! `sluicectl policy [NS/POD]`: the compiled rules per endpoint, read from
//! `POLICY` and `POLICY_PORT_RANGES` and named with the agent's rule table
//! and identities (its snapshot in the state dir), so it works with the
//! agent down.

use std::path::Path;

use cni_ebpf_common::policy::{
    POLICY_F_EGRESS_ISOLATED, POLICY_F_INGRESS_ISOLATED, POLICY_F_PROGRAMMED, PORT_ANY,
};
use serde::Serialize;

use super::{
    output::{json, table, Format},
    view::{protocol_name, View},
};
use crate::{
    bpffs::PinLayout,
    maps::policy::ranges_from_kernel,
    policy::{Direction, ObjectKey},
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    direction: Direction,
    identity: u32,
    peer: String,
    protocol: String,
    /// First port; 0 is any.
    port: u16,
    /// Last port of a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    end_port: Option<u16>,
    rule_index: u32,
    /// `ns/policy ingress[i]`.
    rule: Option<String>,
    policy: Option<ObjectKey>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointRules {
    endpoint_id: String,
    pod: Option<String>,
    programmed: bool,
    ingress_isolated: bool,
    egress_isolated: bool,
    ingress_policies: Vec<ObjectKey>,
    egress_policies: Vec<ObjectKey>,
    entries: Vec<Entry>,
}

/// Runs the verb.
pub fn run(
    layout: &PinLayout,
    state_dir: &Path,
    pod: Option<&str>,
    format: Format,
) -> anyhow::Result<String> {
    let view = View::load(layout, state_dir)?;
    let rule_text = |index: u32| {
        view.snapshot.as_ref().and_then(|s| s.rule(index)).map(|r| {
            (
                format!(
                    "{} {}[{}] ({} {}, ports {})",
                    r.policy,
                    r.direction,
                    r.rule,
                    if r.direction == "egress" {
                        "to"
                    } else {
                        "from"
                    },
                    r.peers,
                    r.ports
                ),
                r.policy.clone(),
            )
        })
    };
    let mut out = Vec::new();
    for e in view.select(pod)? {
        let flags = e.state.map_or(0, |s| s.flags);
        let mut entries = Vec::new();
        for (k, v) in view
            .content
            .policy
            .iter()
            .filter(|(k, _)| k.endpoint_id == e.id)
        {
            let Some(direction) = Direction::from_kernel(k.direction) else {
                continue;
            };
            let named = rule_text(v.rule_index);
            entries.push(Entry {
                direction,
                identity: k.identity,
                peer: view.identity_name(k.identity),
                protocol: protocol_name(k.protocol),
                port: k.port,
                end_port: None,
                rule_index: v.rule_index,
                rule: named.as_ref().map(|n| n.0.clone()),
                policy: named.map(|n| n.1),
            });
        }
        for (k, v) in view
            .content
            .ranges
            .iter()
            .filter(|(k, _)| k.endpoint_id == e.id)
        {
            let Some(direction) = Direction::from_kernel(k.direction) else {
                continue;
            };
            for r in ranges_from_kernel(v) {
                let named = rule_text(r.rule_index);
                entries.push(Entry {
                    direction,
                    identity: k.identity,
                    peer: view.identity_name(k.identity),
                    protocol: protocol_name(k.protocol),
                    port: r.first,
                    end_port: Some(r.last),
                    rule_index: r.rule_index,
                    rule: named.as_ref().map(|n| n.0.clone()),
                    policy: named.map(|n| n.1),
                });
            }
        }
        entries.sort_by(|a, b| {
            (a.direction, &a.peer, &a.protocol, a.port).cmp(&(
                b.direction,
                &b.peer,
                &b.protocol,
                b.port,
            ))
        });
        out.push(EndpointRules {
            endpoint_id: format!("{:016x}", e.id),
            pod: e.pod.as_ref().map(ToString::to_string),
            programmed: flags & POLICY_F_PROGRAMMED != 0,
            ingress_isolated: flags & POLICY_F_INGRESS_ISOLATED != 0,
            egress_isolated: flags & POLICY_F_EGRESS_ISOLATED != 0,
            ingress_policies: view.policies(e.id, Direction::Ingress),
            egress_policies: view.policies(e.id, Direction::Egress),
            entries,
        });
    }
    match format {
        Format::Json => json(&out),
        Format::Table => {
            let mut text = String::new();
            if view.snapshot.is_none() {
                text.push_str(
                    "(no agent snapshot in the state dir: rules and identities shown by number)\n",
                );
            }
            for e in &out {
                let names = |p: &[ObjectKey]| {
                    p.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let iso = |isolated: bool, p: &[ObjectKey]| {
                    if isolated {
                        format!("isolated by {}", names(p))
                    } else {
                        "open (no policy selects it)".to_owned()
                    }
                };
                text.push_str(&format!(
                    "{} (endpoint {}){}\n  ingress: {}\n  egress:  {}\n",
                    e.pod.as_deref().unwrap_or("-"),
                    e.endpoint_id,
                    if e.programmed {
                        ""
                    } else {
                        " NOT PROGRAMMED (fail-closed)"
                    },
                    iso(e.ingress_isolated, &e.ingress_policies),
                    iso(e.egress_isolated, &e.egress_policies),
                ));
                if e.entries.is_empty() {
                    text.push_str("  no allow entries\n\n");
                    continue;
                }
                let rows: Vec<Vec<String>> = e
                    .entries
                    .iter()
                    .map(|x| {
                        let port = match (x.port, x.end_port) {
                            (PORT_ANY, None) => "any".to_owned(),
                            (p, None) => p.to_string(),
                            (p, Some(end)) => format!("{p}-{end}"),
                        };
                        vec![
                            format!("  {}", x.direction),
                            x.peer.clone(),
                            x.protocol.clone(),
                            port,
                            x.rule
                                .clone()
                                .unwrap_or_else(|| format!("rule {}", x.rule_index)),
                        ]
                    })
                    .collect();
                text.push_str(&table(
                    &["  DIRECTION", "PEER", "PROTO", "PORT", "RULE"],
                    &rows,
                ));
                text.push('\n');
            }
            Ok(text)
        }
    }
}
