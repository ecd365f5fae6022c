//! The agent's pin lifecycle against the real kernel: adoption of unchanged
//! maps and programs, replacement (never reuse) of a map whose layout
//! changed, atomic replacement of changed programs, in-place update of an
//! uplink's XDP link, reattachment after the device is gone, detachment of
//! uplinks no longer configured.

use aya::programs::{Xdp, XdpMode};
use clap::Parser as _;
use cni_agent::{
    attach::{link_is_live, sync_uplinks, UplinkAttach},
    bpffs::ensure_bpffs,
    loader::{self, MapPinCheck, ProgPin},
    maps::prefilter::{Origin, PrefilterMaps},
    rules::RuleSpec,
    syscall::pinned_xdp_link_state,
};
use cni_ebpf_common::maps::{MAP_SPECS, PREFILTER_PROTO, PROG_FROM_POD, PROG_XDP_PREFILTER};
use tests::{require_root, BpffsDir, Netns};

fn cidr_rule(cidr: &str) -> cni_agent::rules::Rule {
    RuleSpec {
        cidr: Some(cidr.into()),
        ..Default::default()
    }
    .to_rule()
    .expect("valid rule")
}

fn sluicectl(dir: &BpffsDir, args: &[&str]) -> String {
    let mut argv = vec![
        "sluicectl",
        "--bpffs-dir",
        dir.path().to_str().expect("utf-8 path"),
    ];
    argv.extend_from_slice(args);
    cni_agent::cli::run(&cni_agent::cli::Cli::parse_from(argv)).expect("sluicectl verb")
}

/// Creates a BPF hash map with 4-byte keys and values (an "old layout") and
/// pins it at `path`.
fn pin_wrong_shaped_map(path: &std::path::Path) {
    pin_new_map(path, 1, 4, 4, 8);
}

/// Creates a BPF map of this shape and pins it at `path`, with raw
/// syscalls: aya has no API to make a map that is not in an object.
fn pin_new_map(
    path: &std::path::Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut attr = [0u8; 128];
    let create = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: MapCreate is plain integers and fits in attr.
    unsafe { std::ptr::write_unaligned(attr.as_mut_ptr().cast::<MapCreate>(), create) };
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attr of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    let mut pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_PIN (6); c_path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            &mut pin as *mut ObjPin,
            size_of::<ObjPin>(),
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd; the pin keeps the map alive.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn reload_adopts_maps_programs_and_rules() {
    require_root("reload_adopts_maps_programs_and_rules");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();

    let first = loader::load(&layout, 0).expect("first load");
    assert!(
        first
            .maps
            .iter()
            .all(|(_, check)| *check == MapPinCheck::Created),
        "{:?}",
        first.maps
    );
    assert!(
        first.progs.iter().all(|(_, pin)| *pin == ProgPin::Pinned),
        "{:?}",
        first.progs
    );
    let rule = PrefilterMaps::open(&layout)
        .unwrap()
        .add(&cidr_rule("192.0.2.0/24"), Origin::Runtime)
        .unwrap();
    drop(first);

    let second = loader::load(&layout, 0).expect("second load");
    assert!(
        second
            .maps
            .iter()
            .all(|(_, check)| *check == MapPinCheck::Reused),
        "{:?}",
        second.maps
    );
    assert!(
        second.progs.iter().all(|(_, pin)| *pin == ProgPin::Adopted),
        "{:?}",
        second.progs
    );
    let rules = PrefilterMaps::open(&layout).unwrap().list().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id, rule.id);
    assert_eq!(rules[0].rule, rule.rule);
}

