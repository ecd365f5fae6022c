//! Reachability scenarios in the style of the upstream NetworkPolicy e2e
//! tests: a cluster of 9 pods (namespaces x, y, z labelled `ns: <name>`,
//! pods a, b, c labelled `pod: <name>`), a set of policies, and the
//! expected 9×9 matrix for one or more probes.
//!
//! The data lives in `cni-agent/tests/policy_scenarios/` ([`SCENARIO_DIR`]):
//! - `cluster/*.yaml`: the base cluster (manifests, loaded with
//!   [`manifests::load_dir`](super::manifests::load_dir)). Each pod has a
//!   fixed address in `status.podIPs`; an end-to-end test gives its pods
//!   exactly these addresses so that the ipBlock scenarios mean the same
//!   thing there. Ports: 80 and 81 on TCP, UDP and SCTP, named
//!   `serve-80-tcp`, `serve-81-udp`, … as upstream.
//! - `*.yaml`: one scenario each:
//!
//! ```yaml
//! name: deny-all-ingress-x
//! description: What it shows.
//! policies:            # NetworkPolicy manifests, parsed strictly
//! - apiVersion: networking.k8s.io/v1
//!   kind: NetworkPolicy
//!   ...
//! probes:
//! - protocol: TCP      # default TCP
//!   port: 80
//!   expected: |
//!     # rows: from (client), columns: to (server); "." connects, "X" is blocked
//!     -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
//!     x/a .   .   .   .   .   .   .   .   .
//!     ...
//! ```
//!
//! `.` for "connects" and `X` for "blocked" are the upstream truth table's
//! symbols. The first token of the header line is ignored. A pod always
//! reaches itself (traffic to its own address stays in its netns).

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{
    compile::{Compiled, LocalEndpoint},
    explain::{explain, Party},
    manifests::{self, ManifestError, Manifests, Object},
    model::{Cluster, NetworkPolicy, ObjectKey, Protocol},
};

/// Where the scenario files are.
pub const SCENARIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/policy_scenarios");

/// Why scenarios could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A manifest (base cluster or a policy) was refused.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A scenario file is malformed.
    #[error("{}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The base cluster and every scenario.
#[derive(Clone, Debug)]
pub struct ScenarioSet {
    /// Namespaces and pods, no policies.
    pub cluster: Cluster,
    /// The pods in matrix order (x/a, x/b, …).
    pub pods: Vec<ObjectKey>,
    /// The scenarios, by file name.
    pub scenarios: Vec<Scenario>,
}

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its file.
    pub file: PathBuf,
    /// Short name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// The policies to apply on top of the base cluster.
    pub policies: Vec<NetworkPolicy>,
    /// What to probe and what to expect.
    pub probes: Vec<Probe>,
}

/// A probe: one protocol and port, tried between every pair of pods.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
    /// The expected reachability.
    pub expected: Matrix,
}

/// A reachability matrix: rows are clients, columns servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pods: Vec<ObjectKey>,
    allowed: Vec<bool>,
}

impl Matrix {
    /// All blocked.
    pub fn new(pods: Vec<ObjectKey>) -> Self {
        let n = pods.len();
        Self {
            pods,
            allowed: vec![false; n * n],
        }
    }

    /// The pods, in order.
    pub fn pods(&self) -> &[ObjectKey] {
        &self.pods
    }

    fn index(&self, from: &ObjectKey, to: &ObjectKey) -> Option<usize> {
        let i = self.pods.iter().position(|p| p == from)?;
        let j = self.pods.iter().position(|p| p == to)?;
        Some(i * self.pods.len() + j)
    }

    /// Whether `from` reaches `to`.
    pub fn get(&self, from: &ObjectKey, to: &ObjectKey) -> Option<bool> {
        self.index(from, to).map(|i| self.allowed[i])
    }

    /// Sets whether `from` reaches `to` (ignored for unknown pods).
    pub fn set(&mut self, from: &ObjectKey, to: &ObjectKey, allowed: bool) {
        if let Some(i) = self.index(from, to) {
            self.allowed[i] = allowed;
        }
    }

    /// (from, to, expected) for every cell where `actual` differs.
    pub fn differences(&self, actual: &Matrix) -> Vec<(ObjectKey, ObjectKey, bool)> {
        let mut out = Vec::new();
        for from in &self.pods {
            for to in &self.pods {
                let e = self.get(from, to);
                if e != actual.get(from, to) {
                    out.push((from.clone(), to.clone(), e.unwrap_or(false)));
                }
            }
        }
        out
    }

