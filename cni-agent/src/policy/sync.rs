//! The policy engine: source + endpoints → compile → maps, one sync at a
//! time, on a thread of its own.
//!
//! A sync:
//! 1. reads the plugin's attachment records (the local endpoints);
//! 2. compiles the last good cluster for them (pods the cluster lacks are
//!    pods without labels), with the previous identity table so numbers
//!    stay put;
//! 3. if the result differs from what the maps hold, writes it in the
//!    order `maps/policy.rs` explains and moves the revision on; else
//!    touches nothing (no needless conntrack re-checks);
//! 4. turns enforcement on once everything is programmed (when enabled);
//! 5. writes the snapshot ([`Snapshot`], `<state-dir>/agent/policy.json`,
//!    tmp + rename): the identity table, the rule table and the endpoints'
//!    pods, for the next agent (stable identities across restarts) and for
//!    `sluicectl` (names for what the maps hold, with the agent down).
//!
//! # Restart
//!
//! The maps outlive the agent, so a new agent starts from what they hold:
//! it reads them, keeps the enforcement switch as it is (when enforcement
//! is configured; it only ever turns it on after a complete sync), loads the
//! identity table from the snapshot and makes sure new numbers start above
//! every number the maps use, so that an identity never changes meaning
//! while old entries are still installed. Its first sync then finds
//! nothing or little to change. There is no moment without policy.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use cni_ebpf_common::policy::{
    PolicyConfig, IDENTITY_FIRST_ALLOCATED, POLICY_CONFIG_F_ENFORCE, POLICY_F_PROGRAMMED,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    compile::{compile, CompileOptions, Compiled, Direction, EndpointStatus, RuleInfo},
    identity::IdentityTable,
    model::{Cluster, ObjectKey},
    source::{with_local_pods, Fingerprint, Source, POLL_INTERVAL},
};
use crate::{
    bpffs::PinLayout,
    endpoints::{self, StateDir},
    maps::policy::{ApplyReport, MapCounts, PolicyContent, PolicyMaps},
};

/// Subdirectory of the state dir with the agent's own files.
pub const AGENT_SUBDIR: &str = "agent";
/// File name of the snapshot in [`AGENT_SUBDIR`].
pub const SNAPSHOT_FILE: &str = "policy.json";
/// Snapshot layout version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Path of the snapshot for `state_dir`.
pub fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join(AGENT_SUBDIR).join(SNAPSHOT_FILE)
}

/// A rule of the rule table, as the snapshot stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRule {
    /// Its index (the value in the maps).
    pub index: u32,
    /// The policy.
    pub policy: ObjectKey,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index in `spec.ingress` / `spec.egress`.
    pub rule: usize,
    /// The peers, for people.
    pub peers: String,
    /// The ports, for people.
    pub ports: String,
}

impl SnapshotRule {
    /// The compiler's form.
    pub fn to_rule_info(&self) -> RuleInfo {
        RuleInfo {
            policy: self.policy.clone(),
            direction: if self.direction == "egress" {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            rule: self.rule,
            peers: self.peers.clone(),
            ports: self.ports.clone(),
        }
    }
}

/// An endpoint, as the snapshot stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEndpoint {
    /// The endpoint id, 16 hex digits.
    pub endpoint_id: String,
    /// Its pod.
    pub pod: Option<ObjectKey>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// `pod` (in the cluster), `unknownPod` (no such Pod object: no
    /// labels), `noPod`.
    pub status: String,
    /// Policies isolating it for ingress.
    pub ingress_policies: Vec<ObjectKey>,
    /// Policies isolating it for egress.
    pub egress_policies: Vec<ObjectKey>,
    /// Host-side veth.
    pub host_veth: String,
    /// Container id.
    pub container_id: String,
    /// Interface in the pod.
    pub ifname: String,
}

impl SnapshotEndpoint {
    /// The id as a number.
    pub fn id(&self) -> Option<u64> {
        u64::from_str_radix(&self.endpoint_id, 16).ok()
    }
}

