//! Delegation to other IPAM binaries by exec, as the spec's section 4 says:
//! the reference host-local and static from `/usr/lib/cni`, and a recording
//! stand-in that shows exactly what a delegate receives.

mod ipam_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cni_plugin::error::Code;
use cni_plugin::ipam::{
    self, delegate_add, delegate_check, delegate_del, delegate_gc, delegate_status, IpamEnv,
};
use ipam_support::{host_local, netconf, reserved, TempDir, CNI_DIR};
use serde_json::{json, Value};

fn env(cid: &str) -> IpamEnv {
    IpamEnv {
        container_id: cid.into(),
        netns: format!("/var/run/netns/{cid}"),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAME=p".into(),
        path: format!("/nonexistent:{CNI_DIR}"),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[test]
fn host_local_add_check_del_in_every_version_it_speaks() {
    host_local();
    let data = TempDir::new("ipam-dlg");
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let conf = netconf(
            version,
            "dlg",
            "host-local",
            data.path(),
            json!({ "ranges": [[{ "subnet": "10.90.0.0/24" }], [{ "subnet": "fd00:90::/64" }]], "routes": [{ "dst": "0.0.0.0/0" }] }),
        );
        let cid = format!("d-{version}");
        let out = delegate_add("host-local", &bytes(&conf), &env(&cid)).unwrap();
        assert_eq!(out.ips.len(), 2, "{version}: {out:?}");
        assert_eq!(out.ips[0].gateway, Some("10.90.0.1".parse().unwrap()));
        assert!(out.ips[1].address.addr().is_ipv6());
        assert_eq!(out.routes.len(), 1);
        if version != "0.3.1" {
            let mut with_prev = conf.clone();
            with_prev["prevResult"] = out.to_json(version).unwrap();
            delegate_check("host-local", &bytes(&with_prev), &env(&cid)).unwrap();
        }
        delegate_del("host-local", &bytes(&conf), &env(&cid)).unwrap();
        if version != "0.3.1" {
            let e = delegate_check("host-local", &bytes(&conf), &env(&cid)).unwrap_err();
            // host-local's generic code 999 is not a spec code: 101, with the original kept.
            assert_eq!(e.code, Code::Ipam, "{e:?}");
            assert!(e.msg.contains("Failed to find address"), "{e:?}");
            assert!(e.details.contains("host-local returned code 999"), "{e:?}");
        }
    }
    assert!(reserved(&data.path().join("dlg")).is_empty());
}

#[test]
fn static_addresses_come_back_as_configured() {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "st", "type": "bridge",
        "ipam": {
            "type": "static",
            "addresses": [{ "address": "10.91.0.5/24", "gateway": "10.91.0.1" }, { "address": "fd00:91::5/64" }],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dns": { "nameservers": ["10.91.0.53"] }
        }
    });
    let out = delegate_add("static", &bytes(&conf), &env("s1")).unwrap();
    let addrs: Vec<String> = out.ips.iter().map(|i| i.address.to_string()).collect();
    assert_eq!(addrs, ["10.91.0.5/24", "fd00:91::5/64"]);
    assert_eq!(out.dns.nameservers, ["10.91.0.53"]);
    delegate_del("static", &bytes(&conf), &env("s1")).unwrap();
}

#[test]
fn the_facade_runs_sluice_ipam_in_process_and_delegates_the_rest() {
    let data = TempDir::new("ipam-dlg");
    let ours = netconf(
        "1.0.0",
        "facade",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.92.0.0/24" }),
    );
    let theirs = netconf(
        "1.0.0",
        "facade-hl",
        "host-local",
        data.path(),
        json!({ "subnet": "10.93.0.0/24" }),
    );
    let a = ipam::add(&bytes(&ours), &env("f1")).unwrap();
    let b = ipam::add(&bytes(&theirs), &env("f1")).unwrap();
    assert_eq!(a.ips[0].address.to_string(), "10.92.0.2/24");
    assert_eq!(b.ips[0].address.to_string(), "10.93.0.2/24");
    assert!(
        data.path().join("facade/by-id/f1@eth0").exists(),
        "sluice-ipam's index"
    );
    assert!(
        !data.path().join("facade-hl/by-id").exists(),
        "host-local wrote this one"
    );
    let mut ours_11 = ours.clone();
    ours_11["cniVersion"] = json!("1.1.0");
    ipam::status(
        &bytes(&ours_11),
        &IpamEnv {
            path: CNI_DIR.into(),
            ..IpamEnv::default()
        },
    )
    .unwrap();
    ipam::del(&bytes(&ours), &env("f1")).unwrap();
    ipam::del(&bytes(&theirs), &env("f1")).unwrap();
    assert!(reserved(&data.path().join("facade")).is_empty());
    assert!(reserved(&data.path().join("facade-hl")).is_empty());
}

