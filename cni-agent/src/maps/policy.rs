//! The policy maps (`IPCACHE4`/`IPCACHE6`, `POLICY`, `POLICY_PORT_RANGES`,
//! `POLICY_STATE`, `POLICY_CONFIG`), their whole content as one value
//! ([`PolicyContent`]), and the ordered update from one content to the next
//! ([`PolicyMaps::apply`]).
//!
//! # Update order
//!
//! The datapath reads these maps while they change, entry by entry, so the
//! order of the writes is what makes a change atomic from a packet's point
//! of view:
//!
//! 1. `POLICY` and `POLICY_PORT_RANGES`: new and changed entries. The union
//!    of old and new entries allows what either policy allows.
//! 2. `IPCACHE4`/`IPCACHE6`: new and changed prefixes. An address moving to
//!    a new identity finds that identity's entries already in place, and
//!    its old identity's entries are still there until step 5.
//! 3. `POLICY_STATE` of every endpoint (isolation, `PROGRAMMED`): an
//!    endpoint becoming isolated has its allow entries already.
//! 4. Deletions, in the reverse order (state of gone endpoints, ipcache,
//!    ranges, entries).
//! 5. `POLICY_CONFIG`: the new revision (and the enforcement switch).
//!    Conntrack entries of older revisions are checked again from here on.
//!
//! `POLICY` and `POLICY_PORT_RANGES` are written and pruned in batches
//! (`BPF_MAP_UPDATE_BATCH`/`BPF_MAP_DELETE_BATCH`: one `bpf(2)` call per
//! map instead of one per entry, the main cost of a large sync). The kernel
//! applies a batch element by element, in order, each element atomically,
//! exactly as the single calls would, so the steps keep their order and
//! their meaning.
//!
//! Hence no flow both policies allow is ever denied. The revision moves
//! last, not before the deletions: a flow checked again between the bump
//! and the deletions would pass on an entry about to go and be stamped
//! current, so it would survive a change that denies it.
//!
//! The agent is the only writer; it keeps what it wrote in memory and reads
//! the maps once at start ([`PolicyMaps::read`]), so a restart picks up
//! exactly what the previous agent left (and prunes what has no owner).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fmt::Debug,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, IterableMap as _, MapData, MapError,
    },
    Pod,
};
use cni_ebpf_common::{
    maps::{
        CT4, CT6, ENDPOINTS, IPCACHE4, IPCACHE6, POLICY, POLICY_CONFIG, POLICY_PORT_RANGES,
        POLICY_STATE, SOURCES4,
    },
    policy::{
        Ct4Key, CtEntry, CtKey, IpcacheEntry, PolicyConfig, PolicyKey, PolicyState, PolicyValue,
        PortRanges, POLICY_CONFIG_F_ENFORCE, PORT_RANGES_PER_KEY,
    },
    prefilter::FAMILY_IPV4,
    EndpointInfo, EndpointKey, SourceKey4,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::open_pinned;
use crate::{
    bpffs::PinLayout,
    policy::{ports::PortRange, Compiled},
    syscall,
};

/// Everything the policy maps hold (but `POLICY_CONFIG`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyContent {
    /// `IPCACHE4` and `IPCACHE6`: prefix → identity.
    pub ipcache: BTreeMap<IpNet, u32>,
    /// `POLICY`.
    pub policy: StdHashMap<PolicyKey, PolicyValue>,
    /// `POLICY_PORT_RANGES`.
    pub ranges: StdHashMap<PolicyKey, PortRanges>,
    /// `POLICY_STATE`, by endpoint id.
    pub state: BTreeMap<u64, PolicyState>,
}

impl PolicyContent {
    /// The content a compile asks for, every endpoint stamped `revision`.
    pub fn from_compiled(compiled: &Compiled, revision: u32) -> Self {
        let mut out = PolicyContent {
            ipcache: compiled.ipcache.clone(),
            ..Default::default()
        };
        for ep in compiled.endpoints.values() {
            out.policy.extend(ep.policy_entries());
            out.ranges.extend(ep.port_range_entries());
            out.state.insert(ep.endpoint_id, ep.state(revision));
        }
        out
    }

    /// Entries per map, for reports.
    pub fn counts(&self) -> MapCounts {
        MapCounts {
            ipcache: self.ipcache.len(),
            policy: self.policy.len(),
            port_ranges: self.ranges.len(),
            endpoints: self.state.len(),
        }
    }
}

