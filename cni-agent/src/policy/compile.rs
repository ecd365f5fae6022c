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
        Cluster, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, ObjectKey, Pod, PortValue,
        Protocol,
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

/// A pod class as selectors see it.
struct PodClass<'a> {
    id: u32,
    labels: &'a Labels,
    position: Option<IpNet>,
    named_ports: &'a [NamedPort],
}

/// A rule's peers.
enum Peers {
    Any,
    Ids(Vec<u32>),
}

/// (namespace scope, namespace selector, pod selector) of a peer.
type SelectKey<'a> = (
    Option<&'a str>,
    Option<&'a LabelSelector>,
    Option<&'a LabelSelector>,
);

/// Everything about the cluster that does not depend on the endpoint.
struct World<'a> {
    /// Pod classes by namespace.
    pods_by_ns: BTreeMap<&'a str, Vec<PodClass<'a>>>,
    /// Namespace labels by namespace (every namespace with pods or known).
    ns_labels: BTreeMap<&'a str, Cow<'a, Labels>>,
    /// CIDR classes.
    cidrs: Vec<(u32, IpNet)>,
    node_ips: &'a [IpAddr],
    /// Named-port resolutions by pod identity.
    named: HashMap<u32, &'a [NamedPort]>,
    /// Selector results: (namespace scope, namespace selector, pod selector).
    cache: HashMap<SelectKey<'a>, Vec<u32>>,
}

impl<'a> World<'a> {
    fn select(
        &mut self,
        scope: Option<&'a str>,
        ns_sel: Option<&'a LabelSelector>,
        pod_sel: Option<&'a LabelSelector>,
    ) -> &[u32] {
        let key = (scope, ns_sel, pod_sel);
        if !self.cache.contains_key(&key) {
            let mut ids = Vec::new();
            for (ns, classes) in &self.pods_by_ns {
                let ns_ok = match (scope, ns_sel) {
                    (Some(scope), _) => *ns == scope,
                    (None, Some(sel)) => self.ns_labels.get(ns).is_some_and(|l| sel.matches(l)),
                    (None, None) => true,
                };
                if !ns_ok {
                    continue;
                }
                ids.extend(
                    classes
                        .iter()
                        .filter(|c| pod_sel.is_none_or(|s| s.matches(c.labels)))
                        .map(|c| c.id),
                );
            }
            self.cache.insert(key, ids);
        }
        &self.cache[&key]
    }

    fn peers(&mut self, policy_ns: &'a str, peers: &'a [NetworkPolicyPeer]) -> Peers {
        if peers.is_empty() {
            return Peers::Any;
        }
        let mut ids = BTreeSet::new();
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                ids.extend(
                    self.cidrs
                        .iter()
                        .filter(|(_, p)| block.covers(p))
                        .map(|(id, _)| *id),
                );
                for classes in self.pods_by_ns.values() {
                    ids.extend(
                        classes
                            .iter()
                            .filter(|c| c.position.is_some_and(|p| block.covers(&p)))
                            .map(|c| c.id),
                    );
                }
                if self.node_ips.iter().any(|ip| block.contains(*ip)) {
                    ids.insert(IDENTITY_HOST);
                }
                continue;
            }
            let (scope, ns_sel) = match &peer.namespace_selector {
                None => (Some(policy_ns), None),
                Some(sel) => (None, Some(sel)),
            };
            ids.extend(
                self.select(scope, ns_sel, peer.pod_selector.as_ref())
                    .iter()
                    .copied(),
            );
        }
        Peers::Ids(ids.into_iter().collect())
    }

    fn named_ports(&self, id: u32) -> &'a [NamedPort] {
        self.named.get(&id).copied().unwrap_or_default()
    }

    fn all_pod_ids(&self) -> impl Iterator<Item = (u32, &'a [NamedPort])> + '_ {
        self.pods_by_ns
            .values()
            .flatten()
            .map(|c| (c.id, c.named_ports))
    }
}

/// Entries of one endpoint while they are collected.
#[derive(Default)]
struct Acc {
    entries: BTreeMap<EntryKey, u32>,
    ranges: BTreeMap<EntryKey, Vec<PortRange>>,
}

impl Acc {
    fn allow(&mut self, d: Direction, id: u32, protocol: u8, port: u16, rule: u32) {
        self.entries
            .entry(EntryKey::new(d, id, protocol, port))
            .or_insert(rule);
    }

