//! eBPF host routing (routed mode, `"hostRouting": "ebpf"`, the default):
//! the real plugin and agent in a node namespace with an uplink to a peer
//! host (`TwoHosts`), pods in namespaces of their own. Proves the fast path
//! forwards correctly (TCP with content checks, UDP up to the MTU, ICMP,
//! IPv6, pods coming and going under traffic), that the counters show
//! which path each packet took, and that legacy pods live beside it.
//!
//! ```text
//!   pod a, b (ebpf)   pod c (legacy)
//!        \   |          /
//!         node netns --- eth0 (uplink, from_uplink) --- peer netns
//! ```

use std::{net::IpAddr, time::Duration};

use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::{json, Value};
use tests::{
    cni::{Chain, RuntimeConf},
    link,
    traffic::{self, UdpEchoServer},
    Agent, Netns, PingLoop, TcpEchoServer, TwoHosts,
};

const EBPF_V4: &str = "10.198.7.0/24";
const EBPF_V6: &str = "fd00:198:7::/64";
const LEGACY_V4: &str = "10.198.8.0/24";
const TIMEOUT: Duration = Duration::from_secs(5);
/// The veth MTU: the node's uplink is a veth (1500).
const MTU: usize = 1500;

/// A pod: its namespace, the network it is on, its addresses.
struct Pod {
    ns: Netns,
    rt: RuntimeConf,
    v4: IpAddr,
    v6: Option<IpAddr>,
    result: Value,
}

/// The node with its agent, and the two networks.
struct Node {
    world: TwoHosts,
    /// Kept running for the test's length (killed on drop).
    _agent: Agent,
    ebpf: Chain,
    legacy: Chain,
}

fn sluice_conf(node: &TwoHosts, agent: &Agent, routing: &str, ranges: Value) -> Value {
    json!({
        "type": "sluice",
        "bpffsDir": node.bpffs.path(),
        "stateDir": agent.default_state_dir(),
        "agentSocket": agent.default_api_socket(),
        "waitForPolicy": false,
        "hostRouting": routing,
        "ipam": {
            "type": "sluice-ipam",
            "ranges": ranges,
            "dataDir": node.scratch().join(format!("ipam-{routing}")),
        }
    })
}

impl Node {
    fn new() -> anyhow::Result<Self> {
        let world = TwoHosts::new()?;
        let agent = world.start_agent(&[])?;
        let ebpf = Chain::new(
            "hr-ebpf",
            "1.0.0",
            vec![sluice_conf(
                &world,
                &agent,
                "ebpf",
                json!([[{"subnet": EBPF_V4}], [{"subnet": EBPF_V6}]]),
            )],
        );
        let legacy = Chain::new(
            "hr-legacy",
            "1.0.0",
            vec![sluice_conf(
                &world,
                &agent,
                "legacy",
                json!([[{"subnet": LEGACY_V4}]]),
            )],
        );
        // The peer reaches the pod networks through the node.
        for (dst, via) in [
            (EBPF_V4, world.node_v4),
            (LEGACY_V4, world.node_v4),
            (EBPF_V6, world.node_v6),
        ] {
            link::add_route(&world.peer, dst.parse()?, via)?;
        }
        Ok(Self {
            world,
            _agent: agent,
            ebpf,
            legacy,
        })
    }

    fn add(&self, chain: &Chain, name: &str) -> anyhow::Result<Pod> {
        let ns = Netns::new()?;
        let rt = RuntimeConf::new(&ns, "eth0", name);
        let result = chain
            .add_result(&self.world.node, &rt)
            .with_context(|| format!("ADD of pod {name}"))?;
        let addr = |v6: bool| -> Option<IpAddr> {
            result["ips"].as_array()?.iter().find_map(|ip| {
                let net: IpNet = ip["address"].as_str()?.parse().ok()?;
                (net.addr().is_ipv6() == v6).then(|| net.addr())
            })
        };
        Ok(Pod {
            v4: addr(false).context("no IPv4 address in the result")?,
            v6: addr(true),
            ns,
            rt,
            result,
        })
    }

    fn del(&self, chain: &Chain, pod: &Pod) -> anyhow::Result<()> {
        chain
            .del(&self.world.node, &pod.rt, Some(&pod.result))
            .map(|_| ())
    }

