//! Unit tests of the allocator and the commands over a FakeStore, of the
//! config parser, and of the disk store in a temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::allocator::candidates;
use super::config::{parse_resolv_conf, IpamConfig};
use super::fake::FakeStore;
use super::gc::{gc, valid_attachments, ValidAttachment};
use super::ops::{self, reclaim_after_reboot};
use super::store::{with_lock, Attachment, Reservation};
use super::DiskStore;
use crate::error::Code;
use crate::types::CniOutput;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn att(id: &str) -> Attachment {
    Attachment::new(id, "eth0").unwrap()
}

fn netconf(ipam: Value) -> Value {
    json!({ "cniVersion": "1.1.0", "name": "net1", "type": "sluice", "ipam": ipam })
}

fn config(ipam: Value) -> IpamConfig {
    IpamConfig::parse(&netconf(ipam)).unwrap()
}

fn ranges(sets: Value) -> IpamConfig {
    config(json!({ "type": "sluice-ipam", "ranges": sets }))
}

fn add(store: &mut FakeStore, cfg: &IpamConfig, id: &str) -> Vec<String> {
    ops::add(store, cfg, &att(id), None)
        .unwrap()
        .ips
        .iter()
        .map(|i| i.address.to_string())
        .collect()
}

fn add_err(store: &mut FakeStore, cfg: &IpamConfig, id: &str) -> crate::error::CniError {
    ops::add(store, cfg, &att(id), None).unwrap_err()
}

// ---- allocation ----------------------------------------------------------

#[test]
fn allocates_in_order_skipping_network_and_gateway() {
    let cfg = ranges(json!([[{ "subnet": "10.1.0.0/24" }]]));
    let mut store = FakeStore::new();
    assert_eq!(add(&mut store, &cfg, "c1"), ["10.1.0.2/24"]);
    assert_eq!(add(&mut store, &cfg, "c2"), ["10.1.0.3/24"]);
    assert_eq!(add(&mut store, &cfg, "c3"), ["10.1.0.4/24"]);
    let out = ops::add(&mut store, &cfg, &att("c4"), None).unwrap();
    assert_eq!(out.ips[0].gateway, Some(ip("10.1.0.1")));
    assert!(out.interfaces.is_empty());
    assert!(!store.locked, "lock released after ADD");
}

#[test]
fn round_robin_continues_after_last_reserved_not_at_freed_address() {
    let cfg = ranges(json!([[{ "subnet": "10.1.0.0/29" }]]));
    let mut store = FakeStore::new();
    assert_eq!(add(&mut store, &cfg, "c1"), ["10.1.0.2/29"]);
    assert_eq!(add(&mut store, &cfg, "c2"), ["10.1.0.3/29"]);
    ops::del(&mut store, &att("c1"), None).unwrap();
    // .2 is free again, but round robin goes on from .3.
    assert_eq!(add(&mut store, &cfg, "c3"), ["10.1.0.4/29"]);
    assert_eq!(add(&mut store, &cfg, "c4"), ["10.1.0.5/29"]);
    assert_eq!(add(&mut store, &cfg, "c5"), ["10.1.0.6/29"]);
    // .7 is the broadcast address: wrap to .2 (the gateway .1 skipped).
    assert_eq!(add(&mut store, &cfg, "c6"), ["10.1.0.2/29"]);
}

#[test]
fn range_start_and_end_are_respected() {
    let cfg = ranges(
        json!([[{ "subnet": "10.2.0.0/24", "rangeStart": "10.2.0.100", "rangeEnd": "10.2.0.102" }]]),
    );
    let mut store = FakeStore::new();
    assert_eq!(add(&mut store, &cfg, "a"), ["10.2.0.100/24"]);
    assert_eq!(add(&mut store, &cfg, "b"), ["10.2.0.101/24"]);
    assert_eq!(add(&mut store, &cfg, "c"), ["10.2.0.102/24"]);
    let e = add_err(&mut store, &cfg, "d");
    assert_eq!(e.code, Code::Ipam);
    assert!(
        e.msg
            .contains("no IP addresses available in range set: 10.2.0.100-10.2.0.102"),
        "{e}"
    );
}

#[test]
fn explicit_gateway_inside_the_range_is_skipped() {
    let cfg = ranges(
        json!([[{ "subnet": "10.3.0.0/24", "rangeStart": "10.3.0.10", "rangeEnd": "10.3.0.12", "gateway": "10.3.0.11" }]]),
    );
    let mut store = FakeStore::new();
    assert_eq!(add(&mut store, &cfg, "a"), ["10.3.0.10/24"]);
    assert_eq!(add(&mut store, &cfg, "b"), ["10.3.0.12/24"]);
    assert_eq!(add_err(&mut store, &cfg, "c").code, Code::Ipam);
    let out = ops::add(&mut FakeStore::new(), &cfg, &att("x"), None).unwrap();
    assert_eq!(out.ips[0].gateway, Some(ip("10.3.0.11")));
}

