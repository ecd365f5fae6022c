//! Map names, sizes and the pin layout under the bpffs directory.
//!
//! The names are the ELF symbol names of the maps in `cni-ebpf` and the file
//! names of their pins in `<bpffs-dir>/maps/`.

use core::mem::size_of;

use crate::policy::{
    Ct4Key, CtEntry, CtKey, IpcacheEntry, PolicyConfig, PolicyKey, PolicyState, PolicyValue,
    PortRanges,
};
use crate::prefilter::{CIDR4_KEY_SIZE, CIDR6_KEY_SIZE};
use crate::{Counter, EndpointInfo, EndpointKey, ProtoKey, RuleValue, SourceKey4};

/// Default root of everything Sluice pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/sluice";
/// Subdirectory of pinned maps.
pub const MAPS_DIR: &str = "maps";
/// Subdirectory of pinned programs (the plugin attaches these to veths).
pub const PROGS_DIR: &str = "progs";
/// Subdirectory of pinned links (one per attachment).
pub const LINKS_DIR: &str = "links";

/// Program names: ELF function names and pin file names in `progs/`.
pub const PROG_XDP_PREFILTER: &str = "xdp_prefilter";
/// TCX ingress on the host side of a pod veth.
pub const PROG_FROM_POD: &str = "from_pod";
/// TCX egress on the host side of a pod veth.
pub const PROG_TO_POD: &str = "to_pod";
/// TCX ingress on node uplinks (eBPF host routing to local pods).
pub const PROG_FROM_UPLINK: &str = "from_uplink";
/// File name prefix of the `from_uplink` link pins in `links/`
/// (`uplink-<ifname>`).
pub const UPLINK_LINK_PREFIX: &str = "uplink-";

/// Protocol rules of the prefilter.
pub const PREFILTER_PROTO: &str = "PREFILTER_PROTO";
/// IPv4 source CIDR rules of the prefilter (LPM trie).
pub const PREFILTER_CIDR4: &str = "PREFILTER_CIDR4";
/// IPv6 source CIDR rules of the prefilter (LPM trie).
pub const PREFILTER_CIDR6: &str = "PREFILTER_CIDR6";
/// Per-rule per-CPU counters, indexed by `RuleValue::rule_id`.
pub const PREFILTER_RULE_COUNTERS: &str = "PREFILTER_RULE_COUNTERS";
/// Per-reason per-CPU counters, indexed by [`crate::Reason`].
pub const REASON_COUNTERS: &str = "REASON_COUNTERS";

/// aya-log's ring buffer (defined by aya-log-ebpf, 128 KiB). Pinned like the
/// others so programs from an earlier agent and this one share one buffer
/// and one reader forwards both into the agent's log.
pub const AYA_LOGS: &str = "AYA_LOGS";
/// Size of [`AYA_LOGS`] in bytes, as aya-log-ebpf 0.2 defines it.
pub const AYA_LOGS_BYTES: u32 = 1 << 17;

/// Pod endpoints by address.
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Most endpoint addresses on a node (pods x addresses per pod).
pub const ENDPOINTS_MAX: u32 = 65_536;
/// The IPv4 addresses each host veth may send from:
/// [`crate::SourceKey4`] -> [`crate::EndpointInfo`], written by the plugin
/// beside `ENDPOINTS` (same capacity).
pub const SOURCES4: &str = "SOURCES4";

/// Link pin of `from_pod` on a host-side veth: `links/tcx-<ifname>-ingress`.
pub const TCX_INGRESS_SUFFIX: &str = "-ingress";
/// Link pin of `to_pod` on a host-side veth: `links/tcx-<ifname>-egress`.
pub const TCX_EGRESS_SUFFIX: &str = "-egress";
/// File name prefix of TCX link pins in `links/`.
pub const TCX_LINK_PREFIX: &str = "tcx-";

/// Priority (`tc filter ... pref`) of the cls_bpf filters that run
/// `from_pod`/`to_pod` in a host veth's `clsact` qdisc (`tcAttach: tc`):
/// 1, so they run before any filter another tool adds.
pub const TC_FILTER_PRIORITY: u16 = 1;
/// Handle of those filters (one per direction at [`TC_FILTER_PRIORITY`]).
pub const TC_FILTER_HANDLE: u32 = 1;

/// Address -> identity, IPv4 (LPM trie).
pub const IPCACHE4: &str = "IPCACHE4";
/// Address -> identity, IPv6 (LPM trie).
pub const IPCACHE6: &str = "IPCACHE6";
/// Most prefixes per ipcache family.
pub const IPCACHE_MAX: u32 = 65_536;
/// Allowed (endpoint, direction, peer, protocol, port) entries.
pub const POLICY: &str = "POLICY";
/// Most policy entries on a node.
pub const POLICY_MAX: u32 = 131_072;
/// `endPort` ranges per (endpoint, direction, peer, protocol).
pub const POLICY_PORT_RANGES: &str = "POLICY_PORT_RANGES";
/// Most range keys.
pub const POLICY_PORT_RANGES_MAX: u32 = 16_384;
/// Per-endpoint enforcement state, keyed by endpoint id.
pub const POLICY_STATE: &str = "POLICY_STATE";
/// Most endpoints with policy state.
pub const POLICY_STATE_MAX: u32 = 16_384;
/// Global policy switches and revision (one-slot array).
pub const POLICY_CONFIG: &str = "POLICY_CONFIG";
/// Connection tracking of IPv4 flows (LRU hash, [`crate::policy::Ct4Key`]).
pub const CT4: &str = "CT4";
/// Connection tracking of IPv6 flows (LRU hash, [`crate::policy::CtKey`]).
pub const CT6: &str = "CT6";
/// Most tracked flows, per family.
pub const CT_MAX: u32 = 131_072;
/// The single conntrack map of both families that `CT4`/`CT6` replaced
/// (40-byte [`crate::policy::CtKey`]). An agent that finds its pin carries
/// its flows over, so an upgrade cuts no connection, then removes it.
pub const RETIRED_CT: &str = "CT";
/// Policy drop events for `sluicectl monitor` (ring buffer).
pub const POLICY_EVENTS: &str = "POLICY_EVENTS";
/// Size of [`POLICY_EVENTS`] in bytes.
pub const POLICY_EVENTS_BYTES: u32 = 1 << 18;

