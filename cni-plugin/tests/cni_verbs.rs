//! The real `sluice` binary, run inside a test "node" namespace the way a
//! runtime runs it: every verb in every version it exists in, the result
//! layout of each version, routed and bridge modes, dual-stack sluice-ipam
//! and delegated host-local, and TCP traffic between the namespaces.
//!
//! Privileged and serial: `cargo test -p cni-plugin --test cni_verbs --
//! --test-threads=1` (needs `cargo build -p cni-agent` first).

mod cni_support;

use std::time::Duration;

use cni_support::plumbing::tcp_echo;
use cni_support::{ip, net, result_ips, FakeAgent, TestNetns, World, NODE_V4, NODE_V6, VERSIONS};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    Routed,
    Bridge,
}

fn at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let v: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    (v[0], v[1], v[2]) >= min
}

/// The result of ADD as the spec lays it out for `version`.
fn check_layout(version: &str, r: &Value, layout: Layout, pod: &TestNetns, mtu: u64) {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifs = r["interfaces"].as_array().expect("interfaces");
    let (host, cont) = match layout {
        Layout::Routed => {
            assert_eq!(ifs.len(), 2, "{r}");
            (0, 1)
        }
        Layout::Bridge => {
            assert_eq!(ifs.len(), 3, "{r}");
            assert_eq!(ifs[0]["name"], "cni0", "{r}");
            assert!(ifs[0].get("sandbox").is_none(), "{r}");
            (1, 2)
        }
    };
    assert!(
        ifs[host]["name"].as_str().unwrap().starts_with("slc"),
        "{r}"
    );
    assert!(ifs[host].get("sandbox").is_none(), "{r}");
    assert_eq!(ifs[cont]["name"], "eth0", "{r}");
    assert_eq!(ifs[cont]["sandbox"], pod.path.to_str().unwrap(), "{r}");
    for i in ifs {
        let mac = i["mac"].as_str().expect("mac");
        assert_eq!(mac.len(), 17, "{r}");
    }
    for i in [host, cont] {
        if at_least(version, (1, 1, 0)) {
            assert_eq!(ifs[i]["mtu"], mtu, "1.1 results carry the MTU: {r}");
        } else {
            assert!(ifs[i].get("mtu").is_none(), "no mtu before 1.1: {r}");
        }
    }
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "dual stack: {r}");
    for (n, ipc) in ips.iter().enumerate() {
        assert_eq!(ipc["interface"], cont, "{r}");
        let family = if n == 0 { "4" } else { "6" };
        if at_least(version, (1, 0, 0)) {
            assert!(ipc.get("version").is_none(), "{r}");
        } else {
            assert_eq!(ipc["version"], family, "{r}");
        }
    }
    let routes = r["routes"].as_array().expect("routes");
    let has = |dst: &str, gw: &str| routes.iter().any(|x| x["dst"] == dst && x["gw"] == gw);
    match layout {
        Layout::Routed => {
            assert!(ips[0]["address"].as_str().unwrap().ends_with("/32"), "{r}");
            assert_eq!(ips[0]["gateway"], "169.254.1.1", "{r}");
            assert!(ips[1]["address"].as_str().unwrap().ends_with("/128"), "{r}");
            assert_eq!(ips[1]["gateway"], "fe80::1", "{r}");
            assert!(
                has("0.0.0.0/0", "169.254.1.1") && has("::/0", "fe80::1"),
                "{r}"
            );
        }
        Layout::Bridge => {
            assert!(ips[0]["address"].as_str().unwrap().ends_with("/24"), "{r}");
            assert_eq!(ips[0]["gateway"], "10.199.1.1", "{r}");
            assert!(ips[1]["address"].as_str().unwrap().ends_with("/64"), "{r}");
            assert_eq!(ips[1]["gateway"], "fd00:199::1", "{r}");
            assert!(
                has("0.0.0.0/0", "10.199.1.1") && has("::/0", "fd00:199::1"),
                "{r}"
            );
        }
    }
}

