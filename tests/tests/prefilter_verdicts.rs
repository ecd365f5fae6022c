//! The XDP prefilter's verdict for every kind of frame, run with
//! BPF_PROG_TEST_RUN on crafted frames: protocol rules, CIDR rules (longest
//! prefix wins), truncated and malformed headers, VLAN tags, IPv4 options
//! and fragments, IPv6 extension headers, non-IP frames, a little fuzzing,
//! and exact counters.
//!
//! Needs root and bpffs. Each test loads the datapath with its maps pinned
//! in its own `/sys/fs/bpf/sluice-test-<hex>` and removes it on drop, panic
//! or not. Run serially: `cargo test -p tests --test prefilter_verdicts --
//! --test-threads=1`.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use cni_agent::{
    bpffs::PinLayout,
    maps::prefilter::{Origin, PrefilterMaps},
    rules::RuleSpec,
};
use cni_ebpf_common::{maps::PROG_XDP_PREFILTER, Reason};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use tests::{
    datapath::{delta, Datapath as Loaded, Reasons},
    frames::*,
};
use Reason as R;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The shared datapath harness (tests/src/datapath.rs), seen through the
/// prefilter's rules and program.
struct Datapath(Loaded);

impl Datapath {
    fn new() -> Self {
        Self(Loaded::load())
    }

    fn layout(&self) -> &PinLayout {
        self.0.layout()
    }

    /// Installs a rule; returns its id.
    fn add(&self, spec: RuleSpec) -> u32 {
        let rule = spec.to_rule().expect("valid rule");
        let mut maps = PrefilterMaps::open(self.layout()).expect("opening rule maps");
        maps.add(&rule, Origin::Runtime).expect("adding rule").id
    }

    fn delete(&self, id: u32) {
        let mut maps = PrefilterMaps::open(self.layout()).expect("opening rule maps");
        maps.delete(id).expect("deleting rule");
    }

    /// Packets and bytes of rule `id`.
    fn rule_counter(&self, id: u32) -> (u64, u64) {
        let maps = PrefilterMaps::open(self.layout()).expect("opening rule maps");
        let rule = maps
            .list()
            .expect("listing rules")
            .into_iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("rule {id} not installed"));
        (rule.packets, rule.bytes)
    }

    fn reasons(&self) -> Reasons {
        self.0.reasons()
    }

    /// Runs the prefilter once on `frame`: its return value, or the
    /// kernel's refusal to run it.
    fn try_xdp(&self, frame: &[u8], repeat: u32) -> Result<u32, ProgramError> {
        let prog: &Xdp = self
            .0
            .loaded
            .ebpf
            .program(PROG_XDP_PREFILTER)
            .expect("xdp_prefilter in the object")
            .try_into()
            .expect("xdp_prefilter is XDP");
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        prog.test_run(opts).map(|r| r.return_value)
    }

    /// Runs `frame` and returns the action and the one reason counted for
    /// it, checking that exactly one reason moved, by one packet of
    /// `frame.len()` bytes, and that drop reasons go with `XDP_DROP`.
    fn run(&self, frame: &[u8]) -> (u32, Reason) {
        let before = self.reasons();
        let action = self
            .try_xdp(frame, 1)
            .unwrap_or_else(|e| panic!("test_run on {} bytes failed: {e:#}", frame.len()));
        let moved = delta(&before, &self.reasons());
        assert_eq!(
            moved.len(),
            1,
            "exactly one reason per frame, got {moved:?} for {frame:02x?}"
        );
        let (&code, &counts) = moved.iter().next().expect("one reason");
        assert_eq!(
            counts,
            (1, frame.len() as u64),
            "reason {code} counts one packet of the frame's length"
        );
        let reason = Reason(code);
        let expected_action = if reason.is_drop() { XDP_DROP } else { XDP_PASS };
        assert_eq!(
            action, expected_action,
            "action agrees with reason {reason:?}"
        );
        (action, reason)
    }

    /// Asserts the verdict on `frame`.
    #[track_caller]
    fn expect(&self, what: &str, frame: &[u8], action: u32, reason: Reason) {
        let got = self.run(frame);
        assert_eq!(
            got,
            (action, reason),
            "{what}: expected {} {:?} ({}), got {} {:?} ({})",
            action_name(action),
            reason,
            reason.name().unwrap_or("?"),
            action_name(got.0),
            got.1,
            got.1.name().unwrap_or("?"),
        );
    }
}

fn action_name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "unexpected action",
    }
}

fn proto(name: &str) -> RuleSpec {
    RuleSpec {
        proto: Some(name.into()),
        ..Default::default()
    }
}

fn icmp_type(name: &str, icmp_type: &str, action: &str) -> RuleSpec {
    RuleSpec {
        proto: Some(name.into()),
        icmp_type: Some(icmp_type.into()),
        action: Some(action.into()),
        ..Default::default()
    }
}

fn port(name: &str, port: u16, family: Option<&str>) -> RuleSpec {
    RuleSpec {
        proto: Some(name.into()),
        port: Some(port),
        family: family.map(Into::into),
        ..Default::default()
    }
}

fn cidr(net: &str, action: &str) -> RuleSpec {
    RuleSpec {
        cidr: Some(net.into()),
        action: Some(action.into()),
        ..Default::default()
    }
}

const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

fn v4(src: Ipv4Addr, protocol: u8) -> Ipv4 {
    Ipv4::new(src, DST4, protocol)
}

fn v6(src: Ipv6Addr, protocol: u8) -> Ipv6 {
    Ipv6::new(src, DST6, protocol)
}

fn icmp4(src: Ipv4Addr, icmp_type: u8) -> Vec<u8> {
    v4(src, IPPROTO_ICMP).frame(&icmp_echo(icmp_type))
}

fn icmp6(src: Ipv6Addr, icmp_type: u8) -> Vec<u8> {
    v6(src, IPPROTO_ICMPV6).frame(&icmpv6_echo(icmp_type))
}