#[test]
fn delegate_errors_are_passed_on() {
    let data = TempDir::new("ipam-dlg");
    let bad = netconf(
        "1.0.0",
        "bad",
        "host-local",
        data.path(),
        json!({ "subnet": "10.94.0.5/24" }),
    );
    let e = delegate_add("host-local", &bytes(&bad), &env("x")).unwrap_err();
    assert_eq!(e.code, Code::Ipam);
    assert!(e.msg.contains("host bits"), "{e:?}");
    // A spec code is kept as it is.
    let newer = netconf(
        "1.1.0",
        "newer",
        "host-local",
        data.path(),
        json!({ "subnet": "10.94.0.0/24" }),
    );
    let e = delegate_add("host-local", &bytes(&newer), &env("x")).unwrap_err();
    assert_eq!(e.code, Code::IncompatibleVersion, "{e:?}");
    assert!(e.details.contains("1.1.0"), "{e:?}");
    // No such plugin in CNI_PATH.
    let e = delegate_add("no-such-ipam", &bytes(&bad), &env("x")).unwrap_err();
    assert_eq!(e.code, Code::InvalidNetworkConfig);
    assert!(
        e.msg.contains("no-such-ipam") && e.msg.contains(CNI_DIR),
        "{e:?}"
    );
    let e = ipam::del(
        &bytes(&json!({ "name": "n", "ipam": { "type": "dhcp-nope" } })),
        &env("x"),
    )
    .unwrap_err();
    assert_eq!(e.code, Code::InvalidNetworkConfig);
}

#[test]
fn gc_and_status_are_forwarded_from_1_1_only() {
    let data = TempDir::new("ipam-dlg");
    let mut conf = netconf(
        "1.0.0",
        "gcs",
        "host-local",
        data.path(),
        json!({ "subnet": "10.95.0.0/24" }),
    );
    conf["cni.dev/valid-attachments"] = json!([]);
    let gc_env = IpamEnv {
        path: CNI_DIR.into(),
        ..IpamEnv::default()
    };
    // Before 1.1.0 neither command exists: nothing to forward.
    delegate_gc("host-local", &bytes(&conf), &gc_env).unwrap();
    delegate_status("host-local", &bytes(&conf), &gc_env).unwrap();
    // At 1.1.0 they are forwarded. This host-local speaks up to 1.0.0 and
    // its skel refuses the unknown commands (first for the missing
    // container id, code 3): its error is passed on as it is.
    conf["cniVersion"] = json!("1.1.0");
    for e in [
        delegate_gc("host-local", &bytes(&conf), &gc_env).unwrap_err(),
        delegate_status("host-local", &bytes(&conf), &gc_env).unwrap_err(),
    ] {
        assert!(
            matches!(e.code, Code::UnknownContainer | Code::IncompatibleVersion),
            "{e:?}"
        );
    }
}

/// A stand-in IPAM plugin: logs its environment and stdin next to itself,
/// fails ADD (with `reply` as its stdout), succeeds otherwise.
fn recorder(dir: &Path, reply: &str) {
    let script = format!(
        r#"#!/bin/sh
here=$(dirname "$0")
echo "$CNI_COMMAND|${{CNI_CONTAINERID-unset}}|${{CNI_NETNS-unset}}|${{CNI_IFNAME-unset}}|${{CNI_ARGS-unset}}|${{CNI_PATH-unset}}" >> "$here/log"
cat > "$here/stdin.$CNI_COMMAND"
echo "recorder: $CNI_COMMAND" >&2
if [ "$CNI_COMMAND" = ADD ]; then
  printf '%s' '{reply}'
  exit 1
fi
exit 0
"#
    );
    let path = dir.join("recorder");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn delegate_gets_the_same_env_and_config_and_a_failed_add_is_undone() {
    let dir = TempDir::new("ipam-rec");
    recorder(
        dir.path(),
        r#"{"cniVersion":"1.1.0","code":11,"msg":"pool busy","details":"retry in 1s"}"#,
    );
    // Key order and spacing preserved: the delegate gets these very bytes.
    let config = br#"{"cniVersion":"1.1.0", "name":"rec","type":"sluice","ipam":{"type":"recorder","x":[1, 2]}}"#;
    let env = IpamEnv {
        path: format!("/nonexistent:{}", dir.path().display()),
        ..env("r1")
    };
    let e = delegate_add("recorder", config, &env).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str(), e.details.as_str()),
        (Code::TryAgainLater, "pool busy", "retry in 1s")
    );
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let expected = |cmd: &str| {
        format!(
            "{cmd}|r1|/var/run/netns/r1|eth0|IgnoreUnknown=1;K8S_POD_NAME=p|{}",
            env.path
        )
    };
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [expected("ADD"), expected("DEL")],
        "ADD, then DEL to undo it"
    );
    assert_eq!(std::fs::read(dir.path().join("stdin.ADD")).unwrap(), config);
    assert_eq!(std::fs::read(dir.path().join("stdin.DEL")).unwrap(), config);
    // GC carries no attachment parameters.
    let gc_env = IpamEnv {
        path: env.path.clone(),
        ..IpamEnv::default()
    };
    delegate_gc("recorder", config, &gc_env).unwrap();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert_eq!(
        log.lines().last().unwrap(),
        format!("GC|unset|unset|unset|unset|{}", env.path)
    );
    delegate_status("recorder", config, &gc_env).unwrap();
    delegate_check("recorder", config, &env).unwrap();
}

#[test]
fn a_delegate_failing_without_usable_output_is_still_an_error() {
    for (reply, needle) in [("", "no error message"), ("oops, not json", "unparseable")] {
        let dir = TempDir::new("ipam-rec");
        recorder(dir.path(), reply);
        let env = IpamEnv {
            path: dir.path().display().to_string(),
            ..env("r2")
        };
        let e = delegate_add("recorder", b"{\"cniVersion\":\"1.0.0\"}", &env).unwrap_err();
        assert_eq!(e.code, Code::Ipam);
        assert!(e.to_string().contains(needle), "{e:?}");
    }
}