    /// Parses the text form (see the module documentation).
    pub fn parse(text: &str) -> Result<Matrix, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let header = lines.next().ok_or("empty matrix")?;
        let pods: Vec<ObjectKey> = header
            .split_whitespace()
            .skip(1)
            .map(parse_key)
            .collect::<Result<_, _>>()?;
        let mut m = Matrix::new(pods.clone());
        let mut rows = Vec::new();
        for line in lines {
            let mut cells = line.split_whitespace();
            let from = parse_key(cells.next().unwrap_or_default())?;
            if !pods.contains(&from) {
                return Err(format!("row {from} is not a column"));
            }
            if rows.contains(&from) {
                return Err(format!("row {from} twice"));
            }
            let cells: Vec<&str> = cells.collect();
            if cells.len() != pods.len() {
                return Err(format!(
                    "row {from} has {} cells, expected {}",
                    cells.len(),
                    pods.len()
                ));
            }
            for (to, cell) in pods.iter().zip(cells) {
                let allowed = match cell {
                    "." => true,
                    "X" => false,
                    other => {
                        return Err(format!("row {from}: cell {other:?} is neither '.' nor 'X'"))
                    }
                };
                m.set(&from, to, allowed);
            }
            rows.push(from);
        }
        if rows.len() != pods.len() {
            return Err(format!("{} rows for {} columns", rows.len(), pods.len()));
        }
        Ok(m)
    }
}

fn parse_key(s: &str) -> Result<ObjectKey, String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not namespace/pod"))?;
    Ok(ObjectKey::new(ns, name))
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-  ")?;
        for p in &self.pods {
            write!(f, " {p}")?;
        }
        writeln!(f)?;
        for from in &self.pods {
            write!(f, "{from}")?;
            for to in &self.pods {
                let cell = if self.get(from, to) == Some(true) {
                    "."
                } else {
                    "X"
                };
                write!(f, " {cell:<width$}", width = to.to_string().len())?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    policies: Vec<serde_yaml::Value>,
    probes: Vec<ProbeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    #[serde(default)]
    protocol: Protocol,
    port: u16,
    expected: String,
}

/// Loads the base cluster (`DIR/cluster/`) and every scenario (`DIR/*.yaml`).
pub fn load(dir: &Path) -> Result<ScenarioSet, ScenarioError> {
    let cluster = manifests::load_dir(&dir.join("cluster"))?;
    let pods: Vec<ObjectKey> = cluster.pods().map(|p| p.key()).collect();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| ManifestError::Io {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml") && p.is_file())
        .collect();
    files.sort();
    let mut scenarios = Vec::new();
    for file in files {
        scenarios.push(load_scenario(&file, &pods)?);
    }
    Ok(ScenarioSet {
        cluster,
        pods,
        scenarios,
    })
}

fn load_scenario(file: &Path, pods: &[ObjectKey]) -> Result<Scenario, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.to_owned(),
        message,
    };
    let text = fs::read_to_string(file).map_err(|source| ManifestError::Io {
        path: file.to_owned(),
        source,
    })?;
    let raw: ScenarioFile = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let label = file.display().to_string();
    let mut m = Manifests::new();
    for (i, v) in raw.policies.into_iter().enumerate() {
        m.add_value(&label, i + 1, v)?;
    }
    let mut policies = Vec::new();
    let mut names = Vec::new();
    for (_, o) in m.objects() {
        match o {
            Object::NetworkPolicy(p) => {
                if names.contains(&p.key()) {
                    return Err(invalid(format!("policy {} twice", p.key())));
                }
                names.push(p.key());
                policies.push(p.clone());
            }
            other => {
                return Err(invalid(format!(
                    "{}: only NetworkPolicies belong in policies",
                    other.describe()
                )))
            }
        }
    }
    let mut probes = Vec::new();
    for (i, p) in raw.probes.into_iter().enumerate() {
        let expected = Matrix::parse(&p.expected)
            .map_err(|e| invalid(format!("probes[{i}].expected: {e}")))?;
        let mut want = pods.to_vec();
        let mut got = expected.pods().to_vec();
        want.sort();
        got.sort();
        if want != got {
            return Err(invalid(format!(
                "probes[{i}].expected: the pods are not those of the base cluster"
            )));
        }
        probes.push(Probe {
            protocol: p.protocol,
            port: p.port,
            expected,
        });
    }
    Ok(Scenario {
        file: file.to_owned(),
        name: raw.name,
        description: raw.description,
        policies,
        probes,
    })
}

impl Scenario {
    /// The base cluster with this scenario's policies.
    pub fn cluster(&self, base: &Cluster) -> Cluster {
        let mut c = base.clone();
        for p in &self.policies {
            c.insert_policy(p.clone());
        }
        c
    }
}

