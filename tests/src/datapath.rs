//! The datapath under BPF_PROG_TEST_RUN: the eBPF object loaded with its
//! maps pinned in a directory of the test's own, typed writes to those
//! maps, runs of a program on a crafted frame, and the counters and drop
//! events the run left.
//!
//! [`Datapath::load`] pins under `/sys/fs/bpf/sluice-test-<hex>` and removes
//! everything on drop, also when the test panics. Needs root and bpffs.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, RingBuf},
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, TestRunResult},
};
use cni_agent::{
    bpffs::{ensure_bpffs, PinLayout},
    loader::{load, Loaded},
    maps::{counters::read_reasons, open_pinned},
};
use cni_ebpf_common::{
    maps::{
        CT4, CT6, ENDPOINTS, IPCACHE4, IPCACHE6, POLICY, POLICY_CONFIG, POLICY_EVENTS,
        POLICY_PORT_RANGES, POLICY_STATE, SOURCES4,
    },
    policy::{
        Ct4Key, CtEntry, CtKey, DropEvent, IpcacheEntry, PolicyConfig, PolicyKey, PolicyState,
        PolicyValue, PortRanges, PORT_RANGES_PER_KEY,
    },
    prefilter::{FAMILY_IPV4, FAMILY_IPV6},
    EndpointInfo, EndpointKey, SourceKey4,
};
use ipnet::IpNet;

