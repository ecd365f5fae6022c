//! The XDP prefilter: CIDR deny list (with allow exceptions, longest prefix
//! wins) on the source address, then protocol rules. Runs before the stack
//! allocates an skb, so a drop here costs almost nothing.

use aya_ebpf::{bindings::xdp_action, btf_maps::lpm_trie::Key, programs::XdpContext};
use aya_log_ebpf::debug;
use cni_ebpf_common::{
    prefilter::{ACTION_DROP, FAMILY_IPV4},
    ProtoKey, Reason, RuleValue,
};

use super::{
    counters::{count_reason, count_rule},
    maps::{PREFILTER_CIDR4, PREFILTER_CIDR6, PREFILTER_PROTO},
    parse::{parse_frame, IpPacket, Parsed},
};

pub fn try_prefilter(ctx: &XdpContext) -> Result<u32, ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let bytes = (end - start) as u64;
    let (reason, action) = match parse_frame(start, end) {
        Parsed::NotIp => (Reason::PREFILTER_PASS_NOT_IP, xdp_action::XDP_PASS),
        Parsed::Malformed => {
            debug!(ctx, "prefilter: malformed frame of {} bytes dropped", bytes);
            (Reason::PREFILTER_DROP_MALFORMED, xdp_action::XDP_DROP)
        }
        Parsed::ExtChainTooLong => (Reason::PREFILTER_DROP_IPV6_EXT_CHAIN, xdp_action::XDP_DROP),
        Parsed::Ip(packet) => verdict(&packet, bytes),
    };
    count_reason(reason, bytes);
    Ok(action)
}

#[inline(always)]
fn verdict(packet: &IpPacket, bytes: u64) -> (Reason, u32) {
    let mut pass_reason = Reason::PREFILTER_PASS_NO_MATCH;
    if let Some(rule) = cidr_rule(packet) {
        count_rule(rule.rule_id, bytes);
        if rule.action == ACTION_DROP {
            return (Reason::PREFILTER_DROP_CIDR, xdp_action::XDP_DROP);
        }
        // An allow prefix only carves an exception out of a wider deny;
        // protocol rules still apply to the packet.
        pass_reason = Reason::PREFILTER_PASS_CIDR_ALLOW;
    }
    if let Some(rule) = proto_rule(packet) {
        count_rule(rule.rule_id, bytes);
        if rule.action == ACTION_DROP {
            return (Reason::PREFILTER_DROP_PROTO, xdp_action::XDP_DROP);
        }
        pass_reason = Reason::PREFILTER_PASS_PROTO_ALLOW;
    }
    (pass_reason, xdp_action::XDP_PASS)
}

#[inline(always)]
fn cidr_rule(packet: &IpPacket) -> Option<RuleValue> {
    let s = &packet.src;
    if packet.family == FAMILY_IPV4 {
        let key = Key::new(32, [s[0], s[1], s[2], s[3]]);
        PREFILTER_CIDR4.get(&key).copied()
    } else {
        let key = Key::new(128, packet.src);
        PREFILTER_CIDR6.get(&key).copied()
    }
}

/// The narrow rule (this ICMP type or destination port) first, then the
/// protocol-wide one.
#[inline(always)]
fn proto_rule(packet: &IpPacket) -> Option<RuleValue> {
    let mut key = ProtoKey {
        family: packet.family,
        protocol: packet.protocol,
        has_selector: 0,
        _pad: 0,
        selector: 0,
        _pad2: 0,
    };
    if packet.l4.has_selector {
        key.has_selector = 1;
        key.selector = packet.l4.selector;
        // SAFETY: a hash map value pointer is only read, right away.
        if let Some(rule) = unsafe { PREFILTER_PROTO.get(key) } {
            return Some(*rule);
        }
        key.has_selector = 0;
        key.selector = 0;
    }
    // SAFETY: as above.
    unsafe { PREFILTER_PROTO.get(key) }.copied()
}