/// Sizes of a [`PolicyContent`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MapCounts {
    /// Prefixes in both ipcaches.
    pub ipcache: usize,
    /// `POLICY` entries.
    pub policy: usize,
    /// `POLICY_PORT_RANGES` entries.
    pub port_ranges: usize,
    /// `POLICY_STATE` entries.
    pub endpoints: usize,
}

/// What an [`PolicyMaps::apply`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Entries added or overwritten (all maps).
    pub written: usize,
    /// Entries deleted (all maps).
    pub deleted: usize,
    /// Time spent writing.
    #[serde(serialize_with = "as_micros")]
    pub duration: Duration,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// Kernel LPM key of an IPv4 prefix.
pub fn key4(net: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

/// Kernel LPM key of an IPv6 prefix.
pub fn key6(net: &Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

/// Ranges of a kernel value.
pub fn ranges_from_kernel(v: &PortRanges) -> Vec<PortRange> {
    (0..(v.count as usize).min(PORT_RANGES_PER_KEY))
        .map(|i| PortRange {
            first: v.ranges[i][0],
            last: v.ranges[i][1],
            rule_index: v.rule_index[i],
        })
        .collect()
}

/// The address of an `ENDPOINTS` key.
pub fn endpoint_addr(key: &EndpointKey) -> IpAddr {
    if key.family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        other => other,
    }
}

/// The pinned policy maps, open.
pub struct PolicyMaps {
    ipcache4: LpmTrie<MapData, [u8; 4], IpcacheEntry>,
    ipcache6: LpmTrie<MapData, [u8; 16], IpcacheEntry>,
    policy: HashMap<MapData, PolicyKey, PolicyValue>,
    ranges: HashMap<MapData, PolicyKey, PortRanges>,
    state: HashMap<MapData, u64, PolicyState>,
    config: Array<MapData, PolicyConfig>,
}

impl PolicyMaps {
    /// Opens the pins under `layout`.
    pub fn open(layout: &PinLayout) -> anyhow::Result<Self> {
        Ok(Self {
            ipcache4: open_pinned(layout, IPCACHE4)?,
            ipcache6: open_pinned(layout, IPCACHE6)?,
            policy: open_pinned(layout, POLICY)?,
            ranges: open_pinned(layout, POLICY_PORT_RANGES)?,
            state: open_pinned(layout, POLICY_STATE)?,
            config: open_pinned(layout, POLICY_CONFIG)?,
        })
    }

    /// The `POLICY_CONFIG` value.
    pub fn config(&self) -> anyhow::Result<PolicyConfig> {
        self.config.get(&0, 0).context("reading POLICY_CONFIG")
    }

    /// Writes `POLICY_CONFIG`.
    pub fn set_config(&mut self, config: PolicyConfig) -> anyhow::Result<()> {
        self.config
            .set(0, config, 0)
            .context("writing POLICY_CONFIG")
    }

    /// Sets or clears the enforcement switch, keeping the revision.
    pub fn set_enforce(&mut self, enforce: bool) -> anyhow::Result<PolicyConfig> {
        let mut config = self.config()?;
        if enforce {
            config.flags |= POLICY_CONFIG_F_ENFORCE;
        } else {
            config.flags &= !POLICY_CONFIG_F_ENFORCE;
        }
        self.set_config(config)?;
        Ok(config)
    }

    /// One endpoint's `POLICY_STATE`, if any.
    pub fn state_of(&self, endpoint_id: u64) -> anyhow::Result<Option<PolicyState>> {
        match self.state.get(&endpoint_id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(e).context("reading POLICY_STATE"),
        }
    }

    /// Everything the maps hold now.
    pub fn read(&self) -> anyhow::Result<PolicyContent> {
        let mut out = PolicyContent::default();
        for item in self.ipcache4.iter() {
            let (k, v) = item.context("reading IPCACHE4")?;
            let len = u8::try_from(k.prefix_len()).unwrap_or(32);
            if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(k.data()), len) {
                out.ipcache.insert(IpNet::V4(net), v.identity);
            }
        }
        for item in self.ipcache6.iter() {
            let (k, v) = item.context("reading IPCACHE6")?;
            let len = u8::try_from(k.prefix_len()).unwrap_or(128);
            if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(k.data()), len) {
                out.ipcache.insert(IpNet::V6(net), v.identity);
            }
        }
        for item in self.policy.iter() {
            let (k, v) = item.context("reading POLICY")?;
            out.policy.insert(k, v);
        }
        for item in self.ranges.iter() {
            let (k, v) = item.context("reading POLICY_PORT_RANGES")?;
            out.ranges.insert(k, v);
        }
        for item in self.state.iter() {
            let (k, v) = item.context("reading POLICY_STATE")?;
            out.state.insert(k, v);
        }
        Ok(out)
    }

    fn put_ipcache(&mut self, net: &IpNet, identity: u32) -> Result<(), MapError> {
        let v = IpcacheEntry {
            identity,
            _reserved: 0,
        };
        match net {
            IpNet::V4(n) => self.ipcache4.insert(&key4(n), v, 0),
            IpNet::V6(n) => self.ipcache6.insert(&key6(n), v, 0),
        }
    }

    fn del_ipcache(&mut self, net: &IpNet) -> Result<(), MapError> {
        ignore_missing(match net {
            IpNet::V4(n) => self.ipcache4.remove(&key4(n)),
            IpNet::V6(n) => self.ipcache6.remove(&key6(n)),
        })
    }

    /// Moves the maps from `current` (what they hold) to `desired`, in the
    /// order the module documentation explains, then writes `config`
    /// (revision and flags). On error, `current` is updated to what was
    /// written so far, so the next call resumes from the truth.
    pub fn apply(
        &mut self,
        current: &mut PolicyContent,
        desired: &PolicyContent,
        config: PolicyConfig,
    ) -> anyhow::Result<ApplyReport> {
        let started = Instant::now();
        let mut report = ApplyReport::default();

        // 1. Entries.
        report.written += write_hash(&mut self.policy, &mut current.policy, &desired.policy)
            .context("writing POLICY")?;
        report.written += write_hash(&mut self.ranges, &mut current.ranges, &desired.ranges)
            .context("writing POLICY_PORT_RANGES")?;
        // 2. Identities.
        for (net, id) in &desired.ipcache {
            if current.ipcache.get(net) != Some(id) {
                self.put_ipcache(net, *id)
                    .with_context(|| format!("writing ipcache {net} -> {id}"))?;
                current.ipcache.insert(*net, *id);
                report.written += 1;
            }
        }
        // 3. Endpoint state.
        for (id, s) in &desired.state {
            if current.state.get(id) != Some(s) {
                self.state
                    .insert(id, s, 0)
                    .with_context(|| format!("writing POLICY_STATE {id:016x}"))?;
                current.state.insert(*id, *s);
                report.written += 1;
            }
        }
        // 4. Deletions.
        let gone: Vec<u64> = current
            .state
            .keys()
            .filter(|id| !desired.state.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            ignore_missing(self.state.remove(&id))
                .with_context(|| format!("deleting POLICY_STATE {id:016x}"))?;
            current.state.remove(&id);
            report.deleted += 1;
        }
        let gone: Vec<IpNet> = current
            .ipcache
            .keys()
            .filter(|n| !desired.ipcache.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            self.del_ipcache(&net)
                .with_context(|| format!("deleting ipcache {net}"))?;
            current.ipcache.remove(&net);
            report.deleted += 1;
        }
        report.deleted += delete_hash(&mut self.ranges, &mut current.ranges, &desired.ranges)
            .context("deleting from POLICY_PORT_RANGES")?;
        report.deleted += delete_hash(&mut self.policy, &mut current.policy, &desired.policy)
            .context("deleting from POLICY")?;
        // 5. The revision.
        self.set_config(config)?;
        report.duration = started.elapsed();
        Ok(report)
    }
}