    fn packets(&self, reason: &str) -> u64 {
        self.world
            .sluicectl()
            .reason_packets(reason)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// Pings `dst` from `ns` until one answer, within the timeout.
fn reachable(ns: &Netns, dst: IpAddr) -> bool {
    tests::wait_until(TIMEOUT, || {
        traffic::ping(ns, dst, 1, Duration::from_millis(300)).is_ok_and(|n| n == 1)
    })
}

/// TCP echo of `bytes` from `client` to a server in `server_ns` on `ip`;
/// the echo helper checks every byte.
fn tcp_echo(server_ns: &Netns, ip: IpAddr, client: &Netns, bytes: usize) {
    let server = TcpEchoServer::start(server_ns, ip).unwrap();
    let got = server
        .transfer(client, bytes, TIMEOUT)
        .unwrap_or_else(|e| panic!("TCP echo to {ip}: {e:#}"));
    assert_eq!(got, bytes);
}

/// UDP datagrams of every size up to a full MTU, each echoed intact.
fn udp_echo(server_ns: &Netns, ip: IpAddr, client: &Netns) {
    let headers = if ip.is_ipv4() { 28 } else { 48 };
    let sizes: Vec<usize> = [1, 64, 512, 1000, 1400, MTU - headers]
        .into_iter()
        .cycle()
        .take(30)
        .collect();
    let server = UdpEchoServer::start(server_ns, ip).unwrap();
    let intact = server.exchange(client, &sizes, TIMEOUT).unwrap();
    assert_eq!(
        intact,
        sizes.len(),
        "UDP echo with {ip}: {intact} of {} datagrams came back intact",
        sizes.len()
    );
}

#[test]
fn pod_to_pod_on_the_node_goes_straight_into_the_peer_namespace() {
    tests::require_root("host routing tests");
    let node = Node::new().unwrap();
    let a = node.add(&node.ebpf, "a").unwrap();
    let b = node.add(&node.ebpf, "b").unwrap();
    let b6 = b.v6.unwrap();

    let peer_before = node.packets("forward-redirect-peer");
    assert!(reachable(&a.ns, b.v4), "a cannot ping b ({})", b.v4);
    assert!(reachable(&b.ns, a.v4), "b cannot ping a ({})", a.v4);
    assert!(reachable(&a.ns, b6), "a cannot ping b over IPv6 ({b6})");

    // Between the pods, nothing passes through b's veth egress (to_pod):
    // every packet of the transfer, both ways, is redirected into the
    // peer namespace by from_pod.
    let to_pod_before = node.packets("to-pod-pass");
    tcp_echo(&b.ns, b.v4, &a.ns, 8 << 20);
    tcp_echo(&a.ns, a.v4, &b.ns, 1 << 20);
    assert_eq!(
        node.packets("to-pod-pass"),
        to_pod_before,
        "pod-to-pod TCP took the host stack to b's veth"
    );
    tcp_echo(&b.ns, b6, &a.ns, 4 << 20);
    udp_echo(&b.ns, b.v4, &a.ns);
    udp_echo(&b.ns, b6, &a.ns);
    let redirected = node.packets("forward-redirect-peer") - peer_before;
    assert!(
        redirected > 1000,
        "only {redirected} packets were redirected into the peer namespace"
    );
}

#[test]
fn a_packet_whose_ttl_expires_is_left_to_the_stack() {
    tests::require_root("host routing tests");
    let node = Node::new().unwrap();
    let a = node.add(&node.ebpf, "a").unwrap();
    let b = node.add(&node.ebpf, "b").unwrap();
    assert!(reachable(&a.ns, b.v4));
    let server = UdpEchoServer::start(&b.ns, b.v4).unwrap();
    let target = server.addr().unwrap();
    let ttl_before = node.packets("forward-stack-ttl");
    // TTL 1 from a: the node must not forward it (the stack answers with
    // time-exceeded), so b never sees it.
    let echoed =
        a.ns.run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_ttl(1)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.send_to(b"ttl", target)?;
            let mut buf = [0u8; 16];
            Ok(s.recv_from(&mut buf).is_ok())
        })
        .unwrap();
    assert!(!echoed, "a TTL-1 datagram was forwarded to b");
    assert_eq!(node.packets("forward-stack-ttl"), ttl_before + 1);
    // The socket itself is fine: with the default TTL it is echoed.
    udp_echo(&b.ns, b.v4, &a.ns);
}

