//! The compiler: a [`Cluster`] snapshot and the node's endpoints in, the
//! content of the kernel's policy maps out ([`Compiled`]).
//!
//! What it decides, per local endpoint:
//! - isolation: ingress-isolated when some policy selecting the pod has
//!   `Ingress` in its (possibly defaulted) `policyTypes`, egress likewise;
//!   a pod no policy selects is isolated in neither direction;
//! - the allowed (direction, peer identity, protocol, port) entries: the
//!   union of every rule of every selecting policy, for the directions the
//!   policy isolates (egress rules of an ingress-only policy are ignored, as
//!   in Kubernetes);
//! - `endPort` ranges, packed per (identity, protocol) into
//!   [`PortRanges`](cni_ebpf_common::policy::PortRanges).
//!
//! Rules to entries:
//! - no `from`/`to`: peer [`IDENTITY_ANY`]; otherwise the union of the
//!   peers' identities (see `identity.rs` for what an identity is);
//! - no `ports`: ([`PROTO_ANY`], [`PORT_ANY`]); a port entry without `port`:
//!   (protocol, `PORT_ANY`); a number: (protocol, number); `port..=endPort`:
//!   a range; a name: resolved on the destination pod — the local pod for
//!   ingress, each peer identity for egress (a rule with no `to` and a named
//!   port therefore expands to every pod identity that declares the name);
//!   a name nothing declares allows nothing;
//! - the protocol defaults to TCP.
//!
//! Entries another entry already makes redundant under the lookup order
//! (see the module root) are left out: an exact port under an any-port
//! entry of the same peer, anything of a peer that `IDENTITY_ANY` already
//! allows. Verdicts are unchanged; only the rule an explanation cites can
//! differ.
//!
//! Endpoints: one whose pod is not in the cluster (yet) is left
//! unprogrammed — fail-closed — unless
//! [`CompileOptions::unknown_pod_fail_closed`] is off; one with no pod at all
//! (a container outside Kubernetes) is programmed and unisolated. Neither
//! has a pod identity: its addresses classify like any non-pod address.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use cni_ebpf_common::policy::{
    PolicyKey, PolicyState, PolicyValue, PortRanges, DIRECTION_EGRESS, DIRECTION_INGRESS,
    IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, POLICY_F_ALLOW_HOST, POLICY_F_EGRESS_ISOLATED,
    POLICY_F_INGRESS_ISOLATED, POLICY_F_PROGRAMMED, PORT_ANY, PROTO_ANY,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::{
    identity::{IdentitiesExhausted, IdentityKey, IdentityTable, NamedPort, PrefixSet},
    model::{
        Cluster, IpBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, ObjectKey, Pod,
        PortValue, Protocol,
    },
    ports::{self, PortRange},
    selector::{LabelSelector, Labels},
};

/// An endpoint on this node, as the CNI plugin recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalEndpoint {
    /// `EndpointInfo::endpoint_id`.
    pub endpoint_id: u64,
    /// `K8S_POD_NAMESPACE`/`K8S_POD_NAME` from `CNI_ARGS`, if given.
    pub pod: Option<ObjectKey>,
    /// The addresses the plugin assigned.
    pub ips: Vec<IpAddr>,
}

/// Knobs of a compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Let the node reach every local pod whatever ingress policy says
    /// (kubelet probes). Default on.
    pub allow_host: bool,
    /// The node's own addresses: identity HOST.
    pub node_ips: Vec<IpAddr>,
    /// Leave endpoints whose pod is not in the cluster unprogrammed (the
    /// datapath then drops their traffic) rather than unisolated. Default on.
    pub unknown_pod_fail_closed: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            allow_host: true,
            node_ips: Vec::new(),
            unknown_pod_fail_closed: true,
        }
    }
}

/// Why a compile failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// More `endPort` ranges for one key than the map value holds.
    #[error(
        "endpoint {endpoint_id}: {ranges} disjoint {direction} port ranges for identity {identity} \
         protocol {protocol}; at most {max} fit (and at most {expand} ports of the smallest become \
         single-port entries)",
        max = cni_ebpf_common::policy::PORT_RANGES_PER_KEY,
        expand = ports::MAX_EXPANDED_PORTS
    )]
    TooManyPortRanges {
        /// The endpoint.
        endpoint_id: u64,
        /// The direction.
        direction: Direction,
        /// The peer identity.
        identity: u32,
        /// The protocol number.
        protocol: u8,
        /// How many disjoint ranges.
        ranges: usize,
    },
    /// The identity space is full.
    #[error(transparent)]
    Identities(#[from] IdentitiesExhausted),
    /// Two endpoints with one id.
    #[error("endpoint id {0} given twice")]
    DuplicateEndpoint(u64),
}

/// A traffic direction, seen from the local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

impl Direction {
    /// `DIRECTION_INGRESS` / `DIRECTION_EGRESS`.
    pub fn to_kernel(self) -> u8 {
        match self {
            Direction::Ingress => DIRECTION_INGRESS,
            Direction::Egress => DIRECTION_EGRESS,
        }
    }

