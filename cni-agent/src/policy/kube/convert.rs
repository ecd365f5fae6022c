//! k8s-openapi objects → the policy model.
//!
//! Through JSON, so that an object from the API server meets exactly the
//! deserializer and validation a manifest meets (`model.rs`), except that
//! fields this build does not know are skipped
//! ([`ignoring_unknown_fields`]): a newer API server adding a field is not
//! an error. Pods are trimmed first to what policy reads — name,
//! namespace, labels, container ports, `hostNetwork`, `nodeName`, `phase`,
//! `podIP(s)` — so status churn (conditions, container statuses) neither
//! costs memory nor counts as a change.

use std::fmt;

use k8s_openapi::api::{
    core::v1::{Namespace as KNamespace, Pod as KPod},
    networking::v1::NetworkPolicy as KNetworkPolicy,
};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::policy::{
    manifests::Object,
    model::{FieldError, Namespace, NetworkPolicy, ObjectKey, Pod, DEFAULT_NAMESPACE},
    strict::ignoring_unknown_fields,
};

/// A kind the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// v1 Namespace.
    Namespace,
    /// v1 Pod.
    Pod,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
}

impl Kind {
    /// Every watched kind.
    pub const ALL: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

    /// `Namespaces`, `Pods`, `NetworkPolicies`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespaces",
            Kind::Pod => "Pods",
            Kind::NetworkPolicy => "NetworkPolicies",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// Which object: kind, namespace (namespaced kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace; `None` for a Namespace.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl ObjectId {
    /// The key of a namespaced object (`default` when the namespace is
    /// missing, as the model does).
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            &self.name,
        )
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Namespace => write!(f, "Namespace {}", self.name),
            kind => write!(f, "{kind} {}", self.key()),
        }
    }
}

