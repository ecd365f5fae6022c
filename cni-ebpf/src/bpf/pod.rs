//! The tc programs on pod veths. For now they parse, count and pass; policy
//! enforcement builds on the same parse.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use cni_ebpf_common::Reason;

use super::{
    counters::count_reason,
    parse::{parse_frame, Parsed},
};

/// Which side of the veth a program sits on; picks the reason codes.
struct Direction {
    pass: Reason,
    not_ip: Reason,
    malformed: Reason,
}

const FROM_POD: Direction = Direction {
    pass: Reason::FROM_POD_PASS,
    not_ip: Reason::FROM_POD_PASS_NOT_IP,
    malformed: Reason::FROM_POD_MALFORMED,
};

const TO_POD: Direction = Direction {
    pass: Reason::TO_POD_PASS,
    not_ip: Reason::TO_POD_PASS_NOT_IP,
    malformed: Reason::TO_POD_MALFORMED,
};

pub fn try_from_pod(ctx: &TcContext) -> Result<i32, ()> {
    observe(ctx, &FROM_POD)
}

pub fn try_to_pod(ctx: &TcContext) -> Result<i32, ()> {
    observe(ctx, &TO_POD)
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: &Direction) -> Result<i32, ()> {
    // skb->len, not data_end - data: the linear part may hold only the
    // headers of a large GSO packet.
    let bytes = ctx.len() as u64;
    let reason = match parse_frame(ctx.data(), ctx.data_end()) {
        Parsed::Ip(_) => direction.pass,
        Parsed::NotIp => direction.not_ip,
        Parsed::Malformed => direction.malformed,
    };
    count_reason(reason, bytes);
    Ok(TC_ACT_OK)
}