/// `TCX_NEXT` (`TC_ACT_UNSPEC`, -1): pass on to the next program and the
/// classic tc hooks (bandwidth, ...). The pod programs' pass verdict.
pub const TCX_NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT` from `linux/pkt_cls.h`.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: eBPF host routing forwarded the packet
/// (`bpf_redirect_peer`, `bpf_redirect`, `bpf_redirect_neigh`).
pub const TC_ACT_REDIRECT: u32 = 7;

/// Packets and bytes per reason code.
pub type Reasons = BTreeMap<u32, (u64, u64)>;

/// The device BPF_PROG_TEST_RUN runs a tc program on when no context names
/// one: the loopback device, index 1 in every namespace. The harness's
/// endpoints live "behind" it, so `from_pod` takes their packets as sent
/// from their own veth.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Reasons whose counters changed from `before` to `after`, and by how much.
pub fn delta(before: &Reasons, after: &Reasons) -> Reasons {
    after
        .iter()
        .filter_map(|(code, &(packets, bytes))| {
            let (p0, b0) = before.get(code).copied().unwrap_or_default();
            (packets != p0 || bytes != b0).then_some((*code, (packets - p0, bytes - b0)))
        })
        .collect()
}

/// The `ENDPOINTS` key of an address.
pub fn endpoint_key(addr: IpAddr) -> EndpointKey {
    EndpointKey::of(addr)
}

/// An address as the datapath stores it: family, and 16 bytes with IPv4 in
/// the first four.
pub fn family_and_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(a) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&a.octets());
            (FAMILY_IPV4, bytes)
        }
        IpAddr::V6(a) => (FAMILY_IPV6, a.octets()),
    }
}

/// The conntrack key of a flow from `src:sport` to `dst:dport` (ports in
/// host order here, network order in the key; ICMP echo: `sport` is the
/// identifier and `dport` 0).
pub fn ct_key(src: IpAddr, dst: IpAddr, protocol: u8, sport: u16, dport: u16) -> CtKey {
    let (family, src) = family_and_bytes(src);
    let (dst_family, dst) = family_and_bytes(dst);
    assert_eq!(family, dst_family, "a flow has one family");
    CtKey {
        src,
        dst,
        sport: sport.to_be(),
        dport: dport.to_be(),
        protocol,
        family,
        _pad: [0; 2],
    }
}

/// A pin directory removed on drop, even when the test panics.
struct PinDir(PinLayout);

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = cni_agent::cleanup::cleanup(&self.0) {
            // Panicking while unwinding would abort and hide the first panic.
            if std::thread::panicking() {
                eprintln!("cleanup of {} failed: {e:#}", self.0.root().display());
            } else {
                panic!("cleanup of {} failed: {e:#}", self.0.root().display());
            }
        }
    }
}

/// The datapath of one test. `loaded` drops (closing the program and map
/// fds) before `pins` removes the pins.
pub struct Datapath {
    /// The loaded object; its maps are the pinned ones.
    pub loaded: Loaded,
    pins: PinDir,
}

impl Datapath {
    /// Loads the datapath with its maps pinned in a fresh directory.
    pub fn load() -> Self {
        crate::require_root("loading the datapath");
        let root = format!("/sys/fs/bpf/sluice-test-{}", crate::random_hex(16));
        let layout = PinLayout::new(root);
        ensure_bpffs(layout.root()).expect("bpffs (run the tests as root)");
        // The guard exists before anything is pinned, so a failed load
        // leaves nothing behind either.
        let pins = PinDir(layout);
        let loaded = load(&pins.0, 0).expect("loading the datapath");
        Self { loaded, pins }
    }

    /// Where the maps and programs are pinned.
    pub fn layout(&self) -> &PinLayout {
        &self.pins.0
    }

    /// The root of the pin directory.
    pub fn root(&self) -> &Path {
        self.pins.0.root()
    }

    /// The pin path of map `name`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.pins.0.map(name)
    }

    /// The pinned map `name`, opened as `T`.
    pub fn map<T>(&self, name: &str) -> T
    where
        T: TryFrom<Map, Error = aya::maps::MapError>,
    {
        open_pinned(&self.pins.0, name).unwrap_or_else(|e| panic!("opening {name}: {e:#}"))
    }

    /// The tc program `name` of the object.
    pub fn classifier(&self, name: &str) -> &SchedClassifier {
        self.loaded
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("{name} in the object"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is a tc classifier: {e}"))
    }

    /// Runs tc program `prog` on `frame` `repeat` times in one
    /// BPF_PROG_TEST_RUN: its return value and mean duration per run, or the
    /// kernel's refusal.
    pub fn try_run(
        &self,
        prog: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunResult, ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        self.classifier(prog).test_run(opts)
    }

    /// Per-reason counters, summed over CPUs.
    pub fn reasons(&self) -> Reasons {
        read_reasons(&self.pins.0)
            .expect("reading reason counters")
            .into_iter()
            .map(|r| (r.code, (r.packets, r.bytes)))
            .collect()
    }

    fn endpoints(&self) -> HashMap<MapData, EndpointKey, EndpointInfo> {
        self.map(ENDPOINTS)
    }

    fn sources4(&self) -> HashMap<MapData, SourceKey4, EndpointInfo> {
        self.map(SOURCES4)
    }

    /// Registers `addr` as an address of local endpoint `endpoint_id`, as
    /// the plugin does on ADD (flags 0).
    pub fn add_endpoint(&self, addr: IpAddr, endpoint_id: u64) {
        self.add_endpoint_with_flags(addr, endpoint_id, 0);
    }

    /// [`Datapath::add_endpoint`] with `ENDPOINT_F_*` `flags`.
    pub fn add_endpoint_with_flags(&self, addr: IpAddr, endpoint_id: u64, flags: u32) {
        self.add_endpoint_on(addr, endpoint_id, flags, LOOPBACK_IFINDEX);
    }

    /// [`Datapath::add_endpoint_with_flags`] for a pod behind the veth with
    /// index `ifindex`. `from_pod` accepts an endpoint's address only from
    /// its own veth, and BPF_PROG_TEST_RUN runs a tc program on the
    /// loopback device ([`LOOPBACK_IFINDEX`]): an endpoint elsewhere is a
    /// spoofed source for [`Datapath::try_run`].
    pub fn add_endpoint_on(&self, addr: IpAddr, endpoint_id: u64, flags: u32, ifindex: u32) {
        let info = EndpointInfo {
            ifindex,
            flags,
            mac: crate::frames::SRC_MAC,
            host_mac: [0; 6],
            _pad: [0; 4],
            endpoint_id,
        };
        if let (IpAddr::V4(v4), Ok(before)) = (addr, self.endpoints().get(&endpoint_key(addr), 0)) {
            // The address moves to another veth: its former pod's DEL would
            // have removed that veth's pair.
            if before.ifindex != ifindex {
                let _ = self
                    .sources4()
                    .remove(&SourceKey4::new(before.ifindex, v4.octets()));
            }
        }
        self.endpoints()
            .insert(endpoint_key(addr), info, 0)
            .unwrap_or_else(|e| panic!("inserting endpoint {addr}: {e}"));
        if let IpAddr::V4(v4) = addr {
            self.sources4()
                .insert(SourceKey4::new(ifindex, v4.octets()), info, 0)
                .unwrap_or_else(|e| panic!("inserting source {addr}: {e}"));
        }
    }

    /// Writes only the `SOURCES4` entry of (`ifindex`, `addr`), for
    /// endpoint `endpoint_id` (flags 0).
    pub fn add_source4(&self, ifindex: u32, addr: Ipv4Addr, endpoint_id: u64) {
        let info = EndpointInfo {
            ifindex,
            flags: 0,
            mac: crate::frames::SRC_MAC,
            host_mac: [0; 6],
            _pad: [0; 4],
            endpoint_id,
        };
        self.sources4()
            .insert(SourceKey4::new(ifindex, addr.octets()), info, 0)
            .unwrap_or_else(|e| panic!("inserting source {addr}: {e}"));
    }

    /// Removes only the `SOURCES4` entry of (`ifindex`, `addr`), as a
    /// plugin from before the map left it missing.
    pub fn remove_source4(&self, ifindex: u32, addr: Ipv4Addr) {
        self.sources4()
            .remove(&SourceKey4::new(ifindex, addr.octets()))
            .unwrap_or_else(|e| panic!("removing source {addr}: {e}"));
    }

    /// The `SOURCES4` entry of `addr` behind veth `ifindex`, if any.
    pub fn source4(&self, ifindex: u32, addr: Ipv4Addr) -> Option<EndpointInfo> {
        self.sources4()
            .get(&SourceKey4::new(ifindex, addr.octets()), 0)
            .ok()
    }

    /// Forgets `addr`, as the plugin does on DEL.
    pub fn remove_endpoint(&self, addr: IpAddr) {
        let info = self
            .endpoints()
            .get(&endpoint_key(addr), 0)
            .unwrap_or_else(|e| panic!("reading endpoint {addr}: {e}"));
        if let IpAddr::V4(v4) = addr {
            // Absent when registered without one.
            let _ = self
                .sources4()
                .remove(&SourceKey4::new(info.ifindex, v4.octets()));
        }
        self.endpoints()
            .remove(&endpoint_key(addr))
            .unwrap_or_else(|e| panic!("removing endpoint {addr}: {e}"));
    }

    /// Writes the one `POLICY_CONFIG` slot.
    pub fn set_policy_config(&self, flags: u32, revision: u32) {
        let mut map: Array<MapData, PolicyConfig> = self.map(POLICY_CONFIG);
        map.set(0, PolicyConfig { flags, revision }, 0)
            .expect("writing POLICY_CONFIG");
    }

    /// Reads the one `POLICY_CONFIG` slot.
    pub fn policy_config(&self) -> PolicyConfig {
        let map: Array<MapData, PolicyConfig> = self.map(POLICY_CONFIG);
        map.get(&0, 0).expect("reading POLICY_CONFIG")
    }

    fn policy_state(&self) -> HashMap<MapData, u64, PolicyState> {
        self.map(POLICY_STATE)
    }

    /// Writes endpoint `endpoint_id`'s `POLICY_STATE` flags.
    pub fn set_policy_state(&self, endpoint_id: u64, flags: u32) {
        let revision = self.policy_config().revision;
        self.policy_state()
            .insert(endpoint_id, PolicyState { flags, revision }, 0)
            .unwrap_or_else(|e| panic!("writing POLICY_STATE of {endpoint_id:#x}: {e}"));
    }

    /// Removes endpoint `endpoint_id`'s `POLICY_STATE` entry.
    pub fn remove_policy_state(&self, endpoint_id: u64) {
        self.policy_state()
            .remove(&endpoint_id)
            .unwrap_or_else(|e| panic!("removing POLICY_STATE of {endpoint_id:#x}: {e}"));
    }

    /// Maps `net` to `identity` in `IPCACHE4`/`IPCACHE6` (host bits
    /// cleared, as the agent writes prefixes).
    pub fn set_identity(&self, net: IpNet, identity: u32) {
        let entry = IpcacheEntry {
            identity,
            _reserved: 0,
        };
        let prefix = u32::from(net.prefix_len());
        match net.trunc() {
            IpNet::V4(net) => {
                let mut map: LpmTrie<MapData, [u8; 4], IpcacheEntry> = self.map(IPCACHE4);
                map.insert(&Key::new(prefix, net.addr().octets()), entry, 0)
            }
            IpNet::V6(net) => {
                let mut map: LpmTrie<MapData, [u8; 16], IpcacheEntry> = self.map(IPCACHE6);
                map.insert(&Key::new(prefix, net.addr().octets()), entry, 0)
            }
        }
        .unwrap_or_else(|e| panic!("writing the ipcache entry of {net}: {e}"));
    }

    /// The `POLICY` map, for bulk writes.
    pub fn policy_map(&self) -> HashMap<MapData, PolicyKey, PolicyValue> {
        self.map(POLICY)
    }

    /// Adds an allowing `POLICY` entry.
    pub fn allow(&self, key: PolicyKey) {
        let value = PolicyValue {
            rule_index: 1,
            _reserved: 0,
        };
        self.policy_map()
            .insert(key, value, 0)
            .unwrap_or_else(|e| panic!("inserting POLICY {key:?}: {e}"));
    }

    /// Removes a `POLICY` entry.
    pub fn disallow(&self, key: PolicyKey) {
        self.policy_map()
            .remove(&key)
            .unwrap_or_else(|e| panic!("removing POLICY {key:?}: {e}"));
    }

    fn port_ranges(&self) -> HashMap<MapData, PolicyKey, PortRanges> {
        self.map(POLICY_PORT_RANGES)
    }

    /// Writes the `POLICY_PORT_RANGES` entry of `key` (its port must be 0):
    /// `count` in use of `ranges` (more may be written than are in use, to
    /// prove `count` is honoured).
    pub fn set_port_ranges(&self, key: PolicyKey, ranges: &[(u16, u16)], count: u32) {
        assert!(ranges.len() <= PORT_RANGES_PER_KEY);
        let mut value = PortRanges {
            count,
            ..Default::default()
        };
        for (i, &(first, last)) in ranges.iter().enumerate() {
            value.ranges[i] = [first, last];
            value.rule_index[i] = i as u32 + 1;
        }
        self.port_ranges()
            .insert(key, value, 0)
            .unwrap_or_else(|e| panic!("inserting POLICY_PORT_RANGES {key:?}: {e}"));
    }

    /// Removes the `POLICY_PORT_RANGES` entry of `key`.
    pub fn remove_port_ranges(&self, key: PolicyKey) {
        self.port_ranges()
            .remove(&key)
            .unwrap_or_else(|e| panic!("removing POLICY_PORT_RANGES {key:?}: {e}"));
    }

    fn ct4(&self) -> HashMap<MapData, Ct4Key, CtEntry> {
        self.map(CT4)
    }

    fn ct6(&self) -> HashMap<MapData, CtKey, CtEntry> {
        self.map(CT6)
    }

    /// The conntrack entry of `key` (in `CT4` or `CT6` by its family), if
    /// any.
    pub fn ct_entry(&self, key: &CtKey) -> Option<CtEntry> {
        let found = if key.family == FAMILY_IPV4 {
            self.ct4().get(&key.v4(), 0)
        } else {
            self.ct6().get(key, 0)
        };
        match found {
            Ok(entry) => Some(entry),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => panic!("reading conntrack {key:?}: {e}"),
        }
    }

    /// Every conntrack key of both families, as flows.
    pub fn ct_keys(&self) -> Vec<CtKey> {
        let v4: Vec<Ct4Key> = self
            .ct4()
            .keys()
            .collect::<Result<_, _>>()
            .expect("listing CT4");
        let v6: Vec<CtKey> = self
            .ct6()
            .keys()
            .collect::<Result<_, _>>()
            .expect("listing CT6");
        v4.iter().map(Ct4Key::flow).chain(v6).collect()
    }

    /// Empties conntrack.
    pub fn ct_clear(&self) {
        let (mut ct4, mut ct6) = (self.ct4(), self.ct6());
        for key in self.ct_keys() {
            // An entry gone meanwhile (LRU) is as good as removed.
            let _ = if key.family == FAMILY_IPV4 {
                ct4.remove(&key.v4())
            } else {
                ct6.remove(&key)
            };
        }
    }

    /// Takes every drop event waiting on `POLICY_EVENTS`. The consumer
    /// position lives in the map, so a later call sees only newer events.
    pub fn drain_events(&self) -> Vec<DropEvent> {
        let mut ring: RingBuf<MapData> = self.map(POLICY_EVENTS);
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(
                item.len(),
                size_of::<DropEvent>(),
                "a POLICY_EVENTS record is one DropEvent"
            );
            // SAFETY: the record is exactly one DropEvent, a repr(C) type of
            // integers and byte arrays valid for any bits.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
        }
        events
    }
}