/// ADD → CHECK → (STATUS, GC) → DEL → DEL in every version, clean after
/// each.
fn every_version(world: &World, layout: Layout, patch: Value, versions: &[&str]) {
    for version in versions {
        let conf = world.conf(version, patch.clone());
        let pod = world.pod();
        let cid = format!("verbs-{}", version.replace('.', ""));
        let result = world.add(&cid, &pod, &conf).ok();
        check_layout(version, &result, layout, &pod, 1500);
        assert_eq!(world.state_files(), [format!("{cid}@eth0.json")]);
        assert_eq!(world.datapath_hooks(), 2);
        assert_eq!(world.endpoint_entries().len(), 2);
        let masq = if conf["ipMasq"] == true { 2 } else { 0 };
        assert_eq!(world.masq_rules().len(), masq, "{version}");

        if at_least(version, (0, 4, 0)) {
            assert_eq!(world.check(&cid, &pod, &conf, &result).ok(), Value::Null);
        } else {
            // CHECK does not exist before 0.4.0.
            world.check(&cid, &pod, &conf, &result).expect_code(1);
        }
        if at_least(version, (1, 1, 0)) {
            assert_eq!(world.status(&conf).ok(), Value::Null);
            // GC with the pod listed keeps it whole.
            assert_eq!(world.gc(&conf, &[(&cid, "eth0")]).ok(), Value::Null);
            world.check(&cid, &pod, &conf, &result).ok();
        } else {
            world.status(&conf).expect_code(1);
            world.gc(&conf, &[]).expect_code(1);
        }
        assert_eq!(
            world.del(&cid, Some(&pod.path), &conf, Some(&result)).ok(),
            Value::Null
        );
        world.assert_clean();
        world.del(&cid, Some(&pod.path), &conf, None).ok();
        if at_least(version, (1, 1, 0)) {
            world.gc(&conf, &[]).ok();
        }
        world.assert_clean();
        // The container's interface went with the veth.
        assert_eq!(pod.link_names(), ["lo"], "{version}");
    }
}

#[test]
fn routed_every_verb_in_every_version_dual_stack() {
    let world = World::new();
    every_version(&world, Layout::Routed, json!({}), &VERSIONS);
}

#[test]
fn bridge_every_verb_in_every_version_dual_stack() {
    let world = World::new();
    every_version(
        &world,
        Layout::Bridge,
        json!({"isDefaultGateway": true, "ipMasq": true}),
        &VERSIONS,
    );
    // The bridge itself stays (the reference plugin never deletes it).
    assert!(world.node.link_names().contains(&"cni0".to_string()));
}

#[test]
fn delegated_host_local_in_every_version_it_speaks() {
    let world = World::new();
    // Debian's host-local speaks up to 1.0.0.
    every_version(
        &world,
        Layout::Routed,
        json!({"ipam": {"type": "host-local"}}),
        &VERSIONS[..4],
    );
    // host-local wrote its files where sluice-ipam would: the same layout.
    let pod = world.pod();
    let conf = world.conf("1.0.0", json!({"ipam": {"type": "host-local"}}));
    let r = world.add("hl-1", &pod, &conf).ok();
    let mut want = result_ips(&r);
    want.sort();
    let mut have = world.reservations();
    have.sort();
    assert_eq!(have, want);
    world.del("hl-1", Some(&pod.path), &conf, Some(&r)).ok();
    world.assert_clean();
}

#[test]
fn routed_pods_talk_to_each_other_and_to_the_node_over_tcp() {
    let world = World::new();
    world.node_addresses();
    let conf = world.conf("1.1.0", json!({}));
    let (pod_a, pod_b) = (world.pod(), world.pod());
    let ra = world.add("tcp-a", &pod_a, &conf).ok();
    let rb = world.add("tcp-b", &pod_b, &conf).ok();
    let (a, b) = (result_ips(&ra), result_ips(&rb));
    assert_ne!(a, b);

    let peer = tcp_echo(&pod_b, b[0], &pod_a, 128 * 1024);
    assert_eq!(peer.ip(), a[0], "no NAT between pods");
    let peer = tcp_echo(&pod_a, a[1], &pod_b, 64 * 1024);
    assert_eq!(peer.ip(), b[1]);
    // Pod to node, node to pod (the node's own address, not 169.254.1.1).
    tcp_echo(&world.node, ip(NODE_V4), &pod_a, 4096);
    tcp_echo(&world.node, ip(NODE_V6), &pod_b, 4096);
    let peer = tcp_echo(&pod_a, a[0], &world.node, 4096);
    assert_eq!(peer.ip(), ip(NODE_V4));

    world.del("tcp-a", Some(&pod_a.path), &conf, Some(&ra)).ok();
    world.del("tcp-b", Some(&pod_b.path), &conf, Some(&rb)).ok();
    world.assert_clean();
}