/// Kernel map types used (`enum bpf_map_type`): array.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// Most protocol rules.
pub const PREFILTER_PROTO_MAX: u32 = 256;
/// Most CIDR rules per family.
pub const PREFILTER_CIDR_MAX: u32 = 16_384;
/// Rule ids run 1..PREFILTER_RULES_MAX (0 is unused), shared by all rule maps.
pub const PREFILTER_RULES_MAX: u32 = 2 * PREFILTER_CIDR_MAX + PREFILTER_PROTO_MAX + 1;
/// Reason codes are below this.
pub const REASONS_MAX: u32 = 128;

/// Kernel map types used (`enum bpf_map_type`).
pub const BPF_MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LPM_TRIE`.
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// `BPF_MAP_TYPE_RINGBUF`.
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// The shape of a pinned map. The agent compares a pin against this before
/// reusing it; any difference means the layout changed and the pin is
/// replaced (a migration), never silently reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Name of the map and of its pin.
    pub name: &'static str,
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
}

impl MapSpec {
    /// The spec of the pinned map called `name`.
    pub fn by_name(name: &str) -> Option<&'static MapSpec> {
        MAP_SPECS
            .iter()
            .find(|spec| spec.name.as_bytes() == name.as_bytes())
    }
}

/// Every pinned map of the datapath and its expected shape.
pub const MAP_SPECS: [MapSpec; 17] = [
    MapSpec {
        name: PREFILTER_PROTO,
        map_type: BPF_MAP_TYPE_HASH,
        key_size: size_of::<ProtoKey>() as u32,
        value_size: size_of::<RuleValue>() as u32,
        max_entries: PREFILTER_PROTO_MAX,
    },
    MapSpec {
        name: PREFILTER_CIDR4,
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: CIDR4_KEY_SIZE,
        value_size: size_of::<RuleValue>() as u32,
        max_entries: PREFILTER_CIDR_MAX,
    },
    MapSpec {
        name: PREFILTER_CIDR6,
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: CIDR6_KEY_SIZE,
        value_size: size_of::<RuleValue>() as u32,
        max_entries: PREFILTER_CIDR_MAX,
    },
    MapSpec {
        name: PREFILTER_RULE_COUNTERS,
        map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size: size_of::<Counter>() as u32,
        max_entries: PREFILTER_RULES_MAX,
    },
    MapSpec {
        name: REASON_COUNTERS,
        map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size: size_of::<Counter>() as u32,
        max_entries: REASONS_MAX,
    },
    MapSpec {
        name: ENDPOINTS,
        map_type: BPF_MAP_TYPE_HASH,
        key_size: size_of::<EndpointKey>() as u32,
        value_size: size_of::<EndpointInfo>() as u32,
        max_entries: ENDPOINTS_MAX,
    },
    MapSpec {
        name: SOURCES4,
        map_type: BPF_MAP_TYPE_HASH,
        key_size: size_of::<SourceKey4>() as u32,
        value_size: size_of::<EndpointInfo>() as u32,
        max_entries: ENDPOINTS_MAX,
    },
    MapSpec {
        name: IPCACHE4,
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: 4 + 4,
        value_size: size_of::<IpcacheEntry>() as u32,
        max_entries: IPCACHE_MAX,
    },
    MapSpec {
        name: IPCACHE6,
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: 4 + 16,
        value_size: size_of::<IpcacheEntry>() as u32,
        max_entries: IPCACHE_MAX,
    },
    MapSpec {
        name: POLICY,
        map_type: BPF_MAP_TYPE_HASH,
        key_size: size_of::<PolicyKey>() as u32,
        value_size: size_of::<PolicyValue>() as u32,
        max_entries: POLICY_MAX,
    },
    MapSpec {
        name: POLICY_PORT_RANGES,
        map_type: BPF_MAP_TYPE_HASH,
        key_size: size_of::<PolicyKey>() as u32,
        value_size: size_of::<PortRanges>() as u32,
        max_entries: POLICY_PORT_RANGES_MAX,
    },
    MapSpec {
        name: POLICY_STATE,
        map_type: BPF_MAP_TYPE_HASH,
        key_size: 8,
        value_size: size_of::<PolicyState>() as u32,
        max_entries: POLICY_STATE_MAX,
    },
    MapSpec {
        name: POLICY_CONFIG,
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: size_of::<PolicyConfig>() as u32,
        max_entries: 1,
    },
    MapSpec {
        name: CT4,
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: size_of::<Ct4Key>() as u32,
        value_size: size_of::<CtEntry>() as u32,
        max_entries: CT_MAX,
    },
    MapSpec {
        name: CT6,
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: size_of::<CtKey>() as u32,
        value_size: size_of::<CtEntry>() as u32,
        max_entries: CT_MAX,
    },
    MapSpec {
        name: POLICY_EVENTS,
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: POLICY_EVENTS_BYTES,
    },
    MapSpec {
        name: AYA_LOGS,
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: AYA_LOGS_BYTES,
    },
];