    /// The direction of a kernel code.
    pub fn from_kernel(d: u8) -> Option<Self> {
        match d {
            DIRECTION_INGRESS => Some(Direction::Ingress),
            DIRECTION_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Where an entry came from: one rule of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    /// The policy.
    pub policy: ObjectKey,
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// Index in `spec.ingress` / `spec.egress`.
    pub rule: usize,
    /// The peers, for people.
    pub peers: String,
    /// The ports, for people.
    pub ports: String,
}

impl fmt::Display for RuleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, word) = match self.direction {
            Direction::Ingress => ("ingress", "from"),
            Direction::Egress => ("egress", "to"),
        };
        write!(
            f,
            "{} {what}[{}] ({word} {}, ports {})",
            self.policy, self.rule, self.peers, self.ports
        )
    }
}

/// A `POLICY` key without the endpoint (which is the map it sits in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EntryKey {
    /// Direction.
    pub direction: Direction,
    /// Peer identity or `IDENTITY_ANY`.
    pub identity: u32,
    /// Protocol number or `PROTO_ANY`.
    pub protocol: u8,
    /// Port or `PORT_ANY` (always `PORT_ANY` in `port_ranges`).
    pub port: u16,
}

impl EntryKey {
    fn new(direction: Direction, identity: u32, protocol: u8, port: u16) -> Self {
        Self {
            direction,
            identity,
            protocol,
            port,
        }
    }

    /// The kernel key for `endpoint_id`.
    pub fn to_kernel(self, endpoint_id: u64) -> PolicyKey {
        PolicyKey {
            endpoint_id,
            identity: self.identity,
            direction: self.direction.to_kernel(),
            protocol: self.protocol,
            port: self.port,
        }
    }
}

/// How the compiler treated an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointStatus {
    /// Its pod is in the cluster: policy applied.
    Pod,
    /// It names a pod the cluster does not have (yet).
    UnknownPod,
    /// It names no pod.
    NoPod,
}

/// Everything the maps hold for one local endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPolicy {
    /// The endpoint id.
    pub endpoint_id: u64,
    /// Its pod, if it names one.
    pub pod: Option<ObjectKey>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// How it was treated.
    pub status: EndpointStatus,
    /// `POLICY_F_*`.
    pub flags: u32,
    /// Policies that isolate it for ingress.
    pub ingress_policies: Vec<ObjectKey>,
    /// Policies that isolate it for egress.
    pub egress_policies: Vec<ObjectKey>,
    /// `POLICY` entries: key → rule index.
    #[serde(serialize_with = "as_pairs")]
    pub entries: BTreeMap<EntryKey, u32>,
    /// `POLICY_PORT_RANGES` entries (key port is `PORT_ANY`).
    #[serde(serialize_with = "as_pairs")]
    pub port_ranges: BTreeMap<EntryKey, Vec<PortRange>>,
}

fn as_pairs<S: serde::Serializer, K: Serialize, V: Serialize>(
    m: &BTreeMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter())
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.first, self.last, self.rule_index).serialize(s)
    }
}

impl EndpointPolicy {
    /// The `POLICY_STATE` value.
    pub fn state(&self, revision: u32) -> PolicyState {
        PolicyState {
            flags: self.flags,
            revision,
        }
    }

    /// Whether the agent programmed it (else the datapath fails closed).
    pub fn programmed(&self) -> bool {
        self.flags & POLICY_F_PROGRAMMED != 0
    }

    /// Whether it is isolated in `direction`.
    pub fn isolated(&self, direction: Direction) -> bool {
        let flag = match direction {
            Direction::Ingress => POLICY_F_INGRESS_ISOLATED,
            Direction::Egress => POLICY_F_EGRESS_ISOLATED,
        };
        self.flags & flag != 0
    }

    /// The `POLICY` map entries.
    pub fn policy_entries(&self) -> impl Iterator<Item = (PolicyKey, PolicyValue)> + '_ {
        self.entries.iter().map(|(k, &rule_index)| {
            (
                k.to_kernel(self.endpoint_id),
                PolicyValue {
                    rule_index,
                    _reserved: 0,
                },
            )
        })
    }

    /// The `POLICY_PORT_RANGES` map entries.
    pub fn port_range_entries(&self) -> impl Iterator<Item = (PolicyKey, PortRanges)> + '_ {
        self.port_ranges
            .iter()
            .map(|(k, r)| (k.to_kernel(self.endpoint_id), ports::to_kernel(r)))
    }

    /// The datapath's lookup: the rule allowing (`identity`, `protocol`,
    /// `port`) in `direction`, if any, in exactly the documented order
    /// (exact port, any port, port ranges, any protocol; then all of it
    /// again for `IDENTITY_ANY`). Does not look at isolation.
    pub fn lookup(
        &self,
        direction: Direction,
        identity: u32,
        protocol: u8,
        port: u16,
    ) -> Option<u32> {
        let ids: &[u32] = if identity == IDENTITY_ANY {
            &[IDENTITY_ANY]
        } else {
            &[identity, IDENTITY_ANY]
        };
        for &id in ids {
            let key = |protocol, port| EntryKey::new(direction, id, protocol, port);
            if port != PORT_ANY {
                if let Some(&r) = self.entries.get(&key(protocol, port)) {
                    return Some(r);
                }
            }
            if let Some(&r) = self.entries.get(&key(protocol, PORT_ANY)) {
                return Some(r);
            }
            if port != PORT_ANY {
                if let Some(r) = self
                    .port_ranges
                    .get(&key(protocol, PORT_ANY))
                    .and_then(|ranges| ports::find(ranges, port))
                {
                    return Some(r);
                }
            }
            if let Some(&r) = self.entries.get(&key(PROTO_ANY, PORT_ANY)) {
                return Some(r);
            }
        }
        None
    }
}

