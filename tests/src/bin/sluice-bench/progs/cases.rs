//! The verdicts the `progs` group times, each with the map state that
//! produces it and what the program must do with it: return value, the one
//! reason counted per packet, the prefilter rule that matched, drop events.
//!
//! One datapath (the object built into this binary, maps pinned in a
//! directory of its own) serves every case; the phases switch the policy
//! configuration between them: prefilter rules, then enforcement off ("pass
//! without policy"), then enforcement on with endpoint A isolated both ways
//! and TCP 8080 allowed to and from the remote identity.

use std::net::Ipv4Addr;

use cni_agent::maps::prefilter::{Origin, PrefilterMaps};
use cni_agent::rules::RuleSpec;
use cni_ebpf_common::{
    maps::{PROG_FROM_POD, PROG_TO_POD, PROG_XDP_PREFILTER},
    policy::{
        PolicyKey, DIRECTION_EGRESS, DIRECTION_INGRESS, POLICY_CONFIG_F_ENFORCE,
        POLICY_F_EGRESS_ISOLATED, POLICY_F_INGRESS_ISOLATED, POLICY_F_PROGRAMMED,
    },
    Reason,
};
use ipnet::IpNet;
use tests::{
    datapath::Datapath,
    frames::{icmp_echo, tcp, Ipv4, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP},
};

use crate::{
    bpfrun::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS},
    xdp::rules,
};

/// The program a colleague adds for uplinks; timed when the object has it.
pub const PROG_FROM_UPLINK: &str = "from_uplink";

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
/// A local pod with eBPF host routing (the `from_uplink` redirect target).
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
/// A source no prefilter rule covers.
const CLEAN_SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const EP_A: u64 = 0xa11ce;
const EP_B: u64 = 0xb0b;
const ID_A: u32 = 256;
const ID_B: u32 = 257;
const ID_REMOTE: u32 = 300;
const ALLOWED_PORT: u16 = 8080;
const DENIED_PORT: u16 = 9999;
const BLOCKED_PORT: u16 = 23;

/// How a case is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One frame, one BPF_PROG_TEST_RUN with a large repeat count: the
    /// verdict of a steady flow, caches hot.
    Hot,
    /// Distinct frames, one run each (the first packet of a new flow
    /// cannot be repeated: its second run is a conntrack hit; a forwarded
    /// packet is rewritten in place).
    Single,
    /// Like Hot, in chunks small enough that the drop events of a chunk fit
    /// the ring buffer, drained between chunks: a full ring would make the
    /// later denials cheaper than any real one.
    Batched,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Hot => "hot, one frame repeated",
            Mode::Single => "distinct flows, one run each",
            Mode::Batched => "repeated in chunks, events drained",
        }
    }
}

/// Which policy configuration a case needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prefilter,
    NoPolicy,
    Policy,
}

pub struct Case {
    pub prog: &'static str,
    pub verdict: &'static str,
    pub phase: Phase,
    pub mode: Mode,
    /// Expected return value.
    pub retval: u32,
    /// The one reason counted per packet (`None`: nothing counted).
    pub reason: Option<Reason>,
    /// The prefilter rule that must count every packet.
    pub rule: Option<u32>,
    /// One drop event per packet.
    pub events: bool,
    /// The frame of flow number `n` (Hot and Batched use n = 0).
    pub frame: Box<dyn Fn(u16) -> Vec<u8>>,
    /// Run once before timing, outside the counts: the program and frame
    /// that create the conntrack entry an established case needs.
    pub prep: Option<(&'static str, Vec<u8>)>,
}

fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    Ipv4::new(src, dst, IPPROTO_TCP).frame(&tcp(sport, dport))
}

/// Distinct source ports of new-flow frames.
pub const FLOW_PORTS: u16 = 60_000;

/// Source ports of distinct flows: 1024 + n, n below [`FLOW_PORTS`].
fn flow_port(n: u16) -> u16 {
    1024 + n % FLOW_PORTS
}

