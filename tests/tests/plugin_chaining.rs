//! Sluice as the first plugin of a chain, followed by Debian's reference
//! `portmap`, `tuning` and `bandwidth`, run the way libcni runs a conflist
//! ([`tests::cni::Chain`]: ADD in order with each plugin's `prevResult` the
//! result before it, CHECK and DEL with the cached result, DEL in reverse,
//! `runtimeConfig.portMappings` and `runtimeConfig.bandwidth` from the
//! capabilities the plugins declare). The same chain with the reference
//! `bridge` first is the baseline: every check runs against both.
//!
//! ```text
//!   client netns                 node netns                          pod netns
//!   eth0 10.199.85.2    <- veth -> up0 10.199.85.1
//!        fd00:199::85:2                fd00:199::85:1
//!                                bridge cni-chain0 10.199.84.1    <- veth -> eth0 10.199.84.x
//!                                                  fd00:199::84:1             fd00:199::84:x
//! ```
//!
//! Dual stack, so portmap maps both families.
//!
//! Checked after ADD:
//! - portmap: the client connects to the node's 10.199.85.1:30080 and
//!   [fd00:199::85:1]:30080 and gets the banner of the server in the pod,
//!   which sees the client's own address (DNAT only); the pod reaches
//!   itself through the same IPv4 host port (hairpin: `hairpinMode` on the
//!   bridge port, portmap's SNAT); portmap's per-container DNAT chains are
//!   in iptables and ip6tables;
//! - tuning: the pod's eth0 has the configured MTU and MAC, the sysctl is
//!   set inside the pod, and the chain's result carries the new MAC;
//! - bandwidth: a `tbf` root qdisc on the host veth (the pod's ingress
//!   rate), which the traffic to the pod then passes, an `ingress` qdisc on
//!   it and an ifb device with a `tbf` (the egress rate), the ifb listed in
//!   the result;
//! - CHECK of every plugin of the chain succeeds, but portmap's, which in
//!   1.1.1 fails its IPv6 check both for an IPv4-only pod (it looks for an
//!   ip6tables chain it never made: containernetworking/plugins#819) and
//!   for a dual-stack one (it looks for the IPv4 rules in ip6tables); that
//!   one known failure is accepted, any other is not.
//!
//! After DEL: no iptables/ip6tables rule or chain names the container and
//! no per-container portmap chain is left, the ifb and the host veth are
//! gone (their qdiscs with them), tuning's saved state is gone, no IP
//! reservation, and for Sluice no state record, link pin or `ENDPOINTS`
//! entry; a second DEL (the pod netns gone, empty `CNI_NETNS`, as
//! containerd's second DEL) succeeds too.
//!
//! Egress shaping *in effect* (the pod's traffic actually passing the ifb's
//! `tbf`) is a test of its own, [`bandwidth_egress_shaping_applies`].

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tests::{
    cni::{self, BannerServer, Chain, RuntimeConf, SluiceNode},
    link::{self, VethEnd},
    require_root,
    runtime::{ipam_reservations, Sluice},
    Netns, TcpEchoServer,
};

const CONNECT: Duration = Duration::from_secs(3);
const BRIDGE: &str = "cni-chain0";
const NODE_UP: &str = "10.199.85.1";
const NODE_UP6: &str = "fd00:199::85:1";
const CLIENT: &str = "10.199.85.2";
const CLIENT6: &str = "fd00:199::85:2";
const HOST_PORT: u16 = 30080;
/// What tuning sets in the pod.
const POD_MTU: u64 = 1400;
const POD_MAC: &str = "0a:58:0a:c7:54:0a";
const SOMAXCONN: &str = "777";
/// The bandwidth limits (bits per second, bits), high enough that the
/// test's transfers are not slowed down noticeably.
const RATE: u64 = 200_000_000;
const BURST: u64 = 8_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a valid address")
}

/// The node, a client host on its uplink, and the chain with `first` (the
/// plugin under test) first.
struct World {
    first: &'static str,
    chain: Chain,
    client: Netns,
    node: SluiceNode,
}

impl World {
    /// Sluice (when first) attaches with TCX: bandwidth's egress shaping
    /// adds an `ingress` qdisc to the host veth, which cannot coexist with
    /// the `clsact` of the default `"tcAttach": "tc"`
    /// ([`default_tc_attach_and_bandwidth_egress_conflict_cleanly`]).
    fn new(first: &'static str) -> anyhow::Result<Self> {
        Self::with_tc_attach(first, "tcx")
    }