#[test]
fn pods_reach_the_outside_through_the_fib_and_are_reached_from_the_uplink() {
    tests::require_root("host routing tests");
    let node = Node::new().unwrap();
    let a = node.add(&node.ebpf, "a").unwrap();
    let a6 = a.v6.unwrap();
    let w = &node.world;

    let out_before = node.packets("forward-redirect-fib") + node.packets("forward-redirect-neigh");
    let in_before = node.packets("forward-uplink-to-pod");
    for dst in [w.peer_v4, w.peer_v6] {
        assert!(reachable(&a.ns, dst), "pod a cannot ping the peer {dst}");
    }
    for dst in [a.v4, a6] {
        assert!(reachable(&w.peer, dst), "the peer cannot ping pod a {dst}");
    }
    // Both directions, both families, with content checks.
    tcp_echo(&w.peer, w.peer_v4, &a.ns, 8 << 20);
    tcp_echo(&a.ns, a.v4, &w.peer, 8 << 20);
    tcp_echo(&w.peer, w.peer_v6, &a.ns, 2 << 20);
    tcp_echo(&a.ns, a6, &w.peer, 2 << 20);
    udp_echo(&w.peer, w.peer_v4, &a.ns);
    udp_echo(&a.ns, a6, &w.peer);

    let out =
        node.packets("forward-redirect-fib") + node.packets("forward-redirect-neigh") - out_before;
    let inbound = node.packets("forward-uplink-to-pod") - in_before;
    assert!(
        out > 1000,
        "only {out} packets left through the FIB redirect"
    );
    assert!(
        inbound > 1000,
        "only {inbound} packets were redirected from the uplink to the pod"
    );
    // The node's own traffic on the uplink is untouched by from_uplink.
    assert!(reachable(&w.peer, w.node_v4));
    tcp_echo(&w.node, w.node_v4, &w.peer, 1 << 20);
}

#[test]
fn legacy_pods_take_the_stack_and_reach_ebpf_pods() {
    tests::require_root("host routing tests");
    let node = Node::new().unwrap();
    let a = node.add(&node.ebpf, "a").unwrap();
    let c = node.add(&node.legacy, "c").unwrap();
    assert!(reachable(&a.ns, c.v4), "a cannot ping legacy c");
    assert!(reachable(&c.ns, a.v4), "legacy c cannot ping a");
    let to_pod_before = node.packets("to-pod-pass");
    tcp_echo(&c.ns, c.v4, &a.ns, 2 << 20);
    tcp_echo(&a.ns, a.v4, &c.ns, 2 << 20);
    // c's traffic is routed by the stack to a's veth, where to_pod sees it.
    assert!(node.packets("to-pod-pass") > to_pod_before);
    assert!(reachable(&node.world.peer, c.v4));
    tcp_echo(&c.ns, c.v4, &node.world.peer, 1 << 20);

    // CHECK holds for both networks (it compares the endpoint flags too).
    for (chain, pod) in [(&node.ebpf, &a), (&node.legacy, &c)] {
        chain
            .check(&node.world.node, &pod.rt, &pod.result)
            .unwrap_or_else(|e| panic!("CHECK: {e:#}"));
    }
}

#[test]
fn pods_come_and_go_while_traffic_flows() {
    tests::require_root("host routing tests");
    let node = Node::new().unwrap();
    let a = node.add(&node.ebpf, "a").unwrap();
    let b = node.add(&node.ebpf, "b").unwrap();
    assert!(reachable(&a.ns, b.v4));
    let server = TcpEchoServer::start(&b.ns, b.v4).unwrap();
    let mut conn = server.connect(&a.ns, TIMEOUT).unwrap();
    let pings = PingLoop::start(&a.ns, b.v4, Duration::from_millis(2)).unwrap();

    let mut churned = Vec::new();
    // At least four rounds, and long enough for a few hundred pings: with
    // fast ADDs four rounds alone take under 100 ms.
    let churn_started = std::time::Instant::now();
    let mut round = 0;
    while round < 4 || churn_started.elapsed() < Duration::from_millis(600) {
        let d = node.add(&node.ebpf, &format!("d{round}")).unwrap();
        assert!(
            reachable(&a.ns, d.v4),
            "new pod d{round} unreachable after ADD"
        );
        conn.exchange(64 << 10).unwrap();
        if round % 2 == 0 {
            node.del(&node.ebpf, &d).unwrap();
        } else {
            churned.push(d);
        }
        round += 1;
    }
    let stats = pings.stop().unwrap();
    conn.exchange(1 << 20).unwrap();
    assert!(stats.sent > 100, "{stats:?}");
    assert_eq!(
        stats.received, stats.sent,
        "pings between a and b were lost while other pods came and went"
    );
    for d in &churned {
        node.del(&node.ebpf, d).unwrap();
    }
}