#[test]
fn changed_map_layout_is_replaced_not_reused() {
    require_root("changed_map_layout_is_replaced_not_reused");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("first load"));
    let kept = PrefilterMaps::open(&layout)
        .unwrap()
        .add(&cidr_rule("198.51.100.0/24"), Origin::Runtime)
        .unwrap();

    // An older agent left PREFILTER_PROTO with another layout.
    let proto_pin = layout.map(PREFILTER_PROTO);
    std::fs::remove_file(&proto_pin).unwrap();
    pin_wrong_shaped_map(&proto_pin);
    let table = sluicectl(&dir, &["bpf", "maps"]);
    let proto_line = table
        .lines()
        .find(|l| l.starts_with(PREFILTER_PROTO))
        .expect("row");
    assert!(proto_line.ends_with("MISMATCH"), "{table}");

    let loaded = loader::load(&layout, 0).expect("load over an old layout");
    for (name, check) in &loaded.maps {
        if *name == PREFILTER_PROTO {
            let MapPinCheck::Replaced { found } = check else {
                panic!("{name}: {check:?}")
            };
            assert!(found.contains("key 4 value 4"), "{found}");
        } else {
            assert_eq!(*check, MapPinCheck::Reused, "{name}");
        }
    }
    let info = aya::maps::MapInfo::from_pin(&proto_pin).unwrap();
    let spec = MAP_SPECS
        .iter()
        .find(|s| s.name == PREFILTER_PROTO)
        .unwrap();
    assert!(loader::shape_matches(&info, spec));
    assert!(!sluicectl(&dir, &["bpf", "maps"]).contains("MISMATCH"));
    // The other maps, and the rules in them, were reused.
    let rules = PrefilterMaps::open(&layout).unwrap().list().unwrap();
    assert_eq!(
        rules.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![kept.id]
    );
}