/// Writes the entries of `desired` that `current` lacks or holds with
/// another value into `map`, in one `BPF_MAP_UPDATE_BATCH` (a single
/// `bpf(2)` call instead of one per entry: the kernel still updates them
/// one by one, each atomically, so a reader sees exactly what the same
/// single updates would show), and records them in `current`, also when
/// the batch stops early. Returns how many it wrote.
fn write_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    current: &mut StdHashMap<K, V>,
    desired: &StdHashMap<K, V>,
) -> anyhow::Result<usize>
where
    K: Pod + Eq + Hash + Debug,
    V: Pod + PartialEq,
{
    let (keys, values): (Vec<K>, Vec<V>) = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .unzip();
    let result = syscall::map_update_batch(map.map().fd().as_fd(), &keys, &values);
    let done = match &result {
        Ok(()) => keys.len(),
        Err(e) => e.done,
    };
    current.extend(
        keys[..done]
            .iter()
            .copied()
            .zip(values[..done].iter().copied()),
    );
    match result {
        Ok(()) => Ok(done),
        Err(e) if e.unsupported() => {
            // A kernel without batch operations for this map: one by one.
            for (k, v) in keys.iter().zip(&values) {
                map.insert(k, v, 0).with_context(|| format!("key {k:?}"))?;
                current.insert(*k, *v);
            }
            Ok(keys.len())
        }
        Err(e) => Err(e.error).with_context(|| format!("key {:?}", keys[e.done])),
    }
}

