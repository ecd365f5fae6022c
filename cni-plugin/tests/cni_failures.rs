//! Failures against the real `sluice` binary in a test "node" namespace:
//! a failed ADD returns the right code and leaves nothing behind (no host
//! veth, IP reservation, `ENDPOINTS` entry, link pin, state record or
//! masquerade table); DEL succeeds in every degraded situation; CHECK
//! reports drift as code 102; and the malformed-input corpus creates
//! nothing on a live setup.
//!
//! Privileged and serial: `cargo test -p cni-plugin --test cni_failures --
//! --test-threads=1` (needs `cargo build -p cni-agent` first).

mod cni_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cni_plugin::{addr, attach, masq, route, state::endpoint_id};
use cni_support::{cni_path, files, ip, net, result_ips, run_in, FakeAgent, TestNetns, World};
use serde_json::{json, Value};

/// A fresh attachment in `world`: (pod, result).
fn added(world: &World, cid: &str, conf: &Value) -> (TestNetns, Value) {
    let pod = world.pod();
    let r = world.add(cid, &pod, conf).ok();
    (pod, r)
}

#[test]
fn add_before_the_agent_pinned_anything_is_11_and_creates_nothing() {
    let world = World::unpinned();
    let pod = world.pod();
    let conf = world.conf("1.1.0", json!({"ipMasq": true}));
    let e = world.add("np-1", &pod, &conf).expect_code(11);
    assert!(e["details"].as_str().unwrap().contains("from_pod"), "{e}");
    world.assert_clean();
    assert!(!world.store_dir().exists(), "IPAM was never asked");
    assert_eq!(pod.link_names(), ["lo"]);
    // STATUS says the same, and DEL of the failed ADD succeeds.
    world.status(&conf).expect_code(50);
    world.del("np-1", Some(&pod.path), &conf, None).ok();
    world.assert_clean();
}

#[test]
fn add_into_a_missing_netns_is_3_and_creates_nothing() {
    let world = World::new();
    let conf = world.conf("1.0.0", json!({}));
    let gone = Path::new("/run/netns/sluice-t-plumb-gone-0000");
    world
        .run("ADD", "gone-1", Some(gone), &[], &conf)
        .expect_code(3);
    world.assert_clean();
    assert!(!world.store_dir().exists());
    world.del("gone-1", Some(gone), &conf, None).ok();
}

#[test]
fn add_failing_at_the_container_interface_releases_the_address() {
    let world = World::new();
    let conf = world.conf("1.1.0", json!({"ipMasq": true}));
    let pod = world.pod();
    // The pod already has an interface named CNI_IFNAME.
    pod.block_on(async |nl| {
        nl.handle()
            .link()
            .add(rtnetlink::LinkVeth::new("eth0", "eth0peer").build())
            .execute()
            .await
            .unwrap();
    });
    let e = world.add("dup-if", &pod, &conf).expect_code(100);
    assert!(e["msg"].as_str().unwrap().contains("eth0"), "{e}");
    world.assert_clean();
    // IPAM was asked (its store exists) and gave the address back.
    assert!(world.store_dir().exists());
    assert!(world.reservations().is_empty());
    // The pod's own interface is untouched.
    let mut names = pod.link_names();
    names.sort();
    assert_eq!(names, ["eth0", "eth0peer", "lo"]);
    world.del("dup-if", Some(&pod.path), &conf, None).ok();
}

#[test]
fn add_failing_at_a_container_route_undoes_veth_pins_endpoints_and_address() {
    let world = World::new();
    // Bridge mode: IPAM routes go via their gateway; one that is not on
    // any link fails after the veth, pins and endpoint entries exist.
    let conf = world.conf(
        "1.1.0",
        json!({
            "mode": "bridge", "isGateway": true, "ipMasq": true,
            "ipam": {"routes": [{"dst": "10.199.250.0/24", "gw": "10.199.251.1"}]},
        }),
    );
    let pod = world.pod();
    let e = world.add("bad-route", &pod, &conf).expect_code(100);
    assert!(
        e["msg"].as_str().unwrap().contains("10.199.250.0/24"),
        "{e}"
    );
    world.assert_clean();
    assert_eq!(pod.link_names(), ["lo"]);
}

