//! IPAM delegated to the reference `dhcp` plugin: a pod of a bridge
//! network gets its address from a real DHCP server and gives it back on
//! DEL. The same scenario with the reference `bridge` plugin is the
//! baseline.
//!
//! ```text
//!   server netns                 node netns                          pod netns
//!   eth0 10.199.86.1 <- veth -> srv0 ─┐
//!   (dnsmasq, DHCP only)              bridge cni-dhcp0 (no address) <- veth -> eth0 (DHCP)
//!                                dhcp daemon -socketpath <tmp>/dhcp.sock
//! ```
//!
//! Bridge mode, because DHCP needs L2: the pod's DISCOVER is a broadcast
//! that must reach the server, so the server's veth and the pod's host veth
//! are ports of one bridge (which has no address: `isGateway` off). The
//! `dhcp` daemon runs in the node netns with a socket path of its own
//! (`-socketpath`), named in the IPAM config as `daemonSocketPath`; for
//! each ADD it enters the pod's netns and runs DHCP on `eth0`, which must
//! therefore exist before IPAM is called.
//!
//! Checked: the ADD result's address is in dnsmasq's range with the router
//! it announces as gateway, `eth0` has it, dnsmasq has a lease for the
//! pod's MAC and address; TCP from the pod to the server's address works;
//! after DEL the daemon releases the lease and, with Sluice, the server
//! gets the DHCPRELEASE (dnsmasq logs it and drops the lease from its
//! lease file; the reference bridge plugin removes the interface before
//! IPAM DEL, so its release never leaves: see its test); the host veth is
//! gone, and for Sluice no state record, link pin or `ENDPOINTS` entry is
//! left; a repeated DEL succeeds. dnsmasq and the daemon
//! are stopped when the test ends, pass or fail.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use serde_json::json;
use tests::{
    cni::{self, Chain, RuntimeConf, SluiceNode},
    dhcp::{DhcpDaemon, Dnsmasq},
    link::{self, VethEnd},
    require_root, Netns, TcpEchoServer,
};

const BRIDGE: &str = "cni-dhcp0";
const SERVER: &str = "10.199.86.1";
const RANGE: (&str, &str, &str) = ("10.199.86.100", "10.199.86.199", "255.255.255.0");