/// The result of a compile: the content of every policy map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compiled {
    /// The revision the caller gave (in every `PolicyState`).
    pub revision: u32,
    /// Identities; pass to the next compile as `previous`.
    pub identities: IdentityTable,
    /// `IPCACHE4`/`IPCACHE6`: prefix → identity.
    pub ipcache: BTreeMap<IpNet, u32>,
    /// Per local endpoint.
    pub endpoints: BTreeMap<u64, EndpointPolicy>,
    /// Rule table: rule index `i` is `rules[i - 1]` (0 is never used).
    pub rules: Vec<RuleInfo>,
    /// Things that did not stop the compile but deserve a log line
    /// (address conflicts).
    pub warnings: Vec<String>,
}

impl Compiled {
    /// A rule by index.
    pub fn rule(&self, rule_index: u32) -> Option<&RuleInfo> {
        let i = usize::try_from(rule_index).ok()?.checked_sub(1)?;
        self.rules.get(i)
    }

    /// The identity the ipcache gives `ip` (longest prefix match).
    pub fn identity_of(&self, ip: IpAddr) -> u32 {
        let max = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (0..=max)
            .rev()
            .find_map(|len| {
                let net = IpNet::new(ip, len).ok()?.trunc();
                self.ipcache.get(&net).copied()
            })
            .unwrap_or(IDENTITY_WORLD)
    }

    /// The local endpoint with this address.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&EndpointPolicy> {
        self.endpoints.values().find(|e| e.ips.contains(&ip))
    }

    /// An identity for people: `host`, `world`, `cidr 10.0.0.0/8`,
    /// `pods x {pod=a}`.
    pub fn describe_identity(&self, id: u32) -> String {
        match id {
            IDENTITY_ANY => "any".into(),
            IDENTITY_HOST => "host".into(),
            IDENTITY_WORLD => "world".into(),
            _ => match self.identities.key(id) {
                Some(IdentityKey::Cidr { prefix }) => format!("cidr {prefix}"),
                Some(IdentityKey::Pod {
                    namespace, labels, ..
                }) => {
                    let labels: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("pods {namespace} {{{}}}", labels.join(","))
                }
                None => format!("unknown identity {id}"),
            },
        }
    }
}

fn host_net(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::from(a)),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::from(a)),
    }
}

fn default_routes() -> [IpNet; 2] {
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_default()),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).unwrap_or_default()),
    ]
}

/// A set of identities: bits over the dense numbering of [`World::ids`].
///
/// Rules are unions of peer sets, and many rules share large peer sets
/// (`namespaceSelector: {}`); bit operations keep a compile linear in
/// rules × identities / 64 instead of rules × identities map inserts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IdSet(Vec<u64>);

impl IdSet {
    fn empty(n: usize) -> Self {
        IdSet(vec![0; n.div_ceil(64)])
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn union_with(&mut self, other: &IdSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| bits(word).map(move |b| w * 64 + b))
    }
}

/// The set bits of a word, lowest first.
fn bits(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let b = word.trailing_zeros() as usize;
        word &= word - 1;
        Some(b)
    })
}

/// A pod class as selectors see it.
struct PodClass<'a> {
    dense: usize,
    labels: &'a Labels,
}

/// A rule's peers.
#[derive(Clone)]
enum Peers {
    Any,
    Ids(IdSet),
}

/// (namespace scope, namespace selector, pod selector) of a peer.
type SelectKey<'a> = (
    Option<&'a str>,
    Option<&'a LabelSelector>,
    Option<&'a LabelSelector>,
);

/// Everything about the cluster that does not depend on the endpoint.
struct World<'a> {
    /// Identity numbers by dense index; index 0 is `IDENTITY_HOST`.
    ids: Vec<u32>,
    /// Named-port resolutions by dense index (empty for non-pods).
    named: Vec<&'a [NamedPort]>,
    /// Pod classes by namespace.
    pods_by_ns: BTreeMap<&'a str, Vec<PodClass<'a>>>,
    /// Namespace labels by namespace (every namespace with pods or known).
    ns_labels: BTreeMap<&'a str, Cow<'a, Labels>>,
    /// Per ipBlock prefix: the classes positioned there (its CIDR class
    /// and the pod classes whose longest match it is).
    positions: Vec<(IpNet, IdSet)>,
    node_ips: &'a [IpAddr],
    select_cache: HashMap<SelectKey<'a>, IdSet>,
    block_cache: HashMap<&'a IpBlock, IdSet>,
    /// Egress named ports by (rule, port entry): (number, peers) pairs.
    named_cache: HashMap<(u32, usize), Vec<(u16, Peers)>>,
}