    fn allow_range(
        &mut self,
        d: Direction,
        id: u32,
        protocol: u8,
        first: u16,
        last: u16,
        rule: u32,
    ) {
        self.ranges
            .entry(EntryKey::new(d, id, protocol, PORT_ANY))
            .or_default()
            .push(PortRange {
                first,
                last,
                rule_index: rule,
            });
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
            pods_by_ns.entry(namespace).or_default().push(PodClass {
                id,
                labels,
                position: *position,
                named_ports,
            });
        }
    }

    // The rule table.
    let mut rules = Vec::new();
    let mut first_rule = Vec::with_capacity(policies.len());
    for p in &policies {
        first_rule.push(rules.len() as u32 + 1);
        for (i, r) in p.spec.ingress.iter().enumerate() {
            rules.push(RuleInfo {
                policy: p.key(),
                direction: Direction::Ingress,
                rule: i,
                peers: describe_peers(&r.from),
                ports: describe_ports(&r.ports),
            });
        }
        for (i, r) in p.spec.egress.iter().enumerate() {
            rules.push(RuleInfo {
                policy: p.key(),
                direction: Direction::Egress,
                rule: i,
                peers: describe_peers(&r.to),
                ports: describe_ports(&r.ports),
            });
        }
    }

    let named = pods_by_ns
        .values()
        .flatten()
        .map(|c| (c.id, c.named_ports))
        .collect();
    let mut world = World {
        named,
        pods_by_ns,
        ns_labels,
        cidrs,
        node_ips: &options.node_ips,
        cache: HashMap::new(),
    };
    let mut peer_cache: HashMap<u32, Peers> = HashMap::new();
    let mut policies_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        policies_by_ns
            .entry(p.metadata.namespace_or_default())
            .or_default()
            .push(i);
    }

    let mut out = BTreeMap::new();
    for ep in endpoints {
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
        let mut acc = Acc::default();
        if let Some(pod) = pod.filter(|p| !p.spec.host_network) {
            let ns = pod.metadata.namespace_or_default();
            for &pi in policies_by_ns
                .get(ns)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let p = policies[pi];
                if !p.spec.pod_selector.matches(pod.labels()) {
                    continue;
                }
                let mut rule_index = first_rule[pi];
                if p.affects_ingress() {
                    policy.flags |= POLICY_F_INGRESS_ISOLATED;
                    policy.ingress_policies.push(p.key());
                }
                for r in &p.spec.ingress {
                    if p.affects_ingress() {
                        let peers = peer_cache
                            .entry(rule_index)
                            .or_insert_with(|| world.peers(ns, &r.from));
                        emit(
                            &mut acc,
                            Direction::Ingress,
                            rule_index,
                            peers,
                            &r.ports,
                            pod,
                            &world,
                        );
                    }
                    rule_index += 1;
                }
                if p.affects_egress() {
                    policy.flags |= POLICY_F_EGRESS_ISOLATED;
                    policy.egress_policies.push(p.key());
                    for r in &p.spec.egress {
                        let peers = peer_cache
                            .entry(rule_index)
                            .or_insert_with(|| world.peers(ns, &r.to));
                        emit(
                            &mut acc,
                            Direction::Egress,
                            rule_index,
                            peers,
                            &r.ports,
                            pod,
                            &world,
                        );
                        rule_index += 1;
                    }
                }
            }
        }
        finish(&mut policy, acc)?;
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
    world: &World<'_>,
) {
    let ids: &[u32] = match peers {
        Peers::Any => &[IDENTITY_ANY],
        Peers::Ids(ids) => ids,
    };
    if ports.is_empty() {
        for &id in ids {
            acc.allow(d, id, PROTO_ANY, PORT_ANY, rule);
        }
        return;
    }
    for port in ports {
        let protocol = port.protocol();
        let proto = protocol.number();
        match (&port.port, port.end_port) {
            (None, _) => {
                for &id in ids {
                    acc.allow(d, id, proto, PORT_ANY, rule);
                }
            }
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
                for &id in ids {
                    if first == last {
                        acc.allow(d, id, proto, first, rule);
                    } else {
                        acc.allow_range(d, id, proto, first, last, rule);
                    }
                }
            }
            (Some(PortValue::Name(name)), _) => match d {
                Direction::Ingress => {
                    for number in local.named_port(name, protocol) {
                        for &id in ids {
                            acc.allow(d, id, proto, number, rule);
                        }
                    }
                }
                Direction::Egress => {
                    let resolve = |named: &[NamedPort]| -> Vec<u16> {
                        named
                            .iter()
                            .filter(|n| n.name == *name && n.protocol == protocol)
                            .map(|n| n.port)
                            .collect()
                    };
                    match peers {
                        Peers::Any => {
                            for (id, named) in world.all_pod_ids() {
                                for number in resolve(named) {
                                    acc.allow(d, id, proto, number, rule);
                                }
                            }
                        }
                        Peers::Ids(ids) => {
                            for &id in ids {
                                for number in resolve(world.named_ports(id)) {
                                    acc.allow(d, id, proto, number, rule);
                                }
                            }
                        }
                    }
                }
            },
        }
    }
}