#[test]
fn exhaustion_is_code_101_and_leaves_nothing_behind() {
    let cfg = ranges(json!([[{ "subnet": "10.4.0.0/30" }]]));
    let mut store = FakeStore::new();
    assert_eq!(add(&mut store, &cfg, "a"), ["10.4.0.2/30"]);
    let e = add_err(&mut store, &cfg, "b");
    assert_eq!(e.code, Code::Ipam);
    assert!(
        e.msg.contains("no IP addresses available in range set"),
        "{e}"
    );
    assert_eq!(store.reserved.len(), 1);
}

#[test]
fn several_ranges_in_a_set_are_walked_in_turn() {
    let cfg = ranges(json!([[
        { "subnet": "10.5.0.0/24", "rangeStart": "10.5.0.10", "rangeEnd": "10.5.0.11" },
        { "subnet": "10.6.0.0/24", "rangeStart": "10.6.0.20", "rangeEnd": "10.6.0.20" }
    ]]));
    let mut store = FakeStore::new();
    assert_eq!(add(&mut store, &cfg, "a"), ["10.5.0.10/24"]);
    assert_eq!(add(&mut store, &cfg, "b"), ["10.5.0.11/24"]);
    let out = ops::add(&mut store, &cfg, &att("c"), None).unwrap();
    assert_eq!(out.ips[0].address.to_string(), "10.6.0.20/24");
    assert_eq!(out.ips[0].gateway, Some(ip("10.6.0.1")));
    ops::del(&mut store, &att("a"), None).unwrap();
    // Wraps from the end of the last range to the start of the first.
    assert_eq!(add(&mut store, &cfg, "d"), ["10.5.0.10/24"]);
}

#[test]
fn candidate_order_matches_host_local() {
    let cfg = ranges(json!([[
        { "subnet": "10.7.0.0/29" },
        { "subnet": "10.8.0.0/29", "rangeEnd": "10.8.0.3" }
    ]]));
    let set = &cfg.range_sets[0];
    let fresh: Vec<String> = candidates(set, None).map(|i| i.to_string()).collect();
    assert_eq!(
        fresh,
        ["10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5", "10.7.0.6", "10.8.0.2", "10.8.0.3"]
    );
    let after: Vec<String> = candidates(set, Some(ip("10.7.0.5")))
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        after,
        ["10.7.0.6", "10.8.0.2", "10.8.0.3", "10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5"]
    );
    // A last address outside the set restarts at the first range.
    let outside: Vec<String> = candidates(set, Some(ip("192.168.0.1")))
        .map(|i| i.to_string())
        .collect();
    assert_eq!(outside, fresh);
}

#[test]
fn requested_ip_is_honoured_or_refused() {
    let mut cfg = ranges(json!([[{ "subnet": "10.9.0.0/24" }]]));
    let mut store = FakeStore::new();
    cfg.requested_ips = vec![ip("10.9.0.50")];
    assert_eq!(add(&mut store, &cfg, "a"), ["10.9.0.50/24"]);
    // Taken by another container.
    let e = add_err(&mut store, &cfg, "b");
    assert_eq!(e.code, Code::Ipam);
    assert!(e.msg.contains("10.9.0.50 is not available"), "{e}");
    // Outside every range set.
    cfg.requested_ips = vec![ip("10.99.0.5")];
    let e = add_err(&mut store, &cfg, "c");
    assert!(e.msg.contains("10.99.0.5 is not in any range set"), "{e}");
    // The gateway.
    cfg.requested_ips = vec![ip("10.9.0.1")];
    let e = add_err(&mut store, &cfg, "d");
    assert!(e.msg.contains("gateway"), "{e}");
    // Round robin continues after the requested address.
    cfg.requested_ips.clear();
    assert_eq!(add(&mut store, &cfg, "e"), ["10.9.0.51/24"]);
}

