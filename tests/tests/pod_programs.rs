//! The tc programs of pod veths, `from_pod` and `to_pod`, run with
//! BPF_PROG_TEST_RUN on crafted frames: every frame is passed on (TCX_NEXT)
//! and counted under exactly one reason of its direction, with skb->len
//! bytes. `from_pod` passes IP from a known endpoint address (the
//! `ENDPOINTS` map) as FROM_POD_PASS and anything else as
//! FROM_POD_UNKNOWN_SOURCE.
//!
//! Needs root and bpffs. Each test loads the datapath with its maps pinned
//! in its own `/sys/fs/bpf/sluice-test-<hex>` and removes it on drop, panic
//! or not. Run serially: `cargo test -p tests --test pod_programs --
//! --test-threads=1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::ProgramError;
use cni_ebpf_common::{
    maps::{PROG_FROM_POD, PROG_TO_POD},
    Reason,
};
use tests::{
    datapath::{delta, Datapath as Loaded, Reasons, TCX_NEXT},
    frames::*,
};

/// One side of a pod veth: its program and its reason codes.
#[derive(Clone, Copy, Debug)]
struct Direction {
    prog: &'static str,
    pass: Reason,
    not_ip: Reason,
    malformed: Reason,
}

const FROM_POD: Direction = Direction {
    prog: PROG_FROM_POD,
    pass: Reason::FROM_POD_PASS,
    not_ip: Reason::FROM_POD_PASS_NOT_IP,
    malformed: Reason::FROM_POD_MALFORMED,
};

const TO_POD: Direction = Direction {
    prog: PROG_TO_POD,
    pass: Reason::TO_POD_PASS,
    not_ip: Reason::TO_POD_PASS_NOT_IP,
    malformed: Reason::TO_POD_MALFORMED,
};

const BOTH: [Direction; 2] = [FROM_POD, TO_POD];

/// The shared datapath harness (tests/src/datapath.rs), seen by direction.
struct Datapath(Loaded);

impl Datapath {
    fn new() -> Self {
        Self(Loaded::load())
    }

    /// Registers `addr` as a local pod's address, as the plugin does on ADD.
    fn add_endpoint(&self, addr: IpAddr) {
        self.0.add_endpoint(addr, 0x5eed);
    }

    /// Forgets `addr`, as the plugin does on DEL.
    fn remove_endpoint(&self, addr: IpAddr) {
        self.0.remove_endpoint(addr);
    }

    fn reasons(&self) -> Reasons {
        self.0.reasons()
    }

    /// Runs `dir`'s program on `frame` `repeat` times: its return value, or
    /// the kernel's refusal to run it.
    fn try_run(&self, dir: Direction, frame: &[u8], repeat: u32) -> Result<u32, ProgramError> {
        self.0
            .try_run(dir.prog, frame, repeat)
            .map(|r| r.return_value)
    }

    /// Runs `frame` through `dir` once and asserts TCX_NEXT and that
    /// exactly `reason` counted one packet of `frame.len()` bytes.
    #[track_caller]
    fn expect(&self, what: &str, dir: Direction, frame: &[u8], reason: Reason) {
        let before = self.reasons();
        let action = self
            .try_run(dir, frame, 1)
            .unwrap_or_else(|e| panic!("{what}: {} test_run failed: {e:?}", dir.prog));
        assert_eq!(action, TCX_NEXT, "{what}: {} returns TCX_NEXT", dir.prog);
        let expected = Reasons::from([(reason.0, (1, frame.len() as u64))]);
        assert_eq!(
            delta(&before, &self.reasons()),
            expected,
            "{what}: {} counts {reason:?} ({})",
            dir.prog,
            reason.name().unwrap_or("?"),
        );
    }
}

const POD4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 5);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 7);

fn tcp4() -> Vec<u8> {
    Ipv4::new(POD4, PEER4, IPPROTO_TCP).frame(&tcp(40000, 8080))
}

fn tcp6() -> Vec<u8> {
    Ipv6::new(POD6, PEER6, IPPROTO_TCP).frame(&tcp(40000, 8080))
}

