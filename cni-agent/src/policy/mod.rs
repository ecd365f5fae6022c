//! NetworkPolicy in user space: the Kubernetes objects ([`model`]), where
//! they come from ([`manifests`]), label selectors ([`selector`]), and the
//! compiler ([`compile`]) that turns a [`Cluster`] and the node's endpoints
//! into the content of the kernel's policy maps, plus [`explain`], which
//! answers "would this packet pass, and why" from that content.
//!
//! # How the datapath looks a packet up
//!
//! This is the contract between [`compile`] and the eBPF programs
//! (`cni-ebpf/src/policy.rs` implements exactly this; [`explain`] and
//! [`EndpointPolicy::lookup`] model it):
//!
//! 1. Identities: the source and destination addresses are looked up in
//!    `IPCACHE4`/`IPCACHE6` (longest prefix match); a miss is
//!    `IDENTITY_WORLD`.
//! 2. A pod's traffic to its own address never reaches the programs.
//! 3. If the source is a local endpoint, its **egress** check, with the
//!    destination's identity as peer; then, if the destination is a local
//!    endpoint, its **ingress** check, with the source's identity as peer.
//!    Both must pass.
//! 4. A check reads the endpoint's `POLICY_STATE`:
//!    - no entry or no `POLICY_F_PROGRAMMED`: drop (fail-closed);
//!    - ingress, peer `IDENTITY_HOST` and `POLICY_F_ALLOW_HOST`: pass;
//!    - not isolated in this direction (`POLICY_F_INGRESS_ISOLATED` /
//!      `POLICY_F_EGRESS_ISOLATED` clear): pass;
//!    - otherwise the first hit of, for `id` = the peer identity and then
//!      `IDENTITY_ANY`:
//!      1. `POLICY` (endpoint, id, direction, protocol, port) — skipped
//!         when the packet has no port (`port == PORT_ANY`);
//!      2. `POLICY` (endpoint, id, direction, protocol, `PORT_ANY`);
//!      3. `POLICY_PORT_RANGES` (endpoint, id, direction, protocol,
//!         `PORT_ANY`): the first of its `count` ranges with
//!         `first <= port <= last` — skipped without a port;
//!      4. `POLICY` (endpoint, id, direction, `PROTO_ANY`, `PORT_ANY`);
//!
//!      no hit: drop.
//!
//! The port is the destination port (TCP, UDP, SCTP); other protocols
//! only match `PROTO_ANY` entries. The value found carries the rule index
//! for [`Compiled::rule`]. Conntrack lets replies of an allowed flow pass
//! and re-checks a flow when the revision changes.
//!
//! # Design notes
//!
//! Identities (what they group, how named ports in egress rules split
//! them, why numbers are stable) are documented in [`identity`]; the rule →
//! entry translation in [`compile`]; strict parsing in `model.rs`.

pub mod compile;
pub mod explain;
pub mod identity;
pub mod kube;
pub mod manifests;
pub mod model;
pub mod ports;
pub mod scenarios;
pub mod selector;
pub mod source;
mod strict;
pub mod sync;

#[cfg(test)]
mod tests;

pub use compile::{
    compile, CompileError, CompileOptions, Compiled, Direction, EndpointPolicy, EndpointStatus,
    EntryKey, LocalEndpoint, RuleInfo,
};
pub use explain::{explain, Check, ExplainError, Outcome, Party, RuleRef, Verdict};
pub use identity::{IdentityKey, IdentityTable, NamedPort};
pub use manifests::{load_dir, ManifestError, Manifests, Object};
pub use model::{
    Cluster, FieldError, Namespace, NetworkPolicy, ObjectKey, Pod, Protocol, METADATA_NAME_LABEL,
};
pub use selector::{LabelSelector, Labels, Operator, Requirement};
pub use strict::ignoring_unknown_fields;