#[test]
fn requested_ips_come_from_cni_args_args_and_runtime_config() {
    let mut conf = netconf(
        json!({ "type": "sluice-ipam", "ranges": [[{ "subnet": "10.9.0.0/24" }], [{ "subnet": "fd00:9::/64" }]] }),
    );
    conf["args"] = json!({ "cni": { "ips": ["fd00:9::77/64"] } });
    let cfg =
        IpamConfig::parse_with_args(&conf, "IgnoreUnknown=1;IP=10.9.0.66;K8S_POD_NAME=p").unwrap();
    assert_eq!(cfg.requested_ips, vec![ip("10.9.0.66"), ip("fd00:9::77")]);
    let mut store = FakeStore::new();
    assert_eq!(
        add(&mut store, &cfg, "a"),
        ["10.9.0.66/24", "fd00:9::77/64"]
    );

    let mut conf =
        netconf(json!({ "type": "sluice-ipam", "ranges": [[{ "subnet": "10.9.0.0/24" }]] }));
    conf["runtimeConfig"] = json!({ "ips": ["10.9.0.70/24"] });
    assert_eq!(
        IpamConfig::parse(&conf).unwrap().requested_ips,
        vec![ip("10.9.0.70")]
    );
    // Two addresses for one set cannot both be honoured.
    let cfg = IpamConfig::parse_with_args(&conf, "IP=10.9.0.71").unwrap();
    let e = add_err(&mut FakeStore::new(), &cfg, "b");
    assert!(e.msg.contains("both in range set 0"), "{e}");
    // A bad IP= is an environment error.
    assert_eq!(
        IpamConfig::parse_with_args(&conf, "IP=nope")
            .unwrap_err()
            .code,
        Code::InvalidEnvironment
    );
}

#[test]
fn dual_stack_gives_one_address_per_set() {
    let cfg = ranges(json!([[{ "subnet": "10.10.0.0/24" }], [{ "subnet": "fd00:10::/120" }]]));
    let mut store = FakeStore::new();
    let out = ops::add(&mut store, &cfg, &att("a"), None).unwrap();
    let addrs: Vec<String> = out.ips.iter().map(|i| i.address.to_string()).collect();
    assert_eq!(addrs, ["10.10.0.2/24", "fd00:10::2/120"]);
    assert_eq!(out.ips[1].gateway, Some(ip("fd00:10::1")));
    assert_eq!(store.last.get(&0), Some(&ip("10.10.0.2")));
    assert_eq!(store.last.get(&1), Some(&ip("fd00:10::2")));
    assert_eq!(
        add(&mut store, &cfg, "b"),
        ["10.10.0.3/24", "fd00:10::3/120"]
    );
}

#[test]
fn failure_in_one_set_releases_what_this_add_reserved() {
    let cfg = ranges(json!([[{ "subnet": "10.11.0.0/24" }], [{ "subnet": "fd00:11::/126" }]]));
    let mut store = FakeStore::new();
    add(&mut store, &cfg, "a");
    // A /126 holds two addresses besides network and gateway (no broadcast in IPv6).
    add(&mut store, &cfg, "b");
    let e = add_err(&mut store, &cfg, "c");
    assert!(e.msg.contains("range set 1"), "{e}");
    assert_eq!(
        store.reserved.len(),
        4,
        "only a's and b's addresses remain: {:?}",
        store.reserved
    );
}

#[test]
fn add_is_idempotent_for_the_same_attachment() {
    let cfg = ranges(json!([[{ "subnet": "10.12.0.0/24" }], [{ "subnet": "fd00:12::/64" }]]));
    let mut store = FakeStore::new();
    let first = add(&mut store, &cfg, "a");
    let again = add(&mut store, &cfg, "a");
    assert_eq!(first, again);
    assert_eq!(store.reserved.len(), 2);
    // Another interface of the same container is another attachment.
    let other = ops::add(
        &mut store,
        &cfg,
        &Attachment::new("a", "net1").unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(other.ips[0].address.to_string(), "10.12.0.3/24");
    // Asking for a different address than the one held is refused.
    let mut want = cfg.clone();
    want.requested_ips = vec![ip("10.12.0.99")];
    assert!(add_err(&mut store, &want, "a")
        .msg
        .contains("already holds"));
}

#[test]
fn add_returns_routes_and_dns() {
    let dir = TempDir::new();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "# c\nnameserver 10.0.0.53\nnameserver fd00::53\nsearch a.example b.example\ndomain example\noptions ndots:5 edns0\n").unwrap();
    let cfg = config(json!({
        "type": "sluice-ipam", "subnet": "10.13.0.0/24", "resolvConf": resolv,
        "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "192.168.0.0/16", "gw": "10.13.0.254" }]
    }));
    let out = ops::add(&mut FakeStore::new(), &cfg, &att("a"), None).unwrap();
    assert_eq!(out.routes.len(), 2);
    assert_eq!(out.routes[1].gw, Some(ip("10.13.0.254")));
    assert_eq!(out.dns.nameservers, ["10.0.0.53", "fd00::53"]);
    assert_eq!(out.dns.search, ["a.example", "b.example"]);
    assert_eq!(out.dns.domain.as_deref(), Some("example"));
    assert_eq!(out.dns.options, ["ndots:5", "edns0"]);
    let missing = config(
        json!({ "type": "sluice-ipam", "subnet": "10.13.0.0/24", "resolvConf": "/nonexistent/resolv.conf" }),
    );
    let e = ops::add(&mut FakeStore::new(), &missing, &att("a"), None).unwrap_err();
    assert_eq!(e.code, Code::InvalidNetworkConfig);
    assert!(e.msg.contains("/nonexistent/resolv.conf"));
}