/// What the agent last synced, for the next agent and for `sluicectl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// The revision in `POLICY_CONFIG` after the sync.
    pub revision: u32,
    /// Seconds since the epoch.
    pub synced_at: u64,
    /// How long the sync took (µs).
    pub sync_micros: u64,
    /// The pin directory whose maps this describes.
    #[serde(default)]
    pub bpffs_dir: PathBuf,
    /// The policy source.
    pub source: String,
    /// Whether policy is enforced.
    pub enforcing: bool,
    /// Whether the node may reach every pod (kubelet probes).
    pub allow_host: bool,
    /// The node's addresses (identity host).
    pub node_addresses: Vec<IpAddr>,
    /// The identity table (pass to the next compile).
    pub identities: IdentityTable,
    /// Identities for people.
    pub identity_names: BTreeMap<u32, String>,
    /// The rule table.
    pub rules: Vec<SnapshotRule>,
    /// Local endpoints.
    pub endpoints: Vec<SnapshotEndpoint>,
    /// Every pod with a known address (`namespace/name` → addresses):
    /// local endpoints and pods with `status.podIPs`.
    pub pods: BTreeMap<String, Vec<IpAddr>>,
    /// Compile warnings.
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// Reads the snapshot of `state_dir` describing the maps under
    /// `bpffs_dir` (one written for another pin directory, by an agent
    /// sharing the state dir by mistake, is refused).
    pub fn load(state_dir: &Path, bpffs_dir: &Path) -> anyhow::Result<Snapshot> {
        let path = snapshot_path(state_dir);
        let text = fs::read(&path).with_context(|| {
            format!(
                "reading {} (has sluice-agent synced policy with this --state-dir?)",
                path.display()
            )
        })?;
        let s: Snapshot =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        if s.version > SNAPSHOT_VERSION {
            anyhow::bail!(
                "{} has version {}; this build reads versions up to {SNAPSHOT_VERSION}",
                path.display(),
                s.version
            );
        }
        if s.bpffs_dir != bpffs_dir {
            anyhow::bail!(
                "{} describes the maps under {}, not {}",
                path.display(),
                s.bpffs_dir.display(),
                bpffs_dir.display()
            );
        }
        Ok(s)
    }

    /// Writes it (tmp + rename).
    pub fn store(&self, state_dir: &Path) -> anyhow::Result<()> {
        store_json(state_dir, self)
    }

    /// The rule behind an index.
    pub fn rule(&self, index: u32) -> Option<&SnapshotRule> {
        let i = usize::try_from(index).ok()?.checked_sub(1)?;
        self.rules.get(i).filter(|r| r.index == index)
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: u64) -> Option<&SnapshotEndpoint> {
        self.endpoints.iter().find(|e| e.id() == Some(id))
    }

    /// The pod owning `ip`, if known.
    pub fn pod_of(&self, ip: IpAddr) -> Option<String> {
        self.pods
            .iter()
            .find(|(_, ips)| ips.contains(&ip))
            .map(|(k, _)| k.clone())
    }

    /// An identity for people.
    pub fn identity_name(&self, id: u32) -> String {
        match self.identity_names.get(&id) {
            Some(n) => n.clone(),
            None => match id {
                0 => "any".into(),
                1 => "host".into(),
                2 => "world".into(),
                _ => format!("identity {id}"),
            },
        }
    }
}

/// Writes a snapshot (tmp + rename).
fn store_json(state_dir: &Path, snapshot: &impl Serialize) -> anyhow::Result<()> {
    let path = snapshot_path(state_dir);
    let dir = path.parent().unwrap_or(state_dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{SNAPSHOT_FILE}.{}.tmp", std::process::id()));
    {
        let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        serde_json::to_writer(&mut w, snapshot)?;
        w.write_all(b"\n")?;
        w.flush()
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
}

/// The [`Snapshot`] a sync writes, borrowing the compile's rule table,
/// identity table and warnings instead of copying them (10k rules are 50k
/// strings); it serializes to the same JSON (`snapshot_out_is_a_snapshot`
/// holds the two together).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotOut<'a> {
    version: u32,
    revision: u32,
    synced_at: u64,
    sync_micros: u64,
    bpffs_dir: &'a Path,
    source: String,
    enforcing: bool,
    allow_host: bool,
    node_addresses: &'a [IpAddr],
    identities: &'a IdentityTable,
    identity_names: BTreeMap<u32, String>,
    #[serde(serialize_with = "rules_out")]
    rules: &'a [RuleInfo],
    endpoints: Vec<SnapshotEndpoint>,
    pods: BTreeMap<String, Vec<IpAddr>>,
    warnings: &'a [String],
}

/// A [`SnapshotRule`], borrowed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotRuleOut<'a> {
    index: u32,
    policy: &'a ObjectKey,
    direction: Direction,
    rule: usize,
    peers: &'a str,
    ports: &'a str,
}

