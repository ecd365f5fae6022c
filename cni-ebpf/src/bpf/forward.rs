//! eBPF host routing (routed mode, `"hostRouting": "ebpf"`): once policy has
//! passed a packet, forward it without the host stack where the kernel lets
//! us, and hand it to the stack wherever the stack has work to do (ICMP
//! errors, masquerade, local delivery to the node).
//!
//! - To a local pod with host routing: rewrite the Ethernet header as the
//!   pod's gateway would, decrement the TTL, `bpf_redirect_peer` into the
//!   pod's namespace. The destination's `to_pod` does not run; `from_pod`
//!   already judged the destination's ingress policy.
//! - To anything else: `bpf_fib_lookup` (the node's routes and rules, and
//!   its forwarding sysctls), then `bpf_redirect` to the neighbour it
//!   resolved, or `bpf_redirect_neigh` when the neighbour is not resolved
//!   yet.
//! - From an uplink to a local pod: `bpf_redirect` to the egress of the
//!   pod's host-side veth, so `to_pod` still judges it.
//!
//! Only untagged frames are forwarded (pod veths and uplinks carry no VLAN
//! tags in routed mode); anything unusual takes the stack.

use core::mem::{align_of, size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext as _,
};
use cni_ebpf_common::{
    endpoint::{ENDPOINT_F_HOST_ROUTING, ENDPOINT_F_MASQUERADE},
    prefilter::FAMILY_IPV4,
    EndpointInfo, Reason,
};

use super::{
    parse::{words, IpPacket},
    policy::endpoint,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Offsets inside the IPv4 header: the TTL/protocol word, the checksum.
const IPV4_TTL_OFF: usize = ETH_HLEN + 8;
const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;
/// Offset of the IPv6 hop limit.
const IPV6_HOPLIMIT_OFF: usize = ETH_HLEN + 7;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `skb->pkt_type` of a frame addressed to this host's MAC.
const PACKET_HOST: u32 = 0;

/// What forwarding decided: the reason to count and the tc action.
pub struct Forwarded {
    pub reason: Reason,
    pub action: i32,
}

#[inline(always)]
fn stack(reason: Reason) -> Option<Forwarded> {
    Some(Forwarded {
        reason,
        // TCX_NEXT: on to the classic hooks and the stack.
        action: aya_ebpf::bindings::TC_ACT_UNSPEC,
    })
}

/// The ethertype, if the frame is untagged IPv4/IPv6 (the only frames
/// forwarded here).
#[inline(always)]
fn untagged_ip(ctx: &TcContext) -> bool {
    match ctx.load::<[u8; 2]>(12) {
        Ok(t) => matches!(u16::from_be_bytes(t), ETH_P_IP | ETH_P_IPV6),
        Err(_) => false,
    }
}

/// The TTL (hop limit) of the packet, if readable.
#[inline(always)]
fn hop_limit(ctx: &TcContext, family: u8) -> Option<u8> {
    let off = if family == FAMILY_IPV4 {
        IPV4_TTL_OFF
    } else {
        IPV6_HOPLIMIT_OFF
    };
    ctx.load::<u8>(off).ok()
}

/// Decrements the TTL (and fixes the IPv4 header checksum) as a router
/// does; the caller checked it is above 1.
#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext, family: u8) -> Result<(), ()> {
    if family == FAMILY_IPV4 {
        // The checksum covers 16-bit words: replace the TTL/protocol word.
        let old: [u8; 2] = ctx.load(IPV4_TTL_OFF).map_err(|_| ())?;
        let new = [old[0].wrapping_sub(1), old[1]];
        let (old_w, new_w) = (u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        ctx.l3_csum_replace(IPV4_CSUM_OFF, old_w as u64, new_w as u64, 2)
            .map_err(|_| ())?;
        ctx.store(IPV4_TTL_OFF, &new, 0).map_err(|_| ())
    } else {
        let old: u8 = ctx.load(IPV6_HOPLIMIT_OFF).map_err(|_| ())?;
        ctx.store(IPV6_HOPLIMIT_OFF, &(old - 1), 0).map_err(|_| ())
    }
}

/// Writes destination and source MAC.
#[inline(always)]
fn rewrite_ethernet(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), ()> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0).map_err(|_| ())
}

/// Whether the TTL allows forwarding (the stack sends time-exceeded
/// otherwise, which only it can do).
#[inline(always)]
fn ttl_ok(ctx: &TcContext, packet: &IpPacket) -> bool {
    matches!(hop_limit(ctx, packet.family), Some(t) if t > 1)
}

/// Forwarding of a packet `from_pod` passed, sent by endpoint `src`.
/// `None`: the endpoint does not use eBPF host routing (nothing counted).
#[inline(always)]
pub fn from_pod(ctx: &TcContext, packet: &IpPacket, src: &EndpointInfo) -> Option<Forwarded> {
    if src.flags & ENDPOINT_F_HOST_ROUTING == 0 || !untagged_ip(ctx) {
        return None;
    }
    if !ttl_ok(ctx, packet) {
        return stack(Reason::FORWARD_STACK_TTL);
    }
    if let Some(dst) = endpoint(packet.family, &packet.dst) {
        if dst.flags & ENDPOINT_F_HOST_ROUTING != 0 {
            return to_local_pod(ctx, packet, dst);
        }
        // A local pod without host routing: the FIB's /32 route to its veth
        // below reaches it through its `to_pod`.
    } else if src.flags & ENDPOINT_F_MASQUERADE != 0 {
        return stack(Reason::FORWARD_STACK_MASQUERADE);
    }
    via_fib(ctx, packet)
}

