//! `ipMasq` end to end: nftables rules in a test "node" namespace, written
//! and read back over netlink, and real traffic from a pod to an "outside"
//! namespace that has no route back to the pod network, so replies only
//! arrive when the pod's traffic is masqueraded.
//!
//! Privileged and serial: `cargo test -p cni-plugin --test plumbing_masq
//! -- --test-threads=1`.

mod plumbing_support;

use std::net::IpAddr;

use cni_plugin::{
    addr::{self, AddrOptions},
    attach::TcAttach,
    masq::{self, MasqEntry},
    routed,
    state::endpoint_id,
    types::IpConfig,
    veth::{self, PodSpec, VethRequest},
};
use ipnet::IpNet;
use plumbing_support::{require_root, tcp_echo, tcp_unreachable, TestNetns};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// node <-> outside link: node 10.199.250.1/24 + fd00:199::fa:1/112,
/// outside 10.199.250.2/24 + fd00:199::fa:2/112, no routes back.
fn outside_link(node: &TestNetns, outside: &TestNetns) {
    let h = outside.handle();
    let v = node
        .run(|| {
            veth::create(
                &h,
                &VethRequest {
                    container_id: "outside",
                    ifname: "up0p",
                    mtu: 1500,
                    container_mac: None,
                    enable_dad: false,
                },
            )
        })
        .unwrap();
    let (hi, hn) = (v.host.index, v.host.name.clone());
    node.block_on(async |nl| {
        addr::add(&nl, hi, &hn, net("10.199.250.1/24"), AddrOptions::default())
            .await
            .unwrap();
        addr::add(
            &nl,
            hi,
            &hn,
            net("fd00:199::fa:1/112"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
    });
    let ci = v.container.index;
    outside.block_on(async |nl| {
        addr::add(
            &nl,
            ci,
            "up0p",
            net("10.199.250.2/24"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
        addr::add(
            &nl,
            ci,
            "up0p",
            net("fd00:199::fa:2/112"),
            AddrOptions::default(),
        )
        .await
        .unwrap();
    });
}

#[test]
fn masquerade_rules_appear_work_and_disappear() {
    require_root();
    let node = TestNetns::new();
    let pod_a = TestNetns::new();
    let pod_b = TestNetns::new();
    let outside = TestNetns::new();
    outside_link(&node, &outside);
    let ips_a = [
        IpConfig {
            address: net("10.199.10.2/24"),
            gateway: None,
            interface: None,
        },
        IpConfig {
            address: net("fd00:199::a:2/112"),
            gateway: None,
            interface: None,
        },
    ];
    let ips_b = [IpConfig {
        address: net("10.199.10.3/24"),
        gateway: None,
        interface: None,
    }];
    for (pod, cid, ips) in [(&pod_a, "m-a", &ips_a[..]), (&pod_b, "m-b", &ips_b[..])] {
        let h = pod.handle();
        node.run(|| {
            routed::add(&PodSpec {
                container_id: cid,
                ifname: "eth0",
                netns: &h,
                mtu: 1500,
                container_mac: None,
                ips,
                routes: &[],
                bpffs_dir: None,
                endpoint_flags: 0,
                tc_attach: TcAttach::Tcx,
            })
        })
        .unwrap();
    }

    // Without masquerade the outside cannot answer.
    assert!(node.run(masq::list).unwrap().is_empty());
    assert!(!node.run(masq::table_exists).unwrap());
    assert!(tcp_unreachable(&pod_a, ip("10.199.250.2")));

    let (id_a, id_b) = (endpoint_id("m-a", "eth0"), endpoint_id("m-b", "eth0"));
    let entries_a: Vec<MasqEntry> = ips_a
        .iter()
        .map(|i| MasqEntry { addr: i.address })
        .collect();
    node.run(|| masq::add("masqnet", "m-a", id_a, &entries_a))
        .unwrap();
    // ADD again replaces, never duplicates.
    node.run(|| masq::add("masqnet", "m-a", id_a, &entries_a))
        .unwrap();
    node.run(|| {
        masq::add(
            "masqnet",
            "m-b",
            id_b,
            &[MasqEntry {
                addr: ips_b[0].address,
            }],
        )
    })
    .unwrap();
    let rules = node.run(masq::list).unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    let a_rules: Vec<_> = rules
        .iter()
        .filter(|r| r.comment.starts_with(&masq::comment_prefix(id_a)))
        .collect();
    assert_eq!(a_rules.len(), 2);
    assert_eq!(
        a_rules[0].comment,
        format!("sluice {id_a:016x} masqnet m-a")
    );

    // Leaving the pod network: masqueraded to the node's address.
    let peer = tcp_echo(&outside, ip("10.199.250.2"), &pod_a, 32 * 1024);
    assert_eq!(peer.ip(), ip("10.199.250.1"));
    let peer = tcp_echo(&outside, ip("fd00:199::fa:2"), &pod_a, 8 * 1024);
    assert_eq!(peer.ip(), ip("fd00:199::fa:1"));
    // Inside the pod network: not masqueraded.
    let peer = tcp_echo(&pod_b, ip("10.199.10.3"), &pod_a, 4096);
    assert_eq!(peer.ip(), ip("10.199.10.2"));

    // DEL of a: its rules go, b's stay, the table stays for b.
    assert_eq!(node.run(|| masq::remove(id_a)).unwrap(), 2);
    assert_eq!(node.run(|| masq::remove(id_a)).unwrap(), 0);
    let rules = node.run(masq::list).unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].comment.starts_with(&masq::comment_prefix(id_b)));
    assert!(tcp_unreachable(&pod_a, ip("10.199.250.2")));
    // Last rule gone: chain and table go too.
    assert_eq!(node.run(|| masq::remove(id_b)).unwrap(), 1);
    assert!(!node.run(masq::table_exists).unwrap());
    assert!(node.run(masq::list).unwrap().is_empty());
    assert_eq!(node.run(|| masq::remove(id_b)).unwrap(), 0);
}