#[test]
fn add_with_ipam_exhausted_is_101_and_leaves_the_other_pod_alone() {
    let world = World::new();
    // A /30: .1 is the gateway, .2 the only address to hand out.
    let conf = world.conf(
        "1.1.0",
        json!({"ipam": {"ranges": [[{"subnet": "10.199.3.0/30"}]]}}),
    );
    let (pod_a, ra) = added(&world, "full-a", &conf);
    assert_eq!(result_ips(&ra), [ip("10.199.3.2")]);
    let pod_b = world.pod();
    let e = world.add("full-b", &pod_b, &conf).expect_code(101);
    assert!(e["msg"].as_str().unwrap().contains("10.199.3"), "{e}");
    world.assert_clean_except(1);
    assert_eq!(world.reservations(), [ip("10.199.3.2")]);
    assert_eq!(world.state_files(), ["full-a@eth0.json"]);
    assert_eq!(pod_b.link_names(), ["lo"]);
    // STATUS agrees: nothing left to hand out.
    world.status(&conf).expect_code(50);
    world.check("full-a", &pod_a, &conf, &ra).ok();
    world
        .del("full-a", Some(&pod_a.path), &conf, Some(&ra))
        .ok();
    world.assert_clean();
    world.status(&conf).ok();
}

#[test]
fn add_with_invalid_requests_fails_before_any_change() {
    let world = World::new();
    let pod = world.pod();
    for (patch, code) in [
        (json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}), 7),
        (json!({"mac": "ff:ff:ff:ff:ff:ff"}), 7),
        (json!({"ipam": null}), 7),
        (json!({"runtimeConfig": {"ips": ["10.200.0.5"]}}), 101),
    ] {
        let conf = world.conf("1.1.0", patch.clone());
        world.add("inv-1", &pod, &conf).expect_code(code);
        world.assert_clean();
        assert_eq!(pod.link_names(), ["lo"], "{patch}");
    }
    // An invalid MAC in CNI_ARGS is refused by the protocol layer.
    let conf = world.conf("1.1.0", json!({}));
    world
        .run(
            "ADD",
            "inv-2",
            Some(&pod.path),
            &[("CNI_ARGS", "MAC=zz:00:00:00:00:01")],
            &conf,
        )
        .expect_code(4);
    world.assert_clean();
}

#[test]
fn a_second_add_for_the_same_attachment_is_refused_and_changes_nothing() {
    let world = World::new();
    let conf = world.conf("1.1.0", json!({}));
    let (pod, r) = added(&world, "twice", &conf);
    let e = world.add("twice", &pod, &conf).expect_code(4);
    assert!(e["msg"].as_str().unwrap().contains("already"), "{e}");
    world.assert_clean_except(1);
    world.check("twice", &pod, &conf, &r).ok();
    world.del("twice", Some(&pod.path), &conf, Some(&r)).ok();
    world.assert_clean();
}