fn rules_out<S: serde::Serializer>(rules: &&[RuleInfo], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(rules.iter().enumerate().map(|(i, r)| SnapshotRuleOut {
        index: i as u32 + 1,
        policy: &r.policy,
        direction: r.direction,
        rule: r.rule,
        peers: &r.peers,
        ports: &r.ports,
    }))
}

/// The node's own addresses as the agent sees them: every address of every
/// interface of its network namespace but loopback and link-local ones.
pub fn discover_node_addresses() -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    for a in addrs {
        let Some(storage) = a.address else { continue };
        let ip = if let Some(v4) = storage.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let skip = match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        if !skip {
            out.insert(ip);
        }
    }
    out.into_iter().collect()
}

/// How the engine is configured.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The pins.
    pub layout: PinLayout,
    /// The plugin's state dir.
    pub state_dir: PathBuf,
    /// Where the cluster comes from.
    pub source: Source,
    /// Turn enforcement on (after the first complete sync); off clears it
    /// at start.
    pub enforce: bool,
    /// Let the node reach every pod.
    pub allow_host: bool,
    /// The node's addresses; empty: discovered at every sync.
    pub node_addresses: Vec<IpAddr>,
}

/// Upper bounds (seconds) of the sync duration histogram.
pub const SYNC_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Counters the metrics endpoint shows.
#[derive(Clone, Debug, Default)]
pub struct PolicyStats {
    /// Completed syncs.
    pub syncs_ok: u64,
    /// Failed syncs (compile or map errors).
    pub syncs_failed: u64,
    /// Source loads refused (invalid manifests).
    pub source_errors: u64,
    /// Syncs that changed the maps.
    pub syncs_changed: u64,
    /// Duration of the last sync.
    pub last_sync: Option<Duration>,
    /// Histogram of sync durations: counts per bucket of [`SYNC_BUCKETS`]
    /// (not cumulative), plus the sum.
    pub sync_buckets: [u64; SYNC_BUCKETS.len()],
    /// Sum of sync durations in seconds.
    pub sync_seconds_sum: f64,
    /// Local endpoints.
    pub endpoints: usize,
    /// Programmed endpoints.
    pub programmed: usize,
    /// Current revision.
    pub revision: u32,
    /// Whether policy is enforced.
    pub enforcing: bool,
    /// Rules in the rule table.
    pub rules: usize,
    /// Identities allocated.
    pub identities: usize,
}