/// Deletes the entries of `current` that `desired` lacks from `map`, in
/// `BPF_MAP_DELETE_BATCH` calls (an entry already gone is skipped, as
/// [`ignore_missing`] does for single deletes), and from `current`.
/// Returns how many it deleted.
fn delete_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    current: &mut StdHashMap<K, V>,
    desired: &StdHashMap<K, V>,
) -> anyhow::Result<usize>
where
    K: Pod + Eq + Hash + Debug,
    V: Pod,
{
    let gone: Vec<K> = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    let mut next = 0;
    while next < gone.len() {
        let result = syscall::map_delete_batch(map.map().fd().as_fd(), &gone[next..]);
        let done = match &result {
            Ok(()) => gone.len() - next,
            Err(e) => e.done,
        };
        for k in &gone[next..next + done] {
            current.remove(k);
        }
        next += done;
        match result {
            Ok(()) => {}
            Err(e) if e.error.raw_os_error() == Some(libc::ENOENT) => {
                // Already gone: skip it, go on with the rest.
                current.remove(&gone[next]);
                next += 1;
            }
            Err(e) if e.unsupported() => {
                for k in &gone[next..] {
                    ignore_missing(map.remove(k)).with_context(|| format!("key {k:?}"))?;
                    current.remove(k);
                }
                next = gone.len();
            }
            Err(e) => return Err(e.error).with_context(|| format!("key {:?}", gone[next])),
        }
    }
    Ok(gone.len())
}

/// Every `ENDPOINTS` entry: (address, value).
pub fn read_endpoints(layout: &PinLayout) -> anyhow::Result<Vec<(IpAddr, EndpointInfo)>> {
    let map: HashMap<MapData, EndpointKey, EndpointInfo> = open_pinned(layout, ENDPOINTS)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (k, v) = item.context("reading ENDPOINTS")?;
        out.push((endpoint_addr(&k), v));
    }
    out.sort_by_key(|(a, _)| *a);
    Ok(out)
}

/// One map's fill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MapFill {
    /// The map.
    pub map: &'static str,
    /// Entries in it.
    pub entries: u64,
    /// Its capacity.
    pub max_entries: u32,
}

/// How full the policy-related maps are (counted key by key: the kernel
/// keeps no count a user can read for hash maps).
pub fn map_fill(layout: &PinLayout) -> anyhow::Result<Vec<MapFill>> {
    use cni_ebpf_common::maps::MapSpec;
    fn count_hash<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &str) -> anyhow::Result<u64> {
        let m: HashMap<MapData, K, V> = open_pinned(layout, name)?;
        Ok(m.keys().count() as u64)
    }
    fn count_lpm<K: aya::Pod>(layout: &PinLayout, name: &str) -> anyhow::Result<u64> {
        let m: LpmTrie<MapData, K, IpcacheEntry> = open_pinned(layout, name)?;
        Ok(m.keys().count() as u64)
    }
    let mut out = Vec::new();
    for name in [
        POLICY,
        POLICY_PORT_RANGES,
        POLICY_STATE,
        IPCACHE4,
        IPCACHE6,
        ENDPOINTS,
        SOURCES4,
        CT4,
        CT6,
    ] {
        let entries = match name {
            POLICY => count_hash::<PolicyKey, PolicyValue>(layout, name)?,
            POLICY_PORT_RANGES => count_hash::<PolicyKey, PortRanges>(layout, name)?,
            POLICY_STATE => count_hash::<u64, PolicyState>(layout, name)?,
            IPCACHE4 => count_lpm::<[u8; 4]>(layout, name)?,
            IPCACHE6 => count_lpm::<[u8; 16]>(layout, name)?,
            ENDPOINTS => count_hash::<EndpointKey, EndpointInfo>(layout, name)?,
            SOURCES4 => count_hash::<SourceKey4, EndpointInfo>(layout, name)?,
            CT4 => count_hash::<Ct4Key, CtEntry>(layout, name)?,
            _ => count_hash::<CtKey, CtEntry>(layout, name)?,
        };
        let max_entries = MapSpec::by_name(name).map_or(0, |s| s.max_entries);
        out.push(MapFill {
            map: name,
            entries,
            max_entries,
        });
    }
    Ok(out)
}