/// Pins a second copy of the prefilter (same code, new program id) over the
/// program pin, as an upgrade that changed nothing in this program would.
fn pin_fresh_prefilter_copy(layout: &cni_agent::bpffs::PinLayout) {
    let mut loader = aya::EbpfLoader::new();
    let paths: Vec<_> = MAP_SPECS
        .iter()
        .map(|s| (s.name, layout.map(s.name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(cni_agent::EBPF_OBJECT).unwrap();
    let xdp: &mut Xdp = ebpf
        .program_mut(PROG_XDP_PREFILTER)
        .unwrap()
        .try_into()
        .unwrap();
    xdp.load().unwrap();
    let tmp = layout.progs_dir().join("prefilter_copy");
    xdp.pin(&tmp).unwrap();
    std::fs::rename(&tmp, layout.prog(PROG_XDP_PREFILTER)).unwrap();
}

#[test]
fn uplink_links_are_adopted_updated_reattached_and_detached() {
    require_root("uplink_links_are_adopted_updated_reattached_and_detached");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    let uplinks = vec!["up0".to_owned()];
    let pin = layout.xdp_link("up0");

    let ns = Netns::new().expect("netns");
    let peer = Netns::new().expect("peer netns");
    tests::link::add_veth(&ns, "up0", &peer, "peer0").expect("veth");
    let link_id = ns
        .run(|| {
            let first = sync_uplinks(&layout, &uplinks, XdpMode::Skb)?;
            assert_eq!(first, vec![("up0".to_owned(), UplinkAttach::Attached)]);
            let state = pinned_xdp_link_state(&pin)?;
            let again = sync_uplinks(&layout, &uplinks, XdpMode::Skb)?;
            assert_eq!(again, vec![("up0".to_owned(), UplinkAttach::Adopted)]);
            Ok(state.link_id)
        })
        .unwrap();

    // New program behind the pin: the same link now runs it (no detach).
    pin_fresh_prefilter_copy(&layout);
    let new_prog = aya::programs::ProgramInfo::from_pin(layout.prog(PROG_XDP_PREFILTER))
        .unwrap()
        .id();
    ns.run(|| {
        let updated = sync_uplinks(&layout, &uplinks, XdpMode::Skb)?;
        assert_eq!(updated, vec![("up0".to_owned(), UplinkAttach::Updated)]);
        let state = pinned_xdp_link_state(&pin)?;
        assert_eq!(
            state.link_id, link_id,
            "the link was replaced instead of updated"
        );
        assert_eq!(state.prog_id, new_prog);
        Ok(())
    })
    .unwrap();

    // The device is deleted: the link is defunct, and a new device of the
    // same name gets a fresh link.
    ns.netlink(|handle| async move {
        let index = {
            use futures::TryStreamExt as _;
            let mut links = handle.link().get().match_name("up0".to_owned()).execute();
            links.try_next().await?.expect("up0 exists").header.index
        };
        handle.link().del(index).execute().await?;
        Ok(())
    })
    .unwrap();
    assert!(!link_is_live(&pin).unwrap(), "the link outlived its device");
    tests::link::add_veth(&ns, "up0", &peer, "peer0").expect("veth again");
    ns.run(|| {
        let result = sync_uplinks(&layout, &uplinks, XdpMode::Skb)?;
        assert_eq!(result, vec![("up0".to_owned(), UplinkAttach::Reattached)]);
        assert!(link_is_live(&pin)?);
        // Not an uplink any more: detached and unpinned.
        assert!(sync_uplinks(&layout, &[], XdpMode::Skb)?.is_empty());
        assert!(!pin.exists());
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_changed_program_is_replaced_atomically() {
    require_root("a_changed_program_is_replaced_atomically");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    // Simulate an older build: another program's code under the prefilter's
    // pin (a pin cannot be copied; re-pin the from_pod program there).
    let mut from_pod =
        aya::programs::SchedClassifier::from_pin(layout.prog(PROG_FROM_POD)).unwrap();
    std::fs::remove_file(layout.prog(PROG_XDP_PREFILTER)).unwrap();
    from_pod.pin(layout.prog(PROG_XDP_PREFILTER)).unwrap();
    let old_tag = aya::programs::ProgramInfo::from_pin(layout.prog(PROG_XDP_PREFILTER))
        .unwrap()
        .tag();

    let loaded = loader::load(&layout, 0).expect("load");
    let pins: std::collections::HashMap<_, _> = loaded.progs.iter().copied().collect();
    assert_eq!(pins[PROG_XDP_PREFILTER], ProgPin::Replaced);
    assert_eq!(pins[PROG_FROM_POD], ProgPin::Adopted);
    let info = aya::programs::ProgramInfo::from_pin(layout.prog(PROG_XDP_PREFILTER)).unwrap();
    assert_ne!(info.tag(), old_tag);
    assert_eq!(format!("{:?}", info.program_type()), "BPF_PROG_TYPE_XDP");
    // No temporary pin is left behind.
    let names: Vec<_> = std::fs::read_dir(layout.progs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

/// The agent's TCX links: `from_uplink` attached once per uplink (a second
/// sync keeps it), detached when the uplink leaves the list; and a pod link
/// the plugin pinned is moved to the program pinned now when an upgrade
/// replaced it, so pods attached before the upgrade run the new code.
#[test]
fn uplink_routing_links_and_pod_links_follow_the_pinned_programs() {
    use aya::programs::{
        links::{FdLink, LinkOrder},
        tc::TcAttachOptions,
        SchedClassifier, TcAttachType,
    };
    use cni_agent::tcx::{sync_uplink_routing, update_pod_links};
    use cni_ebpf_common::maps::PROG_TO_POD;

    require_root("uplink_routing_links_and_pod_links_follow_the_pinned_programs");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    let ns = Netns::new().expect("netns");
    let peer = Netns::new().expect("peer netns");
    tests::link::add_veth(&ns, "up0", &peer, "peer0").expect("veth");
    tests::link::add_veth(&ns, "slcpod0", &peer, "pod0").expect("veth");
    let uplinks = vec!["up0".to_owned()];
    let uplink_pin = layout.uplink_link("up0");
    let pod_pin = layout.links_dir().join("tcx-slcpod0-ingress");

    ns.run(|| {
        assert_eq!(sync_uplink_routing(&layout, &uplinks)?, vec!["up0"]);
        let first = pinned_xdp_link_state(&uplink_pin)?;
        assert_eq!(
            sync_uplink_routing(&layout, &uplinks)?,
            Vec::<String>::new()
        );
        assert_eq!(pinned_xdp_link_state(&uplink_pin)?.link_id, first.link_id);

        // A pod link made by an "older build": to_pod's code on the ingress
        // pin the plugin would have made with from_pod.
        let mut old = SchedClassifier::from_pin(layout.prog(PROG_TO_POD))?;
        let id = old.attach_with_options(
            "slcpod0",
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link: FdLink = old.take_link(id)?.try_into()?;
        link.pin(&pod_pin)?;
        let from_pod_id = aya::programs::ProgramInfo::from_pin(layout.prog(PROG_FROM_POD))?.id();
        assert_ne!(pinned_xdp_link_state(&pod_pin)?.prog_id, from_pod_id);
        assert_eq!(update_pod_links(&layout)?, 1);
        let moved = pinned_xdp_link_state(&pod_pin)?;
        assert_eq!(moved.prog_id, from_pod_id);
        assert_eq!(
            update_pod_links(&layout)?,
            0,
            "a second pass changes nothing"
        );

        // The uplink leaves the list: its link is detached and unpinned.
        assert!(sync_uplink_routing(&layout, &[])?.is_empty());
        assert!(!uplink_pin.exists());
        Ok(())
    })
    .unwrap();
}

/// Pods attached with `"tcAttach": "tc"` (cls_bpf filters, no pins) are
/// found through the state dir's records: their filters are replaced with
/// ones running the programs pinned now. A hook without Sluice's filter
/// is not given one, and a record whose veth is gone is skipped.
#[test]
fn pod_filters_follow_the_pinned_programs() {
    use aya::programs::{
        tc::{self, NlOptions, TcAttachOptions, TcHandle},
        SchedClassifier, TcAttachType,
    };
    use cni_agent::tcx::update_pod_filters;
    use cni_ebpf_common::maps::{PROG_TO_POD, TC_FILTER_HANDLE, TC_FILTER_PRIORITY};

    require_root("pod_filters_follow_the_pinned_programs");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    let ns = Netns::new().expect("netns");
    let peer = Netns::new().expect("peer netns");
    tests::link::add_veth(&ns, "slcfil0", &peer, "pod0").expect("veth");
    let index = tests::link::ifindex(&ns, "slcfil0").expect("ifindex");
    let state = tempfile::tempdir().expect("state dir");
    for (cid, veth, ifindex) in [("live", "slcfil0", index), ("gone-pod", "slcgone1", 4343)] {
        let record = serde_json::json!({
            "version": 1, "network": "net", "containerId": cid, "ifname": "eth0",
            "netns": "/proc/1/ns/net", "endpointId": format!("{:016x}", cid.len() as u64 + 0xcd00),
            "hostVeth": veth, "hostIfindex": ifindex, "containerMac": "0a:58:0a:f4:01:0c",
            "mode": "routed", "addresses": ["10.244.8.5/32"], "tcAttach": "tc",
            "bpffsDir": dir.path(),
        });
        std::fs::write(
            state.path().join(format!("{cid}@eth0.json")),
            record.to_string(),
        )
        .unwrap();
    }

    ns.run(|| {
        // A filter made by an "older build": to_pod's code where the
        // plugin puts from_pod; no filter on egress.
        tc::qdisc_add_clsact("slcfil0")?;
        let mut old = SchedClassifier::from_pin(layout.prog(PROG_TO_POD))?;
        let id = old.attach_with_options(
            "slcfil0",
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions {
                priority: TC_FILTER_PRIORITY,
                handle: TcHandle::from(TC_FILTER_HANDLE),
                ..Default::default()
            }),
        )?;
        std::mem::forget(old.take_link(id)?);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        tests::link::tc_programs(&ns, "slcfil0").unwrap(),
        ["tc ingress to_pod"]
    );
    let changed = ns
        .run(|| update_pod_filters(&layout, state.path()))
        .unwrap();
    assert_eq!(changed, 1, "only the live pod's ingress filter");
    assert_eq!(
        tests::link::tc_programs(&ns, "slcfil0").unwrap(),
        ["tc ingress from_pod"]
    );
}

/// An upgrade that changes the `ENDPOINTS` layout replaces the map with an
/// empty one; the entries of running pods, which the plugin wrote, are
/// rewritten from the state dir's attachment records, flags and MACs
/// included. A record whose veth is gone gets none.
#[test]
fn a_migrated_endpoints_map_is_refilled_from_the_state_dir() {
    use cni_agent::restore::restore_endpoints;
    use cni_ebpf_common::{
        endpoint::ENDPOINT_F_HOST_ROUTING, maps::ENDPOINTS, EndpointInfo, EndpointKey,
    };

    require_root("a_migrated_endpoints_map_is_refilled_from_the_state_dir");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    let ns = Netns::new().expect("netns");
    let peer = Netns::new().expect("peer netns");
    tests::link::add_veth(&ns, "slcmig0", &peer, "pod0").expect("veth");
    let index = tests::link::ifindex(&ns, "slcmig0").expect("ifindex");
    let state = tempfile::tempdir().expect("state dir");
    let record = |cid: &str, veth: &str, ifindex: u32, addr: &str| {
        serde_json::json!({
            "version": 1, "network": "net", "containerId": cid, "ifname": "eth0",
            "netns": "/proc/1/ns/net", "endpointId": format!("{:016x}", cid.len() as u64 + 0xab00),
            "hostVeth": veth, "hostIfindex": ifindex, "containerMac": "0a:58:0a:f4:01:0b",
            "mode": "routed", "addresses": [addr], "ipMasq": false, "hostRouting": "ebpf",
            "bpffsDir": dir.path(),
        })
    };
    for (cid, veth, ifindex, addr) in [
        ("live", "slcmig0", index, "10.244.9.5/32"),
        ("gone-pod", "slcgone0", 4242, "10.244.9.6/32"),
    ] {
        std::fs::write(
            state.path().join(format!("{cid}@eth0.json")),
            record(cid, veth, ifindex, addr).to_string(),
        )
        .unwrap();
    }
    // An older agent's ENDPOINTS, of another layout.
    std::fs::remove_file(layout.map(ENDPOINTS)).unwrap();
    pin_wrong_shaped_map(&layout.map(ENDPOINTS));

    ns.run(|| {
        let loaded = loader::load(&layout, 0)?;
        let check = loaded
            .maps
            .iter()
            .find(|(name, _)| *name == ENDPOINTS)
            .map(|(_, check)| check.clone());
        assert!(
            matches!(check, Some(MapPinCheck::Replaced { .. })),
            "{check:?}"
        );
        assert_eq!(restore_endpoints(&layout, state.path())?, 1);
        let map: aya::maps::HashMap<_, EndpointKey, EndpointInfo> = aya::maps::HashMap::try_from(
            aya::maps::Map::HashMap(aya::maps::MapData::from_pin(layout.map(ENDPOINTS))?),
        )?;
        let entries: Vec<(EndpointKey, EndpointInfo)> = map.iter().collect::<Result<_, _>>()?;
        assert_eq!(entries.len(), 1, "{entries:?}");
        let (key, info) = entries[0];
        assert_eq!(key, EndpointKey::v4([10, 244, 9, 5]));
        assert_eq!(info.ifindex, index);
        assert_eq!(info.flags, ENDPOINT_F_HOST_ROUTING);
        assert_eq!(info.mac, [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x0b]);
        assert_ne!(info.host_mac, [0; 6], "the host veth's MAC");
        Ok(())
    })
    .unwrap();
}

/// An agent upgrading a node whose datapath still has the single `CT` map
/// of both families carries its flows into `CT4`/`CT6` (a flow the new
/// programs already track keeps their entry) and removes the old pin.
#[test]
fn flows_of_the_retired_conntrack_map_are_carried_over() {
    use cni_ebpf_common::{
        maps::{BPF_MAP_TYPE_LRU_HASH, CT4, CT6, RETIRED_CT},
        policy::{Ct4Key, CtEntry, CtKey},
    };
    use std::net::IpAddr;
    use tests::datapath::ct_key;

    require_root("flows_of_the_retired_conntrack_map_are_carried_over");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    let state = tempfile::tempdir().expect("state dir");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let entry = |revision: u32, packets: u64| CtEntry {
        revision,
        _reserved: 0,
        packets_forward: packets,
        packets_reply: packets / 2,
        last_seen_ns: 1,
    };
    let open = |name: &str| aya::maps::MapData::from_pin(layout.map(name)).unwrap();
    let v4 = ct_key(ip("10.244.3.4"), ip("10.244.3.5"), 6, 40000, 80);
    let v4_retracked = ct_key(ip("10.244.3.4"), ip("10.244.3.6"), 17, 5353, 53);
    let v6 = ct_key(ip("fd00::4"), ip("fd00::5"), 6, 40001, 443);

    // What an older agent left: one map, 40-byte keys, both families.
    pin_new_map(
        &layout.map(RETIRED_CT),
        BPF_MAP_TYPE_LRU_HASH,
        size_of::<CtKey>() as u32,
        size_of::<CtEntry>() as u32,
        64,
    );
    let mut old: aya::maps::HashMap<_, CtKey, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(open(RETIRED_CT))).unwrap();
    for (key, value) in [
        (v4, entry(3, 10)),
        (v4_retracked, entry(3, 4)),
        (v6, entry(3, 8)),
    ] {
        old.insert(key, value, 0).unwrap();
    }
    // A flow the current programs track already, at a newer revision.
    let mut ct4: aya::maps::HashMap<_, Ct4Key, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(open(CT4))).unwrap();
    ct4.insert(v4_retracked.v4(), entry(9, 1), 0).unwrap();

    let config = agent_config(&dir, state.path());
    drop(cni_agent::agent::setup(&config).expect("agent setup over the old map"));

    assert!(!layout.map(RETIRED_CT).exists(), "the old pin is removed");
    let ct4: aya::maps::HashMap<_, Ct4Key, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(open(CT4))).unwrap();
    let ct6: aya::maps::HashMap<_, CtKey, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(open(CT6))).unwrap();
    assert_eq!(ct4.get(&v4.v4(), 0).unwrap(), entry(3, 10));
    assert_eq!(
        ct4.get(&v4_retracked.v4(), 0).unwrap(),
        entry(9, 1),
        "newer entry kept"
    );
    assert_eq!(ct6.get(&v6, 0).unwrap(), entry(3, 8));
    assert_eq!(ct4.keys().count(), 2);
    assert_eq!(ct6.keys().count(), 1);
    // The next start finds nothing to carry.
    drop(cni_agent::agent::setup(&config).expect("second setup"));
    assert_eq!(ct4.keys().count(), 2);
}

/// A plain agent on `dir` (no uplinks, rules or policy source).
fn agent_config(dir: &BpffsDir, state_dir: &std::path::Path) -> cni_agent::agent::AgentConfig {
    cni_agent::agent::AgentConfig {
        bpffs_dir: dir.path().to_path_buf(),
        uplinks: Vec::new(),
        prefilter: None,
        xdp_mode: XdpMode::default(),
        ebpf_log_level: 0,
        metrics_addr: None,
        state_dir: state_dir.to_path_buf(),
        api_socket: state_dir.join("api.sock"),
        manifests: None,
        kube: None,
        node_addresses: Vec::new(),
        allow_host: true,
        policy_enforcement: None,
    }
}

/// An agent upgrading a node from before `SOURCES4` (no pin) fills it from
/// the IPv4 entries of `ENDPOINTS`, the map the plugin wrote; a reused
/// `SOURCES4` is left as the plugin wrote it.
#[test]
fn a_new_sources_map_is_filled_from_endpoints() {
    use cni_ebpf_common::{
        maps::{ENDPOINTS, SOURCES4},
        EndpointInfo, EndpointKey, SourceKey4,
    };

    require_root("a_new_sources_map_is_filled_from_endpoints");
    let dir = BpffsDir::new();
    ensure_bpffs(dir.path()).expect("bpffs");
    let layout = dir.layout();
    drop(loader::load(&layout, 0).expect("load"));
    let state = tempfile::tempdir().expect("state dir");
    let open = |name: &str| {
        aya::maps::Map::HashMap(aya::maps::MapData::from_pin(layout.map(name)).unwrap())
    };
    let info = |ifindex: u32, endpoint_id: u64| EndpointInfo {
        ifindex,
        flags: 0,
        mac: [2, 0, 0, 0, 0, 1],
        host_mac: [2, 0, 0, 0, 0, 2],
        _pad: [0; 4],
        endpoint_id,
    };
    let mut endpoints: aya::maps::HashMap<_, EndpointKey, EndpointInfo> =
        aya::maps::HashMap::try_from(open(ENDPOINTS)).unwrap();
    endpoints
        .insert(EndpointKey::v4([10, 244, 4, 5]), info(40, 5), 0)
        .unwrap();
    endpoints
        .insert(EndpointKey::v6([0xfd; 16]), info(40, 5), 0)
        .unwrap();
    endpoints
        .insert(EndpointKey::v4([10, 244, 4, 6]), info(41, 6), 0)
        .unwrap();
    // What an agent from before SOURCES4 left.
    std::fs::remove_file(layout.map(SOURCES4)).unwrap();

    drop(cni_agent::agent::setup(&agent_config(&dir, state.path())).expect("setup"));
    let sources: aya::maps::HashMap<_, SourceKey4, EndpointInfo> =
        aya::maps::HashMap::try_from(open(SOURCES4)).unwrap();
    let mut filled: Vec<(SourceKey4, EndpointInfo)> =
        sources.iter().collect::<Result<_, _>>().unwrap();
    filled.sort_by_key(|(k, _)| k.ifindex);
    let pair = |ifindex: u32, last: u8| SourceKey4 {
        ifindex,
        addr: [10, 244, 4, last],
    };
    assert_eq!(
        filled,
        vec![(pair(40, 5), info(40, 5)), (pair(41, 6), info(41, 6))]
    );

    // Reused on the next start: what the plugin changed stays.
    let mut sources: aya::maps::HashMap<_, SourceKey4, EndpointInfo> =
        aya::maps::HashMap::try_from(open(SOURCES4)).unwrap();
    sources.remove(&pair(41, 6)).unwrap();
    drop(cni_agent::agent::setup(&agent_config(&dir, state.path())).expect("setup again"));
    assert_eq!(sources.keys().count(), 1);
}
