//! Connection tracking for policy: a flow allowed once is remembered by its
//! initiating 5-tuple; packets in either direction find it. Entries carry
//! the policy revision they were allowed at; a stale entry sends the flow
//! back through the policy (as its initiating direction), so a change keeps
//! what it still allows and cuts what it now denies.
//!
//! Entries leave by LRU eviction; there is no TCP state machine yet.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use cni_ebpf_common::policy::{CtEntry, CtKey};

use super::{
    maps::CT,
    parse::{IpPacket, IPPROTO_ICMP, IPPROTO_ICMPV6},
};

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
    if let Some(entry) = CT.get_ptr_mut(*key) {
        // SAFETY: a value pointer from this map, valid during this run.
        unsafe {
            (*entry).packets_forward += 1;
            (*entry).last_seen_ns = bpf_ktime_get_ns();
            if (*entry).revision == revision {
                return Tracked::Current;
            }
        }
        return Tracked::Stale;
    }
    reverse(key);
    if let Some(entry) = CT.get_ptr_mut(*key) {
        // SAFETY: as above.
        unsafe {
            (*entry).packets_reply += 1;
            (*entry).last_seen_ns = bpf_ktime_get_ns();
            if (*entry).revision == revision {
                return Tracked::Current;
            }
        }
        return Tracked::Stale;
    }
    reverse(key);
    Tracked::New
}

/// Remembers an allowed flow: a new entry, or for a stale one just the new
/// revision (its packet counts go on).
#[inline(always)]
pub fn allow(key: &CtKey, revision: u32, tracked: &Tracked) {
    if let Tracked::Stale = tracked {
        if let Some(entry) = CT.get_ptr_mut(*key) {
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
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full LRU evicts the least recent flow; insertion does not fail then.
    let _ = CT.insert(key, entry, 0);
}

/// Forgets a flow the policy no longer allows.
#[inline(always)]
pub fn forget(key: &CtKey) {
    let _ = CT.remove(key);
}