#[test]
fn resolv_conf_parsing() {
    let dns =
        parse_resolv_conf("; x\n\nnameserver 1.1.1.1\nsearch a\nsearch b c\nbogus\ndomain d\n");
    assert_eq!(dns.nameservers, ["1.1.1.1"]);
    assert_eq!(dns.search, ["a", "b", "c"]);
    assert_eq!(dns.domain.as_deref(), Some("d"));
}

// ---- release, check ------------------------------------------------------

#[test]
fn release_by_id_frees_only_that_attachment_and_is_idempotent() {
    let cfg = ranges(json!([[{ "subnet": "10.14.0.0/24" }], [{ "subnet": "fd00:14::/64" }]]));
    let mut store = FakeStore::new();
    add(&mut store, &cfg, "a");
    add(&mut store, &cfg, "b");
    let released = ops::del(&mut store, &att("a"), None).unwrap();
    assert_eq!(released, vec![ip("10.14.0.2"), ip("fd00:14::2")]);
    assert_eq!(store.reserved.len(), 2);
    assert!(ops::del(&mut store, &att("a"), None).unwrap().is_empty());
    assert!(ops::del(&mut store, &att("never"), None)
        .unwrap()
        .is_empty());
}

#[test]
fn legacy_reservations_without_ifname_are_released_by_container() {
    let mut store = FakeStore::with(&[("10.15.0.2", "old", ""), ("10.15.0.3", "other", "eth0")]);
    assert_eq!(
        ops::del(&mut store, &att("old"), None).unwrap(),
        vec![ip("10.15.0.2")]
    );
    assert_eq!(store.reserved.len(), 1);
}

#[test]
fn check_finds_held_addresses_and_reports_missing_ones() {
    let cfg = ranges(json!([[{ "subnet": "10.16.0.0/24" }]]));
    let mut store = FakeStore::new();
    let out = ops::add(&mut store, &cfg, &att("a"), None).unwrap();
    ops::check(&mut store, &cfg, &att("a"), Some(&out), None).unwrap();
    let e = ops::check(&mut store, &cfg, &att("b"), None, None).unwrap_err();
    assert_eq!(e.code, Code::Ipam);
    assert!(e.msg.contains("holds no address"), "{e}");
    let mut wrong = out.clone();
    wrong.ips[0].address = "10.16.0.77/24".parse().unwrap();
    let e = ops::check(&mut store, &cfg, &att("a"), Some(&wrong), None).unwrap_err();
    assert!(e.msg.contains("10.16.0.77"), "{e}");
    // Addresses outside this network's ranges (another IPAM's) are not ours to check.
    let mut foreign = out;
    foreign.ips.push(crate::types::IpConfig {
        address: "172.16.0.5/24".parse().unwrap(),
        gateway: None,
        interface: None,
    });
    ops::check(&mut store, &cfg, &att("a"), Some(&foreign), None).unwrap();
}

// ---- GC, STATUS, reboot ---------------------------------------------------

#[test]
fn gc_keeps_valid_attachments_and_releases_the_rest() {
    let mut store = FakeStore::with(&[
        ("10.17.0.2", "keep", "eth0"),
        ("10.17.0.3", "keep", "eth1"),
        ("10.17.0.4", "gone", "eth0"),
        ("10.17.0.5", "legacy", ""),
        ("10.17.0.6", "any-if", "net9"),
    ]);
    let conf = json!({ "cni.dev/valid-attachments": [
        { "containerID": "keep", "ifname": "eth0" },
        { "containerID": "legacy", "ifname": "eth0" },
        { "containerID": "any-if" }
    ]});
    let valid = valid_attachments(&conf).unwrap();
    let released = gc(&mut store, &valid, None).unwrap();
    let ips: Vec<IpAddr> = released.iter().map(|r| r.ip).collect();
    assert_eq!(ips, vec![ip("10.17.0.3"), ip("10.17.0.4")]);
    let left: Vec<&IpAddr> = store.reserved.keys().collect();
    assert_eq!(left, [&ip("10.17.0.2"), &ip("10.17.0.5"), &ip("10.17.0.6")]);
}

