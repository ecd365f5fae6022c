//! The tc programs on pod veths: parse, then (when the agent enforces
//! policy) conntrack and NetworkPolicy, and count every verdict.
//!
//! `from_pod` (TCX ingress of the host-side veth) sees what the pod sends:
//! the sender's egress policy and, for a local destination, that pod's
//! ingress policy; what it passes, eBPF host routing forwards (see
//! `forward`). `to_pod` (TCX egress) sees what reaches the pod through the
//! stack or from an uplink: the pod's ingress policy. A flow allowed once is
//! tracked, so its replies and later packets pass on one lookup.
//! `from_uplink` (TCX ingress of an uplink) sends packets for local pods
//! to their veth.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use cni_ebpf_common::{
    policy::{CtKey, POLICY_CONFIG_F_ENFORCE},
    prefilter::FAMILY_IPV6,
    EndpointInfo, Reason,
};

use super::{
    counters::count_reason,
    ct::{self, Tracked},
    forward,
    maps::POLICY_CONFIG,
    parse::{
        is_icmp_error, parse_frame, IpPacket, Parsed, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP,
        IPPROTO_TCP, IPPROTO_UDP,
    },
    policy::{
        check_from_pod, check_ingress, endpoint, source_endpoint, FROM_POD_REASONS, TO_POD_REASONS,
    },
};

/// Bytes of headers the parser may read: Ethernet, two VLAN tags, IPv6 with
/// a few extension headers, and the L4 ports (or an ICMP error's quote).
const HEADROOM_TO_PARSE: u32 = 128;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// How many bytes from the frame's start the parser will read, found with
/// `bpf_skb_load_bytes` (which reads paged data too): Ethernet + IPv4
/// header + 8 bytes of L4 for the common IPv4 packet, 62 for IPv6 TCP, UDP
/// or SCTP without extension headers, [`HEADROOM_TO_PARSE`] for anything
/// else (VLAN tags, extension headers, ICMP, whose errors quote a header).
#[inline(always)]
fn headers_to_parse(ctx: &TcContext) -> u32 {
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12) else {
        return HEADROOM_TO_PARSE;
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => match ctx.load::<[u8; 10]>(14) {
            Ok(ip) if ip[9] != IPPROTO_ICMP => 14 + u32::from(ip[0] & 0x0f) * 4 + 8,
            _ => HEADROOM_TO_PARSE,
        },
        ETH_P_IPV6 => match ctx.load::<u8>(14 + 6) {
            Ok(IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) => 14 + 40 + 8,
            _ => HEADROOM_TO_PARSE,
        },
        _ => HEADROOM_TO_PARSE,
    }
}

/// Makes sure the headers are in the linear part of the skb, where direct
/// packet access can see them (a packet built from page fragments may hold
/// less; without this its headers would look truncated). Pulls only when
/// they are not: a pull of a cloned skb, which every TCP segment a local
/// socket sends is, reallocates its head, a cost per 64 KB GSO packet that
/// a stream's throughput shows.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear >= ctx.len() {
        return;
    }
    let want = headers_to_parse(ctx).min(ctx.len());
    if linear < want {
        // On failure the parse below sees what is linear and says so.
        let _ = ctx.pull_data(want.max(HEADROOM_TO_PARSE.min(ctx.len())));
    }
}

/// Whether policy is enforced, and the current revision.
#[inline(always)]
fn policy_config() -> (bool, u32) {
    match POLICY_CONFIG.get(0) {
        Some(config) => (config.flags & POLICY_CONFIG_F_ENFORCE != 0, config.revision),
        None => (false, 0),
    }
}

/// Applies a verdict: count it, return the tc action.
#[inline(always)]
fn finish(reason: Reason, bytes: u64) -> Result<i32, ()> {
    count_reason(reason, bytes);
    Ok(if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        // TCX_NEXT, not TC_ACT_OK (= TCX_PASS): passing on keeps the next
        // TCX programs and the classic tc hooks (e.g. the bandwidth plugin's
        // ingress redirect to its ifb) in the path.
        TC_ACT_UNSPEC
    })
}