#[test]
fn ip_traffic_is_passed_and_counted_in_both_directions() {
    let dp = Datapath::new();
    dp.add_endpoint(POD4.into());
    dp.add_endpoint(POD6.into());
    for dir in BOTH {
        dp.expect("IPv4 TCP", dir, &tcp4(), dir.pass);
        dp.expect("IPv6 TCP", dir, &tcp6(), dir.pass);
        let udp4 = Ipv4::new(POD4, PEER4, IPPROTO_UDP).frame(&udp(5353, 53, b"query"));
        dp.expect("IPv4 UDP", dir, &udp4, dir.pass);
        let echo4 = Ipv4::new(POD4, PEER4, IPPROTO_ICMP).frame(&icmp_echo(ICMP_ECHO_REQUEST));
        dp.expect("ICMP echo", dir, &echo4, dir.pass);
        let echo6 = Ipv6::new(POD6, PEER6, IPPROTO_ICMPV6)
            .ext(&[ExtHeader::HopByHop(4)])
            .frame(&icmpv6_echo(ICMPV6_ECHO_REQUEST));
        dp.expect("ICMPv6 echo behind hop-by-hop", dir, &echo6, dir.pass);
        // Neighbour discovery is link plumbing, counted apart (like ARP).
        let ns = Ipv6::new(POD6, PEER6, IPPROTO_ICMPV6)
            .ext(&[ExtHeader::HopByHop(4)])
            .frame(&neighbour_solicitation(PEER6));
        let nd = if dir.prog == PROG_FROM_POD {
            Reason::FROM_POD_PASS_NEIGHBOR_DISCOVERY
        } else {
            Reason::TO_POD_PASS_NEIGHBOR_DISCOVERY
        };
        dp.expect(
            "ICMPv6 neighbour solicitation behind hop-by-hop",
            dir,
            &ns,
            nd,
        );
        let tagged = vlan_ethernet(
            &[(ETH_P_8021Q, 100)],
            ETH_P_IP,
            &Ipv4::new(POD4, PEER4, IPPROTO_TCP).packet(&tcp(1, 2)),
        );
        dp.expect("802.1Q IPv4", dir, &tagged, dir.pass);
        let later = Ipv4::new(POD4, PEER4, IPPROTO_TCP)
            .fragment(100, false)
            .frame(&[0; 2]);
        dp.expect("IPv4 later fragment", dir, &later, dir.pass);
    }
}

#[test]
fn non_ip_frames_are_passed_as_not_ip() {
    let dp = Datapath::new();
    for dir in BOTH {
        dp.expect("ARP", dir, &arp_request(POD4, PEER4), dir.not_ip);
        dp.expect(
            "LLDP",
            dir,
            &ethernet(ETH_P_LLDP, &[0x02, 0x07, 0x04]),
            dir.not_ip,
        );
        dp.expect(
            "ARP ethertype alone",
            dir,
            &ethernet(ETH_P_ARP, &[]),
            dir.not_ip,
        );
        let tags = [(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)];
        let three_tags = vlan_ethernet(&tags, ETH_P_IP, &tcp4()[ETH_HLEN..]);
        dp.expect("three VLAN tags", dir, &three_tags, dir.not_ip);
    }
}

#[test]
fn malformed_frames_are_counted_and_still_passed() {
    let dp = Datapath::new();
    for dir in BOTH {
        let ihl4 = Ipv4::new(POD4, PEER4, IPPROTO_TCP).ihl(4).frame(&tcp(1, 2));
        dp.expect("IPv4 IHL 4", dir, &ihl4, dir.malformed);
        let ihl15 = Ipv4::new(POD4, PEER4, IPPROTO_TCP)
            .ihl(15)
            .frame(&tcp(1, 2)[..8]);
        dp.expect("IPv4 IHL 15 in 28 bytes", dir, &ihl15, dir.malformed);
        let short_icmp = Ipv4::new(POD4, PEER4, IPPROTO_ICMP).frame(&[ICMP_ECHO_REQUEST, 0, 0]);
        dp.expect("ICMP of 3 bytes", dir, &short_icmp, dir.malformed);
        let ext = Ipv6::new(POD6, PEER6, IPPROTO_TCP)
            .ext(&[ExtHeader::DestOpts(12)])
            .frame(&tcp(1, 2));
        dp.expect(
            "IPv6 cut in dstopts",
            dir,
            &ext[..ETH_HLEN + 40 + 9],
            dir.malformed,
        );
        // IP headers cut short behind a VLAN tag: the kernel's own length
        // check (see below) looks at the outer ethertype only, so these
        // reach the program on every kernel.
        let tagged =
            |ethertype, packet: &[u8]| vlan_ethernet(&[(ETH_P_8021Q, 7)], ethertype, packet);
        dp.expect(
            "802.1Q, no IPv4 header",
            dir,
            &tagged(ETH_P_IP, &[]),
            dir.malformed,
        );
        let v4_packet = &tcp4()[ETH_HLEN..];
        let cut4 = tagged(ETH_P_IP, &v4_packet[..12]);
        dp.expect("802.1Q, IPv4 header cut", dir, &cut4, dir.malformed);
        let v6_packet = &tcp6()[ETH_HLEN..];
        let cut6 = tagged(ETH_P_IPV6, &v6_packet[..30]);
        dp.expect("802.1Q, IPv6 header cut", dir, &cut6, dir.malformed);
        let cut_tag = ethernet(ETH_P_8021Q, &[0, 7]);
        dp.expect("802.1Q tag cut", dir, &cut_tag, dir.malformed);
    }
}

