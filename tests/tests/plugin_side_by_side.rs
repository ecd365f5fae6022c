//! Sluice side by side with the reference bridge plugin (Debian's
//! containernetworking-plugins `bridge` + `host-local`): the same conflist,
//! with only `"type"` changed from `"bridge"` to `"sluice"` (the sluice
//! keys `bpffsDir`, `stateDir`, `waitForPolicy`, `logFile`, `logLevel` are
//! in both: the reference plugin ignores keys it does not know), run in two
//! node netns of their own, two pods each.
//!
//! What must be equal, world against world:
//! - the ADD result, with the host veth's name and every `mac` value
//!   masked: `cniVersion`, the interfaces (in order: bridge, host veth,
//!   `eth0` with `sandbox` = the pod's netns path; the same keys on each),
//!   `ips` (address, gateway, interface index), `routes`, `dns` (absent
//!   and `{}` taken as the same, see [`result_shape`]);
//! - and what the kernel has: in the pod, `eth0`'s MTU, state and
//!   addresses (without link-local ones) and the pod's IPv4 and IPv6 routes
//!   (dst, gateway, dev, scope, type; without the kernel's own link-local
//!   and multicast routes); in the node, the bridge's addresses (without
//!   link-local), MTU and promiscuity, the host veth's bridge, MTU, state
//!   and hairpin flag, and `ip_forward` / IPv6 `forwarding`.
//! - the result's MACs are the kernel's (bridge, host veth, `eth0`) in each
//!   world, compared there, not across worlds (they are random);
//! - connectivity, TCP between namespaces: pod to pod both ways, pod to the
//!   gateway (a server on the bridge address in the node) and node to pod,
//!   IPv4 and IPv6; with `ipMasq`, a pod reaching a server outside the node
//!   arrives from the node's address (masqueraded; without it the server
//!   could not answer: it has no route to the pods);
//! - CHECK succeeds; DEL removes the host veth, the IP reservation and the
//!   masquerade rules (iptables for the reference, nftables for Sluice) and
//!   succeeds again when repeated; the bridge stays (the reference never
//!   deletes it); for Sluice no state record, link pin or `ENDPOINTS` entry
//!   is left.
//!
//! Route `protocol` (which RTPROT the plugin sets) is not compared: see
//! [`route_shape`].

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde_json::{json, Value};
use tests::{
    cni::{self, BannerServer, Chain, RuntimeConf, SluiceNode},
    link::{self, VethEnd},
    require_root,
    runtime::ipam_reservations,
    Netns, TcpEchoServer,
};

/// How long a TCP connect may take before it counts as unreachable.
const CONNECT: Duration = Duration::from_secs(3);

/// The bridge in both nodes.
const BRIDGE: &str = "cni-sbs0";

/// One configuration of the bridge options, run in both worlds.
struct Scenario {
    /// The plugin object of the conflist, without `type` and `ipam.dataDir`.
    plugin: Value,
    /// The gateways the bridge gets (and the pods' gateways).
    gateways: Vec<IpAddr>,
    /// Whether pods should be masqueraded towards the outside.
    ip_masq: bool,
}

/// isGateway + ipMasq + hairpinMode, dual stack, default routes from IPAM.
fn gateway_masq_hairpin() -> Scenario {
    Scenario {
        plugin: json!({
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [
                    [{ "subnet": "10.199.81.0/24" }],
                    [{ "subnet": "fd00:199::81:0/112" }],
                ],
                "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }],
            },
        }),
        gateways: vec![ip("10.199.81.1"), ip("fd00:199::81:1")],
        ip_masq: true,
    }
}

/// isDefaultGateway (the plugin adds the default route) + promiscMode +
/// an explicit MTU, IPv4 only, no routes from IPAM.
fn default_gateway_promisc_mtu() -> Scenario {
    Scenario {
        plugin: json!({
            "bridge": BRIDGE,
            "isDefaultGateway": true,
            "promiscMode": true,
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.199.83.0/24", "gateway": "10.199.83.254" }]],
            },
        }),
        gateways: vec![ip("10.199.83.254")],
        ip_masq: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a valid address")
}

/// A pod: its netns, how the runtime named it, and its ADD result.
struct Pod {
    ns: Netns,
    rt: RuntimeConf,
    result: Value,
}

/// One world: a node running one plugin type, an "outside" host on an
/// uplink of the node, two pods.
struct World {
    plugin_type: &'static str,
    chain: Chain,
    pods: Vec<Pod>,
    outside: Netns,
    node: SluiceNode,
}

/// The node's uplink to the outside host: 10.199.82.0/24 and
/// fd00:199::82:0/112 (the node .1, the outside .2).
const NODE_UP4: &str = "10.199.82.1";
const NODE_UP6: &str = "fd00:199::82:1";
const OUTSIDE4: &str = "10.199.82.2";
const OUTSIDE6: &str = "fd00:199::82:2";

