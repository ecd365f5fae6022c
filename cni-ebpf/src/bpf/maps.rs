//! Every map of the datapath. BTF-defined (`#[btf_map]`) so a pinned map
//! carries its key and value types and `bpftool map dump` prints fields.
//! Names and sizes come from `cni_ebpf_common::maps`; the agent pins each
//! map under `<bpffs-dir>/maps/<NAME>`.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuArray},
    macros::btf_map,
};
use cni_ebpf_common::{
    maps::{
        ENDPOINTS_MAX, PREFILTER_CIDR_MAX, PREFILTER_PROTO_MAX, PREFILTER_RULES_MAX, REASONS_MAX,
    },
    prefilter::{Cidr4Addr, Cidr6Addr},
    Counter, EndpointInfo, EndpointKey, ProtoKey, RuleValue,
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