/// Drops redundant entries and packs the ranges.
fn finish(policy: &mut EndpointPolicy, acc: Acc) -> Result<(), CompileError> {
    let Acc {
        mut entries,
        ranges,
    } = acc;
    let has = |d, id, proto, port| entries.contains_key(&EntryKey::new(d, id, proto, port));
    let any_allows_all_of = |d, proto| {
        has(d, IDENTITY_ANY, proto, PORT_ANY) || has(d, IDENTITY_ANY, PROTO_ANY, PORT_ANY)
    };
    let any_ranges = |d, proto| ranges.get(&EntryKey::new(d, IDENTITY_ANY, proto, PORT_ANY));
    let redundant = |k: &EntryKey| -> bool {
        let (d, id, proto, port) = (k.direction, k.identity, k.protocol, k.port);
        let specific = id != IDENTITY_ANY;
        if proto == PROTO_ANY {
            specific && has(d, IDENTITY_ANY, PROTO_ANY, PORT_ANY)
        } else if port == PORT_ANY {
            has(d, id, PROTO_ANY, PORT_ANY) || (specific && any_allows_all_of(d, proto))
        } else {
            has(d, id, proto, PORT_ANY)
                || has(d, id, PROTO_ANY, PORT_ANY)
                || (specific
                    && (any_allows_all_of(d, proto)
                        || has(d, IDENTITY_ANY, proto, port)
                        || any_ranges(d, proto)
                            .is_some_and(|r| r.iter().any(|r| r.first <= port && port <= r.last))))
        }
    };
    let drop: Vec<EntryKey> = entries.keys().filter(|k| redundant(k)).copied().collect();
    let keep_ranges: Vec<(EntryKey, Vec<PortRange>)> = ranges
        .iter()
        .filter(|(k, _)| {
            let (d, id, proto) = (k.direction, k.identity, k.protocol);
            !(has(d, id, proto, PORT_ANY)
                || has(d, id, PROTO_ANY, PORT_ANY)
                || (id != IDENTITY_ANY && any_allows_all_of(d, proto)))
        })
        .map(|(k, r)| (*k, r.clone()))
        .collect();
    for k in drop {
        entries.remove(&k);
    }
    for (k, r) in keep_ranges {
        let (packed, exact) = ports::pack(r).map_err(|e| CompileError::TooManyPortRanges {
            endpoint_id: policy.endpoint_id,
            direction: k.direction,
            identity: k.identity,
            protocol: k.protocol,
            ranges: e.ranges,
        })?;
        for (port, rule) in exact {
            entries.entry(EntryKey { port, ..k }).or_insert(rule);
        }
        if !packed.is_empty() {
            policy.port_ranges.insert(k, packed);
        }
    }
    policy.entries = entries;
    Ok(())
}

fn describe_peers(peers: &[NetworkPolicyPeer]) -> String {
    if peers.is_empty() {
        return "anywhere".into();
    }
    let parts: Vec<String> = peers
        .iter()
        .map(
            |p| match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
                (_, _, Some(b)) if b.except.is_empty() => format!("ipBlock {}", b.cidr),
                (_, _, Some(b)) => {
                    let ex: Vec<String> = b.except.iter().map(ToString::to_string).collect();
                    format!("ipBlock {} except {}", b.cidr, ex.join(","))
                }
                (Some(pods), None, None) => format!("pods {{{pods}}}"),
                (None, Some(ns), None) => format!("namespaces {{{ns}}}"),
                (Some(pods), Some(ns), None) => format!("pods {{{pods}}} in namespaces {{{ns}}}"),
                (None, None, None) => "nothing".into(),
            },
        )
        .collect();
    parts.join(" or ")
}

fn describe_ports(ports: &[NetworkPolicyPort]) -> String {
    if ports.is_empty() {
        return "any".into();
    }
    let parts: Vec<String> = ports
        .iter()
        .map(|p| match (&p.port, p.end_port) {
            (None, _) => format!("{}/any", p.protocol()),
            (Some(v), None) => format!("{}/{v}", p.protocol()),
            (Some(v), Some(end)) => format!("{}/{v}-{end}", p.protocol()),
        })
        .collect();
    parts.join(",")
}