impl PolicyStats {
    fn observe(&mut self, d: Duration) {
        self.last_sync = Some(d);
        let s = d.as_secs_f64();
        self.sync_seconds_sum += s;
        if let Some(i) = SYNC_BUCKETS.iter().position(|b| s <= *b) {
            self.sync_buckets[i] += 1;
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// The revision after it.
    pub revision: u32,
    /// Whether the maps changed.
    pub changed: bool,
    /// Whole sync (read endpoints, compile, write, snapshot), µs.
    pub micros: u64,
    /// Reading the attachment records, µs.
    pub endpoints_micros: u64,
    /// Compile alone, µs.
    pub compile_micros: u64,
    /// Writing the snapshot, µs.
    pub snapshot_micros: u64,
    /// The map writes.
    pub apply: ApplyReport,
    /// Sizes of what is installed.
    pub counts: MapCounts,
    /// Rules in the rule table.
    pub rules: usize,
    /// Whether policy is enforced.
    pub enforcing: bool,
}

/// What the socket asks of the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The plugin added an endpoint.
    Add {
        /// Its id.
        endpoint_id: Option<u64>,
    },
    /// The plugin removed an endpoint.
    Del {
        /// Its id.
        endpoint_id: Option<u64>,
    },
    /// Re-read the source and sync (`sluicectl sync`).
    Sync,
    /// Report the state.
    Status,
}

/// A request and where to send the answer (one JSON object), if anywhere.
#[derive(Debug)]
pub struct Envelope {
    /// The request.
    pub request: Request,
    /// The answer channel.
    pub reply: Option<tokio::sync::oneshot::Sender<Value>>,
}

/// The engine's state.
pub struct Engine {
    config: EngineConfig,
    maps: PolicyMaps,
    /// The last good cluster.
    cluster: Option<Cluster>,
    source_fp: Option<Fingerprint>,
    source_error: Option<String>,
    state_fp: Vec<(String, u64, Option<SystemTime>)>,
    state: StateDir,
    identities: IdentityTable,
    installed: PolicyContent,
    config_value: PolicyConfig,
    last: Option<SyncReport>,
    last_error: Option<String>,
    /// The last sync failed in the compiler (not in the maps).
    compile_failed: bool,
    /// The last sync error logged at error level.
    logged_error: Option<String>,
    retry: bool,
    stats: Arc<Mutex<PolicyStats>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A compile error with the objects behind it named: for too many port
/// ranges, the endpoint's pod and the policies selecting it in that
/// direction whose rules have `endPort` ranges.
fn name_culprits(
    cluster: &Cluster,
    endpoints: &[super::compile::LocalEndpoint],
    err: &super::compile::CompileError,
) -> String {
    let super::compile::CompileError::TooManyPortRanges {
        endpoint_id,
        direction,
        ..
    } = err
    else {
        return err.to_string();
    };
    let Some(pod) = endpoints
        .iter()
        .find(|e| e.endpoint_id == *endpoint_id)
        .and_then(|e| e.pod.as_ref())
        .and_then(|k| cluster.pod(k))
    else {
        return err.to_string();
    };
    let ns = pod.metadata.namespace_or_default();
    let culprits: Vec<String> = cluster
        .policies()
        .filter(|p| p.metadata.namespace_or_default() == ns)
        .filter(|p| p.spec.pod_selector.matches(pod.labels()))
        .filter(|p| match direction {
            Direction::Ingress => {
                p.affects_ingress()
                    && p.spec
                        .ingress
                        .iter()
                        .any(|r| r.ports.iter().any(|x| x.end_port.is_some()))
            }
            Direction::Egress => {
                p.affects_egress()
                    && p.spec
                        .egress
                        .iter()
                        .any(|r| r.ports.iter().any(|x| x.end_port.is_some()))
            }
        })
        .map(|p| format!("NetworkPolicy {}", p.key()))
        .collect();
    format!(
        "pod {}: {err} (port ranges from {})",
        pod.key(),
        if culprits.is_empty() {
            "unknown policies".to_owned()
        } else {
            culprits.join(", ")
        }
    )
}

/// `table` with its counter moved above `floor` (via its JSON form, the
/// table's public persistence format).
fn with_counter_above(table: &IdentityTable, floor: u32) -> IdentityTable {
    let Ok(mut v) = serde_json::to_value(table) else {
        return table.clone();
    };
    let next = v["next"].as_u64().unwrap_or(0);
    if u64::from(floor) >= next {
        v["next"] = json!(u64::from(floor) + 1);
    }
    serde_json::from_value(v).unwrap_or_else(|_| table.clone())
}

impl Engine {
    /// Opens the maps and picks up what an earlier agent left: the maps'
    /// content and revision, the snapshot's identity table. Enforcement is
    /// cleared now when not configured, and otherwise left as it is.
    pub fn start(config: EngineConfig, stats: Arc<Mutex<PolicyStats>>) -> anyhow::Result<Self> {
        let mut maps = PolicyMaps::open(&config.layout)?;
        let installed = maps.read()?;
        let mut config_value = maps.config()?;
        if !config.enforce && config_value.flags & POLICY_CONFIG_F_ENFORCE != 0 {
            config_value = maps.set_enforce(false)?;
            tracing::info!("policy enforcement off (--policy-enforcement=false)");
        }
        let previous = match Snapshot::load(&config.state_dir, config.layout.root()) {
            Ok(s) => {
                tracing::info!(
                    identities = s.identities.len(),
                    revision = s.revision,
                    "identity table restored from {}",
                    snapshot_path(&config.state_dir).display()
                );
                s.identities
            }
            Err(err) => {
                if snapshot_path(&config.state_dir).exists() {
                    tracing::warn!("{err:#}; identities start afresh");
                }
                IdentityTable::new()
            }
        };
        // Numbers the maps use must not be handed out for other classes
        // while those entries exist.
        let max_used = installed
            .ipcache
            .values()
            .copied()
            .chain(installed.policy.keys().map(|k| k.identity))
            .chain(installed.ranges.keys().map(|k| k.identity))
            .filter(|id| *id >= IDENTITY_FIRST_ALLOCATED)
            .max();
        let identities = match max_used {
            Some(m) if previous.key(m).is_none() => with_counter_above(&previous, m),
            _ => previous,
        };
        if !installed.state.is_empty() {
            tracing::info!(
                endpoints = installed.state.len(),
                entries = installed.policy.len(),
                prefixes = installed.ipcache.len(),
                revision = config_value.revision,
                enforcing = config_value.flags & POLICY_CONFIG_F_ENFORCE != 0,
                "policy maps hold an earlier agent's policy; keeping it until the first sync"
            );
        }
        {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            s.revision = config_value.revision;
            s.enforcing = config_value.flags & POLICY_CONFIG_F_ENFORCE != 0;
        }
        Ok(Self {
            config,
            maps,
            cluster: None,
            source_fp: None,
            source_error: None,
            state_fp: Vec::new(),
            state: StateDir::default(),
            identities,
            installed,
            config_value,
            last: None,
            last_error: None,
            compile_failed: false,
            logged_error: None,
            retry: false,
            stats,
        })
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, PolicyStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the source; on success the cluster is replaced (returns
    /// whether it changed), on failure nothing changes and the error
    /// (naming file, object and field) is returned.
    pub fn reload_source(&mut self) -> Result<bool, String> {
        let fp = self.config.source.fingerprint();
        let loaded = self.config.source.load();
        self.source_fp = Some(fp);
        match loaded {
            Ok(cluster) => {
                self.source_error = None;
                let changed = self.cluster.as_ref() != Some(&cluster);
                self.cluster = Some(cluster);
                Ok(changed)
            }
            Err(err) => {
                let msg = err.to_string();
                self.stats().source_errors += 1;
                self.source_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Whether the source changed on disk since the last load.
    pub fn source_changed_on_disk(&self) -> bool {
        self.source_fp.as_ref() != Some(&self.config.source.fingerprint())
    }

    /// The current revision.
    pub fn revision(&self) -> u32 {
        self.config_value.revision
    }

    /// The last sync.
    pub fn last(&self) -> Option<&SyncReport> {
        self.last.as_ref()
    }

    fn node_addresses(&self) -> Vec<IpAddr> {
        if self.config.node_addresses.is_empty() {
            discover_node_addresses()
        } else {
            self.config.node_addresses.clone()
        }
    }

    /// One sync (see the module documentation). Fails without touching the
    /// maps when there is no valid cluster yet or the compile fails.
    pub fn sync(&mut self) -> Result<SyncReport, String> {
        let started = Instant::now();
        let result = self.sync_inner(started);
        match &result {
            Ok(report) => {
                self.retry = false;
                self.last_error = None;
                let mut s = self.stats();
                s.syncs_ok += 1;
                if report.changed {
                    s.syncs_changed += 1;
                }
                s.observe(started.elapsed());
            }
            Err(err) => {
                self.last_error = Some(err.clone());
                self.stats().syncs_failed += 1;
            }
        }
        result
    }

    fn sync_inner(&mut self, started: Instant) -> Result<SyncReport, String> {
        self.compile_failed = false;
        let endpoints_started = Instant::now();
        self.state_fp = endpoints::fingerprint(&self.config.state_dir);
        self.state =
            endpoints::read_state_dir(&self.config.state_dir, Some(self.config.layout.root()))
                .map_err(|e| format!("reading {}: {e}", self.config.state_dir.display()))?;
        for bad in &self.state.bad {
            tracing::warn!(path = %bad.path.display(), "unreadable attachment record: {}", bad.error);
        }
        let local = self.state.local_endpoints();
        let endpoints_micros = endpoints_started.elapsed().as_micros() as u64;
        let Some(base) = &self.cluster else {
            return Err(match &self.source_error {
                Some(e) => format!("no valid policy source yet: {e}"),
                None => "no policy source loaded yet".into(),
            });
        };
        let cluster = with_local_pods(base, &local);
        let options = CompileOptions {
            allow_host: self.config.allow_host,
            node_ips: self.node_addresses(),
            unknown_pod_fail_closed: true,
        };
        let compile_started = Instant::now();
        let compiled = compile(
            &cluster,
            &local,
            &options,
            &self.identities,
            self.config_value.revision,
        )
        .map_err(|e| {
            self.compile_failed = true;
            format!("compiling policy: {}", name_culprits(&cluster, &local, &e))
        })?;
        let compile_micros = compile_started.elapsed().as_micros() as u64;
        for w in &compiled.warnings {
            tracing::warn!("{w}");
        }

        let mut desired = PolicyContent::from_compiled(&compiled, self.config_value.revision);
        let changed = desired != self.installed;
        let mut config = self.config_value;
        if changed {
            config.revision = match config.revision.wrapping_add(1) {
                0 => 1,
                r => r,
            };
            for s in desired.state.values_mut() {
                s.revision = config.revision;
            }
        }
        if self.config.enforce {
            config.flags |= POLICY_CONFIG_F_ENFORCE;
        } else {
            config.flags &= !POLICY_CONFIG_F_ENFORCE;
        }
        let apply = if changed || config != self.config_value {
            let result = self.maps.apply(&mut self.installed, &desired, config);
            match result {
                Ok(report) => report,
                Err(err) => {
                    self.retry = true;
                    return Err(format!("writing the policy maps: {err:#}"));
                }
            }
        } else {
            ApplyReport::default()
        };
        self.config_value = config;
        self.identities = compiled.identities.clone();

        let enforcing = config.flags & POLICY_CONFIG_F_ENFORCE != 0;
        let micros = started.elapsed().as_micros() as u64;
        let snapshot_started = Instant::now();
        let snapshot = self.snapshot(&compiled, &cluster, &options, enforcing, micros);
        if let Err(err) = store_json(&self.config.state_dir, &snapshot) {
            tracing::warn!("{err:#}");
        }
        let snapshot_micros = snapshot_started.elapsed().as_micros() as u64;
        let report = SyncReport {
            revision: config.revision,
            changed,
            micros: started.elapsed().as_micros() as u64,
            endpoints_micros,
            compile_micros,
            snapshot_micros,
            apply,
            counts: self.installed.counts(),
            rules: compiled.rules.len(),
            enforcing,
        };
        {
            let mut s = self.stats();
            s.endpoints = compiled.endpoints.len();
            s.programmed = compiled
                .endpoints
                .values()
                .filter(|e| e.flags & POLICY_F_PROGRAMMED != 0)
                .count();
            s.revision = config.revision;
            s.enforcing = enforcing;
            s.rules = compiled.rules.len();
            s.identities = compiled.identities.len();
        }
        self.last = Some(report.clone());
        Ok(report)
    }

    fn snapshot<'a>(
        &'a self,
        compiled: &'a Compiled,
        cluster: &Cluster,
        options: &'a CompileOptions,
        enforcing: bool,
        micros: u64,
    ) -> SnapshotOut<'a> {
        let mut identity_names: BTreeMap<u32, String> = compiled
            .identities
            .iter()
            .map(|(id, _)| (id, compiled.describe_identity(id)))
            .collect();
        for id in [0, 1, 2] {
            identity_names.insert(id, compiled.describe_identity(id));
        }
        let mut pods: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for pod in cluster.pods() {
            let ips = pod.status_ips();
            if !ips.is_empty() {
                pods.insert(pod.key().to_string(), ips);
            }
        }
        let endpoints = compiled
            .endpoints
            .values()
            .map(|e| {
                let rec = self.state.records.get(&e.endpoint_id);
                if let Some(p) = &e.pod {
                    pods.insert(p.to_string(), e.ips.clone());
                }
                let unknown = e
                    .pod
                    .as_ref()
                    .is_some_and(|p| self.cluster.as_ref().is_some_and(|c| c.pod(p).is_none()));
                SnapshotEndpoint {
                    endpoint_id: format!("{:016x}", e.endpoint_id),
                    pod: e.pod.clone(),
                    ips: e.ips.clone(),
                    status: match (e.status, unknown) {
                        (EndpointStatus::NoPod, _) => "noPod",
                        (_, true) | (EndpointStatus::UnknownPod, _) => "unknownPod",
                        (EndpointStatus::Pod, false) => "pod",
                    }
                    .into(),
                    ingress_policies: e.ingress_policies.clone(),
                    egress_policies: e.egress_policies.clone(),
                    host_veth: rec.map(|r| r.host_veth.clone()).unwrap_or_default(),
                    container_id: rec.map(|r| r.container_id.clone()).unwrap_or_default(),
                    ifname: rec.map(|r| r.ifname.clone()).unwrap_or_default(),
                }
            })
            .collect();
        SnapshotOut {
            version: SNAPSHOT_VERSION,
            revision: self.config_value.revision,
            synced_at: now_secs(),
            sync_micros: micros,
            bpffs_dir: self.config.layout.root(),
            source: self.config.source.describe(),
            enforcing,
            allow_host: options.allow_host,
            node_addresses: &options.node_ips,
            identities: &compiled.identities,
            identity_names,
            rules: &compiled.rules,
            endpoints,
            pods,
            warnings: &compiled.warnings,
        }
    }

    /// The answer to `status`.
    pub fn status(&self) -> Value {
        json!({
            "ok": true,
            "revision": self.config_value.revision,
            "enforcing": self.config_value.flags & POLICY_CONFIG_F_ENFORCE != 0,
            "source": self.config.source.describe(),
            "sourceError": self.source_error,
            "lastError": self.last_error,
            "endpoints": self.state.records.len(),
            "unreadableRecords": self.state.bad.len(),
            "lastSync": self.last,
        })
    }

    fn answer_endpoint(
        &self,
        endpoint_id: Option<u64>,
        synced: &Result<SyncReport, String>,
    ) -> Value {
        let Some(id) = endpoint_id else {
            return json!({"ok": false, "error": "no valid endpointId in the request"});
        };
        if self.state.records.contains_key(&id) {
            match self.maps.state_of(id) {
                Ok(Some(s)) if s.flags & POLICY_F_PROGRAMMED != 0 => {
                    json!({"ok": true, "revision": self.config_value.revision})
                }
                Ok(_) => json!({"ok": false, "error": match synced {
                    Err(e) => format!("endpoint {id:016x} is not programmed: {e}"),
                    Ok(_) => format!("endpoint {id:016x} is not programmed"),
                }}),
                Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
            }
        } else {
            json!({"ok": false, "error": format!(
                "no attachment record for endpoint {id:016x} in {} (do the plugin's stateDir and \
                 the agent's --state-dir agree?)",
                self.config.state_dir.display()
            )})
        }
    }

    /// Handles a batch of requests (and the timer): reloads the source when
    /// it changed or `sync` asks, syncs once when anything changed, and
    /// answers every request.
    pub fn handle(&mut self, batch: Vec<Envelope>) {
        let wants_sync = batch.iter().any(|e| e.request == Request::Sync);
        let mut source_result: Result<bool, String> = Ok(false);
        let mut load_micros = 0;
        // Kept only when the source reloads (the objects are shared, so
        // this copies indexes): a new source that does not compile falls
        // back to it. Not on every tick: the timer calls this twice a second.
        let mut previous_cluster = None;
        if wants_sync || self.source_changed_on_disk() {
            previous_cluster = self.cluster.clone();
            let started = Instant::now();
            source_result = self.reload_source();
            load_micros = started.elapsed().as_micros() as u64;
            match &source_result {
                Ok(true) => tracing::info!(
                    source = %self.config.source.describe(),
                    load_us = load_micros,
                    "policy source changed"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!("policy source refused, the policy in force stays: {e}"),
            }
        }
        let endpoints_changed = endpoints::fingerprint(&self.config.state_dir) != self.state_fp;
        let notified = batch
            .iter()
            .any(|e| matches!(e.request, Request::Add { .. } | Request::Del { .. }));
        let need_sync = matches!(source_result, Ok(true))
            || (wants_sync && source_result.is_ok())
            || endpoints_changed
            || notified
            || self.retry
            || (self.last.is_none() && self.cluster.is_some());
        let synced = if need_sync {
            let mut r = self.sync();
            if r.is_err()
                && self.compile_failed
                && matches!(source_result, Ok(true))
                && previous_cluster.is_some()
            {
                // The new source parses but does not compile (e.g. more
                // port ranges than fit): refuse it like invalid manifests,
                // keep the policy in force and serve the endpoints with it.
                let err = r.clone().err().unwrap_or_default();
                tracing::error!("policy source refused, the policy in force stays: {err}");
                self.source_error = Some(err.clone());
                self.stats().source_errors += 1;
                self.cluster = previous_cluster;
                source_result = Err(err);
                r = self.sync();
            }
            match &r {
                Ok(rep) if rep.changed => tracing::info!(
                    revision = rep.revision,
                    endpoints = rep.counts.endpoints,
                    entries = rep.counts.policy,
                    prefixes = rep.counts.ipcache,
                    written = rep.apply.written,
                    deleted = rep.apply.deleted,
                    endpoints_us = rep.endpoints_micros,
                    compile_us = rep.compile_micros,
                    apply_us = rep.apply.duration.as_micros() as u64,
                    snapshot_us = rep.snapshot_micros,
                    "policy synced in {:.3} ms",
                    rep.micros as f64 / 1000.0
                ),
                Ok(rep) => tracing::debug!(
                    revision = rep.revision,
                    "policy sync: nothing to change ({} µs)",
                    rep.micros
                ),
                // Once per distinct error: the timer retries quietly.
                Err(e) if self.logged_error.as_deref() != Some(e.as_str()) => {
                    tracing::error!("policy sync failed: {e}");
                    self.logged_error = Some(e.clone());
                }
                Err(e) => tracing::debug!("policy sync failed again: {e}"),
            }
            if r.is_ok() {
                self.logged_error = None;
            }
            Some(r)
        } else {
            None
        };
        for env in batch {
            let Some(reply) = env.reply else { continue };
            let answer = match env.request {
                Request::Status => self.status(),
                Request::Sync => match (&source_result, &synced) {
                    (Err(e), _) => json!({"ok": false, "error": e, "revision": self.revision()}),
                    (Ok(_), Some(Ok(rep))) => json!({
                        "ok": true, "revision": rep.revision, "changed": rep.changed,
                        "syncMicros": rep.micros, "loadMicros": load_micros, "report": rep,
                    }),
                    (Ok(_), Some(Err(e))) => {
                        json!({"ok": false, "error": e, "revision": self.revision()})
                    }
                    (Ok(_), None) => {
                        json!({"ok": true, "revision": self.revision(), "changed": false})
                    }
                },
                Request::Add { endpoint_id } => {
                    let synced = synced.clone().unwrap_or_else(|| Err("no sync ran".into()));
                    self.answer_endpoint(endpoint_id, &synced)
                }
                Request::Del { .. } => match &synced {
                    Some(Err(e)) => json!({"ok": false, "error": e}),
                    _ => json!({"ok": true, "revision": self.revision()}),
                },
            };
            let _ = reply.send(answer);
        }
    }

    /// Runs until every sender is gone: requests as they come, and every
    /// [`POLL_INTERVAL`] a look at the source and the state dir.
    pub fn run(mut self, rx: mpsc::Receiver<Envelope>) {
        loop {
            let mut batch = Vec::new();
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(env) => batch.push(env),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(env) = rx.try_recv() {
                batch.push(env);
            }
            self.handle(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        compile::LocalEndpoint, model::NetworkPolicy, IdentityTable, ObjectKey, Pod,
    };

    /// What a sync writes reads back as a [`Snapshot`] and writes again to
    /// the same JSON: the borrowed form has the owned form's fields, names
    /// and encodings, nothing more or less.
    #[test]
    fn snapshot_out_is_a_snapshot() {
        let mut c = Cluster::new();
        c.insert_pod(Pod::new("ns", "a", [("app", "a")]));
        let policy: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: p, namespace: ns}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {podSelector: {matchLabels: {app: a}}}]\n    ports: [{port: 80}, {protocol: UDP, port: 53, endPort: 60}]\n  egress:\n  - {}\n",
        )
        .unwrap();
        c.insert_policy(policy);
        let endpoints = vec![LocalEndpoint {
            endpoint_id: 7,
            pod: Some(ObjectKey::new("ns", "a")),
            ips: vec!["10.2.0.5".parse().unwrap()],
        }];
        let options = CompileOptions {
            node_ips: vec!["192.0.2.1".parse().unwrap()],
            ..CompileOptions::default()
        };
        let compiled = compile(&c, &endpoints, &options, &IdentityTable::new(), 3).unwrap();
        assert_eq!(compiled.rules.len(), 2);
        let out = SnapshotOut {
            version: SNAPSHOT_VERSION,
            revision: 3,
            synced_at: 1,
            sync_micros: 2,
            bpffs_dir: Path::new("/sys/fs/bpf/x"),
            source: "none".into(),
            enforcing: true,
            allow_host: true,
            node_addresses: &options.node_ips,
            identities: &compiled.identities,
            identity_names: BTreeMap::from([(1, "host".to_owned())]),
            rules: &compiled.rules,
            endpoints: Vec::new(),
            pods: BTreeMap::from([("ns/a".to_owned(), endpoints[0].ips.clone())]),
            warnings: &["w".to_owned()],
        };
        let json = serde_json::to_value(&out).unwrap();
        let back: Snapshot = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.rules[1].direction, "egress");
        assert_eq!(back.rules[0].to_rule_info(), compiled.rules[0]);
        assert_eq!(back.rule(2).unwrap().to_rule_info(), compiled.rules[1]);
        assert_eq!(back.identities, compiled.identities);
    }
}