#[test]
fn gc_goes_on_past_failures_and_reports_them_all() {
    let mut store = FakeStore::with(&[
        ("10.18.0.2", "a", "eth0"),
        ("10.18.0.3", "b", "eth0"),
        ("10.18.0.4", "c", "eth0"),
    ]);
    store.fail_release.insert(ip("10.18.0.2"));
    store.fail_release.insert(ip("10.18.0.3"));
    let e = gc(&mut store, &[], None).unwrap_err();
    assert_eq!(e.code, Code::Ipam);
    assert!(
        e.details.contains("10.18.0.2") && e.details.contains("10.18.0.3"),
        "{e}"
    );
    assert!(
        !store.reserved.contains_key(&ip("10.18.0.4")),
        "c released despite the failures"
    );
    assert!(!store.locked);
}

#[test]
fn gc_accepts_the_older_key_and_refuses_a_missing_list() {
    let v = valid_attachments(
        &json!({ "cni.dev/attachments": [{ "containerID": "x", "ifname": "eth0" }] }),
    )
    .unwrap();
    assert_eq!(
        v,
        vec![ValidAttachment {
            container_id: "x".into(),
            ifname: Some("eth0".into())
        }]
    );
    assert_eq!(
        valid_attachments(&json!({})).unwrap_err().code,
        Code::InvalidNetworkConfig
    );
    assert_eq!(
        valid_attachments(&json!({ "cni.dev/valid-attachments": [{ "ifname": "eth0" }] }))
            .unwrap_err()
            .code,
        Code::InvalidNetworkConfig
    );
}

#[test]
fn status_reports_exhaustion_and_unwritable_store_as_code_50() {
    let cfg = ranges(json!([[{ "subnet": "10.19.0.0/29" }], [{ "subnet": "fd00:19::/64" }]]));
    let mut store = FakeStore::new();
    ops::status(&mut store, &cfg, None).unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        add(&mut store, &cfg, id);
    }
    let e = ops::status(&mut store, &cfg, None).unwrap_err();
    assert_eq!(e.code, Code::PluginNotAvailable);
    assert!(e.msg.contains("range set 0"), "{e}");
    ops::del(&mut store, &att("c"), None).unwrap();
    ops::status(&mut store, &cfg, None).unwrap();
    store.read_only = true;
    let e = ops::status(&mut store, &cfg, None).unwrap_err();
    assert_eq!(e.code, Code::PluginNotAvailable);
    assert!(e.msg.contains("read-only"), "{e}");
}

#[test]
fn reboot_reclaims_everything_once() {
    let cfg = ranges(json!([[{ "subnet": "10.20.0.0/24" }]]));
    let mut store = FakeStore::new();
    // First use records the boot id and keeps what is there (host-local's).
    store
        .reserved
        .insert(ip("10.20.0.9"), ("hl".into(), "eth0".into()));
    ops::add(&mut store, &cfg, &att("a"), Some("boot-1")).unwrap();
    assert_eq!(store.boot.as_deref(), Some("boot-1"));
    assert_eq!(store.reserved.len(), 2);
    ops::add(&mut store, &cfg, &att("b"), Some("boot-1")).unwrap();
    assert_eq!(store.reserved.len(), 3);
    // After a reboot every reservation of the old boot goes; then b is added.
    let out = ops::add(&mut store, &cfg, &att("b"), Some("boot-2")).unwrap();
    assert_eq!(store.reserved.len(), 1);
    assert_eq!(store.boot.as_deref(), Some("boot-2"));
    // Round robin still continues from the last reservation.
    assert_eq!(out.ips[0].address.to_string(), "10.20.0.4/24");
    let reclaimed = with_lock(&mut store, |s| reclaim_after_reboot(s, Some("boot-2"))).unwrap();
    assert!(reclaimed.is_empty());
    // No boot id available: nothing reclaimed.
    let reclaimed = with_lock(&mut store, |s| reclaim_after_reboot(s, None)).unwrap();
    assert!(reclaimed.is_empty());
}

// ---- config errors --------------------------------------------------------

