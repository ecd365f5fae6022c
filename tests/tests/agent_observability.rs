//! What an operator sees and relies on: the eBPF side's own log records in
//! the agent's log, Prometheus metrics that match the counters, and bad
//! input refused before anything changes.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use cni_agent::maps::{counters::read_reasons, prefilter::PrefilterMaps};
use tests::{require_root, wait_until, Agent, TwoHosts};

/// Sends one raw frame out of the peer's eth0 (AF_PACKET), so the node's
/// XDP program sees exactly these bytes.
fn send_raw_frame(world: &TwoHosts, frame: &[u8]) {
    world
        .peer
        .run(|| {
            let ifindex = tests::link::ifindex(&world.peer, "eth0")?;
            // SAFETY: plain socket(2); the fd is closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: zeroed sockaddr_ll filled in below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            // SAFETY: frame and addr are valid for the call.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            let err = std::io::Error::last_os_error();
            // SAFETY: we own fd.
            unsafe { libc::close(fd) };
            anyhow::ensure!(sent == frame.len() as isize, "sendto: {err}");
            Ok(())
        })
        .expect("sending a raw frame");
}

fn reason_packets(world: &TwoHosts, reason: &str) -> u64 {
    read_reasons(&world.bpffs.layout())
        .expect("reason counters")
        .into_iter()
        .find(|r| r.reason == reason)
        .map(|r| r.packets)
        .expect("known reason")
}

#[test]
fn ebpf_log_records_reach_the_agent_log() {
    require_root("ebpf_log_records_reach_the_agent_log");
    let world = TwoHosts::new().expect("world");
    let agent = world.start_agent(&["--log-level", "debug"]).expect("agent");
    let before = reason_packets(&world, "prefilter-drop-malformed");

    // An Ethernet header that announces IPv4, then 6 bytes: no room for an
    // IPv4 header. The prefilter drops it as malformed and logs it.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0, 0, 0, 0, 0]);
    send_raw_frame(&world, &frame);

    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log()
            .contains("prefilter: malformed frame of 20 bytes dropped")),
        "the eBPF log record did not reach the agent's log:\n{}",
        agent.log()
    );
    assert_eq!(
        reason_packets(&world, "prefilter-drop-malformed"),
        before + 1
    );
}

#[test]
fn ebpf_debug_records_are_not_written_at_info_level() {
    require_root("ebpf_debug_records_are_not_written_at_info_level");
    let world = TwoHosts::new().expect("world");
    let agent = world.start_agent(&[]).expect("agent");
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0, 0, 0, 0, 0]);
    let before = reason_packets(&world, "prefilter-drop-malformed");
    send_raw_frame(&world, &frame);
    assert!(wait_until(Duration::from_secs(5), || reason_packets(
        &world,
        "prefilter-drop-malformed"
    ) == before + 1));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!agent.log().contains("malformed frame"), "{}", agent.log());
}

fn scrape(world: &TwoHosts, addr: &str) -> String {
    let addr = addr.to_owned();
    world
        .node
        .run(move || {
            let mut stream = TcpStream::connect(&addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .expect("scraping metrics")
}

#[test]
fn metrics_match_the_counters() {
    require_root("metrics_match_the_counters");
    let world = TwoHosts::new().expect("world");
    let rules = world
        .write_file("prefilter.yaml", "rules:\n  - proto: icmp\n")
        .unwrap();
    // The metrics address is loopback inside the test's own namespace.
    let addr = "127.0.0.1:9962";
    let _agent = world
        .start_agent(&[
            "--prefilter",
            rules.to_str().unwrap(),
            "--metrics-addr",
            addr,
        ])
        .expect("agent");
    assert_eq!(world.ping_node(world.node_v4, 4).unwrap(), 0);

    let response = scrape(&world, addr);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let dropped = reason_packets(&world, "prefilter-drop-proto");
    assert_eq!(dropped, 4);
    assert!(
        response.contains(&format!(
            "sluice_verdict_packets_total{{reason=\"prefilter-drop-proto\",code=\"10\",verdict=\"drop\"}} {dropped}\n"
        )),
        "{response}"
    );
    assert!(
        response.contains("sluice_prefilter_rules 1\n"),
        "{response}"
    );
    assert!(
        response.contains("sluice_prefilter_uplinks 1\n"),
        "{response}"
    );
    let rule = &PrefilterMaps::open(&world.bpffs.layout())
        .unwrap()
        .list()
        .unwrap()[0];
    assert!(
        response.contains(&format!(
            "sluice_prefilter_rule_packets_total{{id=\"{}\",rule=\"drop icmp\"}} 4\n",
            rule.id
        )),
        "{response}"
    );
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    require_root("bad_input_is_refused_before_anything_changes");
    let world = TwoHosts::new().expect("world");

    // Nothing pinned yet: a bad rules file or a missing uplink creates nothing.
    let bad = world
        .write_file(
            "bad.yaml",
            "rules:\n  - proto: icmp\n  - cidr: 10.0.0.300/8\n",
        )
        .unwrap();
    let mut agent = Agent::spawn(
        &world.node,
        &world.bpffs,
        &["--uplink", "eth0", "--prefilter", bad.to_str().unwrap()],
    )
    .unwrap();
    assert!(!agent.wait().unwrap().success());
    let log = agent.log();
    assert!(
        log.contains("rule 2") && log.contains("10.0.0.300/8"),
        "{log}"
    );
    assert!(
        !world.bpffs.path().exists(),
        "a refused start created {}",
        world.bpffs.path().display()
    );
    let mut agent = Agent::spawn(&world.node, &world.bpffs, &["--uplink", "nosuch0"]).unwrap();
    assert!(!agent.wait().unwrap().success());
    assert!(agent.log().contains("nosuch0"), "{}", agent.log());
    assert!(!world.bpffs.path().exists());

    // With a running datapath: a restart with bad input changes nothing, and
    // filtering goes on.
    let good = world
        .write_file("good.yaml", "rules:\n  - proto: icmp\n")
        .unwrap();
    let mut first = world
        .start_agent(&["--prefilter", good.to_str().unwrap()])
        .unwrap();
    let rules_before = PrefilterMaps::open(&world.bpffs.layout())
        .unwrap()
        .list()
        .unwrap();
    first.sigterm().unwrap();
    let mut agent = Agent::spawn(
        &world.node,
        &world.bpffs,
        &["--uplink", "eth0", "--prefilter", bad.to_str().unwrap()],
    )
    .unwrap();
    assert!(!agent.wait().unwrap().success());
    let rules_after = PrefilterMaps::open(&world.bpffs.layout())
        .unwrap()
        .list()
        .unwrap();
    assert_eq!(
        rules_before
            .iter()
            .map(|r| (r.id, r.rule.clone()))
            .collect::<Vec<_>>(),
        rules_after
            .iter()
            .map(|r| (r.id, r.rule.clone()))
            .collect::<Vec<_>>()
    );
    assert!(world.xdp_on_uplink().unwrap());
    assert_eq!(
        world.ping_node(world.node_v4, 3).unwrap(),
        0,
        "ICMP drop stopped after a refused restart"
    );
}
