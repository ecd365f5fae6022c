//! Bridge mode end to end, in namespaces the test creates: pods on one
//! bridge in a "node" namespace reach each other and the gateway, with the
//! reference bridge plugin's options.
//!
//! Privileged and serial: `cargo test -p cni-plugin --test plumbing_bridge
//! -- --test-threads=1` (needs `cargo build -p cni-agent` first).

mod plumbing_support;

use std::net::IpAddr;

use cni_ebpf_common::Reason;
use cni_plugin::{
    addr::{self, AddrOptions},
    attach::{self, TcAttach},
    bridge::{self, BridgeOptions},
    error::Code,
    state::endpoint_id,
    sysctl,
    types::IpConfig,
    veth::{self, Plumbed, PodSpec, Teardown},
};
use ipnet::IpNet;
use plumbing_support::{require_root, tcp_echo, Pins, TestNetns};
use rtnetlink::LinkBridge;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ipcfg(addr: &str) -> IpConfig {
    IpConfig {
        address: net(addr),
        gateway: None,
        interface: None,
    }
}

fn add_pod(
    node: &TestNetns,
    pod: &TestNetns,
    cid: &str,
    ips: &[IpConfig],
    opts: &BridgeOptions,
    pins: Option<&Pins>,
) -> cni_plugin::error::CniResult<Plumbed> {
    let handle = pod.handle();
    node.run(|| {
        bridge::add(
            &PodSpec {
                container_id: cid,
                ifname: "eth0",
                netns: &handle,
                mtu: 1500,
                container_mac: None,
                ips,
                routes: &[],
                bpffs_dir: pins.map(|p| p.dir.as_path()),
                endpoint_flags: 0,
                tc_attach: TcAttach::Tcx,
            },
            opts,
        )
    })
}

fn del_pod(node: &TestNetns, cid: &str, host: &str, pins: Option<&Pins>) {
    let errors = node.run(|| {
        veth::teardown(&Teardown {
            container_id: cid,
            ifname: "eth0",
            host_veth: Some(host),
            netns: None,
            bpffs_dir: pins.map(|p| p.dir.as_path()),
        })
    });
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn pods_on_one_bridge_reach_each_other_and_the_gateway() {
    require_root();
    let node = TestNetns::new();
    let pod_a = TestNetns::new();
    let pod_b = TestNetns::new();
    let pins = Pins::loaded(&node);
    let opts = BridgeOptions {
        name: "cni0".into(),
        is_gateway: true,
        is_default_gateway: true,
        hairpin_mode: true,
        ..Default::default()
    };
    let a = add_pod(
        &node,
        &pod_a,
        "br-a",
        &[ipcfg("10.199.2.2/24"), ipcfg("fd00:199::2:2/64")],
        &opts,
        Some(&pins),
    )
    .unwrap();
    let b = add_pod(
        &node,
        &pod_b,
        "br-b",
        &[ipcfg("10.199.2.3/24"), ipcfg("fd00:199::2:3/64")],
        &opts,
        Some(&pins),
    )
    .unwrap();

    // Result: [bridge, host veth, eth0], IPs on index 2 with the computed gateway.
    let names: Vec<&str> = a
        .output
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["cni0", a.host.name.as_str(), "eth0"]);
    assert!(a.output.interfaces[2].sandbox.is_some());
    assert_eq!(a.output.ips[0].address, net("10.199.2.2/24"));
    assert_eq!(a.output.ips[0].gateway, Some(ip("10.199.2.1")));
    assert_eq!(a.output.ips[1].gateway, Some(ip("fd00:199::1")));
    assert!(a.output.ips.iter().all(|i| i.interface == Some(2)));
    assert!(a
        .output
        .routes
        .iter()
        .any(|r| r.dst == net("0.0.0.0/0") && r.gw == Some(ip("10.199.2.1"))));
    assert!(a
        .output
        .routes
        .iter()
        .any(|r| r.dst == net("::/0") && r.gw == Some(ip("fd00:199::1"))));

    // Node side: bridge with the gateways, ports enslaved with hairpin,
    // forwarding on, programs attached.
    let (br, host_a) = node.block_on(async |nl| {
        (
            nl.require_link("cni0").await.unwrap(),
            nl.require_link(&a.host.name).await.unwrap(),
        )
    });
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(host_a.controller, Some(br.index));
    assert_eq!(host_a.hairpin, Some(true));
    assert!(!br.promisc);
    let br_addrs = node.block_on(async |nl| addr::list(&nl, br.index).await.unwrap());
    assert!(
        br_addrs.contains(&net("10.199.2.1/24")) && br_addrs.contains(&net("fd00:199::1/64")),
        "{br_addrs:?}"
    );
    node.run(|| {
        assert_eq!(sysctl::get(&["net", "ipv4", "ip_forward"]).unwrap(), "1");
        assert_eq!(
            attach::query(&b.host.name, TcAttach::Tcx).unwrap(),
            (vec!["from_pod".to_string()], vec!["to_pod".to_string()])
        );
    });
    assert_eq!(
        a.output.interfaces[0].mac.as_deref(),
        Some(br.mac_string().as_str())
    );

    // Traffic: pod to pod over the bridge (both families), pod to gateway.
    let before = pins.reason_packets(Reason::FROM_POD_PASS);
    let peer = tcp_echo(&pod_b, ip("10.199.2.3"), &pod_a, 128 * 1024);
    assert_eq!(peer.ip(), ip("10.199.2.2"));
    tcp_echo(&pod_a, ip("fd00:199::2:2"), &pod_b, 32 * 1024);
    tcp_echo(&node, ip("10.199.2.1"), &pod_a, 4096);
    tcp_echo(&node, ip("fd00:199::1"), &pod_b, 4096);
    assert!(pins.reason_packets(Reason::FROM_POD_PASS) > before + 10);
    assert_eq!(
        attach::endpoints_of(&pins.dir, endpoint_id("br-a", "eth0"))
            .unwrap()
            .len(),
        2
    );

    // CHECK passes; a wrong promisc expectation is a mismatch.
    let ha = pod_a.handle();
    node.run(|| bridge::check(&ha, "eth0", &opts, &a.output))
        .unwrap();
    let promisc = BridgeOptions {
        promisc_mode: true,
        hairpin_mode: false,
        ..opts.clone()
    };
    let err = node
        .run(|| bridge::check(&ha, "eth0", &promisc, &a.output))
        .unwrap_err();
    assert_eq!(err.code, Code::CheckMismatch);

    // DEL: veths and datapath state go, the bridge and its address stay.
    del_pod(&node, "br-a", &a.host.name, Some(&pins));
    del_pod(&node, "br-b", &b.host.name, Some(&pins));
    del_pod(&node, "br-b", &b.host.name, Some(&pins));
    let links = node.link_names();
    assert!(links.contains(&"cni0".to_string()));
    assert!(!links.iter().any(|l| l.starts_with("slc")), "{links:?}");
    assert!(pins.link_pins().is_empty());
    assert!(attach::endpoints_of(&pins.dir, endpoint_id("br-a", "eth0"))
        .unwrap()
        .is_empty());
    let br_addrs = node.block_on(async |nl| addr::list(&nl, br.index).await.unwrap());
    assert!(br_addrs.contains(&net("10.199.2.1/24")));
}

