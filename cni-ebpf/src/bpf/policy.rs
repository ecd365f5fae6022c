//! Policy evaluation, exactly in the order the agent's `explain` uses
//! (cni-agent/src/policy): for the peer's identity, then for any peer:
//! (protocol, port) -> (protocol, any port) -> endPort ranges -> (any
//! protocol, any port).

use aya_ebpf::btf_maps::lpm_trie::Key;
use cni_ebpf_common::{
    policy::{
        CtKey, PolicyKey, PolicyState, DIRECTION_EGRESS, DIRECTION_INGRESS, IDENTITY_ANY,
        IDENTITY_WORLD, PORT_ANY, PORT_RANGES_PER_KEY, PROTO_ANY,
    },
    prefilter::FAMILY_IPV4,
    EndpointInfo, EndpointKey, Reason, SourceKey4,
};

// Keys are built from little-endian words (see `endpoint`).
const _: () = assert!(cfg!(target_endian = "little"));

use super::{
    maps::{
        ENDPOINTS, IPCACHE4, IPCACHE6, POLICY, POLICY_EVENTS, POLICY_PORT_RANGES, POLICY_STATE,
        SOURCES4,
    },
    parse::words,
};

/// A flow as policy sees it is its conntrack key in the initiating
/// direction (ports in network order there).
pub type Flow = CtKey;

#[inline(always)]
fn dport(flow: &Flow) -> u16 {
    u16::from_be(flow.dport)
}

/// The endpoint owning `addr`, if it is a local pod's.
#[inline(always)]
pub fn endpoint(family: u8, addr: &[u8; 16]) -> Option<&'static EndpointInfo> {
    // Built from words: field by field, the compiler zeroes the three
    // padding bytes with a call to a byte-loop `memset`, on every packet.
    // On this little-endian target the first word is `family` and the zero
    // padding. An IPv4 key is zero past the first four address bytes, and
    // so is every IPv4 address the programs hold (`IpPacket`, `CtKey`).
    let addr_words = words(addr);
    // SAFETY: `EndpointKey` is 20 bytes of integers with 4-byte alignment.
    let key = unsafe {
        core::mem::transmute::<[u32; 5], EndpointKey>([
            u32::from(family),
            addr_words[0],
            addr_words[1],
            addr_words[2],
            addr_words[3],
        ])
    };
    // SAFETY: a map value stays valid for the rest of this program run
    // (RCU); a concurrent update may change its fields, each of which is
    // read once where it is used. Not copied: the copy cost every packet
    // and the stack has little room.
    unsafe { ENDPOINTS.get(key) }
}

/// The endpoint behind the host veth `ifindex` that owns the source
/// address `addr`: `None` when `addr` is no address of that pod (of no pod
/// at all, or of another one: spoofed). IPv4 is found by the pair in
/// `SOURCES4` (one hash round on an 8-byte key); a pair missing there (an
/// older plugin wrote only `ENDPOINTS`), and IPv6, by the address in
/// `ENDPOINTS`, whose veth must then be `ifindex`.
#[inline(always)]
pub fn source_endpoint(family: u8, addr: &[u8; 16], ifindex: u32) -> Option<&'static EndpointInfo> {
    if family == FAMILY_IPV4 {
        // Built from words, like the `ENDPOINTS` key below.
        // SAFETY: `SourceKey4` is two 4-byte fields, 4-byte aligned.
        let key =
            unsafe { core::mem::transmute::<[u32; 2], SourceKey4>([ifindex, words(addr)[0]]) };
        // SAFETY: as in `endpoint`.
        if let Some(info) = unsafe { SOURCES4.get(key) } {
            return Some(info);
        }
    }
    endpoint(family, addr).filter(|info| info.ifindex == ifindex)
}

/// The endpoint's policy state, if the agent programmed it.
#[inline(always)]
pub fn state(endpoint_id: u64) -> Option<PolicyState> {
    // SAFETY: the value is copied out at once.
    unsafe { POLICY_STATE.get(endpoint_id) }.copied()
}

/// The identity of `addr` (most specific prefix); WORLD when none.
#[inline(always)]
pub fn identity(family: u8, addr: &[u8; 16]) -> u32 {
    let entry = if family == FAMILY_IPV4 {
        IPCACHE4
            .get(&Key::new(32, [addr[0], addr[1], addr[2], addr[3]]))
            .copied()
    } else {
        IPCACHE6.get(&Key::new(128, *addr)).copied()
    };
    match entry {
        Some(e) => e.identity,
        None => IDENTITY_WORLD,
    }
}

#[inline(always)]
fn lookup_for(endpoint_id: u64, direction: u8, identity: u32, protocol: u8, port: u16) -> bool {
    let mut key = PolicyKey {
        endpoint_id,
        identity,
        direction,
        protocol,
        port,
    };
    // SAFETY (each get): presence test only.
    if unsafe { POLICY.get(key) }.is_some() {
        return true;
    }
    key.port = PORT_ANY;
    if unsafe { POLICY.get(key) }.is_some() {
        return true;
    }
    if let Some(ranges) = unsafe { POLICY_PORT_RANGES.get(key) } {
        let mut i = 0;
        while i < PORT_RANGES_PER_KEY {
            if (i as u32) < ranges.count {
                let [first, last] = ranges.ranges[i];
                if port >= first && port <= last {
                    return true;
                }
            }
            i += 1;
        }
    }
    key.protocol = PROTO_ANY;
    unsafe { POLICY.get(key) }.is_some()
}

