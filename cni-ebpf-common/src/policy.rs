//! NetworkPolicy in the kernel: identities, the ipcache, per-endpoint policy
//! entries, per-endpoint enforcement state, conntrack and drop events.
//!
//! How a verdict is reached (`from_pod`, `to_pod`):
//! 1. Conntrack: a packet of a flow that was allowed (either direction)
//!    passes, unless the policy revision changed since; then the policy is
//!    evaluated again, so a change cuts what it now denies and keeps what it
//!    still allows.
//! 2. The peer's identity: `IPCACHE4`/`IPCACHE6` (LPM tries) map an address
//!    to the identity of its equivalence class: pods with the same labels,
//!    namespace labels and position relative to every ipBlock share one;
//!    CIDR fragments of ipBlocks get their own; `0.0.0.0/0` is WORLD.
//! 3. The local endpoint's state (`POLICY_STATE`, keyed by endpoint id):
//!    whether it is isolated for ingress/egress, and whether the agent has
//!    programmed it at all (fail-closed until then).
//! 4. For the peer's identity, then for `IDENTITY_ANY`: `POLICY`
//!    (protocol, port), then (protocol, `PORT_ANY`), then the `endPort`
//!    ranges of `POLICY_PORT_RANGES` (protocol, `PORT_ANY`), then
//!    (`PROTO_ANY`, `PORT_ANY`); the first hit allows. The agent's compiler
//!    and `explain` model exactly this order (cni-agent/src/policy/mod.rs).

/// Identity of the node itself (kubelet probes, host-network pods).
pub const IDENTITY_HOST: u32 = 1;
/// Identity of addresses outside every known pod and ipBlock.
pub const IDENTITY_WORLD: u32 = 2;
/// First identity the agent allocates for label sets and CIDR fragments.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;
/// `PolicyKey::identity` matching every peer (a rule with no `from`/`to`).
pub const IDENTITY_ANY: u32 = 0;

/// `PolicyKey::direction`: traffic into the endpoint.
pub const DIRECTION_INGRESS: u8 = 1;
/// `PolicyKey::direction`: traffic out of the endpoint.
pub const DIRECTION_EGRESS: u8 = 2;

/// `PolicyKey::protocol` matching every protocol (a rule with no `ports`).
pub const PROTO_ANY: u8 = 0;
/// `PolicyKey::port` matching every port of the protocol.
pub const PORT_ANY: u16 = 0;

/// `PolicyState::flags`: some policy selects the endpoint for ingress.
pub const POLICY_F_INGRESS_ISOLATED: u32 = 1 << 0;
/// `PolicyState::flags`: some policy selects the endpoint for egress.
pub const POLICY_F_EGRESS_ISOLATED: u32 = 1 << 1;
/// `PolicyState::flags`: the agent has programmed this endpoint (its entry
/// is complete). An endpoint without it is fail-closed when enforcement is
/// on.
pub const POLICY_F_PROGRAMMED: u32 = 1 << 2;
/// `PolicyState::flags`: traffic from the node to this endpoint is allowed
/// whatever the ingress policy says (kubelet probes; the default).
pub const POLICY_F_ALLOW_HOST: u32 = 1 << 3;

/// `PolicyConfig::flags`: enforce NetworkPolicy (set by the agent when its
/// policy engine runs; while clear, the pod programs only observe).
pub const POLICY_CONFIG_F_ENFORCE: u32 = 1 << 0;

/// The single value of `POLICY_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `POLICY_CONFIG_F_*` (host byte order).
    pub flags: u32,
    /// Current policy revision; conntrack entries from older revisions are
    /// checked against the policy again (host byte order).
    pub revision: u32,
}

/// Value of `IPCACHE4`/`IPCACHE6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheEntry {
    /// The address's identity (host byte order).
    pub identity: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// Value of `POLICY_STATE`, keyed by endpoint id (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// `POLICY_F_*` (host byte order).
    pub flags: u32,
    /// Policy revision the entry was programmed at (host byte order).
    pub revision: u32,
}

/// Key of `POLICY`: one allowed (peer, protocol, port) of one endpoint in
/// one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// The local endpoint (`EndpointInfo::endpoint_id`).
    pub endpoint_id: u64,
    /// Peer identity, or `IDENTITY_ANY`.
    pub identity: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u8,
    /// IP protocol (6, 17, 132) or `PROTO_ANY`.
    pub protocol: u8,
    /// Destination port (host byte order) or `PORT_ANY`.
    pub port: u16,
}

/// Value of `POLICY` and of a range in `POLICY_PORT_RANGES`: where the
/// allowing rule came from, for `sluicectl explain` and the drop monitor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// Index of the (policy, rule) in the agent's rule table (host order).
    pub rule_index: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// Most port ranges per (endpoint, identity, direction, protocol).
