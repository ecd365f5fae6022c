//! The cluster from the Kubernetes API: watches of Namespaces, Pods and
//! NetworkPolicies (kube-rs), kept as a [`Cluster`] the policy engine reads.
//!
//! # Which API server
//!
//! [`ClusterConfig::select`]: `--kubeconfig PATH`, else the `KUBECONFIG`
//! environment variable (a `:`-separated list, merged as kubectl does),
//! else the pod's service account when the agent runs in a cluster
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount/`). `--manifests` given
//! explicitly wins over the environment; with `--kubeconfig` too it is an
//! error (two sources of truth). TLS is rustls; a plain `http://` server
//! (the tests' fake API server) works as well.
//!
//! # Watches and resync
//!
//! One kube-runtime `watcher` per kind ([`watch`]): a list (paged), then a
//! watch from the list's resourceVersion with bookmarks. When the stream
//! ends or breaks, the watch resumes from the last resourceVersion seen
//! (an event's or a bookmark's) without listing; when the API server
//! answers that this resourceVersion is too old (410 Gone, as an ERROR
//! event or as the HTTP status), the kind is listed again and the list
//! *replaces* what the store held for it, so objects deleted or changed
//! while the agent was not watching are right afterwards. Errors back off
//! exponentially with jitter (0.8 s doubling to 30 s, kube-runtime's
//! `DefaultBackoff`, as client-go's reflector), so that every node's agent
//! does not hammer a recovering API server at once.
//!
//! # Objects the model refuses
//!
//! Every object goes through the same deserializer and validation as a
//! manifest ([`convert`]), lenient only about fields this build does not
//! know. One that fails is logged once with its kind, namespace, name and
//! field, shown in [`KubeView::rejected`], and skipped; the others apply.
//! If an earlier version of it was valid, that version stays in force.
//! This differs on purpose from `--manifests`, which is all or nothing: a
//! manifest directory is one change by one author, refused whole so the
//! author fixes it; the API server's objects are many independent changes
//! the API server has already accepted, and refusing the cluster for one
//! of them (a version skew, most likely) would freeze every other policy.
//!
//! # The agent's side
//!
//! [`KubeSource`] is a cheap handle: [`KubeSource::cluster`] (an error
//! until every kind has been listed once, so a partial cluster is never
//! enforced), [`KubeSource::generation`] (moves on with every change: the
//! engine's change detection), [`KubeSource::subscribe`] (a
//! `tokio::sync::watch` of [`KubeView`]s, to wake up on changes), and
//! [`KubeSource::wait_synced`]. The tasks stop when the last handle is
//! dropped. `--node-name` is recorded ([`KubeSource::node_name`]) for
//! telling local pods apart later; policy does not read it yet.

pub mod convert;
pub mod store;
pub mod watch;

use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::task::JoinHandle;

pub use self::{
    convert::{Kind, ObjectId},
    store::KubeView,
};
use super::{model::Cluster, source::Source};

/// Read timeout of API requests when the configuration sets none: a little
/// over the watch timeout (290 s, after which the API server closes a watch),
/// so a connection that died silently is noticed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(295);

/// Why the Kubernetes source failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {paths}: {source}")]
    Kubeconfig {
        /// The file(s).
        paths: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The in-cluster configuration could not be loaded.
    #[error("in-cluster configuration (service account): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    /// The client could not be built.
    #[error("Kubernetes client for {server}: {source}")]
    Client {
        /// The API server.
        server: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// `--kubeconfig` and `--manifests` together.
    #[error("--kubeconfig and --manifests are two policy sources: give one")]
    TwoSources,
    /// Not every kind has been listed yet.
    #[error("Kubernetes API {server}: waiting for the first list of {missing}")]
    NotSynced {
        /// The API server.
        server: String,
        /// The kinds not listed yet (`Pods, NetworkPolicies`).
        missing: String,
    },
}

/// Where the API server's address and credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterConfig {
    /// Kubeconfig files, merged in order (the first to set a value wins).
    Kubeconfig(Vec<PathBuf>),
    /// The pod's service account.
    InCluster,
}