#[test]
fn bridge_pods_talk_to_each_other_and_to_the_gateway_over_tcp() {
    let world = World::new();
    let conf = world.conf("1.0.0", json!({"isDefaultGateway": true}));
    let (pod_a, pod_b) = (world.pod(), world.pod());
    let ra = world.add("br-a", &pod_a, &conf).ok();
    let rb = world.add("br-b", &pod_b, &conf).ok();
    let (a, b) = (result_ips(&ra), result_ips(&rb));

    let peer = tcp_echo(&pod_b, b[0], &pod_a, 128 * 1024);
    assert_eq!(peer.ip(), a[0]);
    let peer = tcp_echo(&pod_a, a[1], &pod_b, 64 * 1024);
    assert_eq!(peer.ip(), b[1]);
    tcp_echo(&world.node, ip("10.199.1.1"), &pod_a, 4096);
    tcp_echo(&world.node, ip("fd00:199::1"), &pod_b, 4096);
    let peer = tcp_echo(&pod_b, b[0], &world.node, 4096);
    assert_eq!(peer.ip(), ip("10.199.1.1"));

    world.del("br-a", Some(&pod_a.path), &conf, Some(&ra)).ok();
    world.del("br-b", Some(&pod_b.path), &conf, Some(&rb)).ok();
    world.assert_clean();
}

#[test]
fn requested_addresses_mac_dns_and_the_state_record() {
    let world = World::new();
    let resolv = world.tmp.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.199.0.53\nsearch ipam.example\n").unwrap();
    let pod = world.pod();
    // runtimeConfig.ips + mac capability, CNI_ARGS for the pod's identity.
    let conf = world.conf(
        "1.1.0",
        json!({
            "runtimeConfig": {"ips": ["10.199.1.77/24", "fd00:199::77"], "mac": "0a:58:0a:c7:01:4d"},
            "ipam": {"resolvConf": resolv},
        }),
    );
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u-1";
    let r = world
        .run(
            "ADD",
            "req-1",
            Some(&pod.path),
            &[("CNI_ARGS", args)],
            &conf,
        )
        .ok();
    assert_eq!(result_ips(&r), [ip("10.199.1.77"), ip("fd00:199::77")]);
    assert_eq!(r["interfaces"][1]["mac"], "0a:58:0a:c7:01:4d");
    // DNS from IPAM when the config has none.
    assert_eq!(r["dns"]["nameservers"], json!(["10.199.0.53"]));
    assert_eq!(r["dns"]["search"], json!(["ipam.example"]));

    let text = std::fs::read_to_string(world.state_dir().join("req-1@eth0.json")).unwrap();
    let rec: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["network"], world.net);
    assert_eq!(rec["netns"], pod.path.to_str().unwrap());
    assert_eq!(rec["hostVeth"], r["interfaces"][0]["name"]);
    assert_eq!(rec["mode"], "routed");
    assert_eq!(
        rec["addresses"],
        json!(["10.199.1.77/24", "fd00:199::77/64"]),
        "addresses with IPAM's prefix"
    );
    assert_eq!(rec["podNamespace"], "shop");
    assert_eq!(rec["podName"], "web-0");
    assert_eq!(rec["podUid"], "u-1");
    assert_eq!(rec["containerMac"], "0a:58:0a:c7:01:4d");
    assert_eq!(rec["bpffsDir"], world.pins.dir.to_str().unwrap());
    let check = world.run(
        "CHECK",
        "req-1",
        Some(&pod.path),
        &[("CNI_ARGS", args)],
        &cni_support::with_prev(&conf, &r),
    );
    check.ok();
    world.del("req-1", Some(&pod.path), &conf, Some(&r)).ok();

    // The config's dns wins over IPAM's (the bridge plugin's rule); CNI_ARGS
    // IP= is honoured.
    let conf = world.conf(
        "1.0.0",
        json!({"dns": {"nameservers": ["10.199.0.54"]}, "ipam": {"resolvConf": resolv}}),
    );
    let r = world
        .run(
            "ADD",
            "req-2",
            Some(&pod.path),
            &[("CNI_ARGS", "IP=10.199.1.88")],
            &conf,
        )
        .ok();
    assert_eq!(result_ips(&r)[0], ip("10.199.1.88"));
    assert_eq!(r["dns"], json!({"nameservers": ["10.199.0.54"]}));
    world.del("req-2", Some(&pod.path), &conf, Some(&r)).ok();

    // The ipRanges capability replaces the configured ranges; args.cni.ips
    // picks the address in it.
    let conf = world.conf(
        "1.1.0",
        json!({
            "runtimeConfig": {"ipRanges": [[{"subnet": "10.199.5.0/24"}]]},
            "args": {"cni": {"ips": ["10.199.5.9"]}},
        }),
    );
    let r = world.add("req-3", &pod, &conf).ok();
    assert_eq!(result_ips(&r), [ip("10.199.5.9")]);
    world.check("req-3", &pod, &conf, &r).ok();
    world.del("req-3", Some(&pod.path), &conf, Some(&r)).ok();
    world.assert_clean();
}