#[test]
fn wait_for_policy_failures_undo_the_whole_add() {
    let world = World::new();
    let conf = world.conf(
        "1.1.0",
        json!({"waitForPolicy": true, "policyTimeoutMs": 300, "ipMasq": true}),
    );
    let pod = world.pod();

    // No agent socket at all.
    let e = world.add("wfp-1", &pod, &conf).expect_code(11);
    assert!(
        e["details"].as_str().unwrap().contains("not listening"),
        "{e}"
    );
    world.assert_clean();
    world.status(&conf).expect_code(50);

    // An agent that never answers: timeout, then a `del` for what it saw.
    {
        let agent = FakeAgent::start(&world.socket(), None, Duration::from_secs(1));
        let e = world.add("wfp-2", &pod, &conf).expect_code(11);
        assert!(e["details"].as_str().unwrap().contains("within"), "{e}");
        world.assert_clean();
        assert_eq!(pod.link_names(), ["lo"]);
        let seen = agent.seen_n(2);
        let ops: Vec<&str> = seen.iter().map(|l| l["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["add", "del"], "{seen:?}");
    }

    // An agent that refuses.
    {
        let _agent = FakeAgent::start(
            &world.socket(),
            Some("{\"ok\":false,\"error\":\"policy for shop/web-0 does not compile\"}\n"),
            Duration::ZERO,
        );
        let e = world.add("wfp-3", &pod, &conf).expect_code(11);
        assert!(
            e["details"].as_str().unwrap().contains("does not compile"),
            "{e}"
        );
        world.assert_clean();
        // STATUS only needs the socket to accept connections.
        world.status(&conf).ok();
    }
}

#[test]
fn del_succeeds_in_every_degraded_situation() {
    let world = World::new();
    let conf = world.conf("1.1.0", json!({"ipMasq": true}));

    // Never added; without CNI_NETNS; twice.
    let pod = world.pod();
    world.del("never", Some(&pod.path), &conf, None).ok();
    world.del("never", None, &conf, None).ok();
    world.del("never", None, &conf, None).ok();

    // The agent's socket is a dead file: DEL does not wait for it.
    drop(std::os::unix::net::UnixListener::bind(world.socket()).unwrap());

    // Netns gone, no prevResult.
    let (mut pod_a, _) = added(&world, "del-a", &conf);
    let path_a = pod_a.path.clone();
    pod_a.remove();
    world.del("del-a", Some(&path_a), &conf, None).ok();
    world.del("del-a", Some(&path_a), &conf, None).ok();
    world.assert_clean();

    // No state record: the veth is found from the prevResult.
    let (pod_b, rb) = added(&world, "del-b", &conf);
    std::fs::remove_file(world.state_dir().join("del-b@eth0.json")).unwrap();
    world.del("del-b", None, &conf, Some(&rb)).ok();
    world.assert_clean();
    assert_eq!(pod_b.link_names(), ["lo"]);

    // Neither state nor prevResult: found through the container's peer.
    let (pod_c, _) = added(&world, "del-c", &conf);
    std::fs::remove_file(world.state_dir().join("del-c@eth0.json")).unwrap();
    world.del("del-c", Some(&pod_c.path), &conf, None).ok();
    world.assert_clean();
    assert_eq!(pod_c.link_names(), ["lo"]);

    // The agent's pins gone (agent cleaned up meanwhile).
    let (pod_d, rd) = added(&world, "del-d", &conf);
    let bare = world.conf(
        "1.1.0",
        json!({"ipMasq": true, "bpffsDir": world.tmp.path().join("nobpf")}),
    );
    world.del("del-d", Some(&pod_d.path), &bare, Some(&rd)).ok();
    world.assert_clean();
}

#[test]
fn del_keeps_going_past_errors_and_reports_them() {
    let world = World::new();
    let conf = world.conf("1.0.0", json!({}));
    let (pod, r) = added(&world, "dk-1", &conf);
    // DEL with an IPAM type nobody can run: the error is reported, the rest
    // is removed anyway.
    let broken = world.conf("1.0.0", json!({"ipam": {"type": "no-such-ipam"}}));
    let e = world
        .del("dk-1", Some(&pod.path), &broken, Some(&r))
        .expect_code(7);
    assert!(e["msg"].as_str().unwrap().contains("no-such-ipam"), "{e}");
    assert!(world.host_veths().is_empty());
    assert_eq!(world.datapath_hooks(), 0);
    assert!(world.endpoint_entries().is_empty());
    assert_eq!(world.reservations().len(), 2, "not released yet");
    // The retry with the right config finishes the job.
    world.del("dk-1", Some(&pod.path), &conf, Some(&r)).ok();
    world.assert_clean();
}

fn host_ifindex(world: &World, cid: &str) -> u32 {
    let text = std::fs::read_to_string(world.state_dir().join(format!("{cid}@eth0.json"))).unwrap();
    let rec: Value = serde_json::from_str(&text).unwrap();
    rec["hostIfindex"].as_u64().unwrap() as u32
}

#[test]
fn check_reports_each_kind_of_drift_as_102() {
    let world = World::new();
    let conf = world.conf("1.1.0", json!({"ipMasq": true}));
    type Breaker = fn(&World, &TestNetns, &str, &Value);
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "address",
            |_, pod, _, r| {
                let a = net(r["ips"][0]["address"].as_str().unwrap());
                pod.block_on(async |nl| {
                    let l = nl.require_link("eth0").await.unwrap();
                    addr::del(&nl, l.index, "eth0", a).await.unwrap();
                });
            },
            "address",
        ),
        (
            "default route",
            |_, pod, _, _| {
                pod.block_on(async |nl| {
                    let l = nl.require_link("eth0").await.unwrap();
                    let mut r = route::RouteSpec::new(
                        net("0.0.0.0/0"),
                        Some(ip("169.254.1.1")),
                        Some(l.index),
                    );
                    r.link_scope = false;
                    assert!(route::del(&nl, &r).await.unwrap());
                });
            },
            "route to 0.0.0.0/0",
        ),
        (
            "node route",
            |w, _, cid, r| {
                let a = net(r["ips"][1]["address"].as_str().unwrap());
                let index = host_ifindex(w, cid);
                w.node.block_on(async |nl| {
                    assert!(
                        route::del(&nl, &route::RouteSpec::new(a, None, Some(index)))
                            .await
                            .unwrap()
                    );
                });
            },
            "node route",
        ),
        (
            "programs",
            |w, _, _, r| {
                // What `tc filter del dev <veth> ingress pref 1` does.
                let host = r["interfaces"][0]["name"].as_str().unwrap();
                w.node
                    .run(|| {
                        aya::programs::tc::qdisc_detach_program(
                            host,
                            aya::programs::TcAttachType::Ingress,
                            "from_pod",
                        )
                    })
                    .unwrap();
            },
            "from_pod is not attached",
        ),
        (
            "endpoint entries",
            |w, _, cid, _| {
                assert_eq!(
                    attach::remove_endpoints(&w.pins.dir, endpoint_id(cid, "eth0"))
                        .unwrap()
                        .len(),
                    2
                );
            },
            "ENDPOINTS",
        ),
        (
            "source entry",
            |w, _, cid, r| {
                let index = host_ifindex(w, cid);
                let v4 = result_ips(r).into_iter().find(|a| a.is_ipv4()).unwrap();
                let key = attach::source_key(index, v4).unwrap();
                let pin = attach::sources_pin(&w.pins.dir);
                let mut map: aya::maps::HashMap<
                    _,
                    cni_ebpf_common::SourceKey4,
                    cni_ebpf_common::EndpointInfo,
                > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
                    aya::maps::MapData::from_pin(pin).unwrap(),
                ))
                .unwrap();
                map.remove(&key).unwrap();
            },
            "SOURCES4",
        ),
        (
            "state record",
            |w, _, cid, _| {
                std::fs::remove_file(w.state_dir().join(format!("{cid}@eth0.json"))).unwrap();
            },
            "state record",
        ),
        (
            "IP reservation",
            |w, _, _, r| {
                for a in result_ips(r) {
                    std::fs::remove_file(w.store_dir().join(a.to_string())).unwrap();
                }
            },
            "IP reservation",
        ),
        (
            "masquerade",
            |w, _, cid, _| {
                let id = endpoint_id(cid, "eth0");
                assert_eq!(w.node.run(|| masq::remove(id)).unwrap(), 2);
            },
            "masquerade",
        ),
    ];
    for (what, breaker, words) in cases {
        let cid = format!("drift-{}", what.replace(' ', "-"));
        let (pod, r) = added(&world, &cid, &conf);
        world.check(&cid, &pod, &conf, &r).ok();
        breaker(&world, &pod, &cid, &r);
        let e = world.check(&cid, &pod, &conf, &r).expect_code(102);
        assert!(
            e["msg"].as_str().unwrap().contains(words),
            "{what}: {e} should mention {words:?}"
        );
        world.del(&cid, Some(&pod.path), &conf, Some(&r)).ok();
        world.assert_clean();
    }

    // A prevResult that disagrees with the interface.
    let (pod, mut r) = added(&world, "drift-mac", &conf);
    r["interfaces"][1]["mac"] = json!("0a:00:00:00:00:01");
    let e = world.check("drift-mac", &pod, &conf, &r).expect_code(102);
    assert!(e["msg"].as_str().unwrap().contains("MAC"), "{e}");
    // The netns is gone: the container is unknown (code 3).
    let mut pod = pod;
    let path = pod.path.clone();
    pod.remove();
    world
        .run(
            "CHECK",
            "drift-mac",
            Some(&path),
            &[],
            &cni_support::with_prev(&conf, &r),
        )
        .expect_code(3);
    world.del("drift-mac", Some(&path), &conf, Some(&r)).ok();
    world.assert_clean();
}