const HOST_DENSE: usize = 0;

impl<'a> World<'a> {
    fn n(&self) -> usize {
        self.ids.len()
    }

    fn select(
        &mut self,
        scope: Option<&'a str>,
        ns_sel: Option<&'a LabelSelector>,
        pod_sel: Option<&'a LabelSelector>,
    ) -> &IdSet {
        let key = (scope, ns_sel, pod_sel);
        if !self.select_cache.contains_key(&key) {
            let mut set = IdSet::empty(self.n());
            for (ns, classes) in &self.pods_by_ns {
                let ns_ok = match (scope, ns_sel) {
                    (Some(scope), _) => *ns == scope,
                    (None, Some(sel)) => self.ns_labels.get(ns).is_some_and(|l| sel.matches(l)),
                    (None, None) => true,
                };
                if !ns_ok {
                    continue;
                }
                for c in classes {
                    if pod_sel.is_none_or(|s| s.matches(c.labels)) {
                        set.insert(c.dense);
                    }
                }
            }
            self.select_cache.insert(key, set);
        }
        &self.select_cache[&key]
    }

    fn block(&mut self, block: &'a IpBlock) -> &IdSet {
        if !self.block_cache.contains_key(block) {
            let mut set = IdSet::empty(self.n());
            for (p, classes) in &self.positions {
                if block.covers(p) {
                    set.union_with(classes);
                }
            }
            if self.node_ips.iter().any(|ip| block.contains(*ip)) {
                set.insert(HOST_DENSE);
            }
            self.block_cache.insert(block, set);
        }
        &self.block_cache[block]
    }

    fn peers(&mut self, policy_ns: &'a str, peers: &'a [NetworkPolicyPeer]) -> Peers {
        if peers.is_empty() {
            return Peers::Any;
        }
        let mut set = IdSet::empty(self.n());
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                set.union_with(self.block(block));
                continue;
            }
            let (scope, ns_sel) = match &peer.namespace_selector {
                None => (Some(policy_ns), None),
                Some(sel) => (None, Some(sel)),
            };
            set.union_with(self.select(scope, ns_sel, peer.pod_selector.as_ref()));
        }
        Peers::Ids(set)
    }

    /// An egress named port resolved on each peer: the peers per number.
    fn named_egress(
        &mut self,
        key: (u32, usize),
        peers: &Peers,
        name: &str,
        protocol: Protocol,
    ) -> &[(u16, Peers)] {
        if !self.named_cache.contains_key(&key) {
            let n = self.n();
            let mut by_number: BTreeMap<u16, IdSet> = BTreeMap::new();
            let mut add = |i: usize| {
                for np in self.named[i] {
                    if np.name == name && np.protocol == protocol {
                        by_number
                            .entry(np.port)
                            .or_insert_with(|| IdSet::empty(n))
                            .insert(i);
                    }
                }
            };
            match peers {
                Peers::Any => (0..n).for_each(&mut add),
                Peers::Ids(set) => set.iter().for_each(&mut add),
            }
            let resolved = by_number
                .into_iter()
                .map(|(port, set)| (port, Peers::Ids(set)))
                .collect();
            self.named_cache.insert(key, resolved);
        }
        &self.named_cache[&key]
    }
}

/// The peers allowed for one (direction, protocol, port), each with the
/// first rule that allowed it.
struct Target {
    any: Option<u32>,
    set: IdSet,
    first: Vec<(usize, u32)>,
}

impl Target {
    fn new(n: usize) -> Self {
        Self {
            any: None,
            set: IdSet::empty(n),
            first: Vec::new(),
        }
    }

    fn add(&mut self, peers: &Peers, rule: u32) {
        match peers {
            Peers::Any => {
                self.any.get_or_insert(rule);
            }
            Peers::Ids(ids) => {
                for (w, (mine, theirs)) in self.set.0.iter_mut().zip(&ids.0).enumerate() {
                    let new = theirs & !*mine;
                    if new != 0 {
                        *mine |= new;
                        self.first.extend(bits(new).map(|b| (w * 64 + b, rule)));
                    }
                }
            }
        }
    }
}

/// Entries of one endpoint while they are collected.
struct Acc {
    n: usize,
    /// By (direction, protocol, port).
    exact: BTreeMap<(Direction, u8, u16), Target>,
    /// By (direction, protocol, first port, last port).
    ranges: BTreeMap<(Direction, u8, u16, u16), Target>,
}

impl Acc {
    fn new(n: usize) -> Self {
        Self {
            n,
            exact: BTreeMap::new(),
            ranges: BTreeMap::new(),
        }
    }

    fn allow(&mut self, d: Direction, protocol: u8, port: u16, peers: &Peers, rule: u32) {
        let n = self.n;
        self.exact
            .entry((d, protocol, port))
            .or_insert_with(|| Target::new(n))
            .add(peers, rule);
    }