    fn with_tc_attach(first: &'static str, tc_attach: &str) -> anyhow::Result<Self> {
        let node = if first == "sluice" {
            SluiceNode::new()?
        } else {
            SluiceNode::without_agent()?
        };
        let client = Netns::new()?;
        link::connect(
            VethEnd {
                ns: &node.node,
                ifname: "up0",
                addrs: &[
                    format!("{NODE_UP}/24").parse()?,
                    format!("{NODE_UP6}/112").parse()?,
                ],
            },
            VethEnd {
                ns: &client,
                ifname: "eth0",
                addrs: &[
                    format!("{CLIENT}/24").parse()?,
                    format!("{CLIENT6}/112").parse()?,
                ],
            },
        )?;
        // The client reaches the pods through the node (for the shaping
        // test's transfers from the pod).
        cni::run_in(
            &client,
            "ip",
            &["route", "add", "10.199.84.0/24", "via", NODE_UP],
        )?;
        cni::run_in(
            &client,
            "ip",
            &["-6", "route", "add", "fd00:199::84:0/112", "via", NODE_UP6],
        )?;
        let mut first_conf = json!({
            "type": first,
            "bridge": BRIDGE,
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [
                    [{ "subnet": "10.199.84.0/24" }],
                    [{ "subnet": "fd00:199::84:0/112" }],
                ],
                "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }],
                "dataDir": node.path("ipam"),
            },
        });
        node.sluice_keys(&mut first_conf);
        if first == "sluice" {
            first_conf["tcAttach"] = tc_attach.into();
        }
        let chain = Chain::new(
            "chain",
            "1.0.0",
            vec![
                first_conf,
                json!({
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    "snat": true,
                }),
                json!({
                    "type": "tuning",
                    "mtu": POD_MTU,
                    "mac": POD_MAC,
                    "sysctl": { "net.core.somaxconn": SOMAXCONN },
                    "dataDir": node.path("tuning"),
                }),
                json!({
                    "type": "bandwidth",
                    "capabilities": { "bandwidth": true },
                }),
            ],
        );
        Ok(Self {
            first,
            chain,
            client,
            node,
        })
    }

    /// A pod's runtime config with a port mapping to `container_port` and
    /// the bandwidth limits.
    fn runtime_conf(&self, pod: &Netns, container_port: u16) -> RuntimeConf {
        let mut rt = RuntimeConf::new(pod, "eth0", "web-0");
        rt.capability_args.insert(
            "portMappings".into(),
            json!([{
                "hostPort": HOST_PORT,
                "containerPort": container_port,
                "protocol": "tcp",
            }]),
        );
        rt.capability_args.insert(
            "bandwidth".into(),
            json!({
                "ingressRate": RATE,
                "ingressBurst": BURST,
                "egressRate": RATE,
                "egressBurst": BURST,
            }),
        );
        rt
    }
}

/// The pod's addresses in a result.
fn pod_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// The interfaces of a result without a sandbox, but the bridge: the host
/// veth and bandwidth's ifb.
fn host_interfaces(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i.get("sandbox").is_none_or(|s| s == ""))
        .filter_map(|i| i["name"].as_str())
        .filter(|n| *n != BRIDGE)
        .map(str::to_owned)
        .collect()
}

/// The qdisc kinds on `dev` in the node.
fn qdisc_kinds(world: &World, dev: &str) -> anyhow::Result<Vec<String>> {
    Ok(cni::qdiscs(&world.node.node, dev)?
        .iter()
        .filter_map(|q| q["kind"].as_str().map(str::to_owned))
        .collect())
}

/// Bytes the `tbf` qdisc on `dev` in the node has sent.
fn tbf_bytes(world: &World, dev: &str) -> anyhow::Result<u64> {
    Ok(cni::qdiscs(&world.node.node, dev)?
        .iter()
        .find(|q| q["kind"] == "tbf")
        .and_then(|q| q["bytes"].as_u64())
        .unwrap_or(0))
}

/// ADD through the chain for a pod whose server listens on a free port.
struct Attached {
    rt: RuntimeConf,
    result: Value,
    server: BannerServer,
    pod: Netns,
}