impl ClusterConfig {
    /// The Kubernetes configuration to use, if any (see the module
    /// documentation): `kubeconfig` is `--kubeconfig`, `manifests` whether
    /// `--manifests` was given, `env` reads the environment.
    pub fn select(
        kubeconfig: Option<&Path>,
        manifests: bool,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<ClusterConfig>, KubeError> {
        if let Some(path) = kubeconfig {
            if manifests {
                return Err(KubeError::TwoSources);
            }
            return Ok(Some(ClusterConfig::Kubeconfig(split_paths(
                path.as_os_str(),
            ))));
        }
        if manifests {
            return Ok(None);
        }
        if let Some(value) = env("KUBECONFIG") {
            let paths = split_paths(&value);
            if !paths.is_empty() {
                return Ok(Some(ClusterConfig::Kubeconfig(paths)));
            }
        }
        let set = |name| env(name).is_some_and(|v| !v.is_empty());
        if set("KUBERNETES_SERVICE_HOST") && set("KUBERNETES_SERVICE_PORT") {
            return Ok(Some(ClusterConfig::InCluster));
        }
        Ok(None)
    }

    /// [`ClusterConfig::select`] with the process environment.
    pub fn from_env(
        kubeconfig: Option<&Path>,
        manifests: bool,
    ) -> Result<Option<ClusterConfig>, KubeError> {
        Self::select(kubeconfig, manifests, |name| std::env::var_os(name))
    }

    /// Loads the client configuration.
    pub async fn load(&self) -> Result<kube::Config, KubeError> {
        let mut config = match self {
            ClusterConfig::InCluster => kube::Config::incluster().map_err(KubeError::InCluster)?,
            ClusterConfig::Kubeconfig(paths) => {
                let err = |source| KubeError::Kubeconfig {
                    paths: paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":"),
                    source,
                };
                let mut merged = Kubeconfig::default();
                for path in paths {
                    merged = merged
                        .merge(Kubeconfig::read_from(path).map_err(err)?)
                        .map_err(err)?;
                }
                kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
                    .await
                    .map_err(err)?
            }
        };
        config.read_timeout.get_or_insert(READ_TIMEOUT);
        Ok(config)
    }
}

fn split_paths(value: &std::ffi::OsStr) -> Vec<PathBuf> {
    std::env::split_paths(value)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// The node's name when `--node-name` is not given: the host name,
/// lowercased as the kubelet does.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// How long the agent waits for the first lists before its first policy
/// sync. Past it the agent goes on: the policy maps keep what an earlier
/// agent installed, and the source syncs when the lists arrive.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(15);

/// `sluice-agent`'s Kubernetes flags (`#[command(flatten)]`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeArgs {
    /// Watch NetworkPolicies, Pods and Namespaces of the cluster this
    /// kubeconfig names (files separated by ':' are merged). Without it:
    /// $KUBECONFIG, else the pod's service account when running in a
    /// cluster, unless --manifests is given.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in Kubernetes [default: the host name].
    #[arg(long, env = "SLUICE_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
}

impl KubeArgs {
    /// The Kubernetes source the flags and the environment select, if any
    /// (`manifests`: whether `--manifests` was given).
    pub fn options(&self, manifests: bool) -> Result<Option<KubeOptions>, KubeError> {
        let config = ClusterConfig::from_env(self.kubeconfig.as_deref(), manifests)?;
        Ok(config.map(|config| KubeOptions {
            config,
            node_name: self
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(default_node_name),
        }))
    }
}

/// A Kubernetes source to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// Which API server.
    pub config: ClusterConfig,
    /// This node's name.
    pub node_name: String,
}

impl KubeOptions {
    /// Loads the configuration and starts the watches (in the current
    /// tokio runtime). Returns at once; fails only on a configuration that
    /// cannot be used (unreadable kubeconfig, no service account).
    pub async fn start_source(&self) -> Result<Source, KubeError> {
        Ok(Source::Kube(
            KubeSource::start(&self.config, &self.node_name).await?,
        ))
    }
}

/// Waits up to `wait` ([`FIRST_LIST_WAIT`]) for a Kubernetes source's first
/// lists (at once for other sources), so that the agent's first sync has
/// the cluster; past it, logs why and returns.
pub async fn wait_first_lists(source: &Source, wait: Duration) {
    let Source::Kube(src) = source else {
        return;
    };
    if !src.wait_synced(wait).await {
        let err = src
            .cluster()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let errors = src.view().errors;
        tracing::warn!(
            ?errors,
            "{err} after {wait:?}; going on, policy follows once it is listed"
        );
    }
}