    fn allow_range(
        &mut self,
        d: Direction,
        protocol: u8,
        first: u16,
        last: u16,
        peers: &Peers,
        rule: u32,
    ) {
        let n = self.n;
        self.ranges
            .entry((d, protocol, first, last))
            .or_insert_with(|| Target::new(n))
            .add(peers, rule);
    }
}

/// Compiles the policy of `cluster` for `endpoints`.
///
/// `previous` is the identity table of the last compile (or empty), so
/// that identities stay put; `revision` goes into every `PolicyState`.
pub fn compile(
    cluster: &Cluster,
    endpoints: &[LocalEndpoint],
    options: &CompileOptions,
    previous: &IdentityTable,
    revision: u32,
) -> Result<Compiled, CompileError> {
    let mut warnings = Vec::new();
    let policies: Vec<&NetworkPolicy> = cluster.policies().collect();

    // P (every ipBlock prefix) and the named ports egress rules use.
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    let mut egress_names: BTreeSet<(&str, Protocol)> = BTreeSet::new();
    for p in &policies {
        let peers = p
            .spec
            .ingress
            .iter()
            .flat_map(|r| &r.from)
            .chain(p.spec.egress.iter().flat_map(|r| &r.to));
        for block in peers.filter_map(|peer| peer.ip_block.as_ref()) {
            prefixes.insert(block.cidr.trunc());
            prefixes.extend(block.except.iter().map(IpNet::trunc));
        }
        for port in p.spec.egress.iter().flat_map(|r| &r.ports) {
            if let Some(PortValue::Name(name)) = &port.port {
                egress_names.insert((name, port.protocol()));
            }
        }
    }
    let pset = PrefixSet::new(prefixes.iter().map(|p| (*p, ())));

    // Who owns which address: local endpoints first, then pod status.
    let mut ids_seen = BTreeSet::new();
    let mut local_pods: HashMap<&ObjectKey, &LocalEndpoint> = HashMap::new();
    for ep in endpoints {
        if !ids_seen.insert(ep.endpoint_id) {
            return Err(CompileError::DuplicateEndpoint(ep.endpoint_id));
        }
        if let Some(key) = &ep.pod {
            local_pods.insert(key, ep);
        }
    }
    let node_ips: BTreeSet<IpAddr> = options.node_ips.iter().copied().collect();
    let mut owner: BTreeMap<IpAddr, &Pod> = BTreeMap::new();
    for ep in endpoints {
        let Some(pod) = ep.pod.as_ref().and_then(|k| cluster.pod(k)) else {
            continue;
        };
        if pod.spec.host_network {
            continue;
        }
        for ip in &ep.ips {
            claim(&mut owner, &node_ips, *ip, pod, &mut warnings);
        }
    }
    for pod in cluster.pods() {
        if local_pods.contains_key(&pod.key()) {
            continue;
        }
        for ip in pod.status_ips() {
            claim(&mut owner, &node_ips, ip, pod, &mut warnings);
        }
    }

    // Classes.
    let mut ns_labels: BTreeMap<&str, Cow<'_, Labels>> = cluster
        .namespaces()
        .map(|ns| (ns.name(), Cow::Borrowed(&ns.metadata.labels)))
        .collect();
    let mut pod_classes: BTreeMap<IdentityKey, Vec<IpAddr>> = BTreeMap::new();
    for (ip, pod) in &owner {
        let ns = pod.metadata.namespace_or_default();
        let labels = ns_labels
            .entry(ns)
            .or_insert_with(|| cluster.namespace_labels(ns));
        let named_ports: Vec<NamedPort> = egress_names
            .iter()
            .flat_map(|(name, protocol)| {
                pod.named_port(name, *protocol)
                    .into_iter()
                    .map(|port| NamedPort {
                        name: (*name).to_owned(),
                        protocol: *protocol,
                        port,
                    })
            })
            .collect();
        let key = IdentityKey::Pod {
            namespace: ns.to_owned(),
            labels: pod.labels().clone(),
            namespace_labels: labels.clone().into_owned(),
            position: pset.lookup(*ip).map(|(n, _)| n),
            named_ports,
        };
        pod_classes.entry(key).or_default().push(*ip);
    }
    let cidr_keys: Vec<IpNet> = prefixes
        .iter()
        .filter(|p| {
            let host = p.prefix_len() == p.max_prefix_len();
            !(host && (owner.contains_key(&p.addr()) || node_ips.contains(&p.addr())))
        })
        .copied()
        .collect();
    let identities = IdentityTable::allocate(
        previous,
        pod_classes
            .keys()
            .cloned()
            .chain(cidr_keys.iter().map(|&prefix| IdentityKey::Cidr { prefix })),
    )?;
    let id_of = |key: &IdentityKey| identities.get(key).unwrap_or(IDENTITY_WORLD);

    // The ipcache.
    let mut ipcache: BTreeMap<IpNet, u32> = default_routes()
        .into_iter()
        .map(|n| (n, IDENTITY_WORLD))
        .collect();
    let mut cidrs = Vec::new();
    for &prefix in &cidr_keys {
        let id = id_of(&IdentityKey::Cidr { prefix });
        ipcache.insert(prefix, id);
        cidrs.push((id, prefix));
    }
    for ip in &node_ips {
        ipcache.insert(host_net(*ip), IDENTITY_HOST);
    }
    // Dense numbering for the bit sets: host, then every class.
    let mut ids = vec![IDENTITY_HOST];
    let mut named: Vec<&[NamedPort]> = vec![&[]];
    let mut by_position: BTreeMap<IpNet, IdSet> = BTreeMap::new();
    let n = 1 + pod_classes.len() + cidrs.len();
    for &(id, prefix) in &cidrs {
        by_position
            .entry(prefix)
            .or_insert_with(|| IdSet::empty(n))
            .insert(ids.len());
        ids.push(id);
        named.push(&[]);
    }
    let mut pods_by_ns: BTreeMap<&str, Vec<PodClass<'_>>> = BTreeMap::new();
    for (key, ips) in &pod_classes {
        let id = id_of(key);
        for ip in ips {
            ipcache.insert(host_net(*ip), id);
        }
        if let IdentityKey::Pod {
            namespace,
            labels,
            position,
            named_ports,
            ..
        } = key
        {
            let dense = ids.len();
            ids.push(id);
            named.push(named_ports);
            if let Some(p) = position {
                by_position
                    .entry(*p)
                    .or_insert_with(|| IdSet::empty(n))
                    .insert(dense);
            }
            pods_by_ns
                .entry(namespace)
                .or_default()
                .push(PodClass { dense, labels });
        }
    }

    let mut world = World {
        ids,
        named,
        pods_by_ns,
        ns_labels,
        positions: by_position.into_iter().collect(),
        node_ips: &options.node_ips,
        select_cache: HashMap::new(),
        block_cache: HashMap::new(),
        named_cache: HashMap::new(),
    };
    let mut policies_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        policies_by_ns
            .entry(p.metadata.namespace_or_default())
            .or_default()
            .push(i);
    }

    // Which policies select which endpoint.
    let mut selecting: Vec<Vec<usize>> = Vec::with_capacity(endpoints.len());
    let mut used = vec![false; policies.len()];
    for ep in endpoints {
        let mut these = Vec::new();
        let pod = ep.pod.as_ref().and_then(|k| cluster.pod(k));
        if let Some(pod) = pod.filter(|p| !p.spec.host_network) {
            let ns = pod.metadata.namespace_or_default();
            for &pi in policies_by_ns
                .get(ns)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if policies[pi].spec.pod_selector.matches(pod.labels()) {
                    these.push(pi);
                    used[pi] = true;
                }
            }
        }
        selecting.push(these);
    }

    // The rule table: the rules of every policy that selects a local
    // endpoint (no other rule can be behind an entry), in policy order.
    let mut rules = Vec::new();
    let mut first_rule = vec![0u32; policies.len()];
    for (pi, p) in policies.iter().enumerate() {
        if !used[pi] {
            continue;
        }
        first_rule[pi] = rules.len() as u32 + 1;
        let key = p.key();
        for (i, r) in p.spec.ingress.iter().enumerate() {
            rules.push(RuleInfo {
                policy: key.clone(),
                direction: Direction::Ingress,
                rule: i,
                peers: describe_peers(&r.from),
                ports: describe_ports(&r.ports),
            });
        }
        for (i, r) in p.spec.egress.iter().enumerate() {
            rules.push(RuleInfo {
                policy: key.clone(),
                direction: Direction::Egress,
                rule: i,
                peers: describe_peers(&r.to),
                ports: describe_ports(&r.ports),
            });
        }
    }

    let mut peer_cache: Vec<Option<Peers>> = vec![None; rules.len() + 1];
    let mut out = BTreeMap::new();
    for (ep, selecting) in endpoints.iter().zip(&selecting) {
        let pod = ep.pod.as_ref().and_then(|k| cluster.pod(k));
        let status = match (&ep.pod, pod) {
            (None, _) => EndpointStatus::NoPod,
            (Some(_), None) => EndpointStatus::UnknownPod,
            (Some(_), Some(_)) => EndpointStatus::Pod,
        };
        let mut policy = EndpointPolicy {
            endpoint_id: ep.endpoint_id,
            pod: ep.pod.clone(),
            ips: ep.ips.clone(),
            status,
            flags: 0,
            ingress_policies: Vec::new(),
            egress_policies: Vec::new(),
            entries: BTreeMap::new(),
            port_ranges: BTreeMap::new(),
        };
        if status == EndpointStatus::UnknownPod && options.unknown_pod_fail_closed {
            out.insert(ep.endpoint_id, policy);
            continue;
        }
        policy.flags = POLICY_F_PROGRAMMED;
        if options.allow_host {
            policy.flags |= POLICY_F_ALLOW_HOST;
        }
        let mut acc = Acc::new(world.n());
        if let Some(pod) = pod {
            let ns = pod.metadata.namespace_or_default();
            for &pi in selecting {
                let p = policies[pi];
                let mut rule_index = first_rule[pi];
                if p.affects_ingress() {
                    policy.flags |= POLICY_F_INGRESS_ISOLATED;
                    policy.ingress_policies.push(p.key());
                    for r in &p.spec.ingress {
                        let peers = peer_cache[rule_index as usize]
                            .get_or_insert_with(|| world.peers(ns, &r.from));
                        emit(
                            &mut acc,
                            Direction::Ingress,
                            rule_index,
                            peers,
                            &r.ports,
                            pod,
                            &mut world,
                        );
                        rule_index += 1;
                    }
                } else {
                    rule_index += p.spec.ingress.len() as u32;
                }
                if p.affects_egress() {
                    policy.flags |= POLICY_F_EGRESS_ISOLATED;
                    policy.egress_policies.push(p.key());
                    for r in &p.spec.egress {
                        let peers = peer_cache[rule_index as usize]
                            .get_or_insert_with(|| world.peers(ns, &r.to));
                        emit(
                            &mut acc,
                            Direction::Egress,
                            rule_index,
                            peers,
                            &r.ports,
                            pod,
                            &mut world,
                        );
                        rule_index += 1;
                    }
                }
            }
        }
        finish(&mut policy, acc, &world.ids)?;
        out.insert(ep.endpoint_id, policy);
    }

    Ok(Compiled {
        revision,
        identities,
        ipcache,
        endpoints: out,
        rules,
        warnings,
    })
}