/// Every case of `tests/corpus` (see its README) against a live setup: the
/// pod netns exists, the programs are pinned, the config points at this
/// world's dirs; each case must fail with its code and create nothing.
#[test]
fn the_malformed_input_corpus_creates_nothing_on_a_live_setup() {
    let world = World::new();
    let pod = world.pod();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let base_env: BTreeMap<String, String> = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "corpus-ctr".to_string()),
        ("CNI_NETNS", pod.path.display().to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", cni_path()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let base_conf = json!({
        "cniVersion": "1.1.0",
        "name": world.net,
        "type": "sluice",
        "bpffsDir": world.pins.dir,
        "stateDir": world.state_dir(),
        "agentSocket": world.socket(),
        "ipMasq": true,
        "ipam": {"type": "sluice-ipam", "subnet": "10.199.9.0/24", "dataDir": world.data_dir()}
    });
    let mut count = 0;
    let mut adds = 0;
    for file in files(&dir).iter().filter(|f| f.ends_with(".json")) {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let mut env = base_env.clone();
            if let Some(changes) = case.get("env").and_then(Value::as_object) {
                for (k, v) in changes {
                    match v.as_str() {
                        Some(s) => env.insert(k.clone(), s.to_string()),
                        None => env.remove(k),
                    };
                }
            }
            let stdin = if let Some(s) = case.get("stdin") {
                s.as_str().unwrap().as_bytes().to_vec()
            } else if let Some(c) = case.get("config") {
                c.to_string().into_bytes()
            } else {
                let mut c = base_conf.clone();
                for (k, v) in case
                    .get("patch")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if v.is_null() {
                        c.as_object_mut().unwrap().remove(k);
                    } else {
                        c[k] = v.clone();
                    }
                }
                c.to_string().into_bytes()
            };
            if env.get("CNI_COMMAND").map(String::as_str) == Some("ADD") {
                adds += 1;
            }
            let env: Vec<(String, String)> = env.into_iter().collect();
            let out = run_in(&world.node.path, &env, &stdin);
            let want = case["code"].as_u64().unwrap();
            assert_eq!(out.code(), want, "{file}/{name}: {}", out.stdout);
            count += 1;
        }
    }
    assert!(count > 150 && adds > 100, "{count} cases, {adds} ADDs");
    world.assert_clean();
    assert!(!world.store_dir().exists(), "IPAM store created");
    assert!(!world.state_dir().exists(), "state dir created");
    assert_eq!(pod.link_names(), ["lo"]);
}