/// Stops the tasks when the last [`KubeSource`] goes.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The Kubernetes policy source: a handle on running watches.
#[derive(Clone)]
pub struct KubeSource {
    view: tokio::sync::watch::Receiver<KubeView>,
    server: String,
    node_name: String,
    _tasks: Arc<Tasks>,
}

impl KubeSource {
    /// Loads `config`, connects, and starts the watches (in the current
    /// tokio runtime). Returns at once: the lists arrive in the background
    /// ([`KubeSource::wait_synced`]); an unreachable API server is retried
    /// with backoff, not an error here.
    pub async fn start(config: &ClusterConfig, node_name: &str) -> Result<KubeSource, KubeError> {
        let config = config.load().await?;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|source| KubeError::Client {
            server: server.clone(),
            source,
        })?;
        Ok(Self::with_client(client, server, node_name))
    }

    /// Starts the watches with a client (in the current tokio runtime);
    /// `server` names the API server in logs and errors.
    pub fn with_client(client: kube::Client, server: String, node_name: &str) -> KubeSource {
        let (view, tasks) = watch::spawn(client);
        tracing::info!(%server, node = node_name, "watching Namespaces, Pods and NetworkPolicies");
        KubeSource {
            view,
            server,
            node_name: node_name.to_owned(),
            _tasks: Arc::new(Tasks(tasks)),
        }
    }

    /// The latest view.
    pub fn view(&self) -> KubeView {
        self.view.borrow().clone()
    }

    /// A receiver of views, to wait for changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<KubeView> {
        self.view.clone()
    }

    /// The cluster, once every kind has been listed.
    pub fn cluster(&self) -> Result<Cluster, KubeError> {
        let view = self.view.borrow();
        if view.synced() {
            Ok(Cluster::clone(&view.cluster))
        } else {
            Err(KubeError::NotSynced {
                server: self.server.clone(),
                missing: view
                    .missing()
                    .iter()
                    .map(|k| k.plural())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// Moves on whenever [`KubeSource::cluster`] would return something
    /// else; `None` until every kind has been listed.
    pub fn generation(&self) -> Option<u64> {
        let view = self.view.borrow();
        view.synced().then_some(view.generation)
    }

    /// Waits until every kind has been listed once; false on timeout.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.view.clone();
        tokio::time::timeout(timeout, rx.wait_for(KubeView::synced))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// This node's name (`--node-name`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// For logs: `kubernetes URL (node NAME)`.
    pub fn describe(&self) -> String {
        format!("kubernetes {} (node {})", self.server, self.node_name)
    }
}

impl PartialEq for KubeSource {
    /// The same watches.
    fn eq(&self, other: &Self) -> bool {
        self.view.same_channel(&other.view)
    }
}

impl Eq for KubeSource {}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = self.view.borrow();
        f.debug_struct("KubeSource")
            .field("server", &self.server)
            .field("node_name", &self.node_name)
            .field("generation", &view.generation)
            .field("listed", &view.listed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: BTreeMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn selection() {
        let kc = Some(Path::new("/k/config"));
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let sel = |flag, manifests, vars: &[(&str, &str)]| {
            ClusterConfig::select(flag, manifests, env(vars))
        };
        assert_eq!(
            sel(kc, false, &in_cluster).unwrap(),
            Some(ClusterConfig::Kubeconfig(vec!["/k/config".into()]))
        );
        assert!(matches!(sel(kc, true, &[]), Err(KubeError::TwoSources)));
        assert_eq!(sel(None, true, &in_cluster).unwrap(), None);
        assert_eq!(sel(None, false, &[]).unwrap(), None);
        assert_eq!(
            sel(None, false, &in_cluster).unwrap(),
            Some(ClusterConfig::InCluster)
        );
        assert_eq!(
            sel(None, false, &[("KUBECONFIG", "/a::/b")]).unwrap(),
            Some(ClusterConfig::Kubeconfig(vec!["/a".into(), "/b".into()]))
        );
        assert_eq!(
            sel(
                None,
                false,
                &[("KUBECONFIG", ""), in_cluster[0], in_cluster[1]]
            )
            .unwrap(),
            Some(ClusterConfig::InCluster)
        );
        assert_eq!(
            sel(None, false, &[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]).unwrap(),
            None
        );
    }

    #[test]
    fn node_name_defaults_to_the_host_name() {
        let name = default_node_name();
        assert!(!name.is_empty());
        assert_eq!(name, name.to_ascii_lowercase());
    }
}
