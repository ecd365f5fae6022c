//! The real `sluice-ipam` binary, driven as a runtime drives it: every
//! command, every result layout from 0.3.1 to 1.1.0, the spec's error JSON.

mod ipam_support;

use ipam_support::{names, netconf, reserved, run, run_raw, TempDir, SLUICE_IPAM};
use serde_json::{json, Value};

const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn dual_stack(version: &str, data: &TempDir, resolv: &std::path::Path) -> Value {
    netconf(
        version,
        "dual",
        "sluice-ipam",
        data.path(),
        json!({
            "ranges": [[{ "subnet": "10.40.0.0/24" }], [{ "subnet": "fd00:40::/64" }]],
            "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }],
            "resolvConf": resolv
        }),
    )
}

#[test]
fn version_lists_supported_versions() {
    let out = run_raw(
        SLUICE_IPAM,
        "VERSION",
        "",
        "",
        br#"{"cniVersion":"1.0.0"}"#,
        &[],
    );
    assert!(out.ok, "{out:?}");
    let v = out.json();
    assert_eq!(v["cniVersion"], "1.0.0");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for version in VERSIONS {
        assert!(supported.contains(&version), "{v}");
    }
}

#[test]
fn add_and_del_in_every_result_layout() {
    let data = TempDir::new("ipam-bin");
    let resolv = data.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.40.0.53\nsearch svc.example\n").unwrap();
    for version in VERSIONS {
        let conf = dual_stack(version, &data, &resolv);
        let cid = format!("c-{version}");
        let out = run(SLUICE_IPAM, "ADD", &cid, &conf, &[]);
        assert!(out.ok, "{version}: {out:?}");
        let r = out.json();
        assert_eq!(r["cniVersion"], version);
        assert!(
            r.get("interfaces").is_none(),
            "IPAM results carry no interfaces: {r}"
        );
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{r}");
        assert!(
            ips[0]["address"].as_str().unwrap().starts_with("10.40.0."),
            "{r}"
        );
        assert_eq!(ips[0]["gateway"], "10.40.0.1");
        assert!(
            ips[1]["address"].as_str().unwrap().starts_with("fd00:40::"),
            "{r}"
        );
        assert_eq!(ips[1]["gateway"], "fd00:40::1");
        if version < "1.0.0" {
            assert_eq!(ips[0]["version"], "4", "{r}");
            assert_eq!(ips[1]["version"], "6", "{r}");
        } else {
            assert!(ips[0].get("version").is_none(), "{r}");
        }
        assert!(ips[0].get("interface").is_none(), "{r}");
        assert_eq!(r["routes"].as_array().unwrap().len(), 2, "{r}");
        assert_eq!(r["dns"]["nameservers"][0], "10.40.0.53", "{r}");
        assert_eq!(r["dns"]["search"][0], "svc.example", "{r}");

        let del = run(SLUICE_IPAM, "DEL", &cid, &conf, &[]);
        assert!(del.ok && del.stdout.trim().is_empty(), "{version}: {del:?}");
        let again = run(SLUICE_IPAM, "DEL", &cid, &conf, &[]);
        assert!(again.ok, "DEL is idempotent: {again:?}");
    }
    assert!(reserved(&data.path().join("dual")).is_empty());
}

#[test]
fn add_is_idempotent_and_round_robin_spans_processes() {
    let data = TempDir::new("ipam-bin");
    let conf = netconf(
        "1.0.0",
        "rr",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.41.0.0/29" }),
    );
    let a = run(SLUICE_IPAM, "ADD", "a", &conf, &[]).addresses();
    assert_eq!(a, ["10.41.0.2/29"]);
    assert_eq!(
        run(SLUICE_IPAM, "ADD", "a", &conf, &[]).addresses(),
        a,
        "same attachment, same address"
    );
    assert_eq!(
        run(SLUICE_IPAM, "ADD", "b", &conf, &[]).addresses(),
        ["10.41.0.3/29"]
    );
    assert!(run(SLUICE_IPAM, "DEL", "a", &conf, &[]).ok);
    assert_eq!(
        run(SLUICE_IPAM, "ADD", "c", &conf, &[]).addresses(),
        ["10.41.0.4/29"]
    );
    // Another interface of container c is another attachment.
    let other_if = run_raw(
        SLUICE_IPAM,
        "ADD",
        "c",
        "net1",
        conf.to_string().as_bytes(),
        &[],
    );
    assert_eq!(other_if.addresses(), ["10.41.0.5/29"]);
}