fn tcp4(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    v4(src, IPPROTO_TCP).frame(&tcp(40000, dport))
}

fn tcp6(src: Ipv6Addr, dport: u16) -> Vec<u8> {
    v6(src, IPPROTO_TCP).frame(&tcp(40000, dport))
}

fn addr4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 address")
}

fn addr6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

// ---------------------------------------------------------------- protocol

#[test]
fn icmp_echo_dropped_while_the_icmp_rule_is_installed_and_passed_after_delete() {
    let dp = Datapath::new();
    let echo = icmp4(SRC4, ICMP_ECHO_REQUEST);
    dp.expect("no rules", &echo, XDP_PASS, R::PREFILTER_PASS_NO_MATCH);
    let id = dp.add(proto("icmp"));
    dp.expect("icmp rule on", &echo, XDP_DROP, R::PREFILTER_DROP_PROTO);
    dp.expect(
        "echo reply, icmp rule on",
        &icmp4(SRC4, ICMP_ECHO_REPLY),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    // `icmp` is IPv4 only.
    dp.expect(
        "ICMPv6 echo, icmp rule on",
        &icmp6(SRC6, ICMPV6_ECHO_REQUEST),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    dp.delete(id);
    dp.expect(
        "icmp rule deleted",
        &echo,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn icmp_echo_request_rule_drops_type_8_and_passes_echo_reply() {
    let dp = Datapath::new();
    dp.add(icmp_type("icmp", "echo-request", "drop"));
    dp.expect(
        "echo request",
        &icmp4(SRC4, ICMP_ECHO_REQUEST),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    dp.expect(
        "echo reply",
        &icmp4(SRC4, ICMP_ECHO_REPLY),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // Type 3, code 4: fragmentation needed; path MTU discovery must live.
    let frag_needed = v4(SRC4, IPPROTO_ICMP).frame(&icmp(3, 4, &[0, 0, 0x05, 0xdc]));
    dp.expect(
        "destination unreachable",
        &frag_needed,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn narrow_icmp_allow_beats_protocol_wide_icmp_drop() {
    let dp = Datapath::new();
    let drop_all = dp.add(proto("icmp"));
    let allow_reply = dp.add(icmp_type("icmp", "echo-reply", "allow"));
    dp.expect(
        "echo reply",
        &icmp4(SRC4, ICMP_ECHO_REPLY),
        XDP_PASS,
        R::PREFILTER_PASS_PROTO_ALLOW,
    );
    dp.expect(
        "echo request",
        &icmp4(SRC4, ICMP_ECHO_REQUEST),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    let len = icmp4(SRC4, 0).len() as u64;
    assert_eq!(dp.rule_counter(allow_reply), (1, len));
    assert_eq!(dp.rule_counter(drop_all), (1, len));
}

#[test]
fn icmpv6_echo_request_rule_spares_neighbour_solicitation() {
    let dp = Datapath::new();
    dp.add(icmp_type("icmpv6", "echo-request", "drop"));
    dp.expect(
        "ICMPv6 echo request",
        &icmp6(SRC6, ICMPV6_ECHO_REQUEST),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    let ns = v6(SRC6, IPPROTO_ICMPV6).frame(&neighbour_solicitation(DST6));
    dp.expect(
        "neighbour solicitation",
        &ns,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    dp.expect(
        "ICMPv6 echo reply",
        &icmp6(SRC6, ICMPV6_ECHO_REPLY),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // ICMPv4 type 8 is another protocol.
    dp.expect(
        "ICMPv4 echo request",
        &icmp4(SRC4, ICMP_ECHO_REQUEST),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn tcp_udp_and_sctp_pass_when_only_icmp_rules_are_installed() {
    let dp = Datapath::new();
    dp.add(proto("icmp"));
    dp.add(proto("icmpv6"));
    let pass = R::PREFILTER_PASS_NO_MATCH;
    dp.expect("TCP v4", &tcp4(SRC4, 22), XDP_PASS, pass);
    dp.expect("TCP v6", &tcp6(SRC6, 22), XDP_PASS, pass);
    let udp4 = v4(SRC4, IPPROTO_UDP).frame(&udp(5353, 53, b"query"));
    dp.expect("UDP v4", &udp4, XDP_PASS, pass);
    let udp6 = v6(SRC6, IPPROTO_UDP).frame(&udp(5353, 53, b"query"));
    dp.expect("UDP v6", &udp6, XDP_PASS, pass);
    let sctp4 = v4(SRC4, IPPROTO_SCTP).frame(&sctp(3868, 3868));
    dp.expect("SCTP v4", &sctp4, XDP_PASS, pass);
    // An IP protocol without ports or types (GRE).
    let gre = v4(SRC4, 47).frame(&[0, 0, 0x08, 0x00]);
    dp.expect("GRE v4", &gre, XDP_PASS, pass);
}

#[test]
fn tcp_port_22_rule_drops_both_families_and_spares_other_ports_and_protocols() {
    let dp = Datapath::new();
    let id = dp.add(port("tcp", 22, None));
    dp.expect(
        "TCP v4 :22",
        &tcp4(SRC4, 22),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    dp.expect(
        "TCP v6 :22",
        &tcp6(SRC6, 22),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    dp.expect(
        "TCP v4 :80",
        &tcp4(SRC4, 80),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    dp.expect(
        "TCP v6 :80",
        &tcp6(SRC6, 80),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // Source port 22 is not destination port 22.
    let reply = v4(SRC4, IPPROTO_TCP).frame(&tcp(22, 40000));
    dp.expect(
        "TCP v4 from :22",
        &reply,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    let udp22 = v4(SRC4, IPPROTO_UDP).frame(&udp(40000, 22, b""));
    dp.expect("UDP v4 :22", &udp22, XDP_PASS, R::PREFILTER_PASS_NO_MATCH);
    // One rule, two map entries, one counter.
    let v4_len = tcp4(SRC4, 22).len() as u64;
    let v6_len = tcp6(SRC6, 22).len() as u64;
    assert_eq!(dp.rule_counter(id), (2, v4_len + v6_len));
}

#[test]
fn tcp_port_rule_for_ipv4_only_spares_ipv6() {
    let dp = Datapath::new();
    dp.add(port("tcp", 22, Some("ipv4")));
    dp.expect(
        "TCP v4 :22",
        &tcp4(SRC4, 22),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    dp.expect(
        "TCP v6 :22",
        &tcp6(SRC6, 22),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn udp_and_sctp_port_rules_read_their_destination_port() {
    let dp = Datapath::new();
    dp.add(port("udp", 53, None));
    dp.add(port("sctp", 3868, Some("ipv6")));
    let dns4 = v4(SRC4, IPPROTO_UDP).frame(&udp(5353, 53, b"query"));
    dp.expect("UDP v4 :53", &dns4, XDP_DROP, R::PREFILTER_DROP_PROTO);
    let dns6 = v6(SRC6, IPPROTO_UDP).frame(&udp(5353, 53, b"query"));
    dp.expect("UDP v6 :53", &dns6, XDP_DROP, R::PREFILTER_DROP_PROTO);
    let diameter6 = v6(SRC6, IPPROTO_SCTP).frame(&sctp(1, 3868));
    dp.expect(
        "SCTP v6 :3868",
        &diameter6,
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    let diameter4 = v4(SRC4, IPPROTO_SCTP).frame(&sctp(1, 3868));
    dp.expect(
        "SCTP v4 :3868",
        &diameter4,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

// -------------------------------------------------------------------- CIDR

#[test]
fn denied_ipv4_cidr_drops_its_sources_only() {
    let dp = Datapath::new();
    let id = dp.add(cidr("10.0.0.0/8", "drop"));
    let inside = tcp4(addr4("10.9.8.7"), 443);
    dp.expect("from 10.9.8.7", &inside, XDP_DROP, R::PREFILTER_DROP_CIDR);
    dp.expect(
        "ICMP from 10.0.0.1",
        &icmp4(addr4("10.0.0.1"), ICMP_ECHO_REQUEST),
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    dp.expect(
        "from 11.0.0.1",
        &tcp4(addr4("11.0.0.1"), 443),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // The destination does not count.
    let to_inside = Ipv4::new(SRC4, addr4("10.1.1.1"), IPPROTO_TCP).frame(&tcp(1, 443));
    dp.expect(
        "to 10.1.1.1",
        &to_inside,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // An IPv4 rule says nothing about IPv6.
    dp.expect(
        "IPv6",
        &tcp6(SRC6, 443),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    assert_eq!(dp.rule_counter(id).0, 2);
}

#[test]
fn denied_ipv6_cidr_drops_its_sources_only() {
    let dp = Datapath::new();
    dp.add(cidr("2001:db8::/32", "drop"));
    dp.expect(
        "from 2001:db8:ffff::1",
        &tcp6(addr6("2001:db8:ffff::1"), 443),
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    dp.expect(
        "from 2001:db9::1",
        &tcp6(addr6("2001:db9::1"), 443),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    let to_inside = Ipv6::new(SRC6, addr6("2001:db8::1"), IPPROTO_TCP).frame(&tcp(1, 443));
    dp.expect(
        "to 2001:db8::1",
        &to_inside,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    dp.expect(
        "IPv4",
        &tcp4(SRC4, 443),
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn most_specific_ipv4_prefix_wins() {
    let dp = Datapath::new();
    let deny8 = dp.add(cidr("10.0.0.0/8", "drop"));
    let allow16 = dp.add(cidr("10.1.0.0/16", "allow"));
    let a = tcp4(addr4("10.1.2.3"), 443);
    let b = tcp4(addr4("10.2.0.1"), 443);
    let c = tcp4(addr4("10.1.3.3"), 443);
    dp.expect(
        "10.1.2.3 in allowed /16",
        &a,
        XDP_PASS,
        R::PREFILTER_PASS_CIDR_ALLOW,
    );
    dp.expect(
        "10.2.0.1 in denied /8",
        &b,
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    let deny24 = dp.add(cidr("10.1.2.0/24", "drop"));
    dp.expect(
        "10.1.2.3 in denied /24",
        &a,
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    dp.expect(
        "10.1.3.3 in allowed /16",
        &c,
        XDP_PASS,
        R::PREFILTER_PASS_CIDR_ALLOW,
    );
    dp.expect(
        "10.2.0.1 in denied /8",
        &b,
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    // Each frame counted once, against the rule that decided.
    let len = a.len() as u64;
    assert_eq!(dp.rule_counter(deny8), (2, 2 * len));
    assert_eq!(dp.rule_counter(allow16), (2, 2 * len));
    assert_eq!(dp.rule_counter(deny24), (1, len));
}

#[test]
fn most_specific_ipv6_prefix_wins() {
    let dp = Datapath::new();
    let deny32 = dp.add(cidr("2001:db8::/32", "drop"));
    let allow48 = dp.add(cidr("2001:db8:1::/48", "allow"));
    let a = tcp6(addr6("2001:db8:1:2::3"), 443);
    let b = tcp6(addr6("2001:db8:2::1"), 443);
    let c = tcp6(addr6("2001:db8:1:3::3"), 443);
    dp.expect("in allowed /48", &a, XDP_PASS, R::PREFILTER_PASS_CIDR_ALLOW);
    dp.expect("in denied /32", &b, XDP_DROP, R::PREFILTER_DROP_CIDR);
    let deny64 = dp.add(cidr("2001:db8:1:2::/64", "drop"));
    dp.expect("in denied /64", &a, XDP_DROP, R::PREFILTER_DROP_CIDR);
    dp.expect("in allowed /48", &c, XDP_PASS, R::PREFILTER_PASS_CIDR_ALLOW);
    let len = a.len() as u64;
    assert_eq!(dp.rule_counter(deny32), (1, len));
    assert_eq!(dp.rule_counter(allow48), (2, 2 * len));
    assert_eq!(dp.rule_counter(deny64), (1, len));
}

#[test]
fn cidr_allowed_source_still_meets_protocol_rules() {
    let dp = Datapath::new();
    dp.add(cidr("10.0.0.0/8", "drop"));
    let allow = dp.add(cidr("10.1.0.0/16", "allow"));
    let icmp_rule = dp.add(proto("icmp"));
    let src = addr4("10.1.2.3");
    let echo = icmp4(src, ICMP_ECHO_REQUEST);
    dp.expect(
        "ICMP from allowed /16",
        &echo,
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    dp.expect(
        "TCP from allowed /16",
        &tcp4(src, 443),
        XDP_PASS,
        R::PREFILTER_PASS_CIDR_ALLOW,
    );
    // Both rules saw the ICMP frame; only the allow saw the TCP one.
    let (icmp_len, tcp_len) = (echo.len() as u64, tcp4(src, 443).len() as u64);
    assert_eq!(dp.rule_counter(allow), (2, icmp_len + tcp_len));
    assert_eq!(dp.rule_counter(icmp_rule), (1, icmp_len));

    // The same for IPv6, with a narrow allow rule winning in the end.
    dp.add(cidr("2001:db8::/32", "drop"));
    dp.add(cidr("2001:db8:1::/48", "allow"));
    dp.add(proto("icmpv6"));
    dp.add(icmp_type("icmpv6", "echo-reply", "allow"));
    let src6 = addr6("2001:db8:1::5");
    dp.expect(
        "ICMPv6 echo request from allowed /48",
        &icmp6(src6, ICMPV6_ECHO_REQUEST),
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    dp.expect(
        "ICMPv6 echo reply from allowed /48",
        &icmp6(src6, ICMPV6_ECHO_REPLY),
        XDP_PASS,
        R::PREFILTER_PASS_PROTO_ALLOW,
    );
}

#[test]
fn denied_cidr_wins_over_protocol_allow() {
    let dp = Datapath::new();
    dp.add(cidr("10.0.0.0/8", "drop"));
    let allow = dp.add(icmp_type("icmp", "echo-request", "allow"));
    dp.expect(
        "echo from denied /8",
        &icmp4(addr4("10.0.0.1"), ICMP_ECHO_REQUEST),
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    assert_eq!(dp.rule_counter(allow), (0, 0), "the CIDR decided first");
}

// ------------------------------------------------------ truncated, malformed

#[test]
fn frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel() {
    let dp = Datapath::new();
    let before = dp.reasons();
    for len in [0usize, 1, 10, 13] {
        let frame = tcp4(SRC4, 22)[..len].to_vec();
        let err = dp.try_xdp(&frame, 1).expect_err("a frame under 14 bytes");
        let ProgramError::SyscallError(e) = &err else {
            panic!("{len} bytes: expected EINVAL from BPF_PROG_TEST_RUN, got {err:?}");
        };
        assert_eq!(
            e.io_error.raw_os_error(),
            Some(libc::EINVAL),
            "{len} bytes: {err:#}"
        );
    }
    assert_eq!(
        delta(&before, &dp.reasons()),
        Reasons::new(),
        "the program never ran"
    );
    // 14 bytes is the shortest frame the kernel runs the program on.
    dp.expect(
        "14-byte IPv4 frame",
        &tcp4(SRC4, 22)[..14],
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
}

#[test]
fn ethernet_header_alone_is_malformed_for_ip_and_fine_otherwise() {
    let dp = Datapath::new();
    let malformed = R::PREFILTER_DROP_MALFORMED;
    dp.expect(
        "IPv4, no header",
        &ethernet(ETH_P_IP, &[]),
        XDP_DROP,
        malformed,
    );
    dp.expect(
        "IPv6, no header",
        &ethernet(ETH_P_IPV6, &[]),
        XDP_DROP,
        malformed,
    );
    dp.expect(
        "802.1Q tag cut short",
        &ethernet(ETH_P_8021Q, &[0x00, 0x64]),
        XDP_DROP,
        malformed,
    );
    dp.expect(
        "ARP ethertype, no body",
        &ethernet(ETH_P_ARP, &[]),
        XDP_PASS,
        R::PREFILTER_PASS_NOT_IP,
    );
    // IPv4 cut at 19 of 20 header bytes, and IPv6 at 39 of 40.
    let mut v4 = tcp4(SRC4, 22);
    v4.truncate(ETH_HLEN + 19);
    dp.expect("IPv4 header cut short", &v4, XDP_DROP, malformed);
    let mut v6 = tcp6(SRC6, 22);
    v6.truncate(ETH_HLEN + 39);
    dp.expect("IPv6 header cut short", &v6, XDP_DROP, malformed);
}

#[test]
fn ip_version_must_match_the_ethertype() {
    let dp = Datapath::new();
    let v6_in_v4 = ethernet(ETH_P_IP, &v6(SRC6, IPPROTO_TCP).packet(&tcp(1, 22)));
    dp.expect(
        "IPv6 under 0x0800",
        &v6_in_v4,
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
    let v4_in_v6 = ethernet(ETH_P_IPV6, &v4(SRC4, IPPROTO_TCP).packet(&[0; 40]));
    dp.expect(
        "IPv4 under 0x86dd",
        &v4_in_v6,
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
}

#[test]
fn ipv4_ihl_below_5_is_malformed() {
    let dp = Datapath::new();
    for ihl in [0, 1, 4] {
        let frame = v4(SRC4, IPPROTO_TCP).ihl(ihl).frame(&tcp(1, 22));
        dp.expect(
            &format!("IHL {ihl}"),
            &frame,
            XDP_DROP,
            R::PREFILTER_DROP_MALFORMED,
        );
    }
}

#[test]
fn ipv4_header_longer_than_the_frame_is_malformed() {
    let dp = Datapath::new();
    // IHL 15 promises 60 header bytes; the frame has 20 + 8.
    let frame = v4(SRC4, IPPROTO_UDP).ihl(15).frame(&udp(1, 53, b""));
    assert_eq!(frame.len(), ETH_HLEN + 28);
    dp.expect(
        "IHL 15 in 28 bytes",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
    // IHL 6 with the option word missing.
    let frame = v4(SRC4, IPPROTO_ICMP).ihl(6).frame(&[]);
    dp.expect(
        "IHL 6 in 20 bytes",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
}

#[test]
fn ipv4_options_are_skipped_to_reach_the_ports() {
    let dp = Datapath::new();
    dp.add(port("tcp", 22, None));
    // Router alert (4 bytes): IHL 6.
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let frame = v4(SRC4, IPPROTO_TCP)
        .options(&router_alert)
        .frame(&tcp(40000, 22));
    assert_eq!(frame[ETH_HLEN], 0x46);
    dp.expect("IHL 6, :22", &frame, XDP_DROP, R::PREFILTER_DROP_PROTO);
    let frame = v4(SRC4, IPPROTO_TCP)
        .options(&router_alert)
        .frame(&tcp(22, 80));
    dp.expect(
        "IHL 6, :80 from :22",
        &frame,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // The longest header: IHL 15, 40 bytes of options (NOPs).
    let frame = v4(SRC4, IPPROTO_TCP)
        .options(&[1; 40])
        .frame(&tcp(40000, 22));
    assert_eq!(frame[ETH_HLEN], 0x4f);
    dp.expect("IHL 15, :22", &frame, XDP_DROP, R::PREFILTER_DROP_PROTO);
    // Options present, TCP header missing: the ports are not there.
    let frame = v4(SRC4, IPPROTO_TCP).options(&router_alert).frame(&[]);
    dp.expect(
        "IHL 6, no TCP",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
}

#[test]
fn vlan_tagged_icmp_meets_the_icmp_rule() {
    let dp = Datapath::new();
    dp.add(proto("icmp"));
    dp.add(proto("icmpv6"));
    let packet = v4(SRC4, IPPROTO_ICMP).packet(&icmp_echo(ICMP_ECHO_REQUEST));
    let packet6 = v6(SRC6, IPPROTO_ICMPV6).packet(&icmpv6_echo(ICMPV6_ECHO_REQUEST));
    let drop = R::PREFILTER_DROP_PROTO;
    let one_tag = vlan_ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IP, &packet);
    dp.expect("802.1Q", &one_tag, XDP_DROP, drop);
    let qinq = vlan_ethernet(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 100)], ETH_P_IP, &packet);
    dp.expect("802.1ad + 802.1Q", &qinq, XDP_DROP, drop);
    let ad = vlan_ethernet(&[(ETH_P_8021AD, 10)], ETH_P_IPV6, &packet6);
    dp.expect("802.1ad, IPv6", &ad, XDP_DROP, drop);
    let qq = vlan_ethernet(&[(ETH_P_8021Q, 1), (ETH_P_8021Q, 2)], ETH_P_IPV6, &packet6);
    dp.expect("802.1Q + 802.1Q, IPv6", &qq, XDP_DROP, drop);
    // The tags shift the IP header; the ports still read right.
    let tcp_tagged = vlan_ethernet(
        &[(ETH_P_8021Q, 100)],
        ETH_P_IP,
        &v4(SRC4, IPPROTO_TCP).packet(&tcp(1, 22)),
    );
    dp.expect(
        "802.1Q TCP",
        &tcp_tagged,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // A tagged frame cut inside the IPv4 header.
    let mut cut = qinq.clone();
    cut.truncate(ETH_HLEN + 8 + 10);
    dp.expect(
        "Q-in-Q, IPv4 cut",
        &cut,
        XDP_DROP,
        R::PREFILTER_DROP_MALFORMED,
    );
}

#[test]
fn three_vlan_tags_are_not_parsed_as_ip() {
    // parse.rs stops after two tags (MAX_VLAN_TAGS): the third TPID is the
    // "ethertype", which is not IP.
    let dp = Datapath::new();
    dp.add(proto("icmp"));
    dp.add(cidr("0.0.0.0/0", "drop"));
    let packet = v4(SRC4, IPPROTO_ICMP).packet(&icmp_echo(ICMP_ECHO_REQUEST));
    let tags = [(ETH_P_8021AD, 10), (ETH_P_8021Q, 100), (ETH_P_8021Q, 200)];
    let frame = vlan_ethernet(&tags, ETH_P_IP, &packet);
    dp.expect("three tags", &frame, XDP_PASS, R::PREFILTER_PASS_NOT_IP);
}

#[test]
fn ipv4_later_fragment_has_no_port_but_meets_cidr_and_protocol_wide_rules() {
    let dp = Datapath::new();
    let port22 = dp.add(port("tcp", 22, None));
    // A later fragment whose first payload bytes look like ports 40000 -> 22.
    let later = v4(SRC4, IPPROTO_TCP)
        .fragment(185, false)
        .frame(&tcp(40000, 22));
    dp.expect(
        "later fragment",
        &later,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    // Even one too short to hold ports is not malformed: it has none.
    let short = v4(SRC4, IPPROTO_TCP).fragment(1, false).frame(&[0, 22]);
    dp.expect(
        "short later fragment",
        &short,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    assert_eq!(dp.rule_counter(port22), (0, 0));
    // The first fragment (offset 0, more fragments) carries the ports.
    let first = v4(SRC4, IPPROTO_TCP)
        .fragment(0, true)
        .frame(&tcp(40000, 22));
    dp.expect("first fragment", &first, XDP_DROP, R::PREFILTER_DROP_PROTO);

    dp.add(cidr("192.0.2.0/24", "drop"));
    dp.expect(
        "later fragment, denied source",
        &later,
        XDP_DROP,
        R::PREFILTER_DROP_CIDR,
    );
    let other_src = v4(addr4("203.0.113.9"), IPPROTO_TCP)
        .fragment(185, false)
        .frame(&[0; 16]);
    dp.add(proto("tcp"));
    dp.expect(
        "later fragment, protocol-wide tcp rule",
        &other_src,
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_l4_header() {
    let dp = Datapath::new();
    dp.add(icmp_type("icmpv6", "echo-request", "drop"));
    dp.add(port("tcp", 22, None));
    let drop = R::PREFILTER_DROP_PROTO;
    let echo = icmpv6_echo(ICMPV6_ECHO_REQUEST);
    let hbh = v6(SRC6, IPPROTO_ICMPV6)
        .ext(&[ExtHeader::HopByHop(4)])
        .frame(&echo);
    dp.expect("hop-by-hop, ICMPv6 echo", &hbh, XDP_DROP, drop);
    // MLD report behind hop-by-hop (router alert) is not echo.
    let mld = v6(SRC6, IPPROTO_ICMPV6)
        .ext(&[ExtHeader::HopByHop(4)])
        .frame(&icmpv6(143, 0, &[0; 4]));
    dp.expect(
        "hop-by-hop, MLDv2",
        &mld,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    let four = [
        ExtHeader::HopByHop(4),
        ExtHeader::DestOpts(20),
        ExtHeader::Routing(2),
        ExtHeader::Fragment {
            offset: 0,
            more: true,
        },
    ];
    let frame = v6(SRC6, IPPROTO_TCP).ext(&four).frame(&tcp(40000, 22));
    dp.expect("four extension headers, TCP :22", &frame, XDP_DROP, drop);
    let ah = v6(SRC6, IPPROTO_TCP)
        .ext(&[ExtHeader::Ah(3)])
        .frame(&tcp(40000, 22));
    dp.expect("AH, TCP :22", &ah, XDP_DROP, drop);
    let frame = v6(SRC6, IPPROTO_TCP).ext(&four).frame(&tcp(40000, 80));
    dp.expect(
        "four extension headers, TCP :80",
        &frame,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn ipv6_fifth_extension_header_is_dropped() {
    // parse.rs walks at most MAX_IPV6_EXT_HEADERS = 4. Linux 6.18 delivers
    // this very chain (hop-by-hop, destination options, routing type 0 with
    // no segments left, atomic fragment, destination options) to a TCP
    // listener on port 22 (checked with a raw frame on lo), so passing it
    // would sidestep a `tcp port 22` rule: it is dropped with its own
    // reason, as Cilium does (DROP_INVALID_EXTHDR).
    let dp = Datapath::new();
    dp.add(port("tcp", 22, None));
    let five = [
        ExtHeader::HopByHop(4),
        ExtHeader::DestOpts(4),
        ExtHeader::Routing(0),
        ExtHeader::Fragment {
            offset: 0,
            more: false,
        },
        ExtHeader::DestOpts(4),
    ];
    let frame = v6(SRC6, IPPROTO_TCP).ext(&five).frame(&tcp(40000, 22));
    dp.expect(
        "five extension headers",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_IPV6_EXT_CHAIN,
    );
    // Four are walked: the same packet with one header less meets the rule.
    let frame = v6(SRC6, IPPROTO_TCP).ext(&five[..4]).frame(&tcp(40000, 22));
    dp.expect(
        "four extension headers",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    let frame = v6(SRC6, IPPROTO_TCP).ext(&five[..4]).frame(&tcp(40000, 80));
    dp.expect(
        "four extension headers, port 80",
        &frame,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn ipv6_later_fragment_has_no_port() {
    let dp = Datapath::new();
    dp.add(port("tcp", 22, None));
    let later = v6(SRC6, IPPROTO_TCP)
        .ext(&[ExtHeader::Fragment {
            offset: 100,
            more: false,
        }])
        .frame(&tcp(40000, 22));
    dp.expect(
        "later fragment",
        &later,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
    let first = v6(SRC6, IPPROTO_TCP)
        .ext(&[ExtHeader::Fragment {
            offset: 0,
            more: true,
        }])
        .frame(&tcp(40000, 22));
    dp.expect("first fragment", &first, XDP_DROP, R::PREFILTER_DROP_PROTO);
}

#[test]
fn ipv6_cut_inside_an_extension_header_is_malformed() {
    let dp = Datapath::new();
    let malformed = R::PREFILTER_DROP_MALFORMED;
    let echo = icmpv6_echo(ICMPV6_ECHO_REQUEST);
    // Hop-by-hop of 16 bytes, then ICMPv6.
    let full = v6(SRC6, IPPROTO_ICMPV6)
        .ext(&[ExtHeader::HopByHop(12)])
        .frame(&echo);
    let ext_start = ETH_HLEN + 40;
    dp.expect("whole frame", &full, XDP_PASS, R::PREFILTER_PASS_NO_MATCH);
    for cut in [1, 8, 15] {
        let frame = &full[..ext_start + cut];
        dp.expect(
            &format!("cut {cut} bytes into hop-by-hop"),
            frame,
            XDP_DROP,
            malformed,
        );
    }
    // Cut inside a fragment header (needs 4 bytes) and an AH.
    let frag = v6(SRC6, IPPROTO_TCP)
        .ext(&[ExtHeader::Fragment {
            offset: 0,
            more: true,
        }])
        .frame(&tcp(1, 22));
    dp.expect(
        "cut in fragment header",
        &frag[..ext_start + 3],
        XDP_DROP,
        malformed,
    );
    let ah = v6(SRC6, IPPROTO_TCP)
        .ext(&[ExtHeader::Ah(3)])
        .frame(&tcp(1, 22));
    dp.expect("cut in AH", &ah[..ext_start + 20], XDP_DROP, malformed);
    // Cut right after the extension header, before the ICMPv6 type.
    dp.expect(
        "cut after hop-by-hop",
        &full[..ext_start + 16],
        XDP_DROP,
        malformed,
    );
}

#[test]
fn l4_header_shorter_than_its_selector_is_malformed() {
    let dp = Datapath::new();
    dp.add(proto("icmp"));
    let malformed = R::PREFILTER_DROP_MALFORMED;
    for len in [0, 1, 3] {
        let frame = v4(SRC4, IPPROTO_ICMP).frame(&icmp_echo(ICMP_ECHO_REQUEST)[..len]);
        dp.expect(&format!("ICMP of {len} bytes"), &frame, XDP_DROP, malformed);
        let frame = v6(SRC6, IPPROTO_ICMPV6).frame(&icmpv6_echo(ICMPV6_ECHO_REQUEST)[..len]);
        dp.expect(
            &format!("ICMPv6 of {len} bytes"),
            &frame,
            XDP_DROP,
            malformed,
        );
        let frame = v4(SRC4, IPPROTO_TCP).frame(&tcp(1, 22)[..len]);
        dp.expect(&format!("TCP of {len} bytes"), &frame, XDP_DROP, malformed);
        let frame = v6(SRC6, IPPROTO_UDP).frame(&udp(1, 53, b"")[..len]);
        dp.expect(
            &format!("UDP v6 of {len} bytes"),
            &frame,
            XDP_DROP,
            malformed,
        );
        let frame = v4(SRC4, IPPROTO_SCTP).frame(&sctp(1, 9)[..len]);
        dp.expect(&format!("SCTP of {len} bytes"), &frame, XDP_DROP, malformed);
    }
    // Four bytes are enough for the ICMP type: the rule decides...
    let frame = v4(SRC4, IPPROTO_ICMP).frame(&icmp(3, 1, &[]));
    dp.expect(
        "ICMP unreachable of 4 bytes",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    // ...but an echo message carries its identifier (conntrack keys on it)
    // in bytes 4..8: shorter is malformed.
    let frame = v4(SRC4, IPPROTO_ICMP).frame(&icmp(ICMP_ECHO_REQUEST, 0, &[]));
    dp.expect("ICMP echo of 4 bytes", &frame, XDP_DROP, malformed);
    let frame = v4(SRC4, IPPROTO_ICMP).frame(&icmp_echo(ICMP_ECHO_REQUEST));
    dp.expect(
        "ICMP echo of 8 bytes",
        &frame,
        XDP_DROP,
        R::PREFILTER_DROP_PROTO,
    );
    let frame = v4(SRC4, IPPROTO_TCP).frame(&tcp(1, 22)[..4]);
    dp.expect(
        "TCP of 4 bytes",
        &frame,
        XDP_PASS,
        R::PREFILTER_PASS_NO_MATCH,
    );
}

#[test]
fn non_ip_frames_pass_as_not_ip() {
    let dp = Datapath::new();
    dp.add(proto("icmp"));
    dp.add(cidr("0.0.0.0/0", "drop"));
    dp.add(cidr("::/0", "drop"));
    let not_ip = R::PREFILTER_PASS_NOT_IP;
    dp.expect("ARP request", &arp_request(SRC4, DST4), XDP_PASS, not_ip);
    let tagged_arp = vlan_ethernet(
        &[(ETH_P_8021Q, 100)],
        ETH_P_ARP,
        &arp_request(SRC4, DST4)[14..],
    );
    dp.expect("tagged ARP", &tagged_arp, XDP_PASS, not_ip);
    dp.expect(
        "LLDP",
        &ethernet(ETH_P_LLDP, &[0x02, 0x07, 0x04]),
        XDP_PASS,
        not_ip,
    );
    // An 802.3 length field, not an ethertype.
    dp.expect(
        "802.3 LLC",
        &ethernet(0x0026, &[0x42, 0x42, 0x03]),
        XDP_PASS,
        not_ip,
    );
    // The CIDR rules are live: IP from anywhere is dropped.
    dp.expect("IPv4", &tcp4(SRC4, 80), XDP_DROP, R::PREFILTER_DROP_CIDR);
    dp.expect("IPv6", &tcp6(SRC6, 80), XDP_DROP, R::PREFILTER_DROP_CIDR);
}

// ----------------------------------------------------------------- fuzzing

/// A random frame of 14..200 bytes: random bytes under a plausible
/// ethertype, often with a plausible IP version, header length and protocol
/// so the parser gets past its first checks.
fn random_frame(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(ETH_HLEN..200);
    let mut frame = vec![0u8; len];
    rng.fill(&mut frame[..]);
    const ETHERTYPES: [u16; 6] = [
        ETH_P_IP,
        ETH_P_IPV6,
        ETH_P_8021Q,
        ETH_P_8021AD,
        ETH_P_ARP,
        0,
    ];
    let mut offset = 12;
    let mut ethertype = ETHERTYPES[rng.random_range(0..ETHERTYPES.len())];
    if ethertype == 0 {
        ethertype = rng.random();
    }
    // Up to three tags, so the tag limit is crossed now and then.
    while offset + 6 <= len && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        frame[offset..offset + 2].copy_from_slice(&ethertype.to_be_bytes());
        offset += 4;
        ethertype = ETHERTYPES[rng.random_range(0..ETHERTYPES.len() - 1)];
    }
    frame[offset..offset + 2].copy_from_slice(&ethertype.to_be_bytes());
    let l3 = offset + 2;
    const PROTOCOLS: [u8; 11] = [
        IPPROTO_ICMP,
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_SCTP,
        IPPROTO_ICMPV6,
        IPPROTO_HOPOPTS,
        IPPROTO_ROUTING,
        IPPROTO_FRAGMENT,
        IPPROTO_AH,
        IPPROTO_DSTOPTS,
        IPPROTO_NONE,
    ];
    let plausible = rng.random_bool(0.8);
    match ethertype {
        ETH_P_IP if plausible && l3 + 20 <= len => {
            frame[l3] = 0x40 | rng.random_range(4..16u8);
            if rng.random_bool(0.7) {
                frame[l3 + 6] &= 0xe0; // first fragment, mostly
                frame[l3 + 7] = 0;
            }
            frame[l3 + 9] = PROTOCOLS[rng.random_range(0..5)];
            // Sources in the test's denied /8, its allowed /16, and outside.
            frame[l3 + 12] = if rng.random_bool(0.6) { 10 } else { 192 };
            if rng.random_bool(0.5) {
                frame[l3 + 13] = 1;
            }
        }
        ETH_P_IPV6 if plausible && l3 + 40 <= len => {
            frame[l3] = 0x60 | (frame[l3] & 0x0f);
            frame[l3 + 6] = PROTOCOLS[rng.random_range(0..PROTOCOLS.len())];
            frame[l3 + 8..l3 + 12].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            // Chain some extension headers with small lengths.
            let mut at = l3 + 40;
            while at + 2 <= len && rng.random_bool(0.6) {
                frame[at] = PROTOCOLS[rng.random_range(0..PROTOCOLS.len())];
                frame[at + 1] = rng.random_range(0..3);
                at += (usize::from(frame[at + 1]) + 1) * 8;
            }
        }
        _ => {}
    }
    frame
}

#[test]
fn random_frames_always_get_a_verdict_and_exactly_one_reason() {
    let dp = Datapath::new();
    let rules = [
        dp.add(proto("icmp")),
        dp.add(icmp_type("icmpv6", "echo-request", "drop")),
        dp.add(port("tcp", 22, None)),
        dp.add(port("udp", 53, Some("ipv4"))),
        dp.add(cidr("10.0.0.0/8", "drop")),
        dp.add(cidr("10.1.0.0/16", "allow")),
        dp.add(cidr("2001:db8::/32", "drop")),
    ];
    let mut rng = StdRng::seed_from_u64(0x5175_1ce0);
    let before = dp.reasons();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut seen = BTreeMap::<u32, u64>::new();
    for _ in 0..2000 {
        let frame = random_frame(&mut rng);
        // `run` checks: the program ran, returned XDP_PASS or XDP_DROP in
        // agreement with its reason, and counted exactly one reason.
        let (_, reason) = dp.run(&frame);
        *seen.entry(reason.0).or_default() += 1;
        frames += 1;
        bytes += frame.len() as u64;
    }
    let moved = delta(&before, &dp.reasons());
    let total = moved
        .values()
        .fold((0, 0), |(p, b), &(dp_, db)| (p + dp_, b + db));
    assert_eq!(
        total,
        (frames, bytes),
        "reason deltas sum to the frames run"
    );
    eprintln!("verdicts over {frames} random frames: {seen:?}");
    // The generator reaches every prefilter verdict.
    for reason in [
        R::PREFILTER_PASS_NO_MATCH,
        R::PREFILTER_PASS_NOT_IP,
        R::PREFILTER_PASS_CIDR_ALLOW,
        R::PREFILTER_DROP_PROTO,
        R::PREFILTER_DROP_CIDR,
        R::PREFILTER_DROP_MALFORMED,
    ] {
        assert!(
            seen.contains_key(&reason.0),
            "no random frame got {reason:?}"
        );
    }
    let matched: u64 = rules.iter().map(|&id| dp.rule_counter(id).0).sum();
    assert!(matched > 0, "random frames matched some rules");
}

// ---------------------------------------------------------------- counters

#[test]
fn rule_and_reason_counters_count_exactly() {
    let dp = Datapath::new();
    let icmp_rule = dp.add(proto("icmp"));
    let ssh_rule = dp.add(port("tcp", 22, None));
    let echo = icmp4(SRC4, ICMP_ECHO_REQUEST);
    let web = tcp4(SRC4, 80);
    let before = dp.reasons();
    const N: u64 = 7;
    const M: u64 = 3;
    for _ in 0..N {
        assert_eq!(dp.try_xdp(&echo, 1).expect("test_run"), XDP_DROP);
    }
    for _ in 0..M {
        assert_eq!(dp.try_xdp(&web, 1).expect("test_run"), XDP_PASS);
    }
    let (echo_len, web_len) = (echo.len() as u64, web.len() as u64);
    assert_eq!(dp.rule_counter(icmp_rule), (N, N * echo_len));
    assert_eq!(
        dp.rule_counter(ssh_rule),
        (0, 0),
        "unmatched frames move no rule"
    );
    let expected = Reasons::from([
        (R::PREFILTER_DROP_PROTO.0, (N, N * echo_len)),
        (R::PREFILTER_PASS_NO_MATCH.0, (M, M * web_len)),
    ]);
    assert_eq!(delta(&before, &dp.reasons()), expected);

    // `repeat` runs the program that many times in one call.
    const REPEAT: u32 = 5;
    let ssh6 = tcp6(SRC6, 22);
    assert_eq!(dp.try_xdp(&ssh6, REPEAT).expect("test_run"), XDP_DROP);
    let r = u64::from(REPEAT);
    assert_eq!(dp.rule_counter(ssh_rule), (r, r * ssh6.len() as u64));
    assert_eq!(dp.rule_counter(icmp_rule), (N, N * echo_len));

    // A new rule starts from zero, even when it takes a deleted rule's id.
    dp.delete(icmp_rule);
    let again = dp.add(icmp_type("icmp", "echo-request", "drop"));
    assert_eq!(dp.rule_counter(again), (0, 0));
    assert_eq!(dp.try_xdp(&echo, 1).expect("test_run"), XDP_DROP);
    assert_eq!(dp.rule_counter(again), (1, echo_len));
}