#[test]
fn bad_configs_are_code_7_naming_the_value() {
    let r = |range: Value| json!({ "type": "sluice-ipam", "ranges": [[range]] });
    let cases: Vec<(Value, &str)> = vec![
        (
            json!("not an object"),
            "network config is not a JSON object",
        ),
        (
            json!({ "cniVersion": "1.0.0", "ipam": { "type": "sluice-ipam", "subnet": "10.0.0.0/24" } }),
            "no name",
        ),
        (
            json!({ "name": "../etc", "ipam": { "type": "sluice-ipam", "subnet": "10.0.0.0/24" } }),
            "\"../etc\"",
        ),
        (json!({ "name": "n" }), "no ipam object"),
        (
            json!({ "name": "n", "ipam": [] }),
            "ipam: expected an object",
        ),
        (
            netconf(json!({ "subnet": "10.0.0.0/24" })),
            "ipam.type is missing",
        ),
        (
            netconf(json!({ "type": "sluice-ipam" })),
            "no IP ranges specified",
        ),
        (
            netconf(json!({ "type": "sluice-ipam", "ranges": [[]] })),
            "ipam.ranges[0]: empty range set",
        ),
        (
            netconf(json!({ "type": "sluice-ipam", "ranges": [{ "subnet": "10.0.0.0/24" }] })),
            "ipam.ranges[0]: expected a list of ranges",
        ),
        (
            netconf(r(json!({ "rangeStart": "10.0.0.5" }))),
            "ipam.ranges[0][0].subnet is missing",
        ),
        (
            netconf(r(json!({ "subnet": "10.0.0.0/33" }))),
            "invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            netconf(r(json!({ "subnet": "bogus" }))),
            "invalid CIDR \"bogus\"",
        ),
        (
            netconf(r(json!({ "subnet": "10.0.0.5/24" }))),
            "10.0.0.5/24 has host bits set",
        ),
        (
            netconf(r(json!({ "subnet": "10.0.0.0/31" }))),
            "10.0.0.0/31 is too small",
        ),
        (
            netconf(r(json!({ "subnet": "fd00::/127" }))),
            "fd00::/127 is too small",
        ),
        (
            netconf(r(
                json!({ "subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5" }),
            )),
            "rangeStart: 10.0.1.5 is not in subnet 10.0.0.0/24",
        ),
        (
            netconf(r(
                json!({ "subnet": "10.0.0.0/24", "rangeEnd": "10.0.2.5" }),
            )),
            "rangeEnd: 10.0.2.5 is not in subnet 10.0.0.0/24",
        ),
        (
            netconf(r(
                json!({ "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8" }),
            )),
            "rangeStart 10.0.0.9 is after rangeEnd 10.0.0.8",
        ),
        (
            netconf(r(
                json!({ "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.x" }),
            )),
            "invalid IP address \"10.0.0.x\"",
        ),
        (
            netconf(r(json!({ "subnet": "10.0.0.0/24", "gateway": "10.0.9.1" }))),
            "gateway: 10.0.9.1 is not in subnet 10.0.0.0/24",
        ),
        (
            netconf(r(json!({ "subnet": "10.0.0.0/24", "gateway": "fd00::1" }))),
            "fd00::1 is not the same address family",
        ),
        (
            netconf(
                json!({ "type": "sluice-ipam", "ranges": [[{ "subnet": "10.0.0.0/24" }, { "subnet": "fd00::/64" }]] }),
            ),
            "mixed address families",
        ),
        (
            netconf(
                json!({ "type": "sluice-ipam", "ranges": [[{ "subnet": "10.0.0.0/24" }, { "subnet": "10.0.0.0/25" }]] }),
            ),
            "overlap",
        ),
        (
            netconf(
                json!({ "type": "sluice-ipam", "ranges": [[{ "subnet": "10.0.0.0/24" }], [{ "subnet": "10.0.0.0/16" }]] }),
            ),
            "range set 0 overlaps with range set 1",
        ),
        (
            netconf(
                json!({ "type": "sluice-ipam", "subnet": "10.0.0.0/24", "ranges": [[{ "subnet": "10.0.0.128/25" }]] }),
            ),
            "range set 0 overlaps with range set 1",
        ),
        (
            netconf(
                json!({ "type": "sluice-ipam", "subnet": "10.0.0.0/24", "routes": [{ "dst": "0.0.0.0" }] }),
            ),
            "ipam.routes[0].dst: invalid CIDR \"0.0.0.0\"",
        ),
        (
            netconf(
                json!({ "type": "sluice-ipam", "subnet": "10.0.0.0/24", "routes": [{ "dst": "0.0.0.0/0", "gw": "gw" }] }),
            ),
            "ipam.routes[0].gw: invalid IP address \"gw\"",
        ),
        (
            netconf(json!({ "type": "sluice-ipam", "subnet": "10.0.0.0/24", "routes": {} })),
            "ipam.routes: expected a list",
        ),
        (
            netconf(json!({ "type": "sluice-ipam", "subnet": "10.0.0.0/24", "dataDir": 5 })),
            "ipam.dataDir: expected a path",
        ),
        (
            netconf(json!({ "type": "sluice-ipam", "subnet": "10.0.0.0/24", "resolvConf": true })),
            "ipam.resolvConf: expected a path",
        ),
        (
            json!({ "name": "n", "runtimeConfig": { "ipRanges": [[{ "subnet": "10.0.0.0/8", "rangeStart": "11.0.0.1" }]] }, "ipam": { "type": "sluice-ipam" } }),
            "runtimeConfig.ipRanges[0][0].rangeStart: 11.0.0.1 is not in subnet 10.0.0.0/8",
        ),
        (
            json!({ "name": "n", "runtimeConfig": { "ips": ["10.0.0.300"] }, "ipam": { "type": "sluice-ipam", "subnet": "10.0.0.0/24" } }),
            "runtimeConfig.ips: invalid IP address \"10.0.0.300\"",
        ),
        (
            json!({ "name": "n", "args": { "cni": { "ips": "10.0.0.3" } }, "ipam": { "type": "sluice-ipam", "subnet": "10.0.0.0/24" } }),
            "args.cni.ips: expected a list",
        ),
    ];
    assert!(cases.len() >= 15);
    for (conf, want) in cases {
        let e = IpamConfig::parse(&conf).expect_err(&format!("accepted {conf}"));
        assert_eq!(e.code, Code::InvalidNetworkConfig, "{conf}: {e}");
        assert!(e.to_string().contains(want), "{conf}: {e:?} lacks {want:?}");
    }
}