/// Asserts that `frame`, whose outer ethertype is IPv4 or IPv6 and whose
/// IP header is cut short, is either refused by the kernel with EINVAL or
/// run and counted as malformed. Kernels with upstream commit 12bec2bd4b76
/// ("bpf: reject short IPv4/IPv6 inputs in bpf_prog_test_run_skb", also in
/// stable; 6.18 here) refuse it before the program runs; older ones run it.
#[track_caller]
fn expect_refused_or_malformed(dp: &Datapath, what: &str, dir: Direction, frame: &[u8]) {
    let before = dp.reasons();
    match dp.try_run(dir, frame, 1) {
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            assert_eq!(
                delta(&before, &dp.reasons()),
                Reasons::new(),
                "{what}: never ran"
            );
        }
        Ok(action) => {
            assert_eq!(action, TCX_NEXT, "{what}: {} returns TCX_NEXT", dir.prog);
            let expected = Reasons::from([(dir.malformed.0, (1, frame.len() as u64))]);
            assert_eq!(delta(&before, &dp.reasons()), expected, "{what}: malformed");
        }
        Err(e) => panic!("{what}: {} test_run failed: {e:?}", dir.prog),
    }
}

#[test]
fn ip_ethertype_with_a_short_ip_header_is_refused_or_malformed() {
    let dp = Datapath::new();
    for dir in BOTH {
        expect_refused_or_malformed(&dp, "IPv4, no header", dir, &ethernet(ETH_P_IP, &[]));
        expect_refused_or_malformed(&dp, "IPv4 header cut", dir, &tcp4()[..ETH_HLEN + 19]);
        expect_refused_or_malformed(&dp, "IPv6, no header", dir, &ethernet(ETH_P_IPV6, &[]));
        expect_refused_or_malformed(&dp, "IPv6 header cut", dir, &tcp6()[..ETH_HLEN + 39]);
    }
}

#[test]
fn frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel() {
    // BPF_PROG_TEST_RUN for skb programs rejects data under ETH_HLEN with
    // EINVAL (net/bpf/test_run.c, bpf_test_init): the program never runs.
    let dp = Datapath::new();
    let before = dp.reasons();
    for dir in BOTH {
        for len in [0usize, 1, 10, 13] {
            let err = dp
                .try_run(dir, &tcp4()[..len], 1)
                .expect_err("a frame under 14 bytes");
            let ProgramError::SyscallError(e) = &err else {
                panic!("{} {len} bytes: expected EINVAL, got {err:?}", dir.prog);
            };
            assert_eq!(
                e.io_error.raw_os_error(),
                Some(libc::EINVAL),
                "{} {len} bytes: {err:#}",
                dir.prog
            );
        }
    }
    assert_eq!(
        delta(&before, &dp.reasons()),
        Reasons::new(),
        "the programs never ran"
    );
    // 14 bytes is the shortest frame the kernel runs them on.
    for dir in BOTH {
        dp.expect(
            "14-byte ARP frame",
            dir,
            &ethernet(ETH_P_ARP, &[]),
            dir.not_ip,
        );
    }
}