/// ICMPv6 types that are link plumbing, not traffic NetworkPolicy speaks
/// of (neighbour discovery 133-137, MLD 130-132 and 143): they pass like ARP,
/// even from link-local or unspecified sources.
#[inline(always)]
fn is_neighbor_discovery(packet: &IpPacket) -> bool {
    packet.family == FAMILY_IPV6
        && packet.protocol == IPPROTO_ICMPV6
        && packet.l4.has_selector
        && matches!(packet.l4.selector, 130..=137 | 143)
}

/// Whether `packet` is an ICMP error about a flow conntrack allowed: the
/// "fragmentation needed" / "packet too big" a router or the node sends
/// back to a pod that opened a connection, a time-exceeded, an unreachable.
/// Such errors belong to the flow, like its replies, so path MTU discovery
/// works for ingress-isolated pods. `scratch` is the caller's conntrack
/// key, reused (the BPF stack has no room for another); it holds garbage
/// afterwards.
#[inline(always)]
fn related_to_tracked_flow(ctx: &TcContext, packet: &IpPacket, scratch: &mut CtKey) -> bool {
    is_icmp_error(packet)
        && ct::quoted_key(ctx.data(), ctx.data_end(), packet, scratch)
        && ct::is_tracked(scratch)
}

/// Records a policy verdict for a new or stale flow in conntrack (tracked
/// when allowed, forgotten when denied) and returns its reason.
#[inline(always)]
fn record(
    verdict: Result<Reason, Reason>,
    flow: &CtKey,
    revision: u32,
    tracked: &Tracked,
) -> Reason {
    match verdict {
        Ok(reason) => {
            ct::allow(flow, revision, tracked);
            reason
        }
        Err(reason) => {
            ct::forget(flow);
            reason
        }
    }
}

/// Applies a `from_pod` verdict on a packet of endpoint `src`: a pass is
/// forwarded by eBPF host routing when the endpoint has it (the forwarding
/// outcome is counted too), else handed on like any other verdict.
#[inline(always)]
fn finish_from_pod(
    ctx: &TcContext,
    reason: Reason,
    packet: &IpPacket,
    src: &EndpointInfo,
    bytes: u64,
) -> Result<i32, ()> {
    if reason.is_drop() {
        return finish(reason, bytes);
    }
    count_reason(reason, bytes);
    match forward::from_pod(ctx, packet, src) {
        Some(forwarded) => {
            count_reason(forwarded.reason, bytes);
            Ok(forwarded.action)
        }
        None => Ok(TC_ACT_UNSPEC),
    }
}

pub fn try_from_pod(ctx: &TcContext) -> Result<i32, ()> {
    // Read first and volatile: the verifier accepts a context field only as
    // a load at a constant offset from the context pointer itself, and
    // without this the compiler may keep `ctx + offset` in a register and
    // load from it later.
    // SAFETY: a field of the program's context.
    let ingress_ifindex =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.skb.skb).ifindex)) };
    pull_headers(ctx);
    // skb->len, not data_end - data: the linear part may hold only the
    // headers of a large GSO packet.
    let bytes = ctx.len() as u64;
    let (enforce, revision) = policy_config();
    let packet = match parse_frame(ctx.data(), ctx.data_end()) {
        Parsed::Ip(packet) => packet,
        Parsed::NotIp => return finish(Reason::FROM_POD_PASS_NOT_IP, bytes),
        // Its ports are out of reach: it cannot pass port rules unseen.
        Parsed::ExtChainTooLong if enforce => {
            return finish(Reason::FROM_POD_DROP_IPV6_EXT_CHAIN, bytes)
        }
        Parsed::Malformed | Parsed::ExtChainTooLong => {
            return finish(Reason::FROM_POD_MALFORMED, bytes)
        }
    };
    if is_neighbor_discovery(&packet) {
        return finish(Reason::FROM_POD_PASS_NEIGHBOR_DISCOVERY, bytes);
    }
    // The source must be an address of the pod behind *this* veth: a pod
    // sending with another local pod's address would otherwise be judged,
    // tracked and forwarded as that pod.
    let Some(src) = source_endpoint(packet.family, &packet.src, ingress_ifindex) else {
        let reason = if enforce {
            Reason::FROM_POD_DROP_SPOOFED
        } else {
            Reason::FROM_POD_UNKNOWN_SOURCE
        };
        return finish(reason, bytes);
    };
    if !enforce {
        return finish_from_pod(ctx, Reason::FROM_POD_PASS, &packet, src, bytes);
    }
    let mut flow = ct::forward_key(&packet);
    // On Stale, a reply of a stale flow is judged as the flow it answers:
    // `flow` then holds the initiating tuple.
    let tracked = ct::lookup(&mut flow, revision);
    if let Tracked::Current = tracked {
        return finish_from_pod(ctx, Reason::FROM_POD_PASS_CT, &packet, src, bytes);
    }
    // A new flow starts from this packet: its initiator is `src`, found
    // above. Only a stale reply needs the initiator looked up.
    let initiator = match tracked {
        Tracked::New => Some(src),
        _ => endpoint(flow.family, &flow.src),
    };
    let verdict = match initiator {
        Some(initiator) => check_from_pod(&flow, initiator, &FROM_POD_REASONS),
        // A stale reply of a flow that came from outside the node to this
        // pod: only the pod's ingress applies.
        None => check_ingress(&flow, src, &FROM_POD_REASONS),
    };
    let reason = record(verdict, &flow, revision, &tracked);
    finish_from_pod(ctx, reason, &packet, src, bytes)
}