/// A k8s-openapi type the agent watches and converts.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static
{
    /// Its kind.
    const KIND: Kind;

    /// The model's object, parsed and validated; the error names the field.
    fn convert(&self) -> Result<Object, FieldError>;

    /// Which object this is.
    fn id(&self) -> ObjectId {
        let meta = self.meta();
        ObjectId {
            kind: Self::KIND,
            namespace: match Self::KIND {
                Kind::Namespace => None,
                _ => meta.namespace.clone(),
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl Watched for KNamespace {
    const KIND: Kind = Kind::Namespace;

    fn convert(&self) -> Result<Object, FieldError> {
        let value = json!({ "metadata": meta_value(self.meta(), false) });
        let ns: Namespace = decode(value)?;
        ns.validate()?;
        Ok(Object::Namespace(ns))
    }
}

impl Watched for KPod {
    const KIND: Kind = Kind::Pod;

    fn convert(&self) -> Result<Object, FieldError> {
        let pod: Pod = decode(pod_value(self))?;
        pod.validate()?;
        Ok(Object::Pod(pod))
    }
}

impl Watched for KNetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;

    fn convert(&self) -> Result<Object, FieldError> {
        // Every field of a policy matters: the whole object goes through.
        let mut value = to_value(self)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("metadata".into(), meta_value(self.meta(), true));
        }
        let policy: NetworkPolicy = decode(value)?;
        policy.validate()?;
        Ok(Object::NetworkPolicy(policy))
    }
}

/// The metadata policy reads (annotations only where asked: a policy's are
/// shown to people, a pod's can be large and churn).
fn meta_value(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    annotations: bool,
) -> Value {
    let mut out = json!({
        "name": meta.name.as_deref().unwrap_or_default(),
        "namespace": meta.namespace,
        "labels": meta.labels,
    });
    if annotations {
        out["annotations"] = json!(meta.annotations);
    }
    out
}

fn pod_value(pod: &KPod) -> Value {
    let mut spec = json!({});
    if let Some(s) = &pod.spec {
        let containers: Vec<Value> = s
            .containers
            .iter()
            .map(|c| json!({ "name": c.name, "ports": c.ports }))
            .collect();
        spec = json!({
            "containers": containers,
            "hostNetwork": s.host_network.unwrap_or(false),
            "nodeName": s.node_name,
        });
    }
    let mut status = json!({});
    if let Some(s) = &pod.status {
        status = json!({
            "phase": s.phase,
            "podIP": s.pod_ip,
            "podIPs": s.pod_ips,
        });
    }
    json!({
        "metadata": meta_value(pod.meta(), false),
        "spec": spec,
        "status": status,
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, FieldError> {
    serde_json::to_value(v).map_err(|e| FieldError::new("(top level)", e.to_string()))
}

/// The model's deserializer, lenient about unknown fields, with the path of
/// a failing field. `null` members are dropped first: k8s-openapi writes
/// absent optional fields as absent, but the trimmed pod above writes
/// `null`, and the model reads `null` as absent only where Kubernetes
/// allows it.
fn decode<T: DeserializeOwned>(mut value: Value) -> Result<T, FieldError> {
    drop_nulls(&mut value);
    ignoring_unknown_fields(|| serde_path_to_error::deserialize(value)).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(top level)".to_owned()
        } else {
            path
        };
        FieldError::new(path, e.into_inner().to_string())
    })
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::model::Protocol;

    fn k8s<T: DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_keeps_what_policy_reads() {
        let pod: KPod = k8s(json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "resourceVersion": "7", "labels": {"app": "web"},
                "annotations": {"big": "x"},
                "managedFields": [{"manager": "kubelet"}],
            },
            "spec": {
                "nodeName": "n1",
                "containers": [{
                    "name": "c", "image": "busybox",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }],
                "volumes": [{"name": "v", "emptyDir": {}}],
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }));
        let Object::Pod(p) = pod.convert().unwrap() else {
            panic!("not a pod")
        };
        assert_eq!(p.key(), ObjectKey::new("shop", "web-1"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
        assert!(p.metadata.annotations.is_empty());
        assert_eq!(
            p.named_port("http", Protocol::Tcp)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![8080]
        );
        assert_eq!(
            p.status_ips(),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(p.spec.node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn bare_objects_convert() {
        let pod: KPod = k8s(json!({"metadata": {"name": "p", "namespace": "n"}}));
        assert!(matches!(pod.convert(), Ok(Object::Pod(_))));
        let ns: KNamespace = k8s(json!({"metadata": {"name": "n"}, "status": {"phase": "Active"}}));
        assert!(matches!(ns.convert(), Ok(Object::Namespace(_))));
    }

    #[test]
    fn policy_converts_and_validates() {
        let good: KNetworkPolicy = k8s(json!({
            "metadata": {"name": "p", "namespace": "n", "generation": 3},
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{
                    "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                    "ports": [{"port": "http"}, {"port": 5000, "endPort": 5010, "protocol": "UDP"}],
                }],
                "policyTypes": ["Ingress"],
            },
        }));
        let Object::NetworkPolicy(p) = good.convert().unwrap() else {
            panic!("not a policy")
        };
        assert_eq!(p.key(), ObjectKey::new("n", "p"));
        assert_eq!(p.spec.ingress[0].ports.len(), 2);

        let bad: KNetworkPolicy = k8s(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "podSelector": {},
                "ingress": [{"ports": [{"port": 5010, "endPort": 5000}]}],
            },
        }));
        let err = bad.convert().unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].ports[0].endPort");
        assert_eq!(
            bad.id().to_string(),
            "NetworkPolicy n/p",
            "the name logged with the error"
        );
    }

    #[test]
    fn bad_label_is_named() {
        let pod: KPod = k8s(json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"bad key!": "v"}},
        }));
        let err = pod.convert().unwrap_err();
        assert_eq!(err.field, "metadata.labels");
        assert!(err.message.contains("bad key!"), "{err}");
    }
}