/// Gives `ip` to `pod` unless the node or another pod has it.
fn claim<'c>(
    owner: &mut BTreeMap<IpAddr, &'c Pod>,
    node_ips: &BTreeSet<IpAddr>,
    ip: IpAddr,
    pod: &'c Pod,
    warnings: &mut Vec<String>,
) {
    if node_ips.contains(&ip) {
        warnings.push(format!(
            "pod {} has the node address {ip}; it stays the host's",
            pod.key()
        ));
    } else if let Some(other) = owner.get(&ip) {
        if other.key() != pod.key() {
            warnings.push(format!(
                "pods {} and {} both claim {ip}; {} keeps it",
                other.key(),
                pod.key(),
                other.key()
            ));
        }
    } else {
        owner.insert(ip, pod);
    }
}

/// Adds the entries of one rule.
fn emit(
    acc: &mut Acc,
    d: Direction,
    rule: u32,
    peers: &Peers,
    ports: &[NetworkPolicyPort],
    local: &Pod,
    world: &mut World<'_>,
) {
    if ports.is_empty() {
        acc.allow(d, PROTO_ANY, PORT_ANY, peers, rule);
        return;
    }
    for (i, port) in ports.iter().enumerate() {
        let protocol = port.protocol();
        let proto = protocol.number();
        match (&port.port, port.end_port) {
            (None, _) => acc.allow(d, proto, PORT_ANY, peers, rule),
            (Some(PortValue::Number(p)), end) => {
                // Validated: 1..=65535 and end >= p; a bad object that got
                // here anyway allows nothing rather than something else.
                let Ok(first) = u16::try_from(*p) else {
                    continue;
                };
                let last = match end.map(u16::try_from) {
                    None => first,
                    Some(Ok(last)) if last >= first => last,
                    Some(_) => continue,
                };
                if first == PORT_ANY {
                    continue;
                }
                if first == last {
                    acc.allow(d, proto, first, peers, rule);
                } else {
                    acc.allow_range(d, proto, first, last, peers, rule);
                }
            }
            (Some(PortValue::Name(name)), _) => match d {
                Direction::Ingress => {
                    for number in local.named_port(name, protocol) {
                        acc.allow(d, proto, number, peers, rule);
                    }
                }
                Direction::Egress => {
                    for (number, peers) in world.named_egress((rule, i), peers, name, protocol) {
                        acc.allow(d, proto, *number, peers, rule);
                    }
                }
            },
        }
    }
}

