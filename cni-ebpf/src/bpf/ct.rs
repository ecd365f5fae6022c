//! Connection tracking for policy: a flow allowed once is remembered by its
//! initiating 5-tuple; packets in either direction find it. Entries carry
//! the policy revision they were allowed at; a stale entry sends the flow
//! back through the policy (as its initiating direction), so a change keeps
//! what it still allows and cuts what it now denies.
//!
//! IPv4 flows live in `CT4` under a 16-byte key, IPv6 flows in `CT6` under
//! the 40-byte [`CtKey`]; the programs work on a `CtKey` of either family
//! and only the map access below tells them apart.
//!
//! Entries leave by LRU eviction; there is no TCP state machine yet.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use cni_ebpf_common::policy::{CtEntry, CtKey};

use cni_ebpf_common::prefilter::FAMILY_IPV4;

use super::{
    maps::{CT4, CT6},
    parse::{read, IpPacket, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

/// ICMP echo request/reply types of both families (the quoted packet of an
/// error about a ping).
const ICMP_ECHO_TYPES: [u8; 4] = [0, 8, 128, 129];

/// The key of the flow `packet` would start.
#[inline(always)]
pub fn forward_key(packet: &IpPacket) -> CtKey {
    let is_icmp = packet.protocol == IPPROTO_ICMP || packet.protocol == IPPROTO_ICMPV6;
    CtKey {
        src: packet.src,
        dst: packet.dst,
        // ICMP echo: the identifier in both directions, no second port.
        sport: packet.l4.sport.to_be(),
        dport: if is_icmp {
            0
        } else {
            packet.l4.selector.to_be()
        },
        protocol: packet.protocol,
        family: packet.family,
        _pad: [0; 2],
    }
}

/// Turns a key into the key of the opposite direction, in place (one key
/// on the stack: the BPF stack is 512 bytes for the whole program).
#[inline(always)]
fn reverse(key: &mut CtKey) {
    core::mem::swap(&mut key.src, &mut key.dst);
    let is_icmp = key.protocol == IPPROTO_ICMP || key.protocol == IPPROTO_ICMPV6;
    if !is_icmp {
        core::mem::swap(&mut key.sport, &mut key.dport);
    }
}

/// The entry of flow `key` in its family's map.
#[inline(always)]
fn find(key: &CtKey) -> Option<*mut CtEntry> {
    if key.family == FAMILY_IPV4 {
        CT4.get_ptr_mut(key.v4())
    } else {
        CT6.get_ptr_mut(*key)
    }
}

/// What conntrack knows about a packet.
pub enum Tracked {
    /// A flow allowed at the current revision: pass.
    Current,
    /// A flow allowed at an older revision: the key now holds its
    /// initiating tuple, to be checked again.
    Stale,
    /// Nothing: a new flow; the key is the packet's own tuple.
    New,
}

/// Looks `key` (the packet's forward key) up in both directions and counts
/// the packet on a hit. On `Stale`, `key` is left as the flow's initiating
/// tuple.
#[inline(always)]
pub fn lookup(key: &mut CtKey, revision: u32) -> Tracked {
    if let Some(entry) = find(key) {
        // SAFETY: a value pointer from this map, valid during this run.
        unsafe {
            (*entry).packets_forward += 1;
            (*entry).last_seen_ns = bpf_ktime_get_coarse_ns();
            if (*entry).revision == revision {
                return Tracked::Current;
            }
        }
        return Tracked::Stale;
    }
    reverse(key);
    if let Some(entry) = find(key) {
        // SAFETY: as above.
        unsafe {
            (*entry).packets_reply += 1;
            (*entry).last_seen_ns = bpf_ktime_get_coarse_ns();
            if (*entry).revision == revision {
                return Tracked::Current;
            }
        }
        return Tracked::Stale;
    }
    reverse(key);
    Tracked::New
}

/// Writes into `key` the forward key of the packet the ICMP error `error`
/// quotes (its IP header and first 8 bytes of L4 follow the 8-byte ICMP
/// header), read straight from the frame in `[start, end)`: the flow the
/// error belongs to. False when the quote is cut short or not a TCP, UDP,
/// SCTP or echo packet. Built in place: the BPF stack has no room for a
/// second parsed packet.
#[inline(always)]
pub fn quoted_key(start: usize, end: usize, error: &IpPacket, key: &mut CtKey) -> bool {
    let inner = error.l4_offset as usize + 8;
    // The verifier needs packet offsets it can bound; headers end well
    // before this (the programs parse at most 128 bytes).
    if inner > 192 {
        return false;
    }
    let l4 = if error.family == FAMILY_IPV4 {
        let Some(header) = read::<[u8; 20]>(start, end, inner) else {
            return false;
        };
        if header[0] >> 4 != 4 {
            return false;
        }
        key.protocol = header[9];
        key.src = [0; 16];
        key.dst = [0; 16];
        key.src[..4].copy_from_slice(&header[12..16]);
        key.dst[..4].copy_from_slice(&header[16..20]);
        inner + (header[0] & 0x0f) as usize * 4
    } else {
        let Some(next) = read::<u8>(start, end, inner + 6) else {
            return false;
        };
        let (Some(src), Some(dst)) = (
            read::<[u8; 16]>(start, end, inner + 8),
            read::<[u8; 16]>(start, end, inner + 24),
        ) else {
            return false;
        };
        key.protocol = next;
        key.src = src;
        key.dst = dst;
        inner + 40
    };
    key.family = error.family;
    let Some(head) = read::<[u8; 8]>(start, end, l4).or_else(|| {
        // Only 8 bytes of L4 are promised; ports need 4.
        read::<[u8; 4]>(start, end, l4).map(|p| [p[0], p[1], p[2], p[3], 0, 0, 0, 0])
    }) else {
        return false;
    };
    match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            // Already network byte order, as `forward_key` stores them.
            key.sport = u16::from_ne_bytes([head[0], head[1]]);
            key.dport = u16::from_ne_bytes([head[2], head[3]]);
            true
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if ICMP_ECHO_TYPES.contains(&head[0]) => {
            key.sport = u16::from_ne_bytes([head[4], head[5]]);
            key.dport = 0;
            true
        }
        _ => false,
    }
}

/// Whether the flow of `key` (a packet's forward key, either direction)
/// is tracked at any revision; counts nothing. For ICMP errors, which
/// belong to the flow they quote.
#[inline(always)]
pub fn is_tracked(key: &mut CtKey) -> bool {
    if find(key).is_some() {
        return true;
    }
    reverse(key);
    find(key).is_some()
}

/// Remembers an allowed flow: a new entry, or for a stale one just the new
/// revision (its packet counts go on).
#[inline(always)]
pub fn allow(key: &CtKey, revision: u32, tracked: &Tracked) {
    if let Tracked::Stale = tracked {
        if let Some(entry) = find(key) {
            // SAFETY: a value pointer from this map, valid during this run.
            unsafe { (*entry).revision = revision };
            return;
        }
    }
    let entry = CtEntry {
        revision,
        _reserved: 0,
        packets_forward: 1,
        packets_reply: 0,
        // SAFETY: a helper without arguments.
        last_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    // A full LRU evicts the least recent flow; insertion does not fail then.
    let _ = if key.family == FAMILY_IPV4 {
        CT4.insert(key.v4(), entry, 0)
    } else {
        CT6.insert(key, entry, 0)
    };
}

/// Forgets a flow the policy no longer allows.
#[inline(always)]
pub fn forget(key: &CtKey) {
    let _ = if key.family == FAMILY_IPV4 {
        CT4.remove(key.v4())
    } else {
        CT6.remove(key)
    };
}
