//! The Kubernetes objects policy reads — Namespace, Pod, NetworkPolicy
//! (networking.k8s.io/v1) — as serde types that read the JSON the API
//! server sends and the YAML people write, plus [`Cluster`], the snapshot
//! the compiler works on.
//!
//! Strictness (see `strict.rs`): every type refuses unknown fields, so a
//! typo is an error instead of a silently different policy. The Kubernetes
//! fields policy never reads are accepted and dropped:
//! - metadata: `uid`, `resourceVersion`, `generation`, `creationTimestamp`,
//!   `deletionTimestamp`, `deletionGracePeriodSeconds`, `managedFields`,
//!   `ownerReferences`, `finalizers`, `generateName`, `selfLink`
//!   (`annotations` is kept, for display);
//! - the rest of a Pod's `spec`, `containers[]` and `status`, a Namespace's
//!   `spec` and `status`;
//! - `apiVersion` and `kind` (the manifest loader dispatches on them first).
//!
//! A NetworkPolicy has no such list: all its fields matter.
//!
//! Validation ([`NetworkPolicy::validate`], …) is what the API server checks
//! and serde cannot: CIDR containment, port ranges, selector operators,
//! names. Objects from the API server have passed it already; manifests
//! have not.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    selector::{LabelSelector, Labels},
    strict::{nullable, strict},
};

/// The label Kubernetes puts on every namespace, with its name as value.
pub const METADATA_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespace of objects that name none; it exists in every cluster.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A field the API server would refuse, with its path in the object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path in the object, e.g. `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl FieldError {
    /// A new error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `metadata` of an object: what policy reads of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The object's name.
    #[serde(default)]
    pub name: String,
    /// The namespace (namespaced kinds; absent means `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: Labels,
    /// Annotations, kept for display only.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}
strict!(
    ObjectMeta,
    "object metadata",
    [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "ownerReferences",
        "finalizers",
        "generateName",
        "selfLink",
    ]
);

impl ObjectMeta {
    /// Metadata with a name, namespace and labels.
    pub fn new<'a>(
        namespace: Option<&str>,
        name: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
        }
    }

    /// The namespace, `default` when absent.
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The object's key (namespaced kinds).
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace_or_default(), &self.name)
    }

    fn validate(&self, namespaced: bool) -> Result<(), FieldError> {
        if namespaced {
            check_dns_subdomain(&self.name).map_err(|m| FieldError::new("metadata.name", m))?;
            if let Some(ns) = &self.namespace {
                check_dns_label(ns).map_err(|m| FieldError::new("metadata.namespace", m))?;
            }
        } else {
            check_dns_label(&self.name).map_err(|m| FieldError::new("metadata.name", m))?;
            if let Some(ns) = &self.namespace {
                return Err(FieldError::new(
                    "metadata.namespace",
                    format!("a Namespace is not namespaced (got {ns:?})"),
                ));
            }
        }
        for (k, v) in &self.labels {
            check_label_key(k).map_err(|m| FieldError::new("metadata.labels", m))?;
            check_label_value(v).map_err(|m| FieldError::new(format!("metadata.labels.{k}"), m))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Namespace

/// A v1 Namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Namespace {
    /// Name and labels.
    pub metadata: ObjectMeta,
}
strict!(
    Namespace,
    "a Namespace",
    ["apiVersion", "kind", "spec", "status"]
);

impl Namespace {
    /// A namespace with labels (the `kubernetes.io/metadata.name` label is
    /// added when it enters a [`Cluster`]).
    pub fn new<'a>(name: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            metadata: ObjectMeta::new(None, name, labels),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Checks what the API server would.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.metadata.validate(false)
    }
}

// ---------------------------------------------------------------- Pod

/// A v1 Pod: labels, container ports (for named ports), addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Pod {
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// Containers and their ports.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    /// Addresses (for pods on other nodes; local pods' come from the CNI).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "PodStatus::is_empty"
    )]
    pub status: PodStatus,
}
strict!(Pod, "a Pod", ["apiVersion", "kind"]);

/// What policy reads of a PodSpec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// Containers (their ports resolve named ports).
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    /// A host-network pod has the node's address: policy does not select it
    /// and it gets no pod identity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// The node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}
