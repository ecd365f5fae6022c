//! `--manifests DIR`: Namespaces, Pods and NetworkPolicies from a directory
//! of Kubernetes YAML or JSON.
//!
//! - Files: `*.yaml`, `*.yml`, `*.json` directly in the directory (not in
//!   subdirectories, as `kubectl apply -f DIR` without `-R`), in name order;
//!   hidden files and other extensions are skipped.
//! - A YAML file may hold several documents (`---`); empty documents are
//!   skipped. A `v1 List` (`kubectl get -o yaml`) contributes its items.
//! - Kinds: `v1 Namespace`, `v1 Pod`, `networking.k8s.io/v1 NetworkPolicy`.
//!   Anything else is an error: a manifest directory that silently drops
//!   objects would hide mistakes.
//! - Every object is parsed strictly (unknown fields refused, see
//!   `model.rs` for the Kubernetes fields ignored on purpose) and validated
//!   as the API server would.
//! - Names are unique per kind (and namespace); pods and policies must be in
//!   a namespace the manifests define, or `default` (which always exists).
//! - All or nothing: any error fails the whole load; the message names the
//!   file, the object (`Kind namespace/name`) and the field.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_yaml::Value;

use super::model::{Cluster, FieldError, Namespace, NetworkPolicy, Pod, DEFAULT_NAMESPACE};

/// Why manifests were refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or the directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not YAML/JSON at all.
    #[error("{file}: document {document}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based document number in the file.
        document: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An object with a bad field.
    #[error("{file}: {object}: {field}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// `Kind namespace/name` (or what is known of it).
        object: String,
        /// Path of the field in the object.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The same object twice.
    #[error("{file}: {object}: defined twice (first in {first})")]
    Duplicate {
        /// The file of the second definition.
        file: String,
        /// `Kind namespace/name`.
        object: String,
        /// The file of the first.
        first: String,
    },
}

/// One object of a kind we understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A Namespace.
    Namespace(Namespace),
    /// A Pod.
    Pod(Pod),
    /// A NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    /// `Kind namespace/name` (`Namespace name`).
    pub fn describe(&self) -> String {
        match self {
            Object::Namespace(n) => format!("Namespace {}", n.name()),
            Object::Pod(p) => format!("Pod {}", p.key()),
            Object::NetworkPolicy(p) => format!("NetworkPolicy {}", p.key()),
        }
    }
}

/// Objects gathered from files, not yet a [`Cluster`].
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    objects: Vec<(String, Object)>,
}

/// Loads every manifest of `dir` into a cluster.
pub fn load_dir(dir: &Path) -> Result<Cluster, ManifestError> {
    let mut m = Manifests::new();
    m.add_dir(dir)?;
    m.into_cluster()
}

impl Manifests {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The objects so far, with their files.
    pub fn objects(&self) -> &[(String, Object)] {
        &self.objects
    }

    /// Adds every manifest file of `dir` (see the module documentation).
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), ManifestError> {
        let io_err = |source| ManifestError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for f in files {
            self.add_file(&f)?;
        }
        Ok(())
    }

    /// Adds one file (`.json` as JSON, anything else as YAML).
    pub fn add_file(&mut self, path: &Path) -> Result<(), ManifestError> {
        let text = fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file = path.display().to_string();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            self.add_json(&file, &text)
        } else {
            self.add_yaml(&file, &text)
        }
    }

    /// Adds the documents of a YAML text; `file` names it in errors.
    pub fn add_yaml(&mut self, file: &str, text: &str) -> Result<(), ManifestError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| ManifestError::Syntax {
                file: file.to_owned(),
                document: i + 1,
                message: e.to_string(),
            })?;
            self.add_value(file, i + 1, value)?;
        }
        Ok(())
    }

    /// Adds one JSON document; `file` names it in errors.
    pub fn add_json(&mut self, file: &str, text: &str) -> Result<(), ManifestError> {
        let syntax = |message: String| ManifestError::Syntax {
            file: file.to_owned(),
            document: 1,
            message,
        };
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let value = serde_yaml::to_value(json).map_err(|e| syntax(e.to_string()))?;
        self.add_value(file, 1, value)
    }

    /// Adds one parsed document (an object or a `List`); `document` is its
    /// 1-based number in `file`, for messages.
    pub fn add_value(
        &mut self,
        file: &str,
        document: usize,
        value: Value,
    ) -> Result<(), ManifestError> {
        parse_object(file, document, value, &mut |o| {
            self.objects.push((file.to_owned(), o))
        })
    }

    /// The cluster, after checking names are unique and namespaces exist.
    pub fn into_cluster(self) -> Result<Cluster, ManifestError> {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        let mut namespaces: BTreeSet<&str> = BTreeSet::from([DEFAULT_NAMESPACE]);
        for (file, o) in &self.objects {
            let id = o.describe();
            if let Some(first) = seen.insert(id.clone(), file) {
                return Err(ManifestError::Duplicate {
                    file: file.clone(),
                    object: id,
                    first: first.to_owned(),
                });
            }
            if let Object::Namespace(n) = o {
                namespaces.insert(n.name());
            }
        }
        let mut cluster = Cluster::new();
        for (file, o) in self.objects.iter() {
            let ns = match o {
                Object::Namespace(_) => None,
                Object::Pod(p) => Some(p.metadata.namespace_or_default()),
                Object::NetworkPolicy(p) => Some(p.metadata.namespace_or_default()),
            };
            if let Some(ns) = ns.filter(|ns| !namespaces.contains(ns)) {
                return Err(ManifestError::Invalid {
                    file: file.clone(),
                    object: o.describe(),
                    field: "metadata.namespace".into(),
                    message: format!("namespace {ns:?} is not defined (add a Namespace object)"),
                });
            }
        }
        for (_, o) in self.objects {
            match o {
                Object::Namespace(n) => {
                    cluster.insert_namespace(n);
                }
                Object::Pod(p) => {
                    cluster.insert_pod(p);
                }
                Object::NetworkPolicy(p) => {
                    cluster.insert_policy(p);
                }
            }
        }
        Ok(cluster)
    }
}

