//! The XDP prefilter end to end: two "hosts" (namespaces) joined by a veth,
//! `sluice-agent` attaching the prefilter to the node's side, real pings
//! and TCP transfers from the peer, rules changed with `sluicectl`, and the
//! agent killed and restarted under traffic.
//!
//! Needs root and the binaries (`cargo build -p cni-agent`); run serially:
//! `cargo test -p tests --test prefilter_e2e -- --test-threads=1`.

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use cni_agent::maps::{counters::read_reasons, prefilter::PrefilterMaps};
use serde_json::Value;
use tests::{require_root, traffic::tcp_connect, wait_until, Sluicectl, TwoHosts};

/// Echo requests per ping check.
const N: usize = 10;
/// Bytes per TCP echo transfer.
const MIB: usize = 1 << 20;
/// Connect timeout for transfers expected to pass.
const CONNECT: Duration = Duration::from_secs(3);

const DROP_PROTO: &str = "prefilter-drop-proto";
const DROP_CIDR: &str = "prefilter-drop-cidr";
const PASS_CIDR_ALLOW: &str = "prefilter-pass-cidr-allow";

fn id_of(rule: &Value) -> u64 {
    rule["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("rule without an id: {rule}"))
}

/// The one installed rule, checked to be what `expect` describes.
fn only_rule(ctl: &Sluicectl) -> Value {
    let rules = ctl.filter_list().expect("filter list");
    assert_eq!(rules.len(), 1, "expected exactly one rule, got {rules:#?}");
    rules.into_iter().next().unwrap_or_default()
}

/// Checks a rule object is a whole-protocol ICMP (IPv4) drop rule from
/// `origin`.
fn assert_icmp_drop(rule: &Value, origin: &str) {
    assert_eq!(rule["action"], "drop", "{rule}");
    assert_eq!(rule["origin"], origin, "{rule}");
    let proto = &rule["match"]["proto"];
    assert!(
        proto["protocol"] == 1 || proto["protocol"] == "icmp",
        "not ICMP: {rule}"
    );
    assert!(
        proto.get("selector").is_none(),
        "not the whole protocol: {rule}"
    );
}

/// Reason counters read through the agent library, to cross-check the CLI.
fn library_reason(world: &TwoHosts, reason: &str) -> u64 {
    read_reasons(&world.bpffs.layout())
        .expect("read_reasons")
        .into_iter()
        .find(|r| r.reason == reason)
        .map(|r| r.packets)
        .unwrap_or_else(|| panic!("no reason {reason}"))
}

/// Rule counters read through the agent library.
fn library_rule(world: &TwoHosts, id: u64) -> u64 {
    PrefilterMaps::open(&world.bpffs.layout())
        .and_then(|maps| maps.list())
        .expect("listing rules")
        .into_iter()
        .find(|r| u64::from(r.id) == id)
        .map(|r| r.packets)
        .unwrap_or_else(|| panic!("no rule {id}"))
}

/// The proof, in one world: config rule drops ICMP while TCP
/// passes; counters exact; `filter del` lets ICMP through; a re-added rule
/// keeps dropping after SIGKILL of the agent; a restarted agent adopts the
/// pins with no window where ICMP passes; `--cleanup` leaves nothing.
#[test]
fn icmp_drop_survives_agent_kill_and_restart_then_cleanup_leaves_nothing() -> anyhow::Result<()> {
    require_root("prefilter_e2e");
    let started = Instant::now();
    let world = TwoHosts::new()?;
    let ctl = world.sluicectl();
    let node = world.node_v4;
    let server = world.echo_server(node)?;

    // Before any agent: everything passes, and a long-lived flow is opened.
    assert_eq!(world.ping_node(node, N)?, N, "ping before the agent");
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP before the agent")?;
    let mut flow = server.connect(&world.peer, CONNECT)?;
    flow.exchange(64 * 1024)
        .context("long-lived flow before the agent")?;
    assert!(!world.xdp_on_uplink()?, "XDP on eth0 before the agent");

    // The agent attaches the prefilter with `proto: icmp` from its file.
    let rules_file = world.write_file("prefilter.yaml", "rules:\n  - proto: icmp\n")?;
    let rules_arg = rules_file.to_str().context("utf-8 path")?;
    let mut agent = world.start_agent(&["--prefilter", rules_arg])?;
    assert!(
        world.xdp_on_uplink()?,
        "no XDP program on eth0 after the agent started"
    );
    let rule = only_rule(&ctl);
    assert_icmp_drop(&rule, "config");
    let id = id_of(&rule);
    assert_eq!(rule["packets"], 0, "{rule}");

    // While it is on: 0 of N replies, TCP passes, counters exactly N.
    assert_eq!(world.ping_node(node, N)?, 0, "ping while ICMP drop is on");
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP while ICMP drop is on")?;
    flow.exchange(64 * 1024)
        .context("long-lived flow while ICMP drop is on")?;
    assert_eq!(
        ctl.rule_packets(id)?,
        N as u64,
        "rule counter after {N} dropped requests"
    );
    assert_eq!(
        ctl.reason_packets(DROP_PROTO)?,
        N as u64,
        "{DROP_PROTO} after {N} drops"
    );
    assert_eq!(
        library_rule(&world, id),
        N as u64,
        "library view of the rule counter"
    );
    assert_eq!(
        library_reason(&world, DROP_PROTO),
        N as u64,
        "library view of {DROP_PROTO}"
    );
    let counters = ctl.counters()?;
    assert_eq!(
        counters["rules"].as_array().map(Vec::len),
        Some(1),
        "{counters}"
    );

    // `sluicectl filter del`: N of N, TCP still fine.
    ctl.filter_del(&["--proto", "icmp"])?;
    assert!(ctl.filter_list()?.is_empty(), "rules left after filter del");
    assert_eq!(world.ping_node(node, N)?, N, "ping after filter del");
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP after filter del")?;
    flow.exchange(64 * 1024)
        .context("long-lived flow after filter del")?;
    assert_eq!(
        ctl.reason_packets(DROP_PROTO)?,
        N as u64,
        "drops after filter del"
    );

    // Re-add at runtime, SIGKILL the agent: the pinned datapath keeps dropping.
    let readded = ctl.filter_add(&["--proto", "icmp"])?;
    assert_icmp_drop(&readded, "runtime");
    let id = id_of(&readded);
    let status = agent.sigkill()?;
    assert!(!status.success(), "SIGKILL ended the agent with {status}");
    assert!(world.xdp_on_uplink()?, "XDP gone with the agent");
    assert_eq!(world.ping_node(node, N)?, 0, "ping with the agent killed");
    assert_eq!(
        ctl.rule_packets(id)?,
        N as u64,
        "rule counter with the agent killed"
    );
    assert_eq!(ctl.reason_packets(DROP_PROTO)?, 2 * N as u64);
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP with the agent killed")?;

    // Restart under a ping loop: not one echo request may pass.
    let pings = world.ping_loop(node)?;
    std::thread::sleep(Duration::from_millis(200));
    let mut agent = world.start_agent(&["--prefilter", rules_arg])?;
    std::thread::sleep(Duration::from_millis(200));
    let window = pings.stop()?;
    eprintln!("restart window: {window:?}");
    assert!(
        window.sent >= 20,
        "the ping loop sent only {} requests",
        window.sent
    );
    assert_eq!(
        window.received, 0,
        "ICMP passed during the restart: {window:?}"
    );
    let log = agent.log();
    assert!(
        log.contains("Adopted"),
        "the restarted agent did not adopt the pins; log:\n{log}"
    );
    let expected = N as u64 + window.sent;
    wait_until(Duration::from_secs(2), || {
        ctl.rule_packets(id).is_ok_and(|p| p >= expected)
    });
    assert_eq!(
        ctl.rule_packets(id)?,
        expected,
        "every request in the window counted, once"
    );
    assert_eq!(ctl.reason_packets(DROP_PROTO)?, 2 * N as u64 + window.sent);
    // The file names the runtime rule's match, so the agent took it over
    // in place: same id, counter kept.
    let rule = only_rule(&ctl);
    assert_icmp_drop(&rule, "config");
    assert_eq!(id_of(&rule), id);
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP after the restart")?;
    flow.exchange(64 * 1024)
        .context("long-lived flow after the restart")?;

    // SIGTERM leaves the pins; `--cleanup` removes them and detaches XDP.
    agent.sigterm()?;
    assert_eq!(
        world.ping_node(node, N)?,
        0,
        "ping after SIGTERM (pins stay)"
    );
    world.bpffs.cleanup()?;
    assert!(
        !world.bpffs.path().exists(),
        "{} left by --cleanup",
        world.bpffs.path().display()
    );
    assert!(
        world.wait_xdp_detached(Duration::from_secs(2))?,
        "XDP still on eth0 2 s after --cleanup"
    );
    assert_eq!(world.ping_node(node, N)?, N, "ping after --cleanup");
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP after --cleanup")?;
    flow.exchange(64 * 1024)
        .context("long-lived flow after --cleanup")?;
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

/// An `icmpv6 echo-request` rule drops ping6 while TCP over IPv6 passes;
/// IPv4 ICMP is not touched.
#[test]
fn icmpv6_echo_request_rule_drops_ping6_not_tcp6() -> anyhow::Result<()> {
    require_root("prefilter_e2e");
    let world = TwoHosts::new()?;
    let ctl = world.sluicectl();
    let _agent = world.start_agent(&[])?;
    let server = world.echo_server(world.node_v6)?;
    assert!(ctl.filter_list()?.is_empty());
    assert_eq!(
        world.ping_node(world.node_v6, N)?,
        N,
        "ping6 before the rule"
    );

    let rule = ctl.filter_add(&["--proto", "icmpv6", "--icmp-type", "echo-request"])?;
    let id = id_of(&rule);
    assert_eq!(rule["action"], "drop", "{rule}");
    assert_eq!(world.ping_node(world.node_v6, N)?, 0, "ping6 with the rule");
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP over IPv6 with the rule")?;
    assert_eq!(
        world.ping_node(world.node_v4, N)?,
        N,
        "IPv4 ping with an ICMPv6 rule"
    );
    assert_eq!(ctl.rule_packets(id)?, N as u64);
    assert_eq!(ctl.reason_packets(DROP_PROTO)?, N as u64);

    ctl.filter_del(&[&id.to_string()])?;
    assert_eq!(
        world.ping_node(world.node_v6, N)?,
        N,
        "ping6 after filter del"
    );
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP over IPv6 after filter del")?;
    Ok(())
}

/// Denying the sender's /24 stops its TCP connects (SYN dropped: timeout);
/// a more specific allow /32 for the sender lets them through again.
#[test]
fn cidr_deny_blocks_tcp_until_a_more_specific_allow() -> anyhow::Result<()> {
    require_root("prefilter_e2e");
    let world = TwoHosts::new()?;
    let ctl = world.sluicectl();
    let _agent = world.start_agent(&[])?;
    let server = world.echo_server(world.node_v4)?;
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP before the deny")?;

    let net = world.net_v4.to_string();
    let deny = ctl.filter_add(&["--cidr", &net])?;
    assert_eq!(deny["action"], "drop", "{deny}");
    let deny_id = id_of(&deny);
    let before = ctl.rule_packets(deny_id)?;
    assert_eq!(
        world.ping_node(world.node_v4, N)?,
        0,
        "ping from a denied /24"
    );
    assert_eq!(
        ctl.rule_packets(deny_id)? - before,
        N as u64,
        "deny counter over the ping"
    );
    let err = tcp_connect(&world.peer, server.addr(), Duration::from_secs(1))
        .expect_err("TCP connect from a denied /24 succeeded");
    assert_eq!(
        err.kind(),
        ErrorKind::TimedOut,
        "connect failed, but not by timeout: {err}"
    );
    assert!(
        ctl.reason_packets(DROP_CIDR)? > N as u64,
        "SYNs not counted as {DROP_CIDR}"
    );

    let host = format!("{}/32", world.peer_v4);
    let allow = ctl.filter_add(&["--cidr", &host, "--action", "allow"])?;
    assert_eq!(allow["action"], "allow", "{allow}");
    server
        .transfer(&world.peer, MIB, CONNECT)
        .context("TCP with the /32 allowed")?;
    assert_eq!(
        world.ping_node(world.node_v4, N)?,
        N,
        "ping with the /32 allowed"
    );
    assert!(ctl.rule_packets(id_of(&allow))? > N as u64);
    assert!(ctl.reason_packets(PASS_CIDR_ALLOW)? > N as u64);
    assert_eq!(ctl.filter_list()?.len(), 2);
    Ok(())
}

/// The guards undo everything when a test panics mid-way with an agent
/// running: no namespace, no pins, no process left.
#[test]
fn guards_clean_up_when_a_test_panics() {
    require_root("prefilter_e2e");
    let seen = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(|| {
        let world = TwoHosts::new().expect("world");
        let agent = world.start_agent(&[]).expect("agent");
        *seen.lock().unwrap() = Some((
            [world.node.path().to_owned(), world.peer.path().to_owned()],
            world.bpffs.path().to_owned(),
            agent.pid(),
            world.scratch().to_owned(),
        ));
        assert!(world.bpffs.path().exists());
        panic!("deliberate failure with the agent up");
    });
    assert!(outcome.is_err());
    let (netns, pins, pid, scratch) = seen.lock().unwrap().take().expect("world was built");
    for path in netns {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    assert!(!alive, "sluice-agent pid {pid} still running");
}
