//! The tc programs on pod veths. For now they parse, count and pass; policy
//! enforcement builds on the same parse.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use cni_ebpf_common::{prefilter::FAMILY_IPV4, EndpointKey, Reason};

use super::{
    counters::count_reason,
    maps::ENDPOINTS,
    parse::{parse_frame, IpPacket, Parsed},
};

/// Bytes of headers the parser may read: Ethernet, two VLAN tags, IPv6 with
/// a few extension headers, and the L4 ports.
const HEADROOM_TO_PARSE: u32 = 128;

/// Makes sure the headers are in the linear part of the skb, where direct
/// packet access can see them (a packet built from page fragments may hold
/// less; without this its headers would look truncated).
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let want = if ctx.len() < HEADROOM_TO_PARSE {
        ctx.len()
    } else {
        HEADROOM_TO_PARSE
    };
    if ctx.data_end() - ctx.data() < want as usize {
        // On failure the parse below sees what is linear and says so.
        let _ = ctx.pull_data(want);
    }
}

pub fn try_from_pod(ctx: &TcContext) -> Result<i32, ()> {
    pull_headers(ctx);
    // skb->len, not data_end - data: the linear part may hold only the
    // headers of a large GSO packet.
    let bytes = ctx.len() as u64;
    let reason = match parse_frame(ctx.data(), ctx.data_end()) {
        Parsed::Ip(packet) if is_endpoint(&packet) => Reason::FROM_POD_PASS,
        Parsed::Ip(_) => Reason::FROM_POD_UNKNOWN_SOURCE,
        Parsed::NotIp => Reason::FROM_POD_PASS_NOT_IP,
        Parsed::Malformed | Parsed::ExtChainTooLong => Reason::FROM_POD_MALFORMED,
    };
    count_reason(reason, bytes);
    Ok(TC_ACT_OK)
}

pub fn try_to_pod(ctx: &TcContext) -> Result<i32, ()> {
    pull_headers(ctx);
    let bytes = ctx.len() as u64;
    let reason = match parse_frame(ctx.data(), ctx.data_end()) {
        Parsed::Ip(_) => Reason::TO_POD_PASS,
        Parsed::NotIp => Reason::TO_POD_PASS_NOT_IP,
        Parsed::Malformed | Parsed::ExtChainTooLong => Reason::TO_POD_MALFORMED,
    };
    count_reason(reason, bytes);
    Ok(TC_ACT_OK)
}

/// Whether the packet's source is a known endpoint address.
#[inline(always)]
fn is_endpoint(packet: &IpPacket) -> bool {
    let key = if packet.family == FAMILY_IPV4 {
        let s = &packet.src;
        EndpointKey::v4([s[0], s[1], s[2], s[3]])
    } else {
        EndpointKey::v6(packet.src)
    };
    // SAFETY: the value is only tested for presence.
    unsafe { ENDPOINTS.get(key) }.is_some()
}