fn attach(world: &World, banner: &str) -> Attached {
    let what = world.first;
    let pod = Netns::new().expect("pod netns");
    // The pod's service on all its addresses (both families: `::` with
    // IPV6_V6ONLY off, Linux's default), on a free port that the mapping
    // then names.
    let server =
        BannerServer::start(&pod, SocketAddr::new(ip("::"), 0), banner).expect("the pod's server");
    let rt = world.runtime_conf(&pod, server.addr().port());
    let runs = world
        .chain
        .add(&world.node.node, &rt)
        .unwrap_or_else(|e| panic!("{what}: chain ADD: {e:#}"));
    for run in &runs {
        eprintln!("{what}: {} ADD -> {}", run.plugin, run.stdout.trim());
    }
    let result = runs
        .last()
        .expect("four runs")
        .result()
        .expect("the chain's result");
    Attached {
        rt,
        result,
        server,
        pod,
    }
}

fn chain_add_check_del(first: &'static str) {
    let started = Instant::now();
    let world = World::new(first).expect("the world");
    let Attached {
        rt,
        result,
        server,
        pod,
    } = attach(&world, "pod service");
    let mut pod_addrs = pod_ips(&result);
    pod_addrs.sort();
    assert_eq!(
        pod_addrs.len(),
        2,
        "{first}: expected two addresses in {result}"
    );
    let hosts = host_interfaces(&result);
    let [host_veth, ifb] = hosts.as_slice() else {
        panic!("{first}: expected the host veth and bandwidth's ifb in {result}");
    };
    assert!(
        ifb.starts_with("bwp"),
        "{first}: {ifb} is not bandwidth's ifb"
    );

    // portmap: the node's host port reaches the pod's service, from a
    // client on the node's uplink and from the pod itself (hairpin).
    for (node_ip, client_ip) in [(NODE_UP, CLIENT), (NODE_UP6, CLIENT6)] {
        let mapped = SocketAddr::new(ip(node_ip), HOST_PORT);
        let got = cni::fetch(&world.client, mapped, CONNECT)
            .unwrap_or_else(|e| panic!("{first}: client -> {mapped}: {e:#}"));
        assert_eq!(
            got, "pod service",
            "{first}: {mapped} served something else"
        );
        // The server listens on `::`: IPv4 peers show as v4-mapped.
        let peer = server.peers().last().map(|p| match p.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        });
        assert_eq!(
            peer,
            Some(ip(client_ip)),
            "{first}: the pod saw the client as someone else (only DNAT is expected)"
        );
    }
    let mapped = SocketAddr::new(ip(NODE_UP), HOST_PORT);
    let got = cni::fetch(&pod, mapped, CONNECT)
        .unwrap_or_else(|e| panic!("{first}: hairpin pod -> {mapped} -> pod: {e:#}"));
    assert_eq!(got, "pod service", "{first}: hairpin");
    let v4 = cni::iptables_save(&world.node.node).expect("iptables-save");
    let v6 = cni::ip6tables_save(&world.node.node).expect("ip6tables-save");
    for (family, text) in [("iptables", v4), ("ip6tables", v6)] {
        assert!(
            text.lines()
                .any(|l| l.contains("CNI-DN-") && l.contains(&rt.container_id)),
            "{first}: no portmap DNAT rule names the container in {family}:\n{text}"
        );
    }

    // tuning: MTU, MAC and the sysctl in the pod, the MAC in the result.
    let eth0 = cni::ip_json(&pod, &["link", "show", "dev", "eth0"]).expect("ip link")[0].clone();
    assert_eq!(eth0["mtu"], json!(POD_MTU), "{first}: eth0's MTU");
    assert_eq!(eth0["address"], json!(POD_MAC), "{first}: eth0's MAC");
    assert_eq!(
        cni::sysctl(&pod, "net/core/somaxconn").expect("sysctl"),
        SOMAXCONN,
        "{first}: the pod's net.core.somaxconn"
    );
    assert_eq!(
        result["interfaces"][2]["mac"],
        json!(POD_MAC),
        "{first}: the chain's result should carry tuning's MAC"
    );

    // bandwidth: the qdiscs and the ifb.
    let kinds = qdisc_kinds(&world, host_veth).expect("tc");
    assert!(
        kinds.contains(&"tbf".to_owned()) && kinds.contains(&"ingress".to_owned()),
        "{first}: qdiscs on {host_veth}: {kinds:?}"
    );
    let kinds = qdisc_kinds(&world, ifb).expect("tc");
    assert!(
        kinds.contains(&"tbf".to_owned()),
        "{first}: qdiscs on {ifb}: {kinds:?}"
    );

    // Traffic still flows with everything in place, and what reaches the
    // pod passes the ingress rate's tbf; then CHECK.
    let before = tbf_bytes(&world, host_veth).expect("tc");
    let echo = TcpEchoServer::start(&world.client, ip(CLIENT)).expect("echo server");
    echo.transfer(&pod, 64 * 1024, CONNECT)
        .unwrap_or_else(|e| panic!("{first}: pod -> client: {e:#}"));
    let shaped = tbf_bytes(&world, host_veth).expect("tc") - before;
    assert!(
        shaped >= 64 * 1024,
        "{first}: only {shaped} bytes of the 64 KiB echoed back to the pod passed the tbf on {host_veth}"
    );
    for run in world
        .chain
        .check_each(&world.node.node, &rt, &result)
        .expect("running CHECK")
    {
        if run.rc == Some(0) {
            continue;
        }
        let known = run.plugin == "portmap" && run.stdout.contains("could not check ipv6 dnat");
        assert!(known, "{first}: chain CHECK: {run}");
        eprintln!(
            "{first}: portmap's CHECK fails on its own IPv6 check (a bug of portmap 1.1.1, \
             see containernetworking/plugins#819): {}",
            run.stdout.trim()
        );
    }
    if first == "sluice" {
        world
            .node
            .sluice
            .check_programs(&world.node.node, host_veth)
            .expect("sluice's programs");
        let mut want = Sluice::tcx_pins_of(host_veth).to_vec();
        want.sort();
        assert_eq!(
            world.node.sluice.tcx_link_pins(),
            want,
            "tcAttach tcx pins its links"
        );
        assert_eq!(
            world.node.sluice.endpoint_addrs().expect("ENDPOINTS"),
            pod_addrs
        );
    }

    // DEL, then DEL again with the pod netns gone.
    let runs = world
        .chain
        .del(&world.node.node, &rt, Some(&result))
        .unwrap_or_else(|e| panic!("{first}: chain DEL: {e:#}"));
    let order: Vec<&str> = runs.iter().map(|r| r.plugin.as_str()).collect();
    assert_eq!(
        order,
        ["bandwidth", "tuning", "portmap", first],
        "DEL order"
    );
    drop(server);
    drop(pod);
    let mut gone = rt.clone();
    gone.netns = None;
    world
        .chain
        .del(&world.node.node, &gone, Some(&result))
        .unwrap_or_else(|e| panic!("{first}: second chain DEL (no netns): {e:#}"));

    let mut left = Vec::new();
    let links = link::link_names(&world.node.node).expect("node links");
    for name in [host_veth, ifb] {
        if links.contains(name) {
            left.push(format!("link {name}"));
        }
    }
    for rule in cni::iptables_rules_with(&world.node.node, &rt.container_id).expect("iptables") {
        left.push(format!("iptables: {rule}"));
    }
    // portmap's per-container chains are named by a hash; any left is
    // listed by `:CNI-DN-...` in iptables-save.
    let saved = cni::iptables_save(&world.node.node).expect("iptables-save")
        + &cni::ip6tables_save(&world.node.node).expect("ip6tables-save");
    for line in saved
        .lines()
        .filter(|l| l.starts_with(":CNI-DN-") || l.starts_with(":CNI-SN-"))
    {
        left.push(format!("iptables chain {line}"));
    }
    for file in walk(&world.node.path("tuning")) {
        left.push(format!("tuning state {}", file.display()));
    }
    for reservation in ipam_reservations(&world.node.path("ipam")).expect("ipam") {
        left.push(format!("IP reservation {}", reservation.display()));
    }
    if first == "sluice" {
        if let Err(e) = world.node.sluice.check_detached() {
            left.push(format!("{e:#}"));
        }
    }
    assert!(
        left.is_empty(),
        "{first}: left after DEL:\n  {}",
        left.join("\n  ")
    );
    eprintln!("{first} chain took {:?}", started.elapsed());
}