#[test]
fn requested_addresses_from_cni_args_and_capabilities() {
    let data = TempDir::new("ipam-bin");
    let mut conf = netconf(
        "1.0.0",
        "req",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.42.0.0/24" }),
    );
    let out = run(
        SLUICE_IPAM,
        "ADD",
        "a",
        &conf,
        &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.42.0.77;K8S_POD_NAME=p")],
    );
    assert_eq!(out.addresses(), ["10.42.0.77/24"]);
    conf["runtimeConfig"] = json!({ "ips": ["10.42.0.88/24"] });
    assert_eq!(
        run(SLUICE_IPAM, "ADD", "b", &conf, &[]).addresses(),
        ["10.42.0.88/24"]
    );
    // Taken.
    let taken = run(SLUICE_IPAM, "ADD", "c", &conf, &[]);
    assert_eq!(taken.code(), 101, "{taken:?}");
    assert!(
        taken.json()["msg"].as_str().unwrap().contains("10.42.0.88"),
        "{taken:?}"
    );
    // runtimeConfig.ipRanges replaces the configured range.
    conf["runtimeConfig"] =
        json!({ "ipRanges": [[{ "subnet": "10.43.0.0/24", "rangeStart": "10.43.0.200" }]] });
    assert_eq!(
        run(SLUICE_IPAM, "ADD", "d", &conf, &[]).addresses(),
        ["10.43.0.200/24"]
    );
}

#[test]
fn check_in_every_layout_that_has_it() {
    let data = TempDir::new("ipam-bin");
    let resolv = data.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.40.0.53\n").unwrap();
    let old = dual_stack("0.3.1", &data, &resolv);
    let refused = run(SLUICE_IPAM, "CHECK", "x", &old, &[]);
    assert_eq!(
        refused.code(),
        1,
        "CHECK does not exist in 0.3.1: {refused:?}"
    );
    for version in &VERSIONS[1..] {
        let mut conf = dual_stack(version, &data, &resolv);
        let cid = format!("chk-{version}");
        let add = run(SLUICE_IPAM, "ADD", &cid, &conf, &[]);
        conf["prevResult"] = add.json();
        let check = run(SLUICE_IPAM, "CHECK", &cid, &conf, &[]);
        assert!(check.ok, "{version}: {check:?}");
        assert!(run(SLUICE_IPAM, "DEL", &cid, &conf, &[]).ok);
        let gone = run(SLUICE_IPAM, "CHECK", &cid, &conf, &[]);
        assert_eq!(gone.code(), 101, "{version}: {gone:?}");
        assert!(
            gone.json()["msg"].as_str().unwrap().contains(&cid),
            "{gone:?}"
        );
    }
}

#[test]
fn gc_releases_stale_reservations() {
    let data = TempDir::new("ipam-bin");
    let conf = netconf(
        "1.1.0",
        "gc",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.44.0.0/24" }),
    );
    for cid in ["keep", "stale1", "stale2"] {
        assert!(run(SLUICE_IPAM, "ADD", cid, &conf, &[]).ok);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "keep", "ifname": "eth0" }]);
    let out = run(SLUICE_IPAM, "GC", "", &gc, &[]);
    assert!(out.ok && out.stdout.trim().is_empty(), "{out:?}");
    assert_eq!(reserved(&data.path().join("gc")), ["10.44.0.2"]);
    // The list is required: without it nothing is released.
    let missing = run(SLUICE_IPAM, "GC", "", &conf, &[]);
    assert_eq!(missing.code(), 7, "{missing:?}");
    assert_eq!(reserved(&data.path().join("gc")).len(), 1);
    // GC does not exist before 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(run(SLUICE_IPAM, "GC", "", &old, &[]).code(), 1);
    // No store yet: nothing to do.
    let fresh = netconf(
        "1.1.0",
        "never-used",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.45.0.0/24" }),
    );
    let mut fresh_gc = fresh.clone();
    fresh_gc["cni.dev/valid-attachments"] = json!([]);
    assert!(run(SLUICE_IPAM, "GC", "", &fresh_gc, &[]).ok);
    assert!(!data.path().join("never-used").exists());
}