/// Whether the endpoint's policy allows the flow in `direction` with the
/// peer `identity`.
#[inline(always)]
pub fn allows(endpoint_id: u64, direction: u8, identity: u32, flow: &Flow) -> bool {
    lookup_for(endpoint_id, direction, identity, flow.protocol, dport(flow))
        || lookup_for(
            endpoint_id,
            direction,
            IDENTITY_ANY,
            flow.protocol,
            dport(flow),
        )
}

/// Reports a policy drop on the ring buffer (lost when it is full). The
/// event is written in place in the ring, not built on the stack.
#[inline(always)]
pub fn report_drop(
    flow: &Flow,
    direction: u8,
    reason: Reason,
    endpoint_id: u64,
    peer_identity: u32,
) {
    let Some(mut slot) = POLICY_EVENTS.reserve(0) else {
        return;
    };
    let event = slot.as_mut_ptr();
    // SAFETY: the slot is ours until submitted, sized for a DropEvent; every
    // field is written.
    unsafe {
        (*event).src = flow.src;
        (*event).dst = flow.dst;
        (*event).sport = u16::from_be(flow.sport);
        (*event).dport = u16::from_be(flow.dport);
        (*event).protocol = flow.protocol;
        (*event).family = flow.family;
        (*event).direction = direction;
        (*event)._pad = 0;
        (*event).reason = reason.0;
        (*event).endpoint_id = endpoint_id;
        (*event).peer_identity = peer_identity;
        (*event)._reserved = 0;
    }
    slot.submit(0);
}

/// The reasons a check counts and reports, by the program running it: a
/// stale reply is judged as the flow it answers, possibly in the other
/// program, and is counted in that program's own terms.
pub struct Reasons {
    /// The endpoint's policy is not programmed.
    pub not_programmed: Reason,
    /// The source's egress policy denies the flow.
    pub egress_denied: Reason,
    /// The destination's ingress policy denies the flow.
    pub ingress_denied: Reason,
    /// Allowed by policy (or no isolation).
    pub pass: Reason,
    /// Allowed because it comes from the node (ALLOW_HOST).
    pub pass_host: Reason,
}

/// Checks run in `from_pod`.
pub const FROM_POD_REASONS: Reasons = Reasons {
    not_programmed: Reason::FROM_POD_DROP_NOT_PROGRAMMED,
    egress_denied: Reason::FROM_POD_DROP_EGRESS_POLICY,
    ingress_denied: Reason::FROM_POD_DROP_INGRESS_POLICY,
    pass: Reason::FROM_POD_PASS_POLICY,
    pass_host: Reason::FROM_POD_PASS_POLICY,
};

/// Checks run in `to_pod`.
pub const TO_POD_REASONS: Reasons = Reasons {
    not_programmed: Reason::TO_POD_DROP_NOT_PROGRAMMED,
    egress_denied: Reason::TO_POD_DROP_EGRESS_POLICY,
    ingress_denied: Reason::TO_POD_DROP_INGRESS_POLICY,
    pass: Reason::TO_POD_PASS_POLICY,
    pass_host: Reason::TO_POD_PASS_HOST,
};

/// Egress of a local source endpoint, then ingress of a local destination
/// endpoint: the verdict for a new flow leaving a pod. `Ok` carries the
/// pass reason, `Err` the drop reason (already reported).
#[inline(always)]
pub fn check_from_pod(
    flow: &Flow,
    src: &EndpointInfo,
    reasons: &Reasons,
) -> Result<Reason, Reason> {
    use cni_ebpf_common::policy::{POLICY_F_EGRESS_ISOLATED, POLICY_F_PROGRAMMED};
    let Some(src_state) = state(src.endpoint_id) else {
        return Err(reasons.not_programmed);
    };
    if src_state.flags & POLICY_F_PROGRAMMED == 0 {
        return Err(reasons.not_programmed);
    }
    if src_state.flags & POLICY_F_EGRESS_ISOLATED != 0 {
        let peer = identity(flow.family, &flow.dst);
        if !allows(src.endpoint_id, DIRECTION_EGRESS, peer, flow) {
            report_drop(
                flow,
                DIRECTION_EGRESS,
                reasons.egress_denied,
                src.endpoint_id,
                peer,
            );
            return Err(reasons.egress_denied);
        }
    }
    if let Some(dst) = endpoint(flow.family, &flow.dst) {
        check_ingress(flow, dst, reasons)?;
    }
    Ok(reasons.pass)
}

/// Ingress of a local destination endpoint for a new flow.
#[inline(always)]
pub fn check_ingress(flow: &Flow, dst: &EndpointInfo, reasons: &Reasons) -> Result<Reason, Reason> {
    use cni_ebpf_common::policy::{
        IDENTITY_HOST, POLICY_F_ALLOW_HOST, POLICY_F_INGRESS_ISOLATED, POLICY_F_PROGRAMMED,
    };
    let Some(dst_state) = state(dst.endpoint_id) else {
        return Err(reasons.not_programmed);
    };
    if dst_state.flags & POLICY_F_PROGRAMMED == 0 {
        return Err(reasons.not_programmed);
    }
    let peer = identity(flow.family, &flow.src);
    if peer == IDENTITY_HOST && dst_state.flags & POLICY_F_ALLOW_HOST != 0 {
        return Ok(reasons.pass_host);
    }
    if dst_state.flags & POLICY_F_INGRESS_ISOLATED != 0
        && !allows(dst.endpoint_id, DIRECTION_INGRESS, peer, flow)
    {
        report_drop(
            flow,
            DIRECTION_INGRESS,
            reasons.ingress_denied,
            dst.endpoint_id,
            peer,
        );
        return Err(reasons.ingress_denied);
    }
    Ok(reasons.pass)
}