#[test]
fn counters_are_exact_per_direction_and_leave_the_prefilter_alone() {
    let dp = Datapath::new();
    dp.add_endpoint(POD4.into());
    dp.add_endpoint(POD6.into());
    let before = dp.reasons();
    let v4 = tcp4();
    // A full-size frame: bytes are skb->len, the whole frame.
    let big = Ipv6::new(POD6, PEER6, IPPROTO_UDP).frame(&udp(1, 2, &[0xab; 1452]));
    assert_eq!(big.len(), 1514);
    let arp = arp_request(POD4, PEER4);
    let bad = Ipv4::new(POD4, PEER4, IPPROTO_TCP).ihl(3).frame(&[]);
    const N: u64 = 6;
    for _ in 0..N {
        assert_eq!(dp.try_run(FROM_POD, &v4, 1).expect("from_pod"), TCX_NEXT);
    }
    // `repeat` runs the program that many times in one call.
    assert_eq!(dp.try_run(FROM_POD, &big, 4).expect("from_pod"), TCX_NEXT);
    assert_eq!(dp.try_run(TO_POD, &big, 3).expect("to_pod"), TCX_NEXT);
    assert_eq!(dp.try_run(TO_POD, &arp, 2).expect("to_pod"), TCX_NEXT);
    assert_eq!(dp.try_run(FROM_POD, &bad, 5).expect("from_pod"), TCX_NEXT);
    let (v4_len, big_len) = (v4.len() as u64, big.len() as u64);
    let expected = Reasons::from([
        (Reason::FROM_POD_PASS.0, (N + 4, N * v4_len + 4 * big_len)),
        (Reason::TO_POD_PASS.0, (3, 3 * big_len)),
        (Reason::TO_POD_PASS_NOT_IP.0, (2, 2 * arp.len() as u64)),
        (Reason::FROM_POD_MALFORMED.0, (5, 5 * bad.len() as u64)),
    ]);
    // Nothing else moved: in particular no prefilter reason.
    assert_eq!(delta(&before, &dp.reasons()), expected);
}

#[test]
fn from_pod_counts_sources_that_are_no_endpoint() {
    let dp = Datapath::new();
    let unknown = Reason::FROM_POD_UNKNOWN_SOURCE;
    // No endpoint yet: the pod's own traffic is from an unknown source.
    dp.expect("IPv4, no endpoints", FROM_POD, &tcp4(), unknown);
    dp.expect("IPv6, no endpoints", FROM_POD, &tcp6(), unknown);
    dp.add_endpoint(POD4.into());
    dp.expect(
        "IPv4 from the endpoint",
        FROM_POD,
        &tcp4(),
        Reason::FROM_POD_PASS,
    );
    dp.expect("IPv6, only IPv4 known", FROM_POD, &tcp6(), unknown);
    dp.add_endpoint(POD6.into());
    dp.expect(
        "IPv6 from the endpoint",
        FROM_POD,
        &tcp6(),
        Reason::FROM_POD_PASS,
    );
    // A spoofed source: another address on the same subnet.
    let spoofed = Ipv4::new(Ipv4Addr::new(10, 244, 0, 6), PEER4, IPPROTO_TCP).frame(&tcp(1, 2));
    dp.expect("spoofed IPv4 source", FROM_POD, &spoofed, unknown);
    // The family is part of the key: an IPv6 source whose first four bytes
    // are the IPv4 endpoint's address is not that endpoint.
    let [a, b, c, d] = POD4.octets();
    let lookalike = Ipv6Addr::from([a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let frame = Ipv6::new(lookalike, PEER6, IPPROTO_TCP).frame(&tcp(1, 2));
    dp.expect(
        "IPv6 lookalike of the IPv4 endpoint",
        FROM_POD,
        &frame,
        unknown,
    );
    // The source is what counts, not the destination.
    let to_endpoint = Ipv4::new(PEER4, POD4, IPPROTO_TCP).frame(&tcp(1, 2));
    dp.expect("IPv4 to the endpoint", FROM_POD, &to_endpoint, unknown);
    // Non-IP and malformed frames have no source to check.
    dp.expect(
        "ARP",
        FROM_POD,
        &arp_request(PEER4, POD4),
        Reason::FROM_POD_PASS_NOT_IP,
    );
    let ihl4 = Ipv4::new(PEER4, POD4, IPPROTO_TCP).ihl(4).frame(&tcp(1, 2));
    dp.expect("IPv4 IHL 4", FROM_POD, &ihl4, Reason::FROM_POD_MALFORMED);
    // to_pod does not look at endpoints.
    dp.expect(
        "to_pod, spoofed source",
        TO_POD,
        &spoofed,
        Reason::TO_POD_PASS,
    );
    // After DEL the address is unknown again.
    dp.remove_endpoint(POD4.into());
    dp.expect("IPv4 after the endpoint left", FROM_POD, &tcp4(), unknown);
}