pub const PORT_RANGES_PER_KEY: usize = 8;

/// Value of `POLICY_PORT_RANGES` (key: a [`PolicyKey`] with `port` 0):
/// `endPort` rules, checked when no exact entry matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRanges {
    /// Ranges in use (host byte order).
    pub count: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Inclusive ranges `[first, last]` (host byte order).
    pub ranges: [[u16; 2]; PORT_RANGES_PER_KEY],
    /// The rule each range came from.
    pub rule_index: [u32; PORT_RANGES_PER_KEY],
}

/// A flow as first seen (source is the initiator), either family: what
/// the programs judge, and the key of `CT6`. IPv4 flows are stored in
/// `CT4` under the shorter [`Ct4Key`]: the kernel hashes and compares the
/// whole key on every lookup, and a 40-byte key cost an established packet
/// about 25 ns more than a 16-byte one. Aligned to 8 so the addresses can be
/// read a word at a time ([`CtKey::v4`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address (IPv4 in the first 4 bytes), network order.
    pub src: [u8; 16],
    /// Destination address, network order.
    pub dst: [u8; 16],
    /// Source port, network order (ICMP: echo id; else 0).
    pub sport: u16,
    /// Destination port, network order (0 for ICMP).
    pub dport: u16,
    /// IP protocol.
    pub protocol: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 2],
}

impl CtKey {
    /// The `CT4` key of this flow (an IPv4 flow: the first four bytes of
    /// each address). Word loads and stores: the key is built on every
    /// packet, and byte-wise copies cost the datapath measurably.
    #[inline(always)]
    pub fn v4(&self) -> Ct4Key {
        Ct4Key {
            src: first_word(&self.src).to_ne_bytes(),
            dst: first_word(&self.dst).to_ne_bytes(),
            sport: self.sport,
            dport: self.dport,
            protocol: u32::from(self.protocol),
        }
    }
}

/// The first four bytes of an address in a [`CtKey`], as one aligned load.
#[inline(always)]
fn first_word(addr: &[u8; 16]) -> u32 {
    // SAFETY: `CtKey` is 8-byte aligned and its addresses sit at offsets 0
    // and 16, so both are 4-byte aligned and at least 4 bytes long.
    unsafe { addr.as_ptr().cast::<u32>().read() }
}

/// Key of `CT4`: an IPv4 flow as first seen (source is the initiator).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    /// Source address, network order.
    pub src: [u8; 4],
    /// Destination address, network order.
    pub dst: [u8; 4],
    /// Source port, network order (ICMP: echo id; else 0).
    pub sport: u16,
    /// Destination port, network order (0 for ICMP).
    pub dport: u16,
    /// IP protocol, widened to a host-order word so the key has no padding
    /// to zero (on little-endian hosts its bytes are the protocol and three
    /// zeros).
    pub protocol: u32,
}

impl Ct4Key {
    /// The flow this key stores, as the programs see it.
    pub fn flow(&self) -> CtKey {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&self.src);
        dst[..4].copy_from_slice(&self.dst);
        CtKey {
            src,
            dst,
            sport: self.sport,
            dport: self.dport,
            protocol: self.protocol as u8,
            family: crate::prefilter::FAMILY_IPV4,
            _pad: [0; 2],
        }
    }
}

/// Value of `CT4`/`CT6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Policy revision when the flow was last allowed.
    pub revision: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Packets seen in the initiating direction.
    pub packets_forward: u64,
    /// Packets seen in the reply direction.
    pub packets_reply: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at jiffy resolution)
    /// of the last packet: the precise clock costs a clock-source read on
    /// every packet of every tracked flow, for a value nobody needs to the
    /// nanosecond.
    pub last_seen_ns: u64,
}

/// A policy drop, on the `POLICY_EVENTS` ring buffer (`sluicectl monitor`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// Source address, network order.
    pub src: [u8; 16],
    /// Destination address, network order.
    pub dst: [u8; 16],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol.
    pub protocol: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`: whose policy dropped it.
    pub direction: u8,
    /// Explicit padding, zero.
    pub _pad: u8,
    /// The drop reason code.
    pub reason: u32,
    /// The endpoint whose policy dropped it.
    pub endpoint_id: u64,
    /// The peer's identity.
    pub peer_identity: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integers and byte arrays, explicit padding.
    unsafe impl aya::Pod for super::PolicyConfig {}
    unsafe impl aya::Pod for super::IpcacheEntry {}
    unsafe impl aya::Pod for super::PolicyState {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::PortRanges {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::DropEvent {}
}