strict!(
    PodSpec,
    "a PodSpec",
    [
        "activeDeadlineSeconds",
        "affinity",
        "automountServiceAccountToken",
        "dnsConfig",
        "dnsPolicy",
        "enableServiceLinks",
        "ephemeralContainers",
        "hostAliases",
        "hostIPC",
        "hostPID",
        "hostUsers",
        "hostname",
        "hostnameOverride",
        "imagePullSecrets",
        "initContainers",
        "nodeSelector",
        "os",
        "overhead",
        "preemptionPolicy",
        "priority",
        "priorityClassName",
        "readinessGates",
        "resourceClaims",
        "resources",
        "restartPolicy",
        "runtimeClassName",
        "schedulerName",
        "schedulingGates",
        "securityContext",
        "serviceAccount",
        "serviceAccountName",
        "setHostnameAsFQDN",
        "shareProcessNamespace",
        "subdomain",
        "terminationGracePeriodSeconds",
        "tolerations",
        "topologySpreadConstraints",
        "volumes",
    ]
);

/// What policy reads of a container: its ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Declared ports.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ContainerPort>,
}
strict!(
    Container,
    "a container",
    [
        "args",
        "command",
        "env",
        "envFrom",
        "image",
        "imagePullPolicy",
        "lifecycle",
        "livenessProbe",
        "readinessProbe",
        "resizePolicy",
        "resources",
        "restartPolicy",
        "restartPolicyRules",
        "securityContext",
        "startupProbe",
        "stdin",
        "stdinOnce",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "tty",
        "volumeDevices",
        "volumeMounts",
        "workingDir",
    ]
);

/// A container port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// The name a NetworkPolicy can use (an IANA service name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number.
    pub container_port: i32,
    /// TCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Host port (not used by policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// Host address (not used by policy).
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}
strict!(ContainerPort, "a container port", []);

/// What policy reads of a PodStatus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`; a finished
    /// pod's address is no longer its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The primary address.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<IpAddr>,
    /// All addresses (dual stack).
    #[serde(
        default,
        rename = "podIPs",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pod_ips: Vec<PodIp>,
}
strict!(
    PodStatus,
    "a PodStatus",
    [
        "conditions",
        "containerStatuses",
        "ephemeralContainerStatuses",
        "extendedResourceClaimStatus",
        "hostIP",
        "hostIPs",
        "initContainerStatuses",
        "message",
        "nominatedNodeName",
        "observedGeneration",
        "qosClass",
        "reason",
        "resize",
        "resourceClaimStatuses",
        "startTime",
    ]
);

/// One entry of `status.podIPs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct PodIp {
    /// The address.
    pub ip: IpAddr,
}
strict!(PodIp, "a pod IP", []);

impl PodStatus {
    fn is_empty(&self) -> bool {
        self.phase.is_none() && self.pod_ip.is_none() && self.pod_ips.is_empty()
    }
}