#[test]
fn force_address_promisc_and_plain_l2() {
    require_root();
    let node = TestNetns::new();
    let pod = TestNetns::new();
    // The bridge exists with another IPv4 address.
    node.block_on(async |nl| {
        nl.handle()
            .link()
            .add(LinkBridge::new("br9").build())
            .execute()
            .await
            .unwrap();
        let br = nl.require_link("br9").await.unwrap();
        addr::add(
            &nl,
            br.index,
            "br9",
            net("10.199.9.1/24"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
    });
    let gw = BridgeOptions {
        name: "br9".into(),
        is_gateway: true,
        ..Default::default()
    };
    let err = add_pod(&node, &pod, "br-c", &[ipcfg("10.199.8.2/24")], &gw, None).unwrap_err();
    assert!(
        err.msg
            .contains("already has an IP address different from 10.199.8.1/24"),
        "{err}"
    );
    assert!(
        !node.link_names().iter().any(|l| l.starts_with("slc")),
        "veth left after failure"
    );
    assert!(pod.link_names().iter().all(|n| n == "lo"));

    let forced = BridgeOptions {
        force_address: true,
        ..gw.clone()
    };
    let p = add_pod(
        &node,
        &pod,
        "br-c",
        &[ipcfg("10.199.8.2/24")],
        &forced,
        None,
    )
    .unwrap();
    let br_addrs = node.block_on(async |nl| {
        let br = nl.require_link("br9").await.unwrap();
        addr::list_family(&nl, br.index, false).await.unwrap()
    });
    assert_eq!(br_addrs, [net("10.199.8.1/24")]);
    tcp_echo(&node, ip("10.199.8.1"), &pod, 2048);
    del_pod(&node, "br-c", &p.host.name, None);

    // promiscMode sets the bridge promiscuous; hairpin with promisc is refused.
    let promisc = BridgeOptions {
        name: "br9".into(),
        promisc_mode: true,
        ..Default::default()
    };
    let p = add_pod(
        &node,
        &pod,
        "br-d",
        &[ipcfg("10.199.8.3/24")],
        &promisc,
        None,
    )
    .unwrap();
    assert!(node.block_on(async |nl| nl.require_link("br9").await.unwrap().promisc));
    // Not a gateway: no gateway in the result, no default route.
    assert_eq!(p.output.ips[0].gateway, None);
    assert!(p.output.routes.is_empty());
    let hp = pod.handle();
    node.run(|| bridge::check(&hp, "eth0", &promisc, &p.output))
        .unwrap();
    del_pod(&node, "br-d", &p.host.name, None);
    let both = BridgeOptions {
        hairpin_mode: true,
        ..promisc
    };
    let err = add_pod(&node, &pod, "br-e", &[ipcfg("10.199.8.4/24")], &both, None).unwrap_err();
    assert_eq!(err.code, Code::InvalidNetworkConfig);

    // A non-bridge of that name is an error.
    let clash = BridgeOptions {
        name: "lo".into(),
        ..Default::default()
    };
    let err = add_pod(&node, &pod, "br-f", &[ipcfg("10.199.8.5/24")], &clash, None).unwrap_err();
    assert!(err.msg.contains("not a bridge"), "{err}");
}