/// Turns the collected sets into entries, leaving out what another entry
/// already allows under the lookup order, and packs the ranges.
fn finish(policy: &mut EndpointPolicy, acc: Acc, ids: &[u32]) -> Result<(), CompileError> {
    let empty = IdSet::empty(acc.n);
    let mut entries: Vec<(EntryKey, u32)> = Vec::new();
    let mut ranges: BTreeMap<EntryKey, Vec<PortRange>> = BTreeMap::new();
    for d in [Direction::Ingress, Direction::Egress] {
        let get = |proto: u8, port: u16| acc.exact.get(&(d, proto, port));
        let all = get(PROTO_ANY, PORT_ANY);
        if let Some(rule) = all.and_then(|t| t.any) {
            // Anyone, anything: nothing else matters in this direction.
            entries.push((EntryKey::new(d, IDENTITY_ANY, PROTO_ANY, PORT_ANY), rule));
            continue;
        }
        let all_set = all.map_or(&empty, |t| &t.set);
        for &(i, rule) in all.map(|t| t.first.as_slice()).unwrap_or_default() {
            entries.push((EntryKey::new(d, ids[i], PROTO_ANY, PORT_ANY), rule));
        }
        let protocols: BTreeSet<u8> = acc
            .exact
            .keys()
            .filter(|k| k.0 == d)
            .map(|k| k.1)
            .chain(acc.ranges.keys().filter(|k| k.0 == d).map(|k| k.1))
            .filter(|&p| p != PROTO_ANY)
            .collect();
        for proto in protocols {
            let proto_all = get(proto, PORT_ANY);
            if let Some(rule) = proto_all.and_then(|t| t.any) {
                // Anyone, every port of the protocol.
                entries.push((EntryKey::new(d, IDENTITY_ANY, proto, PORT_ANY), rule));
                continue;
            }
            let proto_set = proto_all.map_or(&empty, |t| &t.set);
            let covered = |i: usize| all_set.contains(i) || proto_set.contains(i);
            for &(i, rule) in proto_all.map(|t| t.first.as_slice()).unwrap_or_default() {
                if !all_set.contains(i) {
                    entries.push((EntryKey::new(d, ids[i], proto, PORT_ANY), rule));
                }
            }
            let proto_ranges: Vec<(u16, u16, &Target)> = acc
                .ranges
                .range((d, proto, 0, 0)..=(d, proto, u16::MAX, u16::MAX))
                .map(|(&(_, _, first, last), t)| (first, last, t))
                .collect();
            let any_range_covers = |port: u16| {
                proto_ranges
                    .iter()
                    .any(|(first, last, t)| t.any.is_some() && *first <= port && port <= *last)
            };
            for ((_, _, port), t) in acc
                .exact
                .range((d, proto, PORT_ANY + 1)..=(d, proto, u16::MAX))
            {
                if let Some(rule) = t.any {
                    entries.push((EntryKey::new(d, IDENTITY_ANY, proto, *port), rule));
                    continue;
                }
                if any_range_covers(*port) {
                    continue;
                }
                for &(i, rule) in &t.first {
                    if !covered(i) {
                        entries.push((EntryKey::new(d, ids[i], proto, *port), rule));
                    }
                }
            }
            for (first, last, t) in proto_ranges {
                let range = |rule_index| PortRange {
                    first,
                    last,
                    rule_index,
                };
                if let Some(rule) = t.any {
                    ranges
                        .entry(EntryKey::new(d, IDENTITY_ANY, proto, PORT_ANY))
                        .or_default()
                        .push(range(rule));
                }
                for &(i, rule) in &t.first {
                    if !covered(i) {
                        ranges
                            .entry(EntryKey::new(d, ids[i], proto, PORT_ANY))
                            .or_default()
                            .push(range(rule));
                    }
                }
            }
        }
    }
    for (k, r) in ranges {
        let (packed, exact) = ports::pack(r).map_err(|e| CompileError::TooManyPortRanges {
            endpoint_id: policy.endpoint_id,
            direction: k.direction,
            identity: k.identity,
            protocol: k.protocol,
            ranges: e.ranges,
        })?;
        entries.extend(
            exact
                .into_iter()
                .map(|(port, rule)| (EntryKey { port, ..k }, rule)),
        );
        if !packed.is_empty() {
            policy.port_ranges.insert(k, packed);
        }
    }
    // One value per key: the lowest rule index (the first rule that allowed it).
    entries.sort_unstable();
    entries.dedup_by_key(|(k, _)| *k);
    policy.entries = entries.into_iter().collect();
    Ok(())
}

