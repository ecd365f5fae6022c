//! Sluice's kernel programs. Entry points only: each one is a thin wrapper
//! that turns the result of its `try_` function into a verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bpf {
    mod counters;
    mod ct;
    mod forward;
    mod maps;
    mod parse;
    mod pod;
    mod policy;
    mod prefilter;

    use aya_ebpf::{
        bindings::{xdp_action, TC_ACT_UNSPEC},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    /// XDP on node uplinks (attached by the agent for each `--uplink`, pinned
    /// as `links/xdp-<ifname>`): line-rate drops before the stack.
    #[xdp]
    pub fn xdp_prefilter(ctx: XdpContext) -> u32 {
        // `try_prefilter` has no error path of its own: every outcome,
        // malformed frames included, is a counted verdict.
        prefilter::try_prefilter(&ctx).unwrap_or(xdp_action::XDP_PASS)
    }

    /// TCX ingress on the host side of a pod veth (attached by the plugin on
    /// ADD): sees every packet the pod sends.
    #[classifier]
    pub fn from_pod(ctx: TcContext) -> i32 {
        pod::try_from_pod(&ctx).unwrap_or(TC_ACT_UNSPEC)
    }

    /// TCX egress on the host side of a pod veth (attached by the plugin on
    /// ADD): sees every packet delivered to the pod.
    #[classifier]
    pub fn to_pod(ctx: TcContext) -> i32 {
        pod::try_to_pod(&ctx).unwrap_or(TC_ACT_UNSPEC)
    }

    /// TCX ingress on node uplinks (attached by the agent for each
    /// `--uplink`, pinned as `links/tcx-<ifname>-ingress`): eBPF host
    /// routing of traffic for local pods.
    #[classifier]
    pub fn from_uplink(ctx: TcContext) -> i32 {
        pod::try_from_uplink(&ctx).unwrap_or(TC_ACT_UNSPEC)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any reachable panic path; this is never run.
        loop {}
    }

    /// GPL-compatible, so the GPL-only helpers (redirect_peer, ring buffers)
    /// are available to later programs.
    #[link_section = "license"]
    #[used]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only so `cargo clippy --workspace` can see the crate;
    // the real object comes from `cni-agent/build.rs`.
}