/// Files below `dir` (none when it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn sluice_first_then_portmap_tuning_bandwidth() {
    require_root("sluice_first_then_portmap_tuning_bandwidth");
    chain_add_check_del("sluice");
}

#[test]
fn reference_bridge_first_then_portmap_tuning_bandwidth() {
    require_root("reference_bridge_first_then_portmap_tuning_bandwidth");
    chain_add_check_del("bridge");
}

/// The pod sends 1 MiB; bandwidth shapes the pod's egress by redirecting
/// what arrives on the host veth (tc ingress, a `mirred` filter) to its
/// ifb, whose `tbf` must then have seen those bytes.
///
/// With Sluice first this needs `from_pod`, attached to the same host veth
/// with TCX, to pass with `TCX_NEXT`: the kernel runs the legacy tc
/// ingress (where bandwidth's filter sits) only then; `TC_ACT_OK`
/// (= `TCX_PASS`) would end ingress processing there (`sch_handle_ingress`
/// in net/core/dev.c) and 0 bytes would reach
/// the ifb's `tbf`. The ingress rate (a root `tbf` qdisc on the host veth,
/// after TCX egress) is not affected and is checked in the chain test.
fn egress_shaping_applies(first: &'static str) {
    let world = World::new(first).expect("the world");
    let attached = attach(&world, "x");
    let hosts = host_interfaces(&attached.result);
    let ifb = hosts
        .iter()
        .find(|h| h.starts_with("bwp"))
        .unwrap_or_else(|| panic!("{first}: no ifb in {}", attached.result));
    let before = tbf_bytes(&world, ifb).expect("tc");
    let echo = TcpEchoServer::start(&world.client, ip(CLIENT)).expect("echo server");
    echo.transfer(&attached.pod, 1 << 20, CONNECT)
        .unwrap_or_else(|e| panic!("{first}: pod -> client: {e:#}"));
    let shaped = tbf_bytes(&world, ifb).expect("tc") - before;
    eprintln!("{first}: the ifb's tbf sent {shaped} bytes of the pod's 1 MiB");
    world
        .chain
        .del(&world.node.node, &attached.rt, Some(&attached.result))
        .unwrap_or_else(|e| panic!("{first}: chain DEL: {e:#}"));
    assert!(
        shaped >= 1 << 20,
        "{first}: only {shaped} bytes of the pod's 1 MiB went through bandwidth's egress tbf"
    );
}