// The rule table describes every rule of every selecting policy on each
// sync (10k rules: 20k strings), so both write into one `String` each
// rather than joining per-part strings.

fn describe_peers(peers: &[NetworkPolicyPeer]) -> String {
    use fmt::Write as _;
    if peers.is_empty() {
        return "anywhere".into();
    }
    let mut out = String::with_capacity(32 * peers.len());
    for (i, p) in peers.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        // Writing to a String cannot fail.
        let _ = match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
            (_, _, Some(b)) => write!(out, "ipBlock {}", b.cidr).and_then(|()| {
                b.except.iter().enumerate().try_for_each(|(j, e)| {
                    write!(out, "{}{e}", if j == 0 { " except " } else { "," })
                })
            }),
            (Some(pods), None, None) => write!(out, "pods {{{pods}}}"),
            (None, Some(ns), None) => write!(out, "namespaces {{{ns}}}"),
            (Some(pods), Some(ns), None) => write!(out, "pods {{{pods}}} in namespaces {{{ns}}}"),
            (None, None, None) => write!(out, "nothing"),
        };
    }
    out
}

fn describe_ports(ports: &[NetworkPolicyPort]) -> String {
    use fmt::Write as _;
    if ports.is_empty() {
        return "any".into();
    }
    let mut out = String::with_capacity(12 * ports.len());
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = match (&p.port, p.end_port) {
            (None, _) => write!(out, "{}/any", p.protocol()),
            (Some(v), None) => write!(out, "{}/{v}", p.protocol()),
            (Some(v), Some(end)) => write!(out, "{}/{v}-{end}", p.protocol()),
        };
    }
    out
}