const KINDS: &str = "v1 Namespace, v1 Pod, networking.k8s.io/v1 NetworkPolicy or v1 List";

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Parses one document, passing each object to `push`.
fn parse_object(
    file: &str,
    document: usize,
    value: Value,
    push: &mut dyn FnMut(Object),
) -> Result<(), ManifestError> {
    if value.is_null() {
        return Ok(());
    }
    let kind = str_at(&value, &["kind"]).unwrap_or("").to_owned();
    let api = str_at(&value, &["apiVersion"]).unwrap_or("").to_owned();
    let name = str_at(&value, &["metadata", "name"]).map(str::to_owned);
    let namespace = str_at(&value, &["metadata", "namespace"])
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_owned();
    let object = match (&name, kind.as_str()) {
        (Some(n), "Namespace" | "List") => format!("{kind} {n}"),
        (Some(n), _) => format!(
            "{} {namespace}/{n}",
            if kind.is_empty() { "object" } else { &kind }
        ),
        (None, "") => format!("document {document}"),
        (None, _) => format!("{kind} (document {document}, no metadata.name)"),
    };
    let invalid = |field: &str, message: String| ManifestError::Invalid {
        file: file.to_owned(),
        object: object.clone(),
        field: field.to_owned(),
        message,
    };
    if !value.is_mapping() {
        return Err(invalid(
            "(top level)",
            "a manifest must be a mapping with apiVersion and kind".into(),
        ));
    }
    if api.is_empty() {
        return Err(invalid(
            "apiVersion",
            format!("missing; expected one of {KINDS}"),
        ));
    }
    if kind.is_empty() {
        return Err(invalid("kind", format!("missing; expected one of {KINDS}")));
    }
    let from_field = |e: FieldError| invalid(&e.field, e.message);
    match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns: Namespace = decode(value).map_err(|(f, m)| invalid(&f, m))?;
            ns.validate().map_err(from_field)?;
            push(Object::Namespace(ns));
        }
        ("v1", "Pod") => {
            let pod: Pod = decode(value).map_err(|(f, m)| invalid(&f, m))?;
            pod.validate().map_err(from_field)?;
            push(Object::Pod(pod));
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            let p: NetworkPolicy = decode(value).map_err(|(f, m)| invalid(&f, m))?;
            p.validate().map_err(from_field)?;
            push(Object::NetworkPolicy(p));
        }
        ("v1", "List") => {
            let Value::Mapping(mut map) = value else {
                unreachable!("checked above")
            };
            for key in map.keys() {
                if !matches!(
                    key.as_str(),
                    Some("apiVersion" | "kind" | "items" | "metadata")
                ) {
                    return Err(invalid(
                        key.as_str().unwrap_or("?"),
                        "unknown field of a List (expected apiVersion, kind, items, metadata)"
                            .into(),
                    ));
                }
            }
            match map.remove("items") {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(items)) => {
                    for item in items {
                        parse_object(file, document, item, push)?;
                    }
                }
                Some(_) => return Err(invalid("items", "expected a list of objects".into())),
            }
        }
        (api, kind) => {
            return Err(invalid(
                "kind",
                format!("unknown kind {api} {kind}: expected {KINDS}"),
            ))
        }
    }
    Ok(())
}

/// Deserializes with the path of the failing field.
fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(top level)".to_owned()
        } else {
            path
        };
        (path, e.into_inner().to_string())
    })
}