/// Installs the prefilter rules (the 1k CIDR deny set, ICMP, TCP port 23)
/// and the endpoints and identities; returns the ids of the covering CIDR
/// rule, the ICMP rule and the port rule.
pub fn install(dp: &Datapath, uplink: bool) -> anyhow::Result<(u32, u32, u32)> {
    let set = rules::many(1000);
    let mut maps = PrefilterMaps::open(dp.layout())?;
    for c in &set.cidrs {
        let spec = RuleSpec {
            cidr: Some(c.to_string()),
            ..Default::default()
        };
        maps.add(&spec.to_rule()?, Origin::Config)?;
    }
    let covering = set.covering().to_string();
    let id_of = |maps: &PrefilterMaps, spec: RuleSpec| -> anyhow::Result<u32> {
        let rule = spec.to_rule()?;
        maps.find(&rule.matcher)?
            .map(|r| r.id)
            .ok_or_else(|| anyhow::anyhow!("rule {rule} not installed"))
    };
    let icmp = RuleSpec {
        proto: Some("icmp".into()),
        ..Default::default()
    };
    let port = RuleSpec {
        proto: Some("tcp".into()),
        port: Some(BLOCKED_PORT),
        ..Default::default()
    };
    maps.add(&icmp.to_rule()?, Origin::Config)?;
    maps.add(&port.to_rule()?, Origin::Config)?;
    let ids = (
        id_of(
            &maps,
            RuleSpec {
                cidr: Some(covering),
                ..Default::default()
            },
        )?,
        id_of(&maps, icmp)?,
        id_of(&maps, port)?,
    );
    dp.add_endpoint(POD_A.into(), EP_A);
    dp.set_identity(IpNet::from(std::net::IpAddr::V4(POD_A)), ID_A);
    dp.set_identity(IpNet::from(std::net::IpAddr::V4(REMOTE)), ID_REMOTE);
    if uplink {
        dp.add_endpoint_with_flags(
            POD_B.into(),
            EP_B,
            cni_ebpf_common::endpoint::ENDPOINT_F_HOST_ROUTING,
        );
        dp.set_identity(IpNet::from(std::net::IpAddr::V4(POD_B)), ID_B);
    }
    Ok(ids)
}

/// Puts the maps in the configuration of `phase`.
pub fn enter(dp: &Datapath, phase: Phase) {
    match phase {
        Phase::Prefilter => {}
        Phase::NoPolicy => dp.set_policy_config(0, 1),
        Phase::Policy => {
            dp.set_policy_config(POLICY_CONFIG_F_ENFORCE, 1);
            dp.set_policy_state(
                EP_A,
                POLICY_F_PROGRAMMED | POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED,
            );
            for direction in [DIRECTION_EGRESS, DIRECTION_INGRESS] {
                dp.allow(PolicyKey {
                    endpoint_id: EP_A,
                    identity: ID_REMOTE,
                    direction,
                    protocol: IPPROTO_TCP,
                    port: ALLOWED_PORT,
                });
            }
        }
    }
}

