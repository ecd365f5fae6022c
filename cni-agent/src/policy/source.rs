//! Where the cluster (Namespaces, Pods, NetworkPolicies) comes from.
//!
//! Today: a directory of manifests (`--manifests DIR`), watched by polling
//! a fingerprint of the directory (file names, sizes, modification times
//! and inode numbers, so a rename over a file counts) every 500 ms: cheap,
//! works on every file system, and catches editors that replace files. An
//! invalid set of manifests changes nothing: the last good cluster stays in
//! force and the error (naming file, object and field) is reported. Without
//! a source the cluster is empty: no policy selects anything.
//!
//! In a cluster: the Kubernetes API (`--kubeconfig`, `KUBECONFIG`, or the
//! service account), watched by [`super::kube`]; its fingerprint is the
//! watches' generation, so the same polling picks their changes up.
//!
//! Endpoints name their pods by `K8S_POD_NAMESPACE`/`K8S_POD_NAME`; a pod
//! the source does not have is taken as a pod with no labels
//! ([`with_local_pods`]).

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{
    compile::LocalEndpoint,
    kube::{KubeError, KubeSource},
    manifests::{load_dir, ManifestError},
    model::{Cluster, Pod},
};

/// How often the manifests directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A policy source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// No source: an empty cluster.
    None,
    /// A manifests directory.
    Manifests(PathBuf),
    /// The Kubernetes API (running watches).
    Kube(KubeSource),
}

/// Why a source did not load.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Invalid manifests.
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    /// The Kubernetes API has not been listed yet.
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// What identifies the content of a directory without reading it.
pub type Fingerprint = Vec<(String, u64, Option<SystemTime>, u64)>;

impl Source {
    /// Loads the cluster.
    pub fn load(&self) -> Result<Cluster, SourceError> {
        match self {
            Source::None => Ok(Cluster::new()),
            Source::Manifests(dir) => Ok(load_dir(dir)?),
            Source::Kube(kube) => Ok(kube.cluster()?),
        }
    }

    /// Whether a source is configured (enforcement defaults on then).
    pub fn is_some(&self) -> bool {
        !matches!(self, Source::None)
    }

    /// The current fingerprint (empty without a directory).
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Source::None => Vec::new(),
            Source::Manifests(dir) => dir_fingerprint(dir),
            Source::Kube(kube) => kube
                .generation()
                .map(|g| vec![("kubernetes".to_owned(), g, None, 0)])
                .unwrap_or_default(),
        }
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            Source::None => "none".into(),
            Source::Manifests(dir) => format!("manifests {}", dir.display()),
            Source::Kube(kube) => kube.describe(),
        }
    }
}

fn dir_fingerprint(dir: &Path) -> Fingerprint {
    let mut out: Fingerprint = Vec::new();
    if let Ok(meta) = fs::metadata(dir) {
        out.push((String::new(), meta.len(), meta.modified().ok(), meta.ino()));
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follow symlinks (a ConfigMap mount is a tree of them).
        if let Ok(meta) = fs::metadata(entry.path()) {
            out.push((name, meta.len(), meta.modified().ok(), meta.ino()));
        }
    }
    out.sort();
    out
}

/// `cluster` plus, for every local endpoint that names a pod the cluster
/// does not have, that pod with no labels (and no ports): what selectors
/// see of a pod whose object is unknown.
pub fn with_local_pods(cluster: &Cluster, endpoints: &[LocalEndpoint]) -> Cluster {
    let mut out = cluster.clone();
    for ep in endpoints {
        if let Some(key) = &ep.pod {
            if out.pod(key).is_none() {
                out.insert_pod(Pod::new(
                    &key.namespace,
                    &key.name,
                    std::iter::empty::<(&str, &str)>(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ObjectKey;

    #[test]
    fn fingerprint_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = Source::Manifests(dir.path().to_owned());
        let empty = src.fingerprint();
        fs::write(dir.path().join("a.yaml"), "").unwrap();
        let one = src.fingerprint();
        assert_ne!(empty, one);
        fs::write(
            dir.path().join(".tmp"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n1}\n",
        )
        .unwrap();
        fs::rename(dir.path().join(".tmp"), dir.path().join("a.yaml")).unwrap();
        assert_ne!(one, src.fingerprint());
        assert!(src.load().unwrap().namespace("n1").is_some());
        assert_eq!(Source::None.fingerprint(), Vec::new());
    }

    #[test]
    fn unknown_local_pods_have_no_labels() {
        let mut c = Cluster::new();
        c.insert_pod(Pod::new("ns", "known", [("app", "x")]));
        let eps = vec![
            LocalEndpoint {
                endpoint_id: 1,
                pod: Some(ObjectKey::new("ns", "known")),
                ips: vec![],
            },
            LocalEndpoint {
                endpoint_id: 2,
                pod: Some(ObjectKey::new("ns", "new")),
                ips: vec![],
            },
            LocalEndpoint {
                endpoint_id: 3,
                pod: None,
                ips: vec![],
            },
        ];
        let c2 = with_local_pods(&c, &eps);
        assert_eq!(c2.pods().count(), 2);
        assert!(c2
            .pod(&ObjectKey::new("ns", "new"))
            .unwrap()
            .labels()
            .is_empty());
        assert_eq!(
            c2.pod(&ObjectKey::new("ns", "known"))
                .unwrap()
                .labels()
                .len(),
            1
        );
    }
}