#[test]
fn config_defaults_legacy_range_and_runtime_overrides() {
    let cfg = config(
        json!({ "type": "sluice-ipam", "subnet": "10.21.0.0/16", "gateway": "10.21.255.254" }),
    );
    assert_eq!(cfg.network, "net1");
    assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/cni/networks"));
    let r = &cfg.range_sets[0].0[0];
    assert_eq!(
        (r.range_start, r.range_end, r.gateway),
        (ip("10.21.0.1"), ip("10.21.255.254"), ip("10.21.255.254"))
    );
    let v6 = config(json!({ "type": "sluice-ipam", "subnet": "fd00:21::/64" }));
    let r = &v6.range_sets[0].0[0];
    assert_eq!(
        (r.range_start, r.range_end),
        (ip("fd00:21::1"), ip("fd00:21::ffff:ffff:ffff:ffff"))
    );
    // The legacy range comes first, then `ranges`.
    let both = config(
        json!({ "type": "sluice-ipam", "subnet": "10.22.0.0/24", "ranges": [[{ "subnet": "fd00:22::/64" }]] }),
    );
    assert_eq!(both.range_sets.len(), 2);
    assert!(both.range_sets[0].is_ipv4());
    // runtimeConfig.ipRanges replaces the configured ranges.
    let mut conf = netconf(
        json!({ "type": "sluice-ipam", "ranges": [[{ "subnet": "10.23.0.0/24" }]], "dataDir": "/tmp/x" }),
    );
    conf["runtimeConfig"] = json!({ "ipRanges": [[{ "subnet": "10.24.0.0/24" }]] });
    let cfg = IpamConfig::parse(&conf).unwrap();
    assert_eq!(cfg.range_sets.len(), 1);
    assert_eq!(cfg.range_sets[0].0[0].subnet.to_string(), "10.24.0.0/24");
    assert_eq!(cfg.store_dir(), Path::new("/tmp/x/net1"));
    // An empty ipRanges list leaves the configured ones.
    conf["runtimeConfig"] = json!({ "ipRanges": [] });
    assert_eq!(
        IpamConfig::parse(&conf).unwrap().range_sets[0].0[0]
            .subnet
            .to_string(),
        "10.23.0.0/24"
    );
}

#[test]
fn attachments_are_validated() {
    assert_eq!(
        Attachment::new("", "eth0").unwrap_err().code,
        Code::InvalidEnvironment
    );
    assert_eq!(
        Attachment::new("c1", "").unwrap_err().code,
        Code::InvalidEnvironment
    );
    assert_eq!(
        Attachment::new("c\r\n1", "eth0").unwrap_err().code,
        Code::InvalidEnvironment
    );
    assert_eq!(Attachment::new(" c1 ", "eth0").unwrap().container_id, "c1");
}

#[test]
fn result_has_no_interfaces_key() {
    let cfg = ranges(json!([[{ "subnet": "10.25.0.0/24" }]]));
    let out = ops::add(&mut FakeStore::new(), &cfg, &att("a"), None).unwrap();
    let v = super::result_json(&out, "0.3.1").unwrap();
    assert!(v.get("interfaces").is_none(), "{v}");
    assert_eq!(v["ips"][0]["version"], "4");
    assert_eq!(CniOutput::from_json(&v).unwrap().ips, out.ips);
}