/// Every case, in phase order. `uplink`: the object has `from_uplink`.
pub fn all(ids: (u32, u32, u32), uplink: bool) -> Vec<Case> {
    let (cidr_rule, icmp_rule, port_rule) = ids;
    let covered = rules::many(1000).covered;
    let xdp = |verdict, retval, reason, rule, frame: Vec<u8>| Case {
        prog: PROG_XDP_PREFILTER,
        verdict,
        phase: Phase::Prefilter,
        mode: Mode::Hot,
        retval,
        reason: Some(reason),
        rule,
        events: false,
        frame: Box::new(move |_| frame.clone()),
        prep: None,
    };
    let mut cases = vec![
        xdp(
            "pass (no rule matches)",
            XDP_PASS,
            Reason::PREFILTER_PASS_NO_MATCH,
            None,
            tcp4(CLEAN_SRC, NODE, 40_000, 80),
        ),
        xdp(
            "drop by CIDR (1k CIDRs)",
            XDP_DROP,
            Reason::PREFILTER_DROP_CIDR,
            Some(cidr_rule),
            tcp4(covered, NODE, 40_000, 80),
        ),
        xdp(
            "drop by ICMP rule",
            XDP_DROP,
            Reason::PREFILTER_DROP_PROTO,
            Some(icmp_rule),
            Ipv4::new(CLEAN_SRC, NODE, IPPROTO_ICMP).frame(&icmp_echo(ICMP_ECHO_REQUEST)),
        ),
        xdp(
            "drop by port (tcp/23)",
            XDP_DROP,
            Reason::PREFILTER_DROP_PROTO,
            Some(port_rule),
            tcp4(CLEAN_SRC, NODE, 40_000, BLOCKED_PORT),
        ),
    ];
    let tc =
        |prog, verdict, phase, mode, retval, reason: Reason, frame: Box<dyn Fn(u16) -> Vec<u8>>| {
            Case {
                prog,
                verdict,
                phase,
                mode,
                retval,
                reason: Some(reason),
                rule: None,
                events: reason.is_drop(),
                frame,
                prep: None,
            }
        };
    let out = tcp4(POD_A, REMOTE, 30_000, ALLOWED_PORT);
    let reply = tcp4(REMOTE, POD_A, ALLOWED_PORT, 30_000);
    cases.extend([
        tc(
            PROG_FROM_POD,
            "pass without policy (enforcement off)",
            Phase::NoPolicy,
            Mode::Hot,
            TC_ACT_UNSPEC,
            Reason::FROM_POD_PASS,
            Box::new(move |_| tcp4(POD_A, REMOTE, 30_000, ALLOWED_PORT)),
        ),
        tc(
            PROG_TO_POD,
            "pass without policy (enforcement off)",
            Phase::NoPolicy,
            Mode::Hot,
            TC_ACT_UNSPEC,
            Reason::TO_POD_PASS,
            Box::new(move |_| tcp4(REMOTE, POD_A, ALLOWED_PORT, 30_000)),
        ),
        Case {
            prep: Some((PROG_FROM_POD, out.clone())),
            ..tc(
                PROG_FROM_POD,
                "pass established (conntrack hit)",
                Phase::Policy,
                Mode::Hot,
                TC_ACT_UNSPEC,
                Reason::FROM_POD_PASS_CT,
                Box::new(move |_| out.clone()),
            )
        },
        Case {
            prep: Some((PROG_FROM_POD, tcp4(POD_A, REMOTE, 30_000, ALLOWED_PORT))),
            ..tc(
                PROG_TO_POD,
                "pass established (reply, conntrack hit)",
                Phase::Policy,
                Mode::Hot,
                TC_ACT_UNSPEC,
                Reason::TO_POD_PASS_CT,
                Box::new(move |_| reply.clone()),
            )
        },
        tc(
            PROG_FROM_POD,
            "new flow allowed (egress policy)",
            Phase::Policy,
            Mode::Single,
            TC_ACT_UNSPEC,
            Reason::FROM_POD_PASS_POLICY,
            Box::new(|n| tcp4(POD_A, REMOTE, flow_port(n), ALLOWED_PORT)),
        ),
        tc(
            PROG_TO_POD,
            "new flow allowed (ingress policy)",
            Phase::Policy,
            Mode::Single,
            TC_ACT_UNSPEC,
            Reason::TO_POD_PASS_POLICY,
            Box::new(|n| tcp4(REMOTE, POD_A, flow_port(n), ALLOWED_PORT)),
        ),
        tc(
            PROG_FROM_POD,
            "denied (egress policy)",
            Phase::Policy,
            Mode::Batched,
            TC_ACT_SHOT,
            Reason::FROM_POD_DROP_EGRESS_POLICY,
            Box::new(|_| tcp4(POD_A, REMOTE, 30_001, DENIED_PORT)),
        ),
        tc(
            PROG_TO_POD,
            "denied (ingress policy)",
            Phase::Policy,
            Mode::Batched,
            TC_ACT_SHOT,
            Reason::TO_POD_DROP_INGRESS_POLICY,
            Box::new(|_| tcp4(REMOTE, POD_A, 30_001, DENIED_PORT)),
        ),
    ]);
    if uplink {
        // The uplink's stack sees unicast frames to its own MAC; under
        // BPF_PROG_TEST_RUN the device is loopback, whose MAC is all zeroes.
        let to_host = |mut frame: Vec<u8>| {
            frame[..6].fill(0);
            frame
        };
        cases.extend([
            Case {
                reason: None,
                ..tc(
                    PROG_FROM_UPLINK,
                    "pass to the stack (not for a local pod)",
                    Phase::Policy,
                    Mode::Hot,
                    TC_ACT_UNSPEC,
                    Reason::FORWARD_UPLINK_TO_POD,
                    Box::new(move |_| to_host(tcp4(REMOTE, NODE, 40_000, 80))),
                )
            },
            tc(
                PROG_FROM_UPLINK,
                "redirect to a local pod (host routing)",
                Phase::Policy,
                Mode::Single,
                TC_ACT_REDIRECT,
                Reason::FORWARD_UPLINK_TO_POD,
                Box::new(move |n| to_host(tcp4(REMOTE, POD_B, flow_port(n), 80))),
            ),
        ]);
    }
    cases
}
