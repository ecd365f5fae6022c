//! GC and STATUS (CNI 1.1) against the real `sluice` binary in a test
//! "node" namespace: GC removes what stale attachments of its network hold
//! and keeps valid ones (and other networks'); STATUS answers 50 while ADD
//! could not succeed.
//!
//! Privileged and serial: `cargo test -p cni-plugin --test cni_gc_status --
//! --test-threads=1` (needs `cargo build -p cni-agent` first).

mod cni_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use cni_plugin::state::endpoint_id;
use cni_support::{reservations_in, result_ips, FakeAgent, World};
use serde_json::{json, Value};

const SLUICE_IPAM: &str = env!("CARGO_BIN_EXE_sluice-ipam");

/// A reservation made by IPAM alone, as an ADD that died before writing
/// its state record would leave it.
fn reserve_only(conf: &Value, cid: &str) {
    let mut child = Command::new(SLUICE_IPAM)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn gc_removes_stale_attachments_and_keeps_valid_ones() {
    let world = World::new();
    // TCX: a vanished veth leaves its link pins behind, for GC to remove.
    let conf = world.conf("1.1.0", json!({"ipMasq": true, "tcAttach": "tcx"}));
    // A second network sharing the state dir and bpffs dir.
    let other = world.conf(
        "1.1.0",
        json!({
            "name": format!("{}-o", world.net), "ipMasq": true, "tcAttach": "tcx",
            "ipam": {"ranges": [[{"subnet": "10.199.4.0/24"}]]},
        }),
    );
    let other_store = world.data_dir().join(format!("{}-o", world.net));

    let mut pods = Vec::new();
    for cid in ["gc-a", "gc-b", "gc-c", "gc-d", "gc-f"] {
        let pod = world.pod();
        let r = world.add(cid, &pod, &conf).ok();
        pods.push((cid, pod, r));
    }
    let pod_e = world.pod();
    let re = world.add("gc-e", &pod_e, &other).ok();
    reserve_only(&conf, "gc-leak");
    assert_eq!(world.reservations().len(), 5 * 2 + 2);

    // gc-f vanished without DEL and without its record: its veth is gone,
    // its pins, endpoint entries, masquerade rules and addresses are not.
    let host_f = pods[4].2["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    world.node.block_on(async |nl| {
        assert!(nl.delete_link_by_name(&host_f).await.unwrap());
    });
    std::fs::remove_file(world.state_dir().join("gc-f@eth0.json")).unwrap();
    assert_eq!(world.veth_link_pins().len(), 6 * 2);
    assert_eq!(world.endpoint_entries().len(), 5 * 2 + 1);

    world.gc(&conf, &[("gc-a", "eth0"), ("gc-c", "eth0")]).ok();

    // Kept: a and c of this network, e of the other.
    world.assert_clean_except(3);
    let mut state = world.state_files();
    state.sort();
    assert_eq!(
        state,
        ["gc-a@eth0.json", "gc-c@eth0.json", "gc-e@eth0.json"]
    );
    let mut kept: Vec<_> = [&pods[0].2, &pods[2].2]
        .iter()
        .flat_map(|r| result_ips(r))
        .collect();
    kept.sort();
    let mut have = world.reservations();
    have.sort();
    assert_eq!(have, kept, "b, d, f and the leaked reservation released");
    assert_eq!(reservations_in(&other_store), result_ips(&re));
    let owners: std::collections::BTreeSet<u64> =
        world.endpoint_entries().iter().map(|(_, id)| *id).collect();
    let want: std::collections::BTreeSet<u64> = ["gc-a", "gc-c", "gc-e"]
        .iter()
        .map(|c| endpoint_id(c, "eth0"))
        .collect();
    assert_eq!(owners, want);
    assert_eq!(world.masq_rules().len(), 2 + 2 + 1);
    for i in [0, 2] {
        let (cid, pod, r) = &pods[i];
        world.check(cid, pod, &conf, r).ok();
    }
    world.check("gc-e", &pod_e, &other, &re).ok();
    for i in [1, 3, 4] {
        assert_eq!(pods[i].1.link_names(), ["lo"], "{}", pods[i].0);
    }

    // Idempotent.
    world.gc(&conf, &[("gc-a", "eth0"), ("gc-c", "eth0")]).ok();
    world.assert_clean_except(3);

    // The older key, and an entry without ifname (the whole container).
    let mut old = conf.clone();
    old["cni.dev/attachments"] = json!([{"containerID": "gc-a"}]);
    world.run("GC", "", None, &[], &old).ok();
    world.assert_clean_except(2);
    assert_eq!(pods[2].1.link_names(), ["lo"]);
    world.check("gc-a", &pods[0].1, &conf, &pods[0].2).ok();

    // An empty list on the other network removes e only.
    world.gc(&other, &[]).ok();
    world.assert_clean_except(1);
    world.check("gc-a", &pods[0].1, &conf, &pods[0].2).ok();
    assert!(reservations_in(&other_store).is_empty());

    world
        .del("gc-a", Some(&pods[0].1.path), &conf, Some(&pods[0].2))
        .ok();
    world.assert_clean();
}

#[test]
fn status_is_50_until_add_could_succeed() {
    // The agent never ran.
    let world = World::unpinned();
    let conf = world.conf("1.1.0", json!({}));
    let e = world.status(&conf).expect_code(50);
    assert!(e["msg"].as_str().unwrap().contains("agent"), "{e}");
    drop(world);

    let world = World::new();
    let conf = world.conf("1.1.0", json!({}));
    assert_eq!(world.status(&conf).ok(), Value::Null);

    // IPAM exhausted: a /30 has one address to hand out.
    let small = world.conf(
        "1.1.0",
        json!({"ipam": {"ranges": [[{"subnet": "10.199.3.0/30"}]]}}),
    );
    world.status(&small).ok();
    let pod = world.pod();
    let r = world.add("st-1", &pod, &small).ok();
    let e = world.status(&small).expect_code(50);
    assert!(
        e["msg"].as_str().unwrap().contains("no IP addresses"),
        "{e}"
    );
    world.del("st-1", Some(&pod.path), &small, Some(&r)).ok();
    world.status(&small).ok();

    // waitForPolicy needs something listening on the agent socket.
    let wait = world.conf(
        "1.1.0",
        json!({"waitForPolicy": true, "policyTimeoutMs": 200}),
    );
    let e = world.status(&wait).expect_code(50);
    assert!(e["details"].as_str().unwrap().contains("agent.sock"), "{e}");
    {
        let _agent = FakeAgent::start(&world.socket(), Some("{\"ok\":true}\n"), Duration::ZERO);
        world.status(&wait).ok();
    }
    world.status(&wait).expect_code(50);
    // Without waitForPolicy the socket does not matter.
    world.status(&conf).ok();
    world.assert_clean();
}