impl Pod {
    /// A pod with labels and no containers or addresses.
    pub fn new<'a>(
        namespace: &str,
        name: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        Self {
            metadata: ObjectMeta::new(Some(namespace), name, labels),
            ..Self::default()
        }
    }

    /// Adds a container port (builder style, for tests and tools).
    pub fn with_port(mut self, name: Option<&str>, protocol: Protocol, port: u16) -> Self {
        if self.spec.containers.is_empty() {
            self.spec.containers.push(Container {
                name: "main".into(),
                ports: Vec::new(),
            });
        }
        self.spec.containers[0].ports.push(ContainerPort {
            name: name.map(str::to_owned),
            container_port: i32::from(port),
            protocol: Some(protocol),
            host_port: None,
            host_ip: None,
        });
        self
    }

    /// Adds an address to `status.podIPs` (builder style).
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        if self.status.pod_ip.is_none() {
            self.status.pod_ip = Some(ip);
        }
        self.status.pod_ips.push(PodIp { ip });
        self
    }

    /// `namespace/name`.
    pub fn key(&self) -> ObjectKey {
        self.metadata.key()
    }

    /// The labels.
    pub fn labels(&self) -> &Labels {
        &self.metadata.labels
    }

    /// The addresses in `status` (`podIP` and `podIPs`, deduplicated), none
    /// for host-network and finished pods.
    pub fn status_ips(&self) -> Vec<IpAddr> {
        if self.spec.host_network
            || matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            return Vec::new();
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in self
            .status
            .pod_ip
            .iter()
            .chain(self.status.pod_ips.iter().map(|p| &p.ip))
        {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        ips
    }

    /// Numbers of the container ports called `name` with `protocol` (named
    /// port resolution, as kube-proxy and every NetworkPolicy implementation
    /// do it: name and protocol must both match).
    pub fn named_port(&self, name: &str, protocol: Protocol) -> BTreeSet<u16> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| {
                p.name.as_deref() == Some(name) && p.protocol.unwrap_or_default() == protocol
            })
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect()
    }

    /// Checks what the API server would.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.metadata.validate(true)?;
        for (i, c) in self.spec.containers.iter().enumerate() {
            for (j, p) in c.ports.iter().enumerate() {
                let here = format!("spec.containers[{i}].ports[{j}]");
                check_port_number(p.container_port)
                    .map_err(|m| FieldError::new(format!("{here}.containerPort"), m))?;
                if let Some(name) = &p.name {
                    check_port_name(name)
                        .map_err(|m| FieldError::new(format!("{here}.name"), m))?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- NetworkPolicy

/// A networking.k8s.io/v1 NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Name, namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NetworkPolicySpec,
}
strict!(NetworkPolicy, "a NetworkPolicy", ["apiVersion", "kind"]);

/// The policy proper.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to (`{}`: all).
    #[serde(default, deserialize_with = "nullable")]
    pub pod_selector: LabelSelector,
    /// Allowed incoming traffic (a union of rules).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ingress: Vec<IngressRule>,
    /// Allowed outgoing traffic (a union of rules).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub egress: Vec<EgressRule>,
    /// Which directions the policy isolates; when empty, `Ingress` plus
    /// `Egress` if there are egress rules (the API server's defaulting).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub policy_types: Vec<PolicyType>,
}
strict!(NetworkPolicySpec, "a NetworkPolicySpec", []);

/// A `policyTypes` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    /// The policy isolates selected pods for incoming traffic.
    Ingress,
    /// The policy isolates selected pods for outgoing traffic.
    Egress,
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct IngressRule {
    /// Sources; empty means every source.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from: Vec<NetworkPolicyPeer>,
    /// Destination ports on the selected pod; empty means every port.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<NetworkPolicyPort>,
}
strict!(IngressRule, "an ingress rule", []);

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct EgressRule {
    /// Destinations; empty means every destination.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub to: Vec<NetworkPolicyPeer>,
    /// Destination ports on the peer; empty means every port.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<NetworkPolicyPort>,
}
strict!(EgressRule, "an egress rule", []);

/// A peer: pods by selectors (both present: AND), or an ipBlock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    /// Pods with these labels (in the namespaces `namespace_selector`
    /// picks, else in the policy's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces with these labels (`{}`: all namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses: `cidr` minus every `except`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}
strict!(NetworkPolicyPeer, "a NetworkPolicy peer", []);

/// An ipBlock. CIDRs are normalised (host bits cleared) as the API server
/// parses them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    #[serde(with = "cidr")]
    pub cidr: IpNet,
    /// Holes in it; each strictly inside `cidr`.
    #[serde(default, with = "cidr_list", skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}
strict!(IpBlock, "an ipBlock", []);

impl IpBlock {
    /// Whether every address of `net` is in the block (in `cidr`, in no
    /// `except`). Exact for a `net` that no `except` splits, which is the
    /// case for every CIDR fragment and pod position the compiler asks about.
    pub fn covers(&self, net: &IpNet) -> bool {
        self.cidr.contains(net) && !self.except.iter().any(|e| e.contains(net))
    }

    /// Whether the address is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// A port entry of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// TCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// A number or a container port name; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    /// With a numeric `port`: the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}
strict!(NetworkPolicyPort, "a NetworkPolicy port", []);

impl NetworkPolicyPort {
    /// The protocol, TCP when absent.
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }
}

/// `IntOrString` of a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortValue {
    /// A port number.
    Number(i32),
    /// A container port name, resolved on the destination pod.
    Name(String),
}

impl Serialize for PortValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PortValue::Number(n) => s.serialize_i32(*n),
            PortValue::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortValue, E> {
                i32::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 1-65535")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortValue, E> {
                i32::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 1-65535")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for PortValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortValue::Number(n) => write!(f, "{n}"),
            PortValue::Name(n) => f.write_str(n),
        }
    }
}

/// A transport protocol of a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    /// TCP (6), the default.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (17).
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP (132).
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with this IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> ObjectKey {
        self.metadata.key()
    }

    /// Whether the policy isolates its pods for ingress: `Ingress` is in
    /// `policyTypes`, or `policyTypes` is empty (then always).
    pub fn affects_ingress(&self) -> bool {
        self.spec.policy_types.is_empty() || self.spec.policy_types.contains(&PolicyType::Ingress)
    }

    /// Whether the policy isolates its pods for egress: `Egress` is in
    /// `policyTypes`, or `policyTypes` is empty and there are egress rules.
    pub fn affects_egress(&self) -> bool {
        if self.spec.policy_types.is_empty() {
            !self.spec.egress.is_empty()
        } else {
            self.spec.policy_types.contains(&PolicyType::Egress)
        }
    }

    /// Checks what the API server would (ValidateNetworkPolicy).
    pub fn validate(&self) -> Result<(), FieldError> {
        self.metadata.validate(true)?;
        let spec = &self.spec;
        spec.pod_selector.validate("spec.podSelector")?;
        for (i, rule) in spec.ingress.iter().enumerate() {
            validate_rule(
                &format!("spec.ingress[{i}]"),
                "from",
                &rule.from,
                &rule.ports,
            )?;
        }
        for (i, rule) in spec.egress.iter().enumerate() {
            validate_rule(&format!("spec.egress[{i}]"), "to", &rule.to, &rule.ports)?;
        }
        if spec.policy_types.len() > 2 {
            return Err(FieldError::new(
                "spec.policyTypes",
                format!(
                    "at most 2 values (Ingress, Egress), got {}",
                    spec.policy_types.len()
                ),
            ));
        }
        Ok(())
    }
}

