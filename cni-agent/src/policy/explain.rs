//! `explain`: the verdict for one packet, reached from the compiled
//! entries exactly as the datapath reaches it (see the module root for the
//! order), with the policy and rule behind it.

use std::{fmt, net::IpAddr};

use cni_ebpf_common::policy::{IDENTITY_HOST, POLICY_F_ALLOW_HOST};
use serde::Serialize;

use super::{
    compile::{Compiled, Direction, EndpointPolicy},
    model::{ObjectKey, Protocol},
};

/// One end of a packet: a local endpoint or any address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// A local endpoint by id (one of its addresses, of the other end's
    /// family).
    Endpoint(u64),
    /// An address (a local endpoint's, a remote pod's, anything).
    Address(IpAddr),
}

impl From<IpAddr> for Party {
    fn from(ip: IpAddr) -> Self {
        Party::Address(ip)
    }
}

/// Why `explain` could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// No such endpoint.
    #[error("no local endpoint {0}")]
    UnknownEndpoint(u64),
    /// The ends have no address family in common.
    #[error("the two ends have no address family in common")]
    NoCommonFamily,
}

/// What one endpoint's policy said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Outcome {
    /// The agent has not programmed the endpoint: dropped (fail-closed).
    NotProgrammed,
    /// No policy isolates the endpoint in this direction.
    NotIsolated,
    /// From the node, and the endpoint allows the host.
    HostAllowed,
    /// Allowed by a rule.
    Allowed {
        /// The rule's index.
        rule_index: u32,
    },
    /// Isolated, and no rule allows it.
    Denied,
}

impl Outcome {
    /// Whether the packet may pass this check.
    pub fn passes(&self) -> bool {
        !matches!(self, Outcome::NotProgrammed | Outcome::Denied)
    }
}

/// One check: an endpoint's policy in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// The endpoint.
    pub endpoint_id: u64,
    /// Its pod.
    pub pod: Option<ObjectKey>,
    /// Its policy's direction: egress for the source, ingress for the
    /// destination.
    pub direction: Direction,
    /// The result.
    pub outcome: Outcome,
    /// Policies isolating the endpoint in this direction.
    pub policies: Vec<ObjectKey>,
}

/// A rule behind a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRef {
    /// Index in the rule table (the value in the map).
    pub rule_index: u32,
    /// The policy.
    pub policy: ObjectKey,
    /// `spec.ingress` or `spec.egress`.
    pub direction: Direction,
    /// Index in that list.
    pub rule: usize,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Whether the packet (a new flow) passes.
    pub allowed: bool,
    /// One line for people.
    pub reason: String,
    /// Source address used.
    pub from: IpAddr,
    /// Destination address used.
    pub to: IpAddr,
    /// The source's identity.
    pub from_identity: u32,
    /// The destination's identity.
    pub to_identity: u32,
    /// The source endpoint's egress check, if the source is local.
    pub egress: Option<Check>,
    /// The destination endpoint's ingress check, if it is local.
    pub ingress: Option<Check>,
    /// The rules that allowed the packet (egress first).
    pub rules: Vec<RuleRef>,
    /// When denied: the policies that isolate the denying endpoint.
    pub denied_by: Vec<ObjectKey>,
}

fn addresses(compiled: &Compiled, party: Party) -> Result<Vec<IpAddr>, ExplainError> {
    match party {
        Party::Address(ip) => Ok(vec![ip]),
        Party::Endpoint(id) => compiled
            .endpoints
            .get(&id)
            .map(|e| e.ips.clone())
            .ok_or(ExplainError::UnknownEndpoint(id)),
    }
}