impl ScenarioSet {
    /// Every pod of the base cluster as a local endpoint (ids 1, 2, … in
    /// matrix order), with its `status` addresses: one node hosting all.
    pub fn local_endpoints(&self) -> Vec<LocalEndpoint> {
        self.pods
            .iter()
            .enumerate()
            .map(|(i, key)| LocalEndpoint {
                endpoint_id: i as u64 + 1,
                pod: Some(key.clone()),
                ips: self.address_of(key).into_iter().collect(),
            })
            .collect()
    }

    /// A pod's (first) address in the base cluster.
    pub fn address_of(&self, pod: &ObjectKey) -> Option<IpAddr> {
        self.cluster.pod(pod)?.status_ips().first().copied()
    }

    /// Addresses of every pod, for an end-to-end world to assign.
    pub fn addresses(&self) -> BTreeMap<ObjectKey, IpAddr> {
        self.pods
            .iter()
            .filter_map(|p| Some((p.clone(), self.address_of(p)?)))
            .collect()
    }
}

/// The matrix `explain` predicts for `compiled`, given which endpoint id
/// each pod has.
pub fn predicted(
    compiled: &Compiled,
    endpoints: &[LocalEndpoint],
    pods: &[ObjectKey],
    protocol: Protocol,
    port: u16,
) -> Matrix {
    let id = |p: &ObjectKey| {
        endpoints
            .iter()
            .find(|e| e.pod.as_ref() == Some(p))
            .map(|e| e.endpoint_id)
    };
    let mut m = Matrix::new(pods.to_vec());
    for from in pods {
        for to in pods {
            let (Some(a), Some(b)) = (id(from), id(to)) else {
                continue;
            };
            let allowed = explain(
                compiled,
                Party::Endpoint(a),
                Party::Endpoint(b),
                protocol.number(),
                port,
            )
            .is_ok_and(|v| v.allowed);
            m.set(from, to, allowed);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::policy::{compile, CompileOptions, IdentityTable};

    #[test]
    fn every_scenario_matrix_matches_explain() {
        let set = load(Path::new(SCENARIO_DIR)).unwrap();
        assert_eq!(set.pods.len(), 9);
        assert!(
            set.scenarios.len() >= 15,
            "{} scenarios",
            set.scenarios.len()
        );
        let endpoints = set.local_endpoints();
        let mut failures = Vec::new();
        let mut probes = 0;
        let start = Instant::now();
        for s in &set.scenarios {
            let cluster = s.cluster(&set.cluster);
            let compiled = compile(
                &cluster,
                &endpoints,
                &CompileOptions::default(),
                &IdentityTable::new(),
                1,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            for p in &s.probes {
                probes += 1;
                let got = predicted(&compiled, &endpoints, &set.pods, p.protocol, p.port);
                let diff = p.expected.differences(&got);
                if !diff.is_empty() {
                    let cells: Vec<String> = diff
                        .iter()
                        .map(|(f, t, e)| {
                            let v = explain(
                                &compiled,
                                Party::Address(set.address_of(f).unwrap()),
                                Party::Address(set.address_of(t).unwrap()),
                                p.protocol.number(),
                                p.port,
                            )
                            .unwrap();
                            format!(
                                "  {f} -> {t}: expected {e}, got {} ({})",
                                v.allowed, v.reason
                            )
                        })
                        .collect();
                    failures.push(format!(
                        "{} {}/{}:\nexpected:\n{}got:\n{}{}",
                        s.name,
                        p.protocol,
                        p.port,
                        p.expected,
                        got,
                        cells.join("\n")
                    ));
                }
            }
        }
        eprintln!(
            "{} scenarios, {probes} probes, {:?}",
            set.scenarios.len(),
            start.elapsed()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn matrices_round_trip_and_bad_ones_are_refused() {
        let set = load(Path::new(SCENARIO_DIR)).unwrap();
        let m = &set.scenarios[1].probes[0].expected;
        assert_eq!(&Matrix::parse(&m.to_string()).unwrap(), m);
        assert!(Matrix::parse("- x/a x/b\nx/a . X\n")
            .unwrap_err()
            .contains("1 rows"));
        assert!(Matrix::parse("- x/a\nx/a ?\n")
            .unwrap_err()
            .contains("neither"));
        assert!(Matrix::parse("- x/a x/b\nx/a . X\nx/b .\n")
            .unwrap_err()
            .contains("1 cells"));
    }

    #[test]
    fn base_cluster_addresses_are_the_documented_plan() {
        let set = load(Path::new(SCENARIO_DIR)).unwrap();
        let addrs = set.addresses();
        assert_eq!(addrs.len(), 9);
        assert_eq!(addrs[&ObjectKey::new("y", "c")].to_string(), "10.244.2.12");
    }
}