#[test]
fn bandwidth_egress_shaping_applies_reference_bridge() {
    require_root("bandwidth_egress_shaping_applies_reference_bridge");
    egress_shaping_applies("bridge");
}

#[test]
fn bandwidth_egress_shaping_applies() {
    require_root("bandwidth_egress_shaping_applies");
    egress_shaping_applies("sluice");
}

/// The documented limit of the default `"tcAttach": "tc"`: bandwidth's
/// egress shaping cannot add its `ingress` qdisc next to Sluice's
/// `clsact`, so the chain's ADD fails in bandwidth, with the kernel's
/// "file exists"; the runtime's DEL of the chain then leaves nothing of
/// Sluice's behind.
#[test]
fn default_tc_attach_and_bandwidth_egress_conflict_cleanly() {
    require_root("default_tc_attach_and_bandwidth_egress_conflict_cleanly");
    let world = World::with_tc_attach("sluice", "tc").expect("the world");
    let pod = Netns::new().expect("pod netns");
    let rt = world.runtime_conf(&pod, 8080);
    let err = world
        .chain
        .add(&world.node.node, &rt)
        .expect_err("bandwidth cannot add its ingress qdisc next to clsact");
    let text = format!("{err:#}");
    assert!(
        text.contains("bandwidth") && text.contains("file exists"),
        "unexpected failure: {text}"
    );
    world
        .chain
        .del(&world.node.node, &rt, None)
        .unwrap_or_else(|e| panic!("chain DEL after the failed ADD: {e:#}"));
    world
        .node
        .sluice
        .check_detached()
        .expect("nothing of sluice's left");
    let links = link::link_names(&world.node.node).expect("node links");
    assert!(
        !links
            .iter()
            .any(|l| l.starts_with("slc") || l.starts_with("bwp")),
        "links left: {links:?}"
    );
}