/// The scenario with `plugin_type` first; `release_reaches_server`: whether
/// DEL must make the server drop the lease (see the reference's test).
fn dhcp_lease_and_release(plugin_type: &'static str, release_reaches_server: bool) {
    let started = Instant::now();
    let node = if plugin_type == "sluice" {
        SluiceNode::new().expect("node with an agent")
    } else {
        SluiceNode::without_agent().expect("node")
    };
    let server_ns = Netns::new().expect("server netns");
    // The bridge first, so the server's veth can join it; the plugin then
    // finds it and adds the pod's host veth.
    cni::run_in(&node.node, "ip", &["link", "add", BRIDGE, "type", "bridge"]).expect("bridge");
    cni::run_in(&node.node, "ip", &["link", "set", BRIDGE, "up"]).expect("bridge up");
    link::connect(
        VethEnd {
            ns: &node.node,
            ifname: "srv0",
            addrs: &[],
        },
        VethEnd {
            ns: &server_ns,
            ifname: "eth0",
            addrs: &[format!("{SERVER}/24").parse().expect("cidr")],
        },
    )
    .expect("server veth");
    cni::run_in(&node.node, "ip", &["link", "set", "srv0", "master", BRIDGE]).expect("enslave");

    let dnsmasq = Dnsmasq::start(
        &server_ns,
        "eth0",
        RANGE,
        SERVER,
        "10m",
        &node.path("dnsmasq"),
    )
    .expect("dnsmasq");
    let daemon = DhcpDaemon::start(&node.node, &node.path("dhcp")).expect("dhcp daemon");

    let mut plugin = json!({
        "type": plugin_type,
        "bridge": BRIDGE,
        "ipam": { "type": "dhcp", "daemonSocketPath": daemon.socket() },
    });
    node.sluice_keys(&mut plugin);
    let chain = Chain::new("dhcp-net", "1.0.0", vec![plugin]);
    let pod = Netns::new().expect("pod netns");
    let rt = RuntimeConf::new(&pod, "eth0", "dhcp-0");
    let result = chain.add_result(&node.node, &rt).unwrap_or_else(|e| {
        panic!(
            "{plugin_type}: ADD with dhcp IPAM: {e:#}\n---- dhcp daemon log ----\n{}",
            daemon.log()
        )
    });
    eprintln!("{plugin_type}: ADD result {result}");
    let took_add = started.elapsed();

    // The address, from dnsmasq's range, with its router as the gateway.
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    let (addr, prefix) = address
        .split_once('/')
        .unwrap_or_else(|| panic!("no address in {result}"));
    let addr: Ipv4Addr = addr.parse().expect("an IPv4 address");
    let (low, high): (Ipv4Addr, Ipv4Addr) = (RANGE.0.parse().unwrap(), RANGE.1.parse().unwrap());
    assert!(
        (low..=high).contains(&addr) && prefix == "24",
        "{plugin_type}: {address} is not from dnsmasq's range {RANGE:?}"
    );
    assert_eq!(
        result["ips"][0]["gateway"],
        json!(SERVER),
        "{plugin_type}: gateway"
    );
    let eth0 = cni::ip_json(&pod, &["addr", "show", "dev", "eth0"]).expect("ip addr")[0].clone();
    let has = eth0["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["local"] == json!(addr.to_string()) && a["prefixlen"] == json!(24));
    assert!(has, "{plugin_type}: eth0 lacks {address}: {eth0}");
    let mac = result["interfaces"][2]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        eth0["address"],
        json!(mac),
        "{plugin_type}: the result's MAC is eth0's"
    );
    let leases = dnsmasq.leases();
    assert!(
        leases
            .iter()
            .any(|l| l.contains(&mac) && l.contains(&addr.to_string())),
        "{plugin_type}: dnsmasq has no lease of {addr} for {mac}: {leases:?}"
    );

    // Traffic over the bridge to the server.
    let echo = TcpEchoServer::start(&server_ns, IpAddr::V4(SERVER.parse().unwrap())).expect("echo");
    echo.transfer(&pod, 16 * 1024, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{plugin_type}: pod -> DHCP server: {e:#}"));
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if plugin_type == "sluice" {
        node.sluice
            .check_programs(&node.node, &host_veth)
            .expect("sluice's programs");
        assert_eq!(
            node.sluice.endpoint_addrs().expect("ENDPOINTS"),
            [IpAddr::V4(addr)]
        );
    }

    // DEL releases the lease: the daemon stops maintaining it and sends
    // DHCPRELEASE from the pod's interface.
    chain
        .del(&node.node, &rt, Some(&result))
        .unwrap_or_else(|e| panic!("{plugin_type}: DEL: {e:#}"));
    let stopped = tests::wait_until(Duration::from_secs(5), || {
        daemon.log().contains("releasing lease")
    });
    assert!(
        stopped,
        "{plugin_type}: the dhcp daemon was not asked to release the lease:\n{}",
        daemon.log()
    );
    if release_reaches_server {
        let released = tests::wait_until(Duration::from_secs(5), || {
            !dnsmasq.leases().iter().any(|l| l.contains(&mac))
        });
        assert!(
            released,
            "{plugin_type}: dnsmasq still has the lease after DEL: {:?}\n---- dnsmasq log ----\n{}\n---- dhcp daemon log ----\n{}",
            dnsmasq.leases(),
            dnsmasq.log(),
            daemon.log()
        );
        assert!(
            dnsmasq
                .log()
                .contains(&format!("DHCPRELEASE(eth0) {addr} {mac}")),
            "{plugin_type}: dnsmasq logged no DHCPRELEASE of {addr}:\n{}",
            dnsmasq.log()
        );
    } else {
        eprintln!(
            "{plugin_type}: dnsmasq's leases after DEL: {:?}; the daemon says:\n{}",
            dnsmasq.leases(),
            daemon.log()
        );
    }
    let links = link::link_names(&node.node).expect("node links");
    assert!(
        !links.contains(&host_veth),
        "{plugin_type}: {host_veth} outlived DEL"
    );
    if plugin_type == "sluice" {
        node.sluice
            .check_detached()
            .expect("nothing of sluice left");
    }
    // A repeated DEL (the runtime retrying) is fine too.
    chain
        .del(&node.node, &rt, Some(&result))
        .unwrap_or_else(|e| panic!("{plugin_type}: second DEL: {e:#}"));
    eprintln!(
        "{plugin_type}: ADD after {took_add:?}, whole test {:?}",
        started.elapsed()
    );
}

#[test]
fn reference_bridge_dhcp_ipam_leases_and_releases() {
    require_root("reference_bridge_dhcp_ipam_leases_and_releases");
    // The reference bridge plugin 1.1.1 deletes the pod's interface before
    // it calls IPAM DEL ("call ipam.ExecDel after clean up device in
    // netns"), so the daemon's DHCPRELEASE fails ("failed to release DHCP
    // lease: no such device") and the lease stays on the server until it
    // expires. Sluice's DEL releases IPAM first.
    dhcp_lease_and_release("bridge", false);
}

#[test]
fn sluice_dhcp_ipam_leases_and_releases() {
    require_root("sluice_dhcp_ipam_leases_and_releases");
    dhcp_lease_and_release("sluice", true);
}

/// ADD with the `dhcp` IPAM and no daemon listening: IPAM fails after the
/// bridge port was made (bridge mode makes it first, see the module
/// docs), and the failed ADD must leave nothing: no host veth, no `eth0`
/// in the pod, no Sluice state, link pin or `ENDPOINTS` entry.
#[test]
fn sluice_dhcp_ipam_failure_leaves_nothing() {
    require_root("sluice_dhcp_ipam_failure_leaves_nothing");
    let node = SluiceNode::new().expect("node with an agent");
    let mut plugin = json!({
        "type": "sluice",
        "bridge": BRIDGE,
        "ipam": { "type": "dhcp", "daemonSocketPath": node.path("nobody.sock") },
    });
    node.sluice_keys(&mut plugin);
    let chain = Chain::new("dhcp-net", "1.0.0", vec![plugin]);
    let pod = Netns::new().expect("pod netns");
    let rt = RuntimeConf::new(&pod, "eth0", "dhcp-0");
    let runs = cni::exec_plugin(&node.node, "ADD", &rt, &chain.plugin_conf(0, &rt, None))
        .expect("running sluice");
    assert!(
        runs.rc != Some(0) && runs.stdout.contains("nobody.sock"),
        "ADD without a dhcp daemon should fail naming its socket: {runs}"
    );
    let node_links = link::link_names(&node.node).expect("node links");
    assert!(
        node_links.iter().all(|l| !l.starts_with("slc")),
        "a host veth outlived the failed ADD: {node_links:?}"
    );
    let pod_links = link::link_names(&pod).expect("pod links");
    assert_eq!(pod_links, ["lo"], "the pod kept an interface");
    node.sluice
        .check_detached()
        .expect("nothing of sluice left after a failed ADD");
}