impl World {
    fn new(plugin_type: &'static str, scenario: &Scenario) -> anyhow::Result<Self> {
        let node = if plugin_type == "sluice" {
            SluiceNode::new()?
        } else {
            SluiceNode::without_agent()?
        };
        let outside = Netns::new()?;
        link::connect(
            VethEnd {
                ns: &node.node,
                ifname: "up0",
                addrs: &[
                    format!("{NODE_UP4}/24").parse()?,
                    format!("{NODE_UP6}/112").parse()?,
                ],
            },
            VethEnd {
                ns: &outside,
                ifname: "eth0",
                addrs: &[
                    format!("{OUTSIDE4}/24").parse()?,
                    format!("{OUTSIDE6}/112").parse()?,
                ],
            },
        )?;
        // The same conflist in both worlds but for `type`: the sluice keys
        // are in both (the reference plugin ignores unknown keys); only the
        // node's own paths differ.
        let mut plugin = scenario.plugin.clone();
        plugin["type"] = json!(plugin_type);
        plugin["ipam"]["dataDir"] = json!(node.path("ipam"));
        node.sluice_keys(&mut plugin);
        let chain = Chain::new("side-by-side", "1.0.0", vec![plugin]);
        Ok(Self {
            plugin_type,
            chain,
            pods: Vec::new(),
            outside,
            node,
        })
    }

    fn add_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = Netns::new()?;
        let rt = RuntimeConf::new(&ns, "eth0", name);
        let result = self.chain.add_result(&self.node.node, &rt)?;
        self.pods.push(Pod { ns, rt, result });
        Ok(())
    }

    fn host_veth(&self, pod: usize) -> String {
        self.pods[pod].result["interfaces"][1]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The result with what may differ masked: the host veth's name and every
/// MAC; and an absent `dns` is taken as the empty one (the reference writes
/// `"dns": {}` when IPAM gave none, Sluice leaves the key out: the spec
/// makes `dns` optional, and both mean "no DNS settings").
fn result_shape(result: &Value) -> Value {
    let mut shape = result.clone();
    if shape.get("dns").is_none() {
        shape["dns"] = json!({});
    }
    if let Some(interfaces) = shape["interfaces"].as_array_mut() {
        for (i, interface) in interfaces.iter_mut().enumerate() {
            if i == 1 {
                interface["name"] = json!("<host veth>");
            }
            if interface.get("mac").is_some() {
                interface["mac"] = json!("<mac>");
            }
        }
    }
    shape
}

/// Non-link-local addresses of `ip -j addr` output, as `addr/prefix`.
fn global_addrs(link: &Value) -> BTreeSet<String> {
    link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect()
}

/// A route of `ip -j route` without what the kernel or the plugin's choice
/// of `protocol` decides: dst, gateway, dev, scope, type. The kernel's own
/// IPv6 link-local and multicast routes are left out by the caller.
/// `protocol` differs and is left out on purpose: the reference plugin's
/// netlink library leaves routes at `boot` (RTPROT_BOOT, which `ip -j`
/// prints as no protocol), Sluice marks its routes `static`
/// (RTPROT_STATIC); that says nothing about the pod's connectivity.
fn route_shape(route: &Value) -> Value {
    json!({
        "dst": route["dst"],
        "gateway": route["gateway"],
        "dev": route["dev"],
        "scope": route["scope"],
        "type": route["type"],
    })
}

/// What the kernel has for pod `i` and its host side (see the module docs).
fn kernel_shape(world: &World, i: usize) -> anyhow::Result<Value> {
    let pod = &world.pods[i];
    let eth0 = cni::ip_json(&pod.ns, &["addr", "show", "dev", "eth0"])?[0].clone();
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        for route in cni::ip_json(&pod.ns, &[family, "route", "show", "table", "main"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            let dst = route["dst"].as_str().unwrap_or_default();
            if dst.starts_with("fe80:") || dst.starts_with("ff00:") || dst.starts_with("multicast")
            {
                continue;
            }
            routes.push(route_shape(route));
        }
    }
    routes.sort_by_key(|r| r.to_string());
    let host = world.host_veth(i);
    let host_link =
        cni::ip_json(&world.node.node, &["-d", "link", "show", "dev", &host])?[0].clone();
    let bridge = cni::ip_json(&world.node.node, &["-d", "addr", "show", "dev", BRIDGE])?[0].clone();
    Ok(json!({
        "pod eth0": {
            "mtu": eth0["mtu"],
            "operstate": eth0["operstate"],
            "addrs": global_addrs(&eth0),
        },
        "pod routes": routes,
        "host veth": {
            "master": host_link["master"],
            "mtu": host_link["mtu"],
            "operstate": host_link["operstate"],
            "hairpin": host_link["linkinfo"]["info_slave_data"]["hairpin"],
        },
        "bridge": {
            "addrs": global_addrs(&bridge),
            "mtu": bridge["mtu"],
            "promiscuity": bridge["promiscuity"],
        },
        "node ip_forward": cni::sysctl(&world.node.node, "net/ipv4/ip_forward")?,
        "node ipv6 forwarding": cni::sysctl(&world.node.node, "net/ipv6/conf/all/forwarding")?,
    }))
}

/// The MAC of `ifname` in `ns`.
fn mac_of(ns: &Netns, ifname: &str) -> anyhow::Result<String> {
    let link = cni::ip_json(ns, &["link", "show", "dev", ifname])?;
    Ok(link[0]["address"].as_str().unwrap_or_default().to_owned())
}

/// The result's MACs are the kernel's.
fn check_macs(world: &World, i: usize) -> anyhow::Result<()> {
    let pod = &world.pods[i];
    let interfaces = &pod.result["interfaces"];
    let want = [
        (mac_of(&world.node.node, BRIDGE)?, "bridge"),
        (mac_of(&world.node.node, &world.host_veth(i))?, "host veth"),
        (mac_of(&pod.ns, "eth0")?, "eth0"),
    ];
    for (index, (mac, what)) in want.iter().enumerate() {
        anyhow::ensure!(
            interfaces[index]["mac"].as_str() == Some(mac.as_str()),
            "{}: the result says the {what} has MAC {}, the kernel says {mac}",
            world.plugin_type,
            interfaces[index]["mac"]
        );
    }
    Ok(())
}

/// The pod's addresses of one family from its result.
fn pod_addr(pod: &Pod, v6: bool) -> Option<IpAddr> {
    pod.result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.parse::<IpNet>().ok())
        .map(|net| net.addr())
        .find(|a| a.is_ipv6() == v6)
}