/// Straight into a local pod's namespace.
#[inline(always)]
fn to_local_pod(ctx: &TcContext, packet: &IpPacket, dst: &EndpointInfo) -> Option<Forwarded> {
    if rewrite_ethernet(ctx, &dst.mac, &dst.host_mac).is_err()
        || decrement_hop_limit(ctx, packet.family).is_err()
    {
        return stack(Reason::FORWARD_STACK_NO_ROUTE);
    }
    // SAFETY: a helper call with plain integers.
    let action = unsafe { bpf_redirect_peer(dst.ifindex, 0) } as i32;
    Some(Forwarded {
        reason: Reason::FORWARD_REDIRECT_PEER,
        action,
    })
}

/// A zeroed helper argument, written a word at a time. `mem::zeroed` of
/// these structs becomes a call to the target's `memset`, a byte loop (64
/// iterations for `bpf_fib_lookup`) on every forwarded packet; volatile
/// stores are not merged back into one.
/// SAFETY (caller): `T` is plain integers (zero is valid), 4-byte aligned,
/// a multiple of 4 bytes long.
#[inline(always)]
unsafe fn zeroed_in_place<T>(value: &mut MaybeUninit<T>) -> &mut T {
    let words = value.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: inside `value`, aligned (caller's promise).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is now zero, a valid `T` (caller's promise).
    unsafe { value.assume_init_mut() }
}

const _: () = assert!(
    align_of::<bpf_fib_lookup>() >= 4
        && size_of::<bpf_fib_lookup>().is_multiple_of(4)
        && align_of::<bpf_redir_neigh>() >= 4
        && size_of::<bpf_redir_neigh>().is_multiple_of(4)
);

/// A FIB lookup for the packet as it came in on `ctx`'s device.
#[inline(always)]
fn via_fib(ctx: &TcContext, packet: &IpPacket) -> Option<Forwarded> {
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: plain integers and unions of them; shape asserted above.
    let params = unsafe { zeroed_in_place(&mut params) };
    // SAFETY: the context pointer is the program's own __sk_buff.
    let ingress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.ifindex = ingress_ifindex;
    params.l4_protocol = packet.protocol;
    // tot_len stays 0: the kernel then checks the skb itself (GSO aware)
    // against the egress MTU and answers FRAG_NEEDED.
    if packet.family == FAMILY_IPV4 {
        params.family = AF_INET;
        // The words keep network byte order, as the kernel wants.
        params.__bindgen_anon_3.ipv4_src = words(&packet.src)[0];
        params.__bindgen_anon_4.ipv4_dst = words(&packet.dst)[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(&packet.src);
        params.__bindgen_anon_4.ipv6_dst = words(&packet.dst);
    }
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS if params.ifindex != ingress_ifindex => {
            // On success the kernel filled smac/dmac.
            if rewrite_ethernet(ctx, &params.dmac, &params.smac).is_err()
                || decrement_hop_limit(ctx, packet.family).is_err()
            {
                return stack(Reason::FORWARD_STACK_NO_ROUTE);
            }
            // SAFETY: a helper call with plain integers.
            let action = unsafe { bpf_redirect(params.ifindex, 0) } as i32;
            Some(Forwarded {
                reason: Reason::FORWARD_REDIRECT_FIB,
                action,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH if params.ifindex != ingress_ifindex => {
            // The lookup left the next hop (gateway, or the destination on a
            // connected route) in the destination field.
            let mut nh = MaybeUninit::<bpf_redir_neigh>::uninit();
            // SAFETY: plain integers and unions of them; shape asserted above.
            let nh = unsafe { zeroed_in_place(&mut nh) };
            if packet.family == FAMILY_IPV4 {
                nh.nh_family = AF_INET as u32;
                // SAFETY: the union member matching `family`.
                nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
            } else {
                nh.nh_family = AF_INET6 as u32;
                // SAFETY: as above.
                nh.__bindgen_anon_1.ipv6_nh = unsafe { params.__bindgen_anon_4.ipv6_dst };
            }
            if decrement_hop_limit(ctx, packet.family).is_err() {
                return stack(Reason::FORWARD_STACK_NO_ROUTE);
            }
            // SAFETY: nh is valid for the size given.
            let action = unsafe {
                bpf_redirect_neigh(
                    params.ifindex,
                    nh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            } as i32;
            Some(Forwarded {
                reason: Reason::FORWARD_REDIRECT_NEIGH,
                action,
            })
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => stack(Reason::FORWARD_STACK_FRAG_NEEDED),
        // Local to the node, no route, forwarding off, or back out the
        // device it came in on: the stack knows what to do.
        _ => stack(Reason::FORWARD_STACK_NO_ROUTE),
    }
}

/// `from_uplink`: a packet for a local pod with host routing, addressed to
/// this node at L2, goes to the egress of the pod's host-side veth (where
/// `to_pod` judges it), skipping the stack. `None`: not ours to forward.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext, packet: &IpPacket) -> Option<Forwarded> {
    // SAFETY: the context pointer is the program's own __sk_buff.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST || !untagged_ip(ctx) {
        return None;
    }
    let dst = endpoint(packet.family, &packet.dst)?;
    if dst.flags & ENDPOINT_F_HOST_ROUTING == 0 {
        return None;
    }
    if !ttl_ok(ctx, packet) {
        return stack(Reason::FORWARD_STACK_TTL);
    }
    if rewrite_ethernet(ctx, &dst.mac, &dst.host_mac).is_err()
        || decrement_hop_limit(ctx, packet.family).is_err()
    {
        return stack(Reason::FORWARD_STACK_NO_ROUTE);
    }
    // SAFETY: a helper call with plain integers.
    let action = unsafe { bpf_redirect(dst.ifindex, 0) } as i32;
    Some(Forwarded {
        reason: Reason::FORWARD_UPLINK_TO_POD,
        action,
    })
}
