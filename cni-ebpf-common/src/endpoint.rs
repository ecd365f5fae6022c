//! The endpoint map: one entry per pod address, written by the plugin on
//! ADD and removed on DEL. The datapath finds a local pod's veth and state
//! by address.

use crate::prefilter::{FAMILY_IPV4, FAMILY_IPV6};

/// Endpoint flag: the agent has programmed this endpoint's policy. Until it
/// is set, policy enforcement (when enabled) treats the endpoint as
/// fail-closed.
pub const ENDPOINT_F_POLICY_READY: u32 = 1 << 0;

/// Endpoint flag: eBPF host routing (routed mode, `"hostRouting": "ebpf"`).
/// Traffic between two such endpoints goes straight into the destination's
/// namespace with `bpf_redirect_peer`; the endpoint's traffic to anything
/// else leaves through a FIB lookup and `bpf_redirect`/`bpf_redirect_neigh`;
/// traffic for it arriving on an uplink is redirected to its veth. Without
/// the flag every packet takes the host stack (`"hostRouting": "legacy"`,
/// bridge mode).
pub const ENDPOINT_F_HOST_ROUTING: u32 = 1 << 1;

/// Endpoint flag: the endpoint's traffic leaving the pod network is
/// masqueraded by nftables (`ipMasq`), so it must go through the host stack
/// even with eBPF host routing; only deliveries to local pods skip it.
pub const ENDPOINT_F_MASQUERADE: u32 = 1 << 2;

/// Key of `ENDPOINTS`: a pod address. 4-byte aligned so a program builds
/// it with word stores (at byte alignment the compiler zeroes the padding
/// and the unused address bytes with calls to a byte-loop `memset`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
    /// Address in network byte order; IPv4 uses the first 4 bytes, the rest
    /// stay zero.
    pub addr: [u8; 16],
}

impl EndpointKey {
    /// Key of an IPv4 address (octets as written).
    pub fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&octets);
        Self {
            family: FAMILY_IPV4,
            _pad: [0; 3],
            addr,
        }
    }

    /// Key of an IPv6 address.
    pub fn v6(octets: [u8; 16]) -> Self {
        Self {
            family: FAMILY_IPV6,
            _pad: [0; 3],
            addr: octets,
        }
    }

    /// Key of an address of either family.
    pub fn of(addr: core::net::IpAddr) -> Self {
        match addr {
            core::net::IpAddr::V4(a) => Self::v4(a.octets()),
            core::net::IpAddr::V6(a) => Self::v6(a.octets()),
        }
    }
}

/// Key of `SOURCES4`: an IPv4 address the pod behind a host veth may send
/// from. `from_pod` finds a packet's source endpoint by (the veth it came
/// in on, its source address): an 8-byte key hashes in one round where the
/// 20-byte [`EndpointKey`] takes two, on every packet, and the pair is the
/// anti-spoofing check itself. `ENDPOINTS` stays the map of record: a pair
/// missing here (an older plugin, a migration) falls back on it.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey4 {
    /// Host-side veth ifindex, in the node's namespace (host byte order).
    pub ifindex: u32,
    /// The address, network byte order.
    pub addr: [u8; 4],
}

impl SourceKey4 {
    /// Key of IPv4 address `octets` (as written) behind veth `ifindex`.
    pub fn new(ifindex: u32, octets: [u8; 4]) -> Self {
        Self {
            ifindex,
            addr: octets,
        }
    }
}

/// Value of `ENDPOINTS` and `SOURCES4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth ifindex, in the node's namespace (host byte order).
    pub ifindex: u32,
    /// `ENDPOINT_F_*` bits (host byte order).
    pub flags: u32,
    /// The pod interface's MAC.
    pub mac: [u8; 6],
    /// The host-side veth's MAC: the pod's gateway MAC, which frames
    /// delivered into the pod by eBPF host routing come from.
    pub host_mac: [u8; 6],
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
    /// Stable endpoint id (a hash of container id and ifname), the key the
    /// agent's policy maps use (host byte order).
    pub endpoint_id: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (both): repr(C), integers and byte arrays, explicit padding.
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::SourceKey4 {}
}