#[test]
fn add_after_another_plugin_reports_only_what_sluice_built() {
    // As the reference bridge plugin: a prevResult on ADD is not merged.
    let world = World::new();
    let conf = world.conf("1.0.0", json!({}));
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0", "mac": "0a:00:00:00:00:09"}],
        "ips": [{"address": "10.199.7.7/24", "interface": 0}],
    });
    let pod = world.pod();
    let r = world
        .add("chain-1", &pod, &cni_support::with_prev(&conf, &prev))
        .ok();
    check_layout("1.0.0", &r, Layout::Routed, &pod, 1500);
    assert!(!r.to_string().contains("dummy0"), "{r}");
    world.del("chain-1", Some(&pod.path), &conf, Some(&r)).ok();
    world.assert_clean();
}

#[test]
fn wait_for_policy_with_an_agent_that_confirms() {
    let world = World::new();
    let agent = FakeAgent::start(&world.socket(), Some("{\"ok\":true}\n"), Duration::ZERO);
    let conf = world.conf(
        "1.1.0",
        json!({"waitForPolicy": true, "policyTimeoutMs": 3000}),
    );
    assert_eq!(world.status(&conf).ok(), Value::Null);
    let pod = world.pod();
    let r = world
        .run(
            "ADD",
            "pol-1",
            Some(&pod.path),
            &[("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=api-1")],
            &conf,
        )
        .ok();
    let seen = agent.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let add = &seen[0];
    assert_eq!(add["op"], "add");
    assert_eq!(add["wait"], true);
    assert_eq!(add["containerId"], "pol-1");
    assert_eq!(add["ifname"], "eth0");
    assert_eq!(add["network"], world.net);
    assert_eq!(add["podNamespace"], "shop");
    assert_eq!(add["podName"], "api-1");
    assert_eq!(
        add["endpointId"],
        format!("{:016x}", cni_plugin::state::endpoint_id("pol-1", "eth0"))
    );
    let addrs: Vec<_> = add["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| net(a.as_str().unwrap()).addr())
        .collect();
    assert_eq!(addrs, result_ips(&r));

    world.del("pol-1", Some(&pod.path), &conf, Some(&r)).ok();
    let seen = agent.seen_n(2);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1]["op"], "del");
    assert_eq!(seen[1]["wait"], false);
    assert_eq!(seen[1]["endpointId"], add["endpointId"]);
    world.assert_clean();
}