// ---- the disk store -------------------------------------------------------

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "sluice-ipam-unit-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn disk_store_uses_host_local_layout_and_an_index() {
    let tmp = TempDir::new();
    let mut store = DiskStore::open(tmp.path(), "net1").unwrap();
    let dir = tmp.path().join("net1");
    with_lock(&mut store, |s| {
        assert!(s.reserve(ip("10.30.0.2"), "c1", "eth0", 0)?);
        assert!(!s.reserve(ip("10.30.0.2"), "c2", "eth0", 0)?);
        assert!(s.reserve(ip("fd00:30::2"), "c1", "eth0", 1)?);
        assert!(s.reserve(ip("10.30.0.3"), "c2", "eth0", 0)?);
        assert_eq!(s.last_reserved_ip(0)?, Some(ip("10.30.0.3")));
        assert_eq!(s.last_reserved_ip(7)?, None);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("10.30.0.2")).unwrap(),
        "c1\r\neth0"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "fd00:30::2"
    );
    assert_eq!(names(&dir.join("by-id")), [".stamp", "c1@eth0", "c2@eth0"]);
    with_lock(&mut store, |s| {
        assert_eq!(
            s.get_by_id("c1", "eth0")?,
            vec![ip("10.30.0.2"), ip("fd00:30::2")]
        );
        assert_eq!(
            s.release_by_id("c1", "eth0")?,
            vec![ip("10.30.0.2"), ip("fd00:30::2")]
        );
        assert!(s.release_by_id("c1", "eth0")?.is_empty());
        assert_eq!(s.list()?.len(), 1);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        names(&dir),
        [
            "10.30.0.3",
            "by-id",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(names(&dir.join("by-id")), [".stamp", "c2@eth0"]);
}

#[test]
fn disk_store_index_follows_changes_made_by_others() {
    let tmp = TempDir::new();
    let dir = tmp.path().join("net1");
    let mut store = DiskStore::open(tmp.path(), "net1").unwrap();
    with_lock(&mut store, |s| {
        s.reserve(ip("10.31.0.2"), "mine", "eth0", 0).map(drop)
    })
    .unwrap();
    // host-local reserves and releases behind the index's back.
    std::fs::write(dir.join("10.31.0.3"), "theirs\r\neth0").unwrap();
    std::fs::write(dir.join("10.31.0.4"), "legacy").unwrap();
    std::fs::remove_file(dir.join("10.31.0.2")).unwrap();
    with_lock(&mut store, |s| {
        assert!(s.get_by_id("mine", "eth0")?.is_empty());
        assert_eq!(s.get_by_id("theirs", "eth0")?, vec![ip("10.31.0.3")]);
        assert_eq!(s.release_by_id("legacy", "eth0")?, vec![ip("10.31.0.4")]);
        Ok(())
    })
    .unwrap();
    assert_eq!(names(&dir.join("by-id")), [".stamp", "theirs@eth0"]);
    // A corrupt index entry is rebuilt, not trusted.
    std::fs::write(dir.join("by-id/theirs@eth0"), "{garbage").unwrap();
    with_lock(&mut store, |s| {
        assert_eq!(s.get_by_id("theirs", "eth0")?, vec![ip("10.31.0.3")]);
        assert_eq!(s.release_by_id("theirs", "eth0")?, vec![ip("10.31.0.3")]);
        Ok(())
    })
    .unwrap();
    assert_eq!(names(&dir.join("by-id")), [".stamp"]);
}

#[test]
fn disk_store_boot_id_gc_and_status() {
    let tmp = TempDir::new();
    let mut store = DiskStore::open(tmp.path(), "net1").unwrap();
    let cfg = ranges(json!([[{ "subnet": "10.32.0.0/30" }]]));
    ops::add(&mut store, &cfg, &att("a"), Some("b1")).unwrap();
    let e = ops::status(&mut store, &cfg, Some("b1")).unwrap_err();
    assert_eq!(e.code, Code::PluginNotAvailable);
    ops::status(&mut store, &cfg, Some("b2")).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("net1/sluice.boot_id")).unwrap(),
        "b2"
    );
    ops::add(&mut store, &cfg, &att("x"), Some("b2")).unwrap();
    let released = gc(&mut store, &[], Some("b2")).unwrap();
    assert_eq!(
        released,
        vec![Reservation {
            ip: ip("10.32.0.2"),
            container_id: "x".into(),
            ifname: "eth0".into()
        }]
    );
    assert!(DiskStore::open_existing(tmp.path(), "none")
        .unwrap()
        .is_none());
}