/// A TCP echo server on `ip` in `ns`, retrying for up to 5 s while the
/// address cannot be bound: the reference plugin adds the bridge's IPv6
/// gateway address with duplicate address detection, so it stays
/// tentative (unusable) for a second or two after ADD; Sluice adds it with
/// `nodad`, usable at once.
fn echo_server(ns: &Netns, ip: IpAddr) -> anyhow::Result<TcpEchoServer> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpEchoServer::start(ns, ip) {
            Ok(server) => return Ok(server),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e),
        }
    }
}

/// TCP between namespaces: pod to pod (both ways), pod to the gateway,
/// node to pod, per family; with ipMasq, pod to outside, masqueraded.
fn check_connectivity(world: &World, scenario: &Scenario) -> anyhow::Result<()> {
    let what = world.plugin_type;
    for gateway in &scenario.gateways {
        let v6 = gateway.is_ipv6();
        let (Some(a), Some(b)) = (pod_addr(&world.pods[0], v6), pod_addr(&world.pods[1], v6))
        else {
            anyhow::bail!("{what}: the pods lack an address of the gateway's family {gateway}");
        };
        for (server_ns, server_ip, client) in [
            (&world.pods[1].ns, b, &world.pods[0].ns),
            (&world.pods[0].ns, a, &world.pods[1].ns),
            (&world.node.node, *gateway, &world.pods[0].ns),
            (&world.pods[0].ns, a, &world.node.node),
        ] {
            let server = echo_server(server_ns, server_ip)?;
            server
                .transfer(client, 64 * 1024, CONNECT)
                .map_err(|e| e.context(format!("{what}: {} -> {server_ip}", client.name())))?;
        }
        if scenario.ip_masq {
            let (outside, node_up) = if v6 {
                (ip(OUTSIDE6), ip(NODE_UP6))
            } else {
                (ip(OUTSIDE4), ip(NODE_UP4))
            };
            let server = BannerServer::start(&world.outside, SocketAddr::new(outside, 0), "out")?;
            let got = cni::fetch(&world.pods[0].ns, server.addr(), CONNECT)
                .map_err(|e| e.context(format!("{what}: pod -> outside {outside}")))?;
            anyhow::ensure!(got == "out", "{what}: the outside server said {got:?}");
            let peers = server.peers();
            anyhow::ensure!(
                peers.iter().all(|p| p.ip() == node_up) && !peers.is_empty(),
                "{what}: the outside saw {peers:?}, not the node's {node_up} (masquerade)"
            );
        }
    }
    Ok(())
}

/// Masquerade rules of the world's pods that are still there: iptables
/// rules naming a pod's container id (the reference's `ipMasq` comment),
/// and the nftables ruleset's lines naming one (Sluice's rule comment).
fn masquerade_rules(world: &World) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let nft = cni::run_in(&world.node.node, "nft", &["list", "ruleset"])?;
    for pod in &world.pods {
        let id = &pod.rt.container_id;
        found.extend(cni::iptables_rules_with(&world.node.node, id)?);
        found.extend(
            nft.lines()
                .filter(|l| l.contains(id.as_str()))
                .map(str::to_owned),
        );
    }
    Ok(found)
}

