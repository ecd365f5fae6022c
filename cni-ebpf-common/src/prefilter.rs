//! Keys and values of the XDP prefilter maps.
//!
//! The prefilter's rules live only in these maps (a rule is its key plus a
//! [`RuleValue`]), so `sluicectl` can list and change them with the agent
//! down, and a restarted agent finds them as they were.

/// Rule action: drop the packet (`RuleValue::action`).
pub const ACTION_DROP: u8 = 1;
/// Rule action: let the packet through. In the CIDR trie this carves an
/// exception out of a wider deny (most specific prefix wins); a protocol
/// allow rule wins over a protocol drop rule only by being more specific.
pub const ACTION_ALLOW: u8 = 2;

/// Rule origin: the agent's `--prefilter` file. The agent owns these and
/// removes the ones that left the file when it restarts.
pub const ORIGIN_CONFIG: u8 = 1;
/// Rule origin: added at run time with `sluicectl filter add`; kept until
/// `sluicectl filter del`.
pub const ORIGIN_RUNTIME: u8 = 2;

/// Address family values of [`ProtoKey::family`].
pub const FAMILY_IPV4: u8 = 4;
/// Address family values of [`ProtoKey::family`].
pub const FAMILY_IPV6: u8 = 6;

/// Value of every prefilter rule map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// Index into `PREFILTER_RULE_COUNTERS`; stable for the rule's life
    /// (host byte order). 0 is never used.
    pub rule_id: u32,
    /// [`ACTION_DROP`] or [`ACTION_ALLOW`].
    pub action: u8,
    /// [`ORIGIN_CONFIG`] or [`ORIGIN_RUNTIME`].
    pub origin: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

/// Key of `PREFILTER_PROTO`: a protocol, optionally narrowed to one ICMP
/// type or one destination port. The datapath looks up the narrow key first,
/// then the protocol-wide one (`has_selector == 0`, `selector == 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtoKey {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// IP protocol number (1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6, 132 SCTP, ...).
    pub protocol: u8,
    /// 1 when `selector` is meaningful, 0 for the whole protocol.
    pub has_selector: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// ICMP/ICMPv6 type, or TCP/UDP/SCTP destination port, in host byte
    /// order. Zero when `has_selector` is 0.
    pub selector: u16,
    /// Explicit padding, always zero.
    pub _pad2: u16,
}

/// Address part of a `PREFILTER_CIDR4` key. The key itself is the kernel's
/// `struct bpf_lpm_trie_key { __u32 prefixlen; __u8 data[4]; }`, which both
/// sides spell as aya's `lpm_trie::Key<Cidr4Addr>`: prefix length in bits
/// (host byte order), then the address in network byte order.
pub type Cidr4Addr = [u8; 4];
/// Address part of a `PREFILTER_CIDR6` key (see [`Cidr4Addr`]).
pub type Cidr6Addr = [u8; 16];
/// Size of a `PREFILTER_CIDR4` key: prefix length plus address.
pub const CIDR4_KEY_SIZE: u32 = 4 + 4;
/// Size of a `PREFILTER_CIDR6` key.
pub const CIDR6_KEY_SIZE: u32 = 4 + 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY (both): repr(C), integer fields only, the padding is explicit,
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::ProtoKey {}
}
