//! Routed mode end to end, in namespaces the test creates: a "node"
//! namespace standing in for the host, pods inside it, the agent's pinned
//! programs attached with TCX, real TCP traffic.
//!
//! Privileged and serial: `cargo test -p cni-plugin --test plumbing_routed
//! -- --test-threads=1` (needs `cargo build -p cni-agent` first).

mod plumbing_support;

use std::net::IpAddr;

use cni_ebpf_common::Reason;
use cni_plugin::{
    addr::{self, AddrOptions},
    attach::{self, TcAttach},
    error::Code,
    mtu,
    netns::NetnsHandle,
    route::{self, RouteSpec},
    routed,
    state::endpoint_id,
    sysctl,
    types::{IpConfig, Route},
    veth::{self, Plumbed, PodSpec, Teardown, VethRequest},
};
use ipnet::IpNet;
use plumbing_support::{require_root, tcp_echo, Pins, TestNetns};
use rtnetlink::LinkVeth;

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

/// Gives the node an interface (one end of a veth pair: there is no dummy
/// driver on these machines) with an address per family, so pods
/// can talk to "the node's address".
fn node_addresses(node: &TestNetns) {
    node.block_on(async |nl| {
        nl.handle()
            .link()
            .add(LinkVeth::new("node0", "node0p").build())
            .execute()
            .await
            .unwrap();
        let l = nl.require_link("node0").await.unwrap();
        nl.set_up(l.index, "node0").await.unwrap();
        addr::add(
            &nl,
            l.index,
            "node0",
            net("10.199.255.1/32"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
        addr::add(
            &nl,
            l.index,
            "node0",
            net("fd00:199::ff:1/128"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
    });
}

fn add_pod(
    node: &TestNetns,
    pod: &TestNetns,
    cid: &str,
    ips: &[IpConfig],
    routes: &[Route],
    pins: Option<&Pins>,
    tc_attach: TcAttach,
) -> Plumbed {
    let handle = pod.handle();
    node.run(|| {
        routed::add(&PodSpec {
            container_id: cid,
            ifname: "eth0",
            netns: &handle,
            mtu: 1400,
            container_mac: None,
            ips,
            routes,
            bpffs_dir: pins.map(|p| p.dir.as_path()),
            endpoint_flags: 0,
            tc_attach,
        })
    })
    .unwrap_or_else(|e| panic!("routed ADD {cid}: {e}"))
}

fn teardown(
    node: &TestNetns,
    cid: &str,
    host: Option<&str>,
    netns: Option<&std::path::Path>,
    pins: Option<&Pins>,
) -> Vec<String> {
    node.run(|| {
        veth::teardown(&Teardown {
            container_id: cid,
            ifname: "eth0",
            host_veth: host,
            netns,
            bpffs_dir: pins.map(|p| p.dir.as_path()),
        })
    })
    .into_iter()
    .map(|e| e.to_string())
    .collect()
}

fn slc_links(node: &TestNetns) -> Vec<String> {
    node.link_names()
        .into_iter()
        .filter(|n| n.starts_with("slc"))
        .collect()
}

#[test]
fn two_routed_pods_talk_over_v4_and_v6_through_the_attached_programs() {
    require_root();
    let node = TestNetns::new();
    let pod_a = TestNetns::new();
    let pod_b = TestNetns::new();
    node_addresses(&node);
    let pins = Pins::loaded(&node);

    let ips_a = [ipcfg("10.199.1.2/24"), ipcfg("fd00:199::1:2/64")];
    let ips_b = [ipcfg("10.199.1.3/24"), ipcfg("fd00:199::1:3/64")];
    let extra = [Route::new(net("10.199.128.0/17"), Some(ip("10.199.1.1")))];
    // a with cls_bpf filters (the default), b with TCX links.
    let a = add_pod(
        &node,
        &pod_a,
        "pod-a",
        &ips_a,
        &extra,
        Some(&pins),
        TcAttach::Tc,
    );
    let b = add_pod(
        &node,
        &pod_b,
        "pod-b",
        &ips_b,
        &[],
        Some(&pins),
        TcAttach::Tcx,
    );

    // Result shape: host veth + container, /32 and /128 with link-local gateways.
    assert_eq!(a.output.interfaces.len(), 2);
    assert_eq!(a.output.interfaces[0].name, a.host.name);
    assert!(a.output.interfaces[0].sandbox.is_none());
    assert_eq!(a.output.interfaces[1].name, "eth0");
    assert_eq!(
        a.output.interfaces[1].sandbox.as_deref(),
        Some(pod_a.path.to_str().unwrap())
    );
    assert_eq!(a.output.ips[0].address, net("10.199.1.2/32"));
    assert_eq!(a.output.ips[0].gateway, Some(ip("169.254.1.1")));
    assert_eq!(a.output.ips[1].address, net("fd00:199::1:2/128"));
    assert_eq!(a.output.ips[1].gateway, Some(ip("fe80::1")));
    assert!(a
        .output
        .routes
        .iter()
        .any(|r| r.dst == net("10.199.128.0/17") && r.gw == Some(ip("169.254.1.1"))));
    assert_eq!(a.host.name, veth::host_name("pod-a", "eth0"));
    assert_eq!(a.host.mtu, 1400);
    assert_eq!(a.container.mtu, 1400);
    assert!(a.attached);

    // Datapath: both programs on each veth, a's as tc filters and b's as
    // pinned TCX links (and each only so), endpoint entries.
    node.run(|| {
        for (host, how, other) in [
            (&a.host.name, TcAttach::Tc, TcAttach::Tcx),
            (&b.host.name, TcAttach::Tcx, TcAttach::Tc),
        ] {
            let (ingress, egress) = attach::query(host, how).unwrap();
            assert_eq!(ingress, ["from_pod"], "{host} {how:?}");
            assert_eq!(egress, ["to_pod"], "{host} {how:?}");
            let (ingress, egress) = attach::query(host, other).unwrap();
            assert!(ingress.is_empty() && egress.is_empty(), "{host} {other:?}");
        }
    });
    let mut want = vec![
        format!("tcx-{}-egress", b.host.name),
        format!("tcx-{}-ingress", b.host.name),
    ];
    want.sort();
    assert_eq!(pins.link_pins(), want);
    let entries = attach::endpoints_of(&pins.dir, endpoint_id("pod-a", "eth0")).unwrap();
    assert_eq!(entries.len(), 2);
    for (_, info) in &entries {
        assert_eq!(info.ifindex, a.host.index);
        assert_eq!(info.mac, a.container.mac.unwrap());
        assert_eq!(info.flags, 0);
    }

    // Traffic: pod to pod (v4, v6), pod to the node's address.
    let before = pins.reason_packets(Reason::FROM_POD_PASS);
    let peer = tcp_echo(&pod_b, ip("10.199.1.3"), &pod_a, 256 * 1024);
    assert_eq!(peer.ip(), ip("10.199.1.2"), "no NAT between pods");
    let peer = tcp_echo(&pod_a, ip("fd00:199::1:2"), &pod_b, 64 * 1024);
    assert_eq!(peer.ip(), ip("fd00:199::1:3"));
    tcp_echo(&node, ip("10.199.255.1"), &pod_a, 4096);
    tcp_echo(&node, ip("fd00:199::ff:1"), &pod_b, 4096);
    // And the node to a pod (source: the node's own address, not 169.254.1.1).
    let peer = tcp_echo(&pod_b, ip("10.199.1.3"), &node, 4096);
    assert_eq!(peer.ip(), ip("10.199.255.1"));
    let after = pins.reason_packets(Reason::FROM_POD_PASS);
    assert!(after > before + 10, "from_pod counted {before} -> {after}");

    // CHECK passes as built.
    let ha = pod_a.handle();
    node.run(|| routed::check(&ha, "eth0", &a.output)).unwrap();

    // DEL of a: everything of a is gone, b still works; DEL again is a no-op.
    assert!(teardown(
        &node,
        "pod-a",
        Some(&a.host.name),
        Some(&pod_a.path),
        Some(&pins)
    )
    .is_empty());
    assert_eq!(slc_links(&node), std::slice::from_ref(&b.host.name));
    assert!(pod_a.link_names().iter().all(|n| n != "eth0"));
    assert!(
        attach::endpoints_of(&pins.dir, endpoint_id("pod-a", "eth0"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        attach::endpoints_of(&pins.dir, endpoint_id("pod-b", "eth0"))
            .unwrap()
            .len(),
        2
    );
    assert!(!pins.link_pins().iter().any(|p| p.contains(&a.host.name)));
    let host_routes = node.block_on(async |nl| route::list_main(&nl, false).await.unwrap());
    assert!(!host_routes.iter().any(|r| r.dst == ip("10.199.1.2")));
    assert!(teardown(
        &node,
        "pod-a",
        Some(&a.host.name),
        Some(&pod_a.path),
        Some(&pins)
    )
    .is_empty());
    assert!(teardown(&node, "pod-a", None, None, Some(&pins)).is_empty());
    tcp_echo(&node, ip("10.199.255.1"), &pod_b, 1024);

    // DEL of b without state (name found through the container's peer).
    assert!(teardown(&node, "pod-b", None, Some(&pod_b.path), Some(&pins)).is_empty());
    assert!(slc_links(&node).is_empty());
    assert!(pins.link_pins().is_empty());
}

#[test]
fn check_reports_drift_as_code_102() {
    require_root();
    let node = TestNetns::new();
    let pod = TestNetns::new();
    let ips = [ipcfg("10.199.4.2/24")];
    let p = add_pod(&node, &pod, "pod-c", &ips, &[], None, TcAttach::Tc);
    let h = pod.handle();
    node.run(|| routed::check(&h, "eth0", &p.output)).unwrap();
    // Remove the pod's default route: CHECK must say so.
    pod.block_on(async |nl| {
        let dflt = RouteSpec::new(net("0.0.0.0/0"), Some(ip("169.254.1.1")), None);
        assert!(route::del(&nl, &dflt).await.unwrap());
    });
    let err = node
        .run(|| routed::check(&h, "eth0", &p.output))
        .unwrap_err();
    assert_eq!(err.code, Code::CheckMismatch, "{err}");
    assert!(err.msg.contains("0.0.0.0/0"), "{err}");
    // A prevResult naming another host veth is a mismatch too.
    let mut wrong = p.output.clone();
    wrong.interfaces[0].name = "slcffffffffff0".into();
    let err = node.run(|| routed::check(&h, "eth0", &wrong)).unwrap_err();
    assert_eq!(err.code, Code::CheckMismatch);
    assert!(teardown(&node, "pod-c", Some(&p.host.name), None, None).is_empty());
}

#[test]
fn programs_not_pinned_is_code_11_and_creates_nothing() {
    require_root();
    let node = TestNetns::new();
    let pod = TestNetns::new();
    let pins = Pins::empty();
    let handle = pod.handle();
    let ips = [ipcfg("10.199.5.2/24")];
    let err = node
        .run(|| {
            routed::add(&PodSpec {
                container_id: "pod-d",
                ifname: "eth0",
                netns: &handle,
                mtu: 1500,
                container_mac: None,
                ips: &ips,
                routes: &[],
                bpffs_dir: Some(&pins.dir),
                endpoint_flags: 0,
                tc_attach: TcAttach::Tcx,
            })
        })
        .unwrap_err();
    assert_eq!(err.code, Code::TryAgainLater, "{err}");
    assert!(err.msg.contains("try again later"));
    assert!(slc_links(&node).is_empty());
    assert!(pod.link_names().iter().all(|n| n == "lo"));
    assert!(!pins.dir.exists());
}

#[test]
fn a_failure_after_attach_undoes_veth_routes_pins_and_endpoints() {
    require_root();
    let node = TestNetns::new();
    let pod = TestNetns::new();
    let pins = Pins::loaded(&node);
    // The pod already has a default route (as if another plugin set one):
    // ADD fails when it adds its own, after the veth, host routes, TCX links
    // and endpoint entries exist.
    pod.block_on(async |nl| {
        nl.handle()
            .link()
            .add(LinkVeth::new("other0", "other0p").build())
            .execute()
            .await
            .unwrap();
        let l = nl.require_link("other0").await.unwrap();
        nl.set_up(l.index, "other0").await.unwrap();
        route::add(&nl, &RouteSpec::new(net("0.0.0.0/0"), None, Some(l.index)))
            .await
            .unwrap();
    });
    let handle = pod.handle();
    let ips = [ipcfg("10.199.6.2/24"), ipcfg("fd00:199::6:2/64")];
    let err = node
        .run(|| {
            routed::add(&PodSpec {
                container_id: "pod-e",
                ifname: "eth0",
                netns: &handle,
                mtu: 1500,
                container_mac: Some([0x02, 0, 0, 0, 0x06, 0x02]),
                ips: &ips,
                routes: &[],
                bpffs_dir: Some(&pins.dir),
                endpoint_flags: 0,
                tc_attach: TcAttach::Tcx,
            })
        })
        .unwrap_err();
    assert_eq!(err.code, Code::Kernel, "{err}");
    assert!(err.msg.contains("0.0.0.0/0"), "{err}");
    assert!(slc_links(&node).is_empty(), "veth left behind");
    assert!(
        pod.link_names()
            .iter()
            .all(|n| n == "lo" || n.starts_with("other0")),
        "{:?}",
        pod.link_names()
    );
    assert!(
        pins.link_pins().is_empty(),
        "link pins left: {:?}",
        pins.link_pins()
    );
    assert!(
        attach::endpoints_of(&pins.dir, endpoint_id("pod-e", "eth0"))
            .unwrap()
            .is_empty()
    );
    let routes = node.block_on(async |nl| {
        let mut r = route::list_main(&nl, false).await.unwrap();
        r.extend(route::list_main(&nl, true).await.unwrap());
        r
    });
    assert!(
        !routes
            .iter()
            .any(|r| r.dst == ip("10.199.6.2") || r.dst == ip("fd00:199::6:2")),
        "host routes left"
    );
}

#[test]
fn del_after_the_netns_is_gone_succeeds() {
    require_root();
    let node = TestNetns::new();
    let mut pod = TestNetns::new();
    let pins = Pins::loaded(&node);
    let ips = [ipcfg("10.199.7.2/24")];
    let p = add_pod(&node, &pod, "pod-f", &ips, &[], Some(&pins), TcAttach::Tcx);
    let path = pod.path.clone();
    pod.remove();
    assert!(NetnsHandle::open(&path).unwrap_err().is_gone());
    assert!(teardown(&node, "pod-f", Some(&p.host.name), Some(&path), Some(&pins)).is_empty());
    assert!(teardown(&node, "pod-f", None, Some(&path), Some(&pins)).is_empty());
    // The pair dies with the namespace (asynchronously) or with DEL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !slc_links(&node).is_empty() {
        assert!(std::time::Instant::now() < deadline, "veth still there");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(pins.link_pins().is_empty());
    assert!(
        attach::endpoints_of(&pins.dir, endpoint_id("pod-f", "eth0"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn veth_names_retry_on_eexist_and_honour_the_requested_mac() {
    require_root();
    let node = TestNetns::new();
    let pod = TestNetns::new();
    let taken = veth::host_name("pod-g", "eth0");
    node.block_on(async |nl| {
        nl.handle()
            .link()
            .add(LinkVeth::new(&taken, "takenp").build())
            .execute()
            .await
            .unwrap()
    });
    let h = pod.handle();
    let mac = [0x02, 0x42, 0x0a, 0xc7, 0x08, 0x02];
    let v = node
        .run(|| {
            veth::create(
                &h,
                &VethRequest {
                    container_id: "pod-g",
                    ifname: "net1",
                    mtu: 9000,
                    container_mac: Some(mac),
                    enable_dad: false,
                },
            )
        })
        .unwrap();
    assert_ne!(v.host.name, taken);
    assert!(v.host.name.starts_with("slc") && v.host.name.len() == 14);
    assert_eq!(v.container.name, "net1");
    assert_eq!(v.container.mac, Some(mac));
    assert_eq!((v.host.mtu, v.container.mtu), (9000, 9000));
    assert!(v.host.up && v.container.up);
    // The container end already exists: a clear error, nothing created.
    let err = node
        .run(|| {
            veth::create(
                &h,
                &VethRequest {
                    container_id: "pod-h",
                    ifname: "net1",
                    mtu: 1500,
                    container_mac: None,
                    enable_dad: false,
                },
            )
        })
        .unwrap_err();
    assert!(
        err.msg.contains("already has an interface named net1"),
        "{err}"
    );
    assert!(!node
        .link_names()
        .contains(&veth::host_name("pod-h", "net1")));
    assert!(node.run(|| veth::delete(&v.host.name)).unwrap());
    assert!(!node.run(|| veth::delete(&v.host.name)).unwrap());
    assert!(pod.link_names().iter().all(|n| n != "net1"));
}

#[test]
fn sysctls_apply_to_the_namespace_of_the_calling_thread() {
    require_root();
    let a = TestNetns::new();
    let b = TestNetns::new();
    let outside = sysctl::get(&["net", "ipv4", "ip_forward"]).unwrap();
    a.block_on(async |_| sysctl::enable_ipv4_forwarding().unwrap());
    assert_eq!(
        a.block_on(async |_| sysctl::get(&["net", "ipv4", "ip_forward"]).unwrap()),
        "1"
    );
    assert_eq!(
        b.block_on(async |_| sysctl::get(&["net", "ipv4", "ip_forward"]).unwrap()),
        "0"
    );
    assert_eq!(
        sysctl::get(&["net", "ipv4", "ip_forward"]).unwrap(),
        outside,
        "the machine's value changed"
    );
    // Per-interface keys resolve against the thread's namespace too.
    a.block_on(async |nl| {
        nl.handle()
            .link()
            .add(LinkVeth::new("d.1", "d.1p").build())
            .execute()
            .await
            .unwrap();
        sysctl::set_ipv4_conf("d.1", "proxy_arp", "1").unwrap();
        assert_eq!(
            sysctl::get(&["net", "ipv4", "conf", "d.1", "proxy_arp"]).unwrap(),
            "1"
        );
    });
    assert!(b
        .block_on(async |_| sysctl::get(&["net", "ipv4", "conf", "d.1", "proxy_arp"]))
        .is_err());
}

#[test]
fn mtu_comes_from_the_default_route_device() {
    require_root();
    let node = TestNetns::new();
    assert_eq!(node.run(|| mtu::resolve(None)).unwrap(), mtu::FALLBACK_MTU);
    assert_eq!(node.run(|| mtu::resolve(Some(1280))).unwrap(), 1280);
    node.block_on(async |nl| {
        nl.handle()
            .link()
            .add(LinkVeth::new("up0", "up0p").mtu(1450).build())
            .execute()
            .await
            .unwrap();
        let l = nl.require_link("up0").await.unwrap();
        nl.set_up(l.index, "up0").await.unwrap();
        addr::add(
            &nl,
            l.index,
            "up0",
            net("10.199.9.2/24"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
        route::add(
            &nl,
            &RouteSpec::new(net("0.0.0.0/0"), Some(ip("10.199.9.1")), Some(l.index)),
        )
        .await
        .unwrap();
    });
    assert_eq!(node.run(|| mtu::resolve(None)).unwrap(), 1450);
    assert_eq!(
        node.block_on(async |nl| mtu::uplink(&nl).await.unwrap()),
        Some(("up0".to_string(), 1450))
    );
}