fn run_scenario(name: &str, scenario: Scenario) {
    require_root(name);
    let started = Instant::now();
    let mut worlds: Vec<World> = ["bridge", "sluice"]
        .into_iter()
        .map(|t| World::new(t, &scenario).unwrap_or_else(|e| panic!("{t} world: {e:#}")))
        .collect();
    for world in &mut worlds {
        for pod in ["a", "b"] {
            world
                .add_pod(pod)
                .unwrap_or_else(|e| panic!("{} ADD of pod {pod}: {e:#}", world.plugin_type));
        }
    }
    let (reference, sluice) = (&worlds[0], &worlds[1]);

    // The results.
    for i in 0..2 {
        let (r, s) = (&reference.pods[i].result, &sluice.pods[i].result);
        eprintln!("pod {i}: reference {r}\n        sluice    {s}");
        let mut r_shape = result_shape(r);
        let mut s_shape = result_shape(s);
        // The pod netns paths differ between the worlds; each must be its
        // own pod's.
        for (shape, world) in [(&mut r_shape, reference), (&mut s_shape, sluice)] {
            assert_eq!(
                shape["interfaces"][2]["sandbox"].as_str(),
                world.pods[i].ns.path().to_str(),
                "{}: eth0's sandbox",
                world.plugin_type
            );
            shape["interfaces"][2]["sandbox"] = json!("<pod netns>");
        }
        assert_eq!(s_shape, r_shape, "pod {i}: sluice's result differs");
        for world in [reference, sluice] {
            check_macs(world, i).expect("the result's MACs");
        }
    }
    assert!(
        sluice.host_veth(0).starts_with("slc") && reference.host_veth(0).starts_with("veth"),
        "host veth names: {} / {}",
        reference.host_veth(0),
        sluice.host_veth(0)
    );

    // The kernel.
    for i in 0..2 {
        let r = kernel_shape(reference, i).expect("the reference world's state");
        let s = kernel_shape(sluice, i).expect("the sluice world's state");
        eprintln!("pod {i} kernel: {r}");
        assert_eq!(s, r, "pod {i}: the kernel state differs (left: sluice)");
    }

    // Traffic, and CHECK.
    for world in [reference, sluice] {
        check_connectivity(world, &scenario).unwrap_or_else(|e| panic!("{e:#}"));
        for pod in &world.pods {
            world
                .chain
                .check(&world.node.node, &pod.rt, &pod.result)
                .unwrap_or_else(|e| panic!("{} CHECK: {e:#}", world.plugin_type));
        }
    }
    if scenario.ip_masq {
        for world in [reference, sluice] {
            assert!(
                !masquerade_rules(world)
                    .expect("reading the rules")
                    .is_empty(),
                "{}: no masquerade rule names the pods",
                world.plugin_type
            );
        }
    }
    // DEL, twice.
    for world in [reference, sluice] {
        let what = world.plugin_type;
        for (i, pod) in world.pods.iter().enumerate() {
            for round in ["DEL", "second DEL"] {
                world
                    .chain
                    .del(&world.node.node, &pod.rt, Some(&pod.result))
                    .unwrap_or_else(|e| panic!("{what} {round} of pod {i}: {e:#}"));
            }
        }
        let links: BTreeSet<String> = link::link_names(&world.node.node)
            .expect("node links")
            .into_iter()
            .collect();
        for i in 0..2 {
            let host = world.host_veth(i);
            assert!(!links.contains(&host), "{what}: {host} outlived DEL");
        }
        assert!(
            links.contains(BRIDGE),
            "{what}: the bridge is gone (the reference keeps it)"
        );
        let reservations = ipam_reservations(&world.node.path("ipam")).expect("ipam dir");
        assert!(
            reservations.is_empty(),
            "{what}: IP reservations left: {reservations:?}"
        );
        let rules = masquerade_rules(world).expect("reading the rules");
        assert!(rules.is_empty(), "{what}: masquerade rules left: {rules:?}");
    }
    sluice
        .node
        .sluice
        .check_detached()
        .expect("nothing of sluice left");
    drop(worlds);
    eprintln!("{name} took {:?}", started.elapsed());
}

#[test]
fn same_conflist_gateway_masq_hairpin_dual_stack() {
    run_scenario(
        "same_conflist_gateway_masq_hairpin_dual_stack",
        gateway_masq_hairpin(),
    );
}

#[test]
fn same_conflist_default_gateway_promisc_mtu() {
    run_scenario(
        "same_conflist_default_gateway_promisc_mtu",
        default_gateway_promisc_mtu(),
    );
}