fn validate_rule(
    here: &str,
    peers_field: &str,
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
) -> Result<(), FieldError> {
    for (i, port) in ports.iter().enumerate() {
        let here = format!("{here}.ports[{i}]");
        match (&port.port, port.end_port) {
            (None, Some(_)) => {
                return Err(FieldError::new(
                    format!("{here}.endPort"),
                    "endPort needs a numeric port",
                ))
            }
            (Some(PortValue::Name(name)), end) => {
                check_port_name(name).map_err(|m| FieldError::new(format!("{here}.port"), m))?;
                if end.is_some() {
                    return Err(FieldError::new(
                        format!("{here}.endPort"),
                        format!("endPort cannot be used with the named port {name:?}"),
                    ));
                }
            }
            (Some(PortValue::Number(p)), end) => {
                check_port_number(*p).map_err(|m| FieldError::new(format!("{here}.port"), m))?;
                if let Some(end) = end {
                    check_port_number(end)
                        .map_err(|m| FieldError::new(format!("{here}.endPort"), m))?;
                    if end < *p {
                        return Err(FieldError::new(
                            format!("{here}.endPort"),
                            format!("endPort {end} is less than port {p}"),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
    }
    for (i, peer) in peers.iter().enumerate() {
        let here = format!("{here}.{peers_field}[{i}]");
        match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
            (None, None, None) => {
                return Err(FieldError::new(
                    here,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                ))
            }
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(FieldError::new(
                    format!("{here}.ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ))
            }
            (pods, namespaces, None) => {
                if let Some(s) = pods {
                    s.validate(&format!("{here}.podSelector"))?;
                }
                if let Some(s) = namespaces {
                    s.validate(&format!("{here}.namespaceSelector"))?;
                }
            }
            (None, None, Some(block)) => {
                for (j, e) in block.except.iter().enumerate() {
                    let strict_subset =
                        block.cidr.contains(e) && e.prefix_len() > block.cidr.prefix_len();
                    if !strict_subset {
                        return Err(FieldError::new(
                            format!("{here}.ipBlock.except[{j}]"),
                            format!("{e} is not strictly inside cidr {}", block.cidr),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// (De)serializes a CIDR string. Host bits are cleared, as Go's
/// `net.ParseCIDR` (which the API server uses) does.
mod cidr {
    use super::*;

    pub fn parse(s: &str) -> Result<IpNet, String> {
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .map_err(|_| format!("invalid CIDR {s:?}: expected an address and a prefix length, e.g. 10.0.0.0/24 or fd00::/64"))
    }

    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

mod cidr_list {
    use super::*;

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<IpNet>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of CIDRs")
            }
            fn visit_unit<E>(self) -> Result<Vec<IpNet>, E> {
                Ok(Vec::new())
            }
            fn visit_none<E>(self) -> Result<Vec<IpNet>, E> {
                Ok(Vec::new())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<IpNet>, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(super::cidr::parse(&s).map_err(serde::de::Error::custom)?);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------- names

/// Port number 1-65535.
pub(crate) fn check_port_number(p: i32) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port {p} is out of range 1-65535"))
    }
}

/// IANA service name (RFC 6335), as Kubernetes requires of port names: at
/// most 15 characters, lowercase letters, digits and `-`, at least one
/// letter, no `-` at either end or twice in a row.
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid port name {name:?}: a port name is 1-15 lowercase letters, digits and '-', \
             with at least one letter (a number must not be quoted)"
        ))
    }
}

/// A label name part: 1-63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label key {key:?}: expected [prefix/]name, name 1-63 characters of \
             [A-Za-z0-9_.-] starting and ending alphanumeric"
        ))
    }
}

/// A label value: empty, or like a label name.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 characters of [A-Za-z0-9_.-], \
             starting and ending alphanumeric"
        ))
    }
}

fn check_dns_label(s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(format!(
            "invalid name {s:?}: expected 1-63 lowercase letters, digits and '-'"
        ))
    }
}

fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if is_dns_subdomain(s) {
        Ok(())
    } else {
        Err(format!(
            "invalid name {s:?}: expected lowercase letters, digits, '-' and '.' (a DNS subdomain)"
        ))
    }
}

// ---------------------------------------------------------------- Cluster

/// A snapshot of what policy depends on: namespaces, pods, policies.
///
/// Built by the manifest loader or by watches; the compiler reads it.
/// Entering a namespace sets its `kubernetes.io/metadata.name` label (as the
/// API server does); entering a pod or policy without a namespace puts it in
/// `default`. A pod or policy whose namespace is not (yet) known is kept: its
/// namespace then has only the `kubernetes.io/metadata.name` label.
///
/// Objects are shared (`Arc`): a clone copies the indexes, not the objects,
/// so the agent can keep the last good cluster beside a new one and add
/// the local pods it lacks without copying thousands of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    namespaces: BTreeMap<String, Arc<Namespace>>,
    pods: BTreeMap<ObjectKey, Arc<Pod>>,
    policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a namespace; returns the one replaced.
    pub fn insert_namespace(&mut self, mut ns: Namespace) -> Option<Namespace> {
        ns.metadata.namespace = None;
        let name = ns.metadata.name.clone();
        ns.metadata
            .labels
            .insert(METADATA_NAME_LABEL.to_owned(), name.clone());
        self.namespaces
            .insert(name, Arc::new(ns))
            .map(Arc::unwrap_or_clone)
    }

    /// Adds or replaces a pod; returns the one replaced.
    pub fn insert_pod(&mut self, mut pod: Pod) -> Option<Pod> {
        let key = pod.key();
        pod.metadata.namespace = Some(key.namespace.clone());
        self.pods
            .insert(key, Arc::new(pod))
            .map(Arc::unwrap_or_clone)
    }

    /// Adds or replaces a policy; returns the one replaced.
    pub fn insert_policy(&mut self, mut policy: NetworkPolicy) -> Option<NetworkPolicy> {
        let key = policy.key();
        policy.metadata.namespace = Some(key.namespace.clone());
        self.policies
            .insert(key, Arc::new(policy))
            .map(Arc::unwrap_or_clone)
    }

    /// Removes a namespace (its pods and policies stay until removed).
    pub fn remove_namespace(&mut self, name: &str) -> Option<Namespace> {
        self.namespaces.remove(name).map(Arc::unwrap_or_clone)
    }

    /// Removes a pod.
    pub fn remove_pod(&mut self, key: &ObjectKey) -> Option<Pod> {
        self.pods.remove(key).map(Arc::unwrap_or_clone)
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, key: &ObjectKey) -> Option<NetworkPolicy> {
        self.policies.remove(key).map(Arc::unwrap_or_clone)
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name).map(Arc::as_ref)
    }

    /// A pod by key.
    pub fn pod(&self, key: &ObjectKey) -> Option<&Pod> {
        self.pods.get(key).map(Arc::as_ref)
    }

    /// A policy by key.
    pub fn policy(&self, key: &ObjectKey) -> Option<&NetworkPolicy> {
        self.policies.get(key).map(Arc::as_ref)
    }

    /// Namespaces, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values().map(Arc::as_ref)
    }

    /// Pods, by key.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().map(Arc::as_ref)
    }

    /// Policies, by key.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values().map(Arc::as_ref)
    }

    /// The labels of a namespace; for one not (yet) known, just
    /// `kubernetes.io/metadata.name`.
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.metadata.labels),
            None => Cow::Owned(Labels::from([(
                METADATA_NAME_LABEL.to_owned(),
                name.to_owned(),
            )])),
        }
    }
}

/// `Cluster` as JSON/YAML: three lists, the objects as Kubernetes writes
/// them.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClusterWire {
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    pods: Vec<Pod>,
    #[serde(default)]
    network_policies: Vec<NetworkPolicy>,
}

impl Serialize for Cluster {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ClusterWire {
            namespaces: self.namespaces().cloned().collect(),
            pods: self.pods().cloned().collect(),
            network_policies: self.policies().cloned().collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cluster {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = ClusterWire::deserialize(d)?;
        let mut c = Cluster::new();
        for ns in wire.namespaces {
            c.insert_namespace(ns);
        }
        for pod in wire.pods {
            c.insert_pod(pod);
        }
        for p in wire.network_policies {
            c.insert_policy(p);
        }
        Ok(c)
    }
}