#[test]
fn status_reports_free_addresses_and_a_writable_store() {
    let data = TempDir::new("ipam-bin");
    let conf = netconf(
        "1.1.0",
        "st",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.46.0.0/30" }),
    );
    let ok = run(SLUICE_IPAM, "STATUS", "", &conf, &[]);
    assert!(ok.ok && ok.stdout.trim().is_empty(), "{ok:?}");
    assert!(run(SLUICE_IPAM, "ADD", "only", &conf, &[]).ok);
    let full = run(SLUICE_IPAM, "STATUS", "", &conf, &[]);
    assert_eq!(full.code(), 50, "{full:?}");
    assert!(
        full.json()["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{full:?}"
    );
    let exhausted = run(SLUICE_IPAM, "ADD", "second", &conf, &[]);
    assert_eq!(exhausted.code(), 101);
    assert!(
        exhausted.json()["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available in range set: 10.46.0.1-10.46.0.2"),
        "{exhausted:?}"
    );
    // A data dir that cannot hold the store.
    let blocked = data.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let bad = netconf(
        "1.1.0",
        "st",
        "sluice-ipam",
        &blocked,
        json!({ "subnet": "10.46.0.0/30" }),
    );
    assert_eq!(run(SLUICE_IPAM, "STATUS", "", &bad, &[]).code(), 50);
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(run(SLUICE_IPAM, "STATUS", "", &old, &[]).code(), 1);
}

#[test]
fn del_works_without_a_store_and_with_a_broken_range() {
    let data = TempDir::new("ipam-bin");
    let conf = netconf(
        "1.0.0",
        "nostore",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.47.0.0/24" }),
    );
    let out = run(SLUICE_IPAM, "DEL", "ghost", &conf, &[]);
    assert!(out.ok, "{out:?}");
    assert!(
        !data.path().join("nostore").exists(),
        "DEL must not create the store"
    );
    // A reservation made under a config whose range was later broken is
    // still released: DEL only needs the name and the data dir.
    assert!(run(SLUICE_IPAM, "ADD", "a", &conf, &[]).ok);
    let broken = netconf(
        "1.0.0",
        "nostore",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.47.0.5/24" }),
    );
    assert!(run(SLUICE_IPAM, "DEL", "a", &broken, &[]).ok);
    assert!(reserved(&data.path().join("nostore")).is_empty());
}

#[test]
fn errors_are_spec_json_on_stdout() {
    let data = TempDir::new("ipam-bin");
    let conf = netconf(
        "1.0.0",
        "err",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.48.0.0/24" }),
    );
    let cases: Vec<(Vec<u8>, &str, &str, u64, &str)> = vec![
        (
            b"{not json".to_vec(),
            "ADD",
            "c",
            6,
            "invalid network config",
        ),
        (
            netconf(
                "1.0.0",
                "err",
                "sluice-ipam",
                data.path(),
                json!({ "subnet": "10.48.0.0/33" }),
            )
            .to_string()
            .into_bytes(),
            "ADD",
            "c",
            7,
            "10.48.0.0/33",
        ),
        (
            netconf(
                "1.0.0",
                "err",
                "sluice-ipam",
                data.path(),
                json!({ "subnet": "10.48.0.0/24", "gateway": "10.49.0.1" }),
            )
            .to_string()
            .into_bytes(),
            "ADD",
            "c",
            7,
            "10.49.0.1 is not in subnet",
        ),
        (
            conf.to_string().into_bytes(),
            "ADD",
            "",
            4,
            "CNI_CONTAINERID",
        ),
        (conf.to_string().into_bytes(), "FROB", "c", 4, "CNI_COMMAND"),
        (conf.to_string().into_bytes(), "", "c", 4, "CNI_COMMAND"),
        (
            netconf(
                "0.2.0",
                "err",
                "sluice-ipam",
                data.path(),
                json!({ "subnet": "10.48.0.0/24" }),
            )
            .to_string()
            .into_bytes(),
            "ADD",
            "c",
            1,
            "0.2.0",
        ),
    ];
    for (stdin, command, cid, code, needle) in cases {
        let out = run_raw(SLUICE_IPAM, command, cid, "eth0", &stdin, &[]);
        assert!(!out.ok, "{command}: {out:?}");
        let v = out.json();
        assert_eq!(v["code"], code, "{out:?}");
        assert!(v["cniVersion"].is_string(), "{v}");
        let text = format!("{} {}", v["msg"], v["details"]);
        assert!(text.contains(needle), "{needle:?} not in {v}");
        assert!(
            out.stderr.contains("sluice-ipam"),
            "logs go to stderr: {out:?}"
        );
    }
}

#[test]
fn reboot_reclaims_reservations_of_the_previous_boot() {
    let data = TempDir::new("ipam-bin");
    let conf = netconf(
        "1.0.0",
        "boot",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.50.0.0/24" }),
    );
    let dir = data.path().join("boot");
    assert!(run(SLUICE_IPAM, "ADD", "before1", &conf, &[]).ok);
    assert!(run(SLUICE_IPAM, "ADD", "before2", &conf, &[]).ok);
    let boot_id = std::fs::read_to_string(dir.join("sluice.boot_id")).unwrap();
    assert_eq!(
        boot_id.trim(),
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
    // Pretend the reservations were made in an earlier boot.
    std::fs::write(
        dir.join("sluice.boot_id"),
        "00000000-0000-0000-0000-000000000000",
    )
    .unwrap();
    let after = run(SLUICE_IPAM, "ADD", "after", &conf, &[]);
    assert_eq!(
        after.addresses(),
        ["10.50.0.4/24"],
        "round robin survives the reclaim"
    );
    assert_eq!(reserved(&dir), ["10.50.0.4"]);
    assert_eq!(names(&dir.join("by-id")), [".stamp", "after@eth0"]);
}