pub fn try_to_pod(ctx: &TcContext) -> Result<i32, ()> {
    pull_headers(ctx);
    let bytes = ctx.len() as u64;
    let (enforce, revision) = policy_config();
    let packet = match parse_frame(ctx.data(), ctx.data_end()) {
        Parsed::Ip(packet) => packet,
        Parsed::NotIp => return finish(Reason::TO_POD_PASS_NOT_IP, bytes),
        Parsed::ExtChainTooLong if enforce => {
            return finish(Reason::TO_POD_DROP_IPV6_EXT_CHAIN, bytes)
        }
        Parsed::Malformed | Parsed::ExtChainTooLong => {
            return finish(Reason::TO_POD_MALFORMED, bytes)
        }
    };
    if is_neighbor_discovery(&packet) {
        return finish(Reason::TO_POD_PASS_NEIGHBOR_DISCOVERY, bytes);
    }
    if !enforce {
        return finish(Reason::TO_POD_PASS, bytes);
    }
    let Some(dst) = endpoint(packet.family, &packet.dst) else {
        // Not addressed to a pod address (broadcast, multicast): nothing of
        // NetworkPolicy applies.
        return finish(Reason::TO_POD_PASS, bytes);
    };
    let mut flow = ct::forward_key(&packet);
    if related_to_tracked_flow(ctx, &packet, &mut flow) {
        return finish(Reason::TO_POD_PASS_RELATED, bytes);
    }
    flow = ct::forward_key(&packet);
    let tracked = ct::lookup(&mut flow, revision);
    if let Tracked::Current = tracked {
        return finish(Reason::TO_POD_PASS_CT, bytes);
    }
    let target = match tracked {
        Tracked::New => Some(dst),
        _ => endpoint(flow.family, &flow.dst),
    };
    let verdict = match target {
        // A flow into a local pod (this one, or a stale reply's target).
        Some(target) => check_ingress(&flow, target, &TO_POD_REASONS),
        // A stale reply of a flow this pod started towards the outside:
        // judged by this pod's egress.
        None => check_from_pod(&flow, dst, &TO_POD_REASONS),
    };
    finish(record(verdict, &flow, revision, &tracked), bytes)
}

/// TCX ingress of an uplink: packets for local pods with eBPF host routing
/// go straight to the pod's veth; everything else goes on to the stack
/// unchanged and uncounted (it is the node's own traffic).
pub fn try_from_uplink(ctx: &TcContext) -> Result<i32, ()> {
    pull_headers(ctx);
    let Parsed::Ip(packet) = parse_frame(ctx.data(), ctx.data_end()) else {
        return Ok(TC_ACT_UNSPEC);
    };
    match forward::from_uplink(ctx, &packet) {
        Some(forwarded) => {
            count_reason(forwarded.reason, ctx.len() as u64);
            Ok(forwarded.action)
        }
        None => Ok(TC_ACT_UNSPEC),
    }
}