/// Whether a new flow `from` → `to` on (`protocol`, `port`) passes, and why.
///
/// The egress policy of the source is checked if the source is a local
/// endpoint, then the ingress policy of the destination if it is one; both
/// must pass. A pod's traffic to itself never leaves its network namespace
/// and always passes. Conntrack (replies of allowed flows) is not modelled:
/// this is the verdict for the first packet.
pub fn explain(
    compiled: &Compiled,
    from: Party,
    to: Party,
    protocol: u8,
    port: u16,
) -> Result<Verdict, ExplainError> {
    let from_ips = addresses(compiled, from)?;
    let to_ips = addresses(compiled, to)?;
    let (src, dst) = from_ips
        .iter()
        .find_map(|a| {
            to_ips
                .iter()
                .find(|b| a.is_ipv4() == b.is_ipv4())
                .map(|b| (*a, *b))
        })
        .ok_or(ExplainError::NoCommonFamily)?;
    let from_identity = compiled.identity_of(src);
    let to_identity = compiled.identity_of(dst);
    let src_ep = compiled.endpoint_by_ip(src);
    let dst_ep = compiled.endpoint_by_ip(dst);
    let mut verdict = Verdict {
        allowed: true,
        reason: String::new(),
        from: src,
        to: dst,
        from_identity,
        to_identity,
        egress: None,
        ingress: None,
        rules: Vec::new(),
        denied_by: Vec::new(),
    };
    let same_endpoint =
        matches!((src_ep, dst_ep), (Some(a), Some(b)) if a.endpoint_id == b.endpoint_id);
    if src == dst || same_endpoint {
        verdict.reason = "allowed: a pod's traffic to itself stays in its network namespace".into();
        return Ok(verdict);
    }
    let what = flow(protocol, port);
    verdict.egress = src_ep.map(|e| check(e, Direction::Egress, to_identity, protocol, port));
    verdict.ingress = dst_ep.map(|e| check(e, Direction::Ingress, from_identity, protocol, port));

    let mut parts = Vec::new();
    for c in verdict.egress.iter().chain(verdict.ingress.iter()) {
        let peer = match c.direction {
            Direction::Egress => to_identity,
            Direction::Ingress => from_identity,
        };
        let who = match &c.pod {
            Some(p) => format!("{p} (endpoint {})", c.endpoint_id),
            None => format!("endpoint {}", c.endpoint_id),
        };
        let policies = || {
            let names: Vec<String> = c.policies.iter().map(ToString::to_string).collect();
            names.join(", ")
        };
        match &c.outcome {
            Outcome::NotProgrammed => parts.push(format!(
                "{who} is not programmed yet (its pod is unknown): dropped"
            )),
            Outcome::NotIsolated => {
                parts.push(format!("no policy isolates {who} for {}", c.direction));
            }
            Outcome::HostAllowed => parts.push(format!("{who} allows traffic from the host")),
            Outcome::Allowed { rule_index } => {
                let rule = compiled.rule(*rule_index);
                parts.push(match rule {
                    Some(r) => format!("{} of {who} allowed by {r}", c.direction),
                    None => format!("{} of {who} allowed by rule {rule_index}", c.direction),
                });
                if let Some(r) = rule {
                    verdict.rules.push(RuleRef {
                        rule_index: *rule_index,
                        policy: r.policy.clone(),
                        direction: r.direction,
                        rule: r.rule,
                    });
                }
            }
            Outcome::Denied => parts.push(format!(
                "{} of {who} is isolated by {} and no rule allows {} on {what}",
                c.direction,
                policies(),
                compiled.describe_identity(peer),
            )),
        }
        if !c.outcome.passes() && verdict.allowed {
            verdict.allowed = false;
            verdict.denied_by = c.policies.clone();
        }
    }
    if parts.is_empty() {
        parts.push("neither end is a local endpoint: no policy of this node applies".into());
    }
    verdict.reason = format!(
        "{}: {}",
        if verdict.allowed { "allowed" } else { "denied" },
        parts.join("; ")
    );
    Ok(verdict)
}

fn check(e: &EndpointPolicy, direction: Direction, peer: u32, protocol: u8, port: u16) -> Check {
    let outcome = if !e.programmed() {
        Outcome::NotProgrammed
    } else if direction == Direction::Ingress
        && peer == IDENTITY_HOST
        && e.flags & POLICY_F_ALLOW_HOST != 0
    {
        Outcome::HostAllowed
    } else if !e.isolated(direction) {
        Outcome::NotIsolated
    } else {
        match e.lookup(direction, peer, protocol, port) {
            Some(rule_index) => Outcome::Allowed { rule_index },
            None => Outcome::Denied,
        }
    };
    Check {
        endpoint_id: e.endpoint_id,
        pod: e.pod.clone(),
        direction,
        outcome,
        policies: match direction {
            Direction::Ingress => e.ingress_policies.clone(),
            Direction::Egress => e.egress_policies.clone(),
        },
    }
}

fn flow(protocol: u8, port: u16) -> String {
    match Protocol::from_number(protocol) {
        Some(p) => format!("{p}/{port}"),
        None => format!("protocol {protocol}"),
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}
