//! Every map of the datapath. BTF-defined (`#[btf_map]`) so a pinned map
//! carries its key and value types and `bpftool map dump` prints fields.
//! Names and sizes come from `cni_ebpf_common::maps`; the agent pins each
//! map under `<bpffs-dir>/maps/<NAME>`.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use cni_ebpf_common::{
    maps::{
        CT_MAX, ENDPOINTS_MAX, IPCACHE_MAX, POLICY_EVENTS_BYTES, POLICY_MAX,
        POLICY_PORT_RANGES_MAX, POLICY_STATE_MAX, PREFILTER_CIDR_MAX, PREFILTER_PROTO_MAX,
        PREFILTER_RULES_MAX, REASONS_MAX,
    },
    policy::{
        Ct4Key, CtEntry, CtKey, DropEvent, IpcacheEntry, PolicyConfig, PolicyKey, PolicyState,
        PolicyValue, PortRanges,
    },
    prefilter::{Cidr4Addr, Cidr6Addr},
    Counter, EndpointInfo, EndpointKey, ProtoKey, RuleValue, SourceKey4,
};

/// Protocol rules of the prefilter.
#[btf_map]
pub static PREFILTER_PROTO: HashMap<ProtoKey, RuleValue, { PREFILTER_PROTO_MAX as usize }> =
    HashMap::new();

/// IPv4 source CIDR rules; longest prefix wins.
#[btf_map]
pub static PREFILTER_CIDR4: LpmTrie<Cidr4Addr, RuleValue, { PREFILTER_CIDR_MAX as usize }> =
    LpmTrie::new();

/// IPv6 source CIDR rules; longest prefix wins.
#[btf_map]
pub static PREFILTER_CIDR6: LpmTrie<Cidr6Addr, RuleValue, { PREFILTER_CIDR_MAX as usize }> =
    LpmTrie::new();

/// Packets and bytes per prefilter rule, indexed by `RuleValue::rule_id`.
#[btf_map]
pub static PREFILTER_RULE_COUNTERS: PerCpuArray<Counter, { PREFILTER_RULES_MAX as usize }> =
    PerCpuArray::new();

/// Packets and bytes per verdict reason, indexed by `Reason`.
#[btf_map]
pub static REASON_COUNTERS: PerCpuArray<Counter, { REASONS_MAX as usize }> = PerCpuArray::new();

/// Local pod endpoints by address; written by the plugin.
#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo, { ENDPOINTS_MAX as usize }> =
    HashMap::new();

/// (host veth, IPv4 source address) -> endpoint; written by the plugin.
#[btf_map]
pub static SOURCES4: HashMap<SourceKey4, EndpointInfo, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// Address -> identity (IPv4), longest prefix wins; written by the agent.
#[btf_map]
pub static IPCACHE4: LpmTrie<[u8; 4], IpcacheEntry, { IPCACHE_MAX as usize }> = LpmTrie::new();

/// Address -> identity (IPv6).
#[btf_map]
pub static IPCACHE6: LpmTrie<[u8; 16], IpcacheEntry, { IPCACHE_MAX as usize }> = LpmTrie::new();

/// Allowed (endpoint, direction, peer, protocol, port); written by the agent.
#[btf_map]
pub static POLICY: HashMap<PolicyKey, PolicyValue, { POLICY_MAX as usize }> = HashMap::new();

/// `endPort` ranges per (endpoint, direction, peer, protocol).
#[btf_map]
pub static POLICY_PORT_RANGES: HashMap<PolicyKey, PortRanges, { POLICY_PORT_RANGES_MAX as usize }> =
    HashMap::new();

/// Per-endpoint isolation and readiness, keyed by endpoint id.
#[btf_map]
pub static POLICY_STATE: HashMap<u64, PolicyState, { POLICY_STATE_MAX as usize }> = HashMap::new();

/// Enforcement switch and policy revision.
#[btf_map]
pub static POLICY_CONFIG: Array<PolicyConfig, 1> = Array::new();

/// Connection tracking of IPv4 flows allowed, by their initiating 5-tuple.
#[btf_map]
pub static CT4: LruHashMap<Ct4Key, CtEntry, { CT_MAX as usize }> = LruHashMap::new();

/// Connection tracking of IPv6 flows allowed, by their initiating 5-tuple.
#[btf_map]
pub static CT6: LruHashMap<CtKey, CtEntry, { CT_MAX as usize }> = LruHashMap::new();

/// Policy drops for `sluicectl monitor`.
#[btf_map]
pub static POLICY_EVENTS: RingBuf<DropEvent, { POLICY_EVENTS_BYTES as usize }> = RingBuf::new();
