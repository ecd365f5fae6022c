//! The NetworkPolicy reachability world of the scenario files
//! (`cni-agent/tests/policy_scenarios/`, the upstream e2e "truth table"
//! cluster): namespaces x, y, z with pods a, b, c each, added through the
//! real `sluice` plugin (routed mode, sluice-ipam in-process) inside a node
//! namespace, each with exactly the fixed address of the scenario cluster
//! (`runtimeConfig.ips`), and the real agent enforcing the policies of a
//! manifests directory.
//!
//! - [`PolicyWorld::new`] builds it: node netns (with the node's address
//!   on a veth pair of its own, where the agent discovers it: identity host),
//!   the agent (`--manifests`, `--state-dir`, `--api-socket` of the world),
//!   the 9 pods ADDed in parallel with `waitForPolicy`, and in every pod
//!   TCP and UDP echo servers on ports 80 and 81.
//! - [`PolicyWorld::apply`] replaces the policies (one `v1 List` JSON file
//!   next to the cluster manifests) and runs `sluicectl sync`, which returns
//!   once the datapath enforces them.
//! - [`PolicyWorld::probe_matrices`] measures whole 9×9 matrices: TCP
//!   (connect within a timeout; a drop is a timeout) and UDP (one datagram
//!   echoed within a timeout) with real packets, many pairs at once on a
//!   bounded pool of threads that each enter the client's namespace per
//!   probe; SCTP through BPF_PROG_TEST_RUN (this kernel has no SCTP
//!   sockets): the pinned `from_pod`/`to_pod` programs, the very programs
//!   attached to the pods' veths and bound to the world's live maps, run on
//!   a crafted INIT and its INIT-ACK in the order a real association's
//!   first exchange meets them.
//!
//! Dropping the world DELs the pods (through the plugin), stops the
//! servers and the agent, removes the pins, namespaces and temp files, also
//! when a test panics. Needs root.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::programs::{ProgramInfo, SchedClassifier, TestRun as _, TestRunOptions};
use cni_agent::policy::{
    scenarios::{Matrix, ScenarioSet},
    Manifests, NetworkPolicy, Object, ObjectKey, Protocol,
};
use cni_ebpf_common::maps::{PROG_FROM_POD, PROG_TO_POD};
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

use crate::{
    bin_dir,
    datapath::{TCX_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT},
    frames::{self, IPPROTO_SCTP},
    random_hex, Agent, BpffsDir, Netns, Sluicectl,
};

/// The node's own address (on `node0` in the node namespace).
pub const NODE_ADDRESS: &str = "10.199.62.1";
/// The IPAM range: holds every fixed address of the scenario cluster.
pub const POD_SUBNET: &str = "10.244.0.0/16";
/// The ports every pod serves, on TCP and UDP.
pub const SERVED_PORTS: [u16; 2] = [80, 81];
/// How long a probe waits for a TCP handshake or a UDP echo. A dropped
/// SYN is retransmitted only after 1 s, so this measures the first packet.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Threads probing at once.
pub const PROBE_WORKERS: usize = 96;

const CLUSTER_FILE: &str = "00-cluster.yaml";
const POLICIES_FILE: &str = "50-policies.json";

/// How one probe ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// TCP connected, UDP echoed, SCTP passed every program (or the
    /// destination is the client's own address, which stays in its netns).
    Allowed,
    /// Nothing came back in time: dropped.
    TimedOut,
    /// Refused (TCP RST, ICMP port unreachable): the packet got through but
    /// nobody listened, which never should happen in this world.
    Refused,
    /// A program under BPF_PROG_TEST_RUN returned TC_ACT_SHOT, at this step.
    Shot(&'static str),
    /// Anything else (an unexpected error, an unknown tc verdict).
    Error(String),
}

impl Outcome {
    /// Whether the traffic got through.
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Allowed)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Allowed => write!(f, "allowed"),
            Outcome::TimedOut => write!(f, "timed out (dropped)"),
            Outcome::Refused => write!(f, "refused (got through, nobody listening)"),
            Outcome::Shot(step) => write!(f, "TC_ACT_SHOT by {step}"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// A measured matrix, with how each cell ended.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
    /// Reachability (rows: clients, columns: servers).
    pub matrix: Matrix,
    /// Every cell's outcome.
    pub outcomes: BTreeMap<(ObjectKey, ObjectKey), Outcome>,
}

/// One pod of the world.
pub struct MatrixPod {
    /// `namespace/name`.
    pub key: ObjectKey,
    /// Its (fixed) address.
    pub ip: Ipv4Addr,
    /// The host side of its veth, in the node namespace.
    pub host_veth: String,
    /// Its index there.
    pub host_ifindex: u32,
    servers: Vec<Server>,
    /// Its network namespace.
    pub ns: Netns,
    cid: String,
}

/// What a plugin run printed.
#[derive(Debug)]
pub struct PluginRun {
    /// Exit code.
    pub code: Option<i32>,
    /// The CNI result or error JSON.
    pub stdout: String,
    /// Logs.
    pub stderr: String,
    /// How long it took.
    pub took: Duration,
}

impl PluginRun {
    /// The result JSON; fails unless the run succeeded.
    pub fn ok(&self) -> anyhow::Result<Value> {
        ensure!(
            self.code == Some(0),
            "plugin failed ({:?}): {}\n---- stderr ----\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout).context("the plugin printed no JSON result")
    }
}

/// The pinned pod programs, opened from the world's pin directory.
struct PodPrograms {
    from_pod: SchedClassifier,
    to_pod: SchedClassifier,
}

/// The world. See the module documentation.
pub struct PolicyWorld {
    pods: Vec<MatrixPod>,
    programs: Option<PodPrograms>,
    agent: Option<Agent>,
    agent_args: Vec<String>,
    bpffs: BpffsDir,
    node: Netns,
    tmp: tempfile::TempDir,
    net: String,
    /// The conflist's `hostRouting` (`ebpf` or `legacy`).
    host_routing: &'static str,
}

impl PolicyWorld {
    /// Builds the world for the cluster of `set`, whose manifests are the
    /// files of `cluster_dir` (the scenarios' `cluster/`), with routed
    /// mode's default eBPF host routing.
    pub fn new(set: &ScenarioSet, cluster_dir: &Path) -> anyhow::Result<Self> {
        Self::with_host_routing(set, cluster_dir, "ebpf")
    }

    /// [`PolicyWorld::new`] with the pods' `hostRouting` set to
    /// `host_routing` (`ebpf` or `legacy`): policy must hold on both paths.
    pub fn with_host_routing(
        set: &ScenarioSet,
        cluster_dir: &Path,
        host_routing: &'static str,
    ) -> anyhow::Result<Self> {
        crate::require_root("the policy matrix world");
        let node = Netns::new().context("node netns")?;
        crate::link::add_veth(&node, "node0", &node, "node0p")?;
        crate::link::add_address(&node, "node0", format!("{NODE_ADDRESS}/32").parse()?)?;
        crate::link::set_up(&node, "node0")?;
        crate::link::set_up(&node, "node0p")?;
        let tmp = tempfile::Builder::new()
            .prefix("sluice-matrix-")
            .tempdir()
            .context("temp dir")?;
        let mut w = PolicyWorld {
            pods: Vec::new(),
            programs: None,
            agent: None,
            agent_args: Vec::new(),
            bpffs: BpffsDir::new(),
            node,
            tmp,
            net: format!("matrix-{}", random_hex(6)),
            host_routing,
        };
        std::fs::create_dir_all(w.manifests())?;
        let mut cluster = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(cluster_dir)
            .with_context(|| format!("reading {}", cluster_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            cluster.push_str("---\n");
            cluster.push_str(&std::fs::read_to_string(&f)?);
            cluster.push('\n');
        }
        w.write_manifest(CLUSTER_FILE, &cluster)?;
        w.agent_args = vec![
            "--manifests".into(),
            w.manifests().display().to_string(),
            "--state-dir".into(),
            w.state_dir().display().to_string(),
            "--api-socket".into(),
            w.socket().display().to_string(),
        ];
        w.start_agent()?;

        // The 9 ADDs at once (each waits for its policy; the agent batches).
        let wanted: Vec<(ObjectKey, Ipv4Addr)> = set
            .pods
            .iter()
            .map(|key| match set.address_of(key) {
                Some(IpAddr::V4(ip)) => Ok((key.clone(), ip)),
                other => bail!("pod {key} has no IPv4 address in the cluster ({other:?})"),
            })
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        let added: Vec<anyhow::Result<MatrixPod>> = std::thread::scope(|scope| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|(key, ip)| {
                    let w = &w;
                    scope.spawn(move || w.add_pod(key, *ip))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("ADD panicked")))
                })
                .collect()
        });
        let mut errors = Vec::new();
        for pod in added {
            match pod {
                Ok(pod) => w.pods.push(pod),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        ensure!(errors.is_empty(), "ADD failed:\n{}", errors.join("\n"));
        eprintln!(
            "policy world: 9 pods added (parallel, waitForPolicy) in {:?}",
            started.elapsed()
        );
        w.open_programs()?;
        Ok(w)
    }

    /// Starts the agent (again) with the world's arguments; waits until ready.
    pub fn start_agent(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        self.agent = Some(Agent::start(&self.node, &self.bpffs, &args)?);
        Ok(started.elapsed())
    }

    /// The running agent.
    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the agent runs")
    }

    /// The node namespace.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The pods, in the order of the scenario matrices.
    pub fn pods(&self) -> &[MatrixPod] {
        &self.pods
    }

    /// Pod `key` (`namespace/name`).
    pub fn pod(&self, key: &str) -> &MatrixPod {
        self.pods
            .iter()
            .find(|p| p.key.to_string() == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    /// The agent's `--manifests` directory.
    pub fn manifests(&self) -> PathBuf {
        self.tmp.path().join("manifests")
    }

    fn socket(&self) -> PathBuf {
        self.tmp.path().join("run/agent.sock")
    }

    /// Writes a manifest file atomically (tmp + rename).
    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.manifests().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests().join(name))?;
        Ok(())
    }

    /// Removes every manifest but the cluster's.
    pub fn clear_policies(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(self.manifests())? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != CLUSTER_FILE) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Replaces the policies with `policies` (one `v1 List` JSON file; the
    /// text is checked to read back as exactly these policies) and syncs.
    /// Returns `sluicectl sync -o json`.
    pub fn apply(&self, policies: &[NetworkPolicy]) -> anyhow::Result<Value> {
        let text = policies_json(policies)?;
        self.clear_policies()?;
        self.write_manifest(POLICIES_FILE, &text)?;
        self.sync()
    }

    /// `sluicectl sync -o json`; fails unless it reports `ok`.
    pub fn sync(&self) -> anyhow::Result<Value> {
        let v = self.sluicectl_json(&["sync"])?;
        ensure!(v["ok"] == true, "sync: {v}");
        Ok(v)
    }

    fn ctl_args(&self, args: &[&str]) -> Vec<String> {
        let mut full = vec![
            "--state-dir".to_owned(),
            self.state_dir().display().to_string(),
            "--api-socket".to_owned(),
            self.socket().display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        full
    }

    /// `sluicectl ARGS` (with the world's state dir and socket): stdout.
    pub fn sluicectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let full = self.ctl_args(args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        Sluicectl::new(&self.bpffs).run(&full)
    }

    /// `sluicectl -o json ARGS`, parsed.
    pub fn sluicectl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let full = self.ctl_args(args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        Sluicectl::new(&self.bpffs).json(&full)
    }

    /// The datapath revision (`sluicectl status`).
    pub fn revision(&self) -> anyhow::Result<u64> {
        self.sluicectl_json(&["status"])?["datapath"]["revision"]
            .as_u64()
            .context("status has no datapath.revision")
    }

    fn conf(&self, wait: bool, ip: Option<Ipv4Addr>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": self.net,
            "type": "sluice",
            "bpffsDir": self.bpffs.path(),
            "stateDir": self.state_dir(),
            "agentSocket": self.socket(),
            "waitForPolicy": wait,
            "policyTimeoutMs": 20_000,
            "hostRouting": self.host_routing,
            "ipam": {
                "type": "sluice-ipam",
                "ranges": [[{"subnet": POD_SUBNET}]],
                "dataDir": self.ipam_dir(),
            }
        });
        if let Some(ip) = ip {
            // What a runtime passes for the `ips` capability.
            conf["runtimeConfig"] = json!({ "ips": [format!("{ip}/16")] });
        }
        conf
    }

    /// Runs the plugin inside the node namespace with exactly the CNI
    /// environment of pod `pod`.
    fn plugin(
        &self,
        command: &str,
        cid: &str,
        netns: &Path,
        pod: &ObjectKey,
        conf: &Value,
    ) -> anyhow::Result<PluginRun> {
        let mut cmd = Command::new(bin_dir().join("sluice"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir())
            .env("CNI_NETNS", netns)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    pod.namespace, pod.name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = self.node.fd().as_raw_fd();
        // SAFETY: only setns between fork and exec, on an fd the world keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().context("spawning sluice")?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        Ok(PluginRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        })
    }

    /// ADD of pod `key` with address `ip`, then its servers.
    fn add_pod(&self, key: &ObjectKey, ip: Ipv4Addr) -> anyhow::Result<MatrixPod> {
        let ns = Netns::new()?;
        let cid = format!("matrix-{}-{}-{}", key.namespace, key.name, random_hex(8));
        let run = self.plugin("ADD", &cid, ns.path(), key, &self.conf(true, Some(ip)))?;
        let mut pod = MatrixPod {
            key: key.clone(),
            ip,
            host_veth: String::new(),
            host_ifindex: 0,
            servers: Vec::new(),
            ns,
            cid,
        };
        let result = match run.ok() {
            Ok(result) => result,
            Err(e) => {
                // The plugin undoes a failed ADD; a DEL is harmless anyway.
                self.del_pod(&pod);
                return Err(e.context(format!("ADD {key}")));
            }
        };
        let got: Vec<String> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str().map(str::to_owned))
            .collect();
        if got.first().and_then(|a| a.split('/').next()) != Some(ip.to_string().as_str()) {
            self.del_pod(&pod);
            bail!("ADD {key} asked for {ip} (runtimeConfig.ips) and got {got:?}");
        }
        pod.host_veth = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i.get("sandbox").is_none())
            .and_then(|i| i["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        pod.host_ifindex = match crate::link::ifindex(&self.node, &pod.host_veth) {
            Ok(index) => index,
            Err(e) => {
                self.del_pod(&pod);
                return Err(e.context(format!("the host veth of {key}")));
            }
        };
        for port in SERVED_PORTS {
            pod.servers.push(Server::tcp(&pod.ns, port)?);
            pod.servers.push(Server::udp(&pod.ns, port)?);
        }
        Ok(pod)
    }

    fn del_pod(&self, pod: &MatrixPod) {
        match self.plugin(
            "DEL",
            &pod.cid,
            pod.ns.path(),
            &pod.key,
            &self.conf(false, None),
        ) {
            Ok(run) if run.code == Some(0) => {}
            Ok(run) => eprintln!("DEL {} failed: {}\n{}", pod.cid, run.stdout, run.stderr),
            Err(e) => eprintln!("DEL {}: {e:#}", pod.cid),
        }
    }

    /// Opens the pinned pod programs and checks they are the ones attached
    /// to the pods' veths.
    fn open_programs(&mut self) -> anyhow::Result<()> {
        let layout = self.bpffs.layout();
        let from_pod = SchedClassifier::from_pin(layout.prog(PROG_FROM_POD))
            .context("opening the pinned from_pod")?;
        let to_pod = SchedClassifier::from_pin(layout.prog(PROG_TO_POD))
            .context("opening the pinned to_pod")?;
        let pinned = [
            ProgramInfo::from_pin(layout.prog(PROG_FROM_POD))?.id(),
            ProgramInfo::from_pin(layout.prog(PROG_TO_POD))?.id(),
        ];
        for pod in &self.pods {
            let veth = &pod.host_veth;
            let progs = crate::link::tc_hook_programs(&self.node, veth)?;
            let ids = |hook: &str| -> Vec<u32> {
                progs
                    .iter()
                    .filter(|p| p.hook == hook)
                    .map(|p| p.id)
                    .collect()
            };
            let (ingress, egress) = (ids("ingress"), ids("egress"));
            ensure!(
                ingress.contains(&pinned[0]) && egress.contains(&pinned[1]),
                "{veth}: ingress {ingress:?} / egress {egress:?} are not the pinned from_pod {} / to_pod {}",
                pinned[0],
                pinned[1]
            );
        }
        self.programs = Some(PodPrograms { from_pod, to_pod });
        Ok(())
    }

    /// Measures one matrix per `(protocol, port)`: TCP and UDP with real
    /// packets on a pool of [`PROBE_WORKERS`] threads (all probes of all
    /// matrices at once), SCTP under BPF_PROG_TEST_RUN.
    pub fn probe_matrices(
        &self,
        probes: &[(Protocol, u16)],
        timeout: Duration,
    ) -> anyhow::Result<Vec<Measured>> {
        let keys: Vec<ObjectKey> = self.pods.iter().map(|p| p.key.clone()).collect();
        let n = self.pods.len();
        let mut jobs = Vec::new();
        let mut results: Vec<Vec<Option<Outcome>>> = vec![vec![None; n * n]; probes.len()];
        for (k, &(protocol, port)) in probes.iter().enumerate() {
            for i in 0..n {
                for j in 0..n {
                    if protocol == Protocol::Sctp {
                        results[k][i * n + j] = Some(if i == j {
                            // To its own address: never leaves the pod's
                            // namespace, no program sees it.
                            Outcome::Allowed
                        } else {
                            self.sctp_probe(self.pods[i].ip, self.pods[j].ip, port)?
                        });
                    } else {
                        jobs.push((k, i, j));
                    }
                }
            }
        }
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<(usize, usize, Outcome)>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..PROBE_WORKERS.min(jobs.len()) {
                scope.spawn(|| {
                    while let Some(&(k, i, j)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let (protocol, port) = probes[k];
                        let (from, to) = (&self.pods[i], &self.pods[j]);
                        let addr = SocketAddr::new(IpAddr::V4(to.ip), port);
                        // This pool thread moves into the client's netns
                        // for each probe; it ends with the scope.
                        let outcome = match setns(from.ns.fd(), CloneFlags::CLONE_NEWNET) {
                            Ok(()) => real_probe(
                                protocol,
                                addr,
                                timeout,
                                &format!("{}>{}", from.key, to.key),
                            ),
                            Err(e) => Outcome::Error(format!("setns into {}: {e}", from.key)),
                        };
                        done.lock().unwrap_or_else(|e| e.into_inner()).push((
                            i * n + j,
                            k,
                            outcome,
                        ));
                    }
                });
            }
        });
        for (cell, k, outcome) in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
            results[k][cell] = Some(outcome);
        }
        let mut out = Vec::new();
        for (k, &(protocol, port)) in probes.iter().enumerate() {
            let mut matrix = Matrix::new(keys.clone());
            let mut outcomes = BTreeMap::new();
            for i in 0..n {
                for j in 0..n {
                    let outcome = results[k][i * n + j]
                        .take()
                        .context("a probe did not run")?;
                    matrix.set(&keys[i], &keys[j], outcome.allowed());
                    outcomes.insert((keys[i].clone(), keys[j].clone()), outcome);
                }
            }
            out.push(Measured {
                protocol,
                port,
                matrix,
                outcomes,
            });
        }
        Ok(out)
    }

    /// SCTP from `client` to `server:port` under BPF_PROG_TEST_RUN, as the
    /// first exchange of an association meets the programs: the INIT
    /// through `from_pod` (the client's veth: egress of the client, ingress
    /// of the local server, conntrack) and `to_pod` (the server's veth),
    /// then the INIT-ACK back through `from_pod` (the server's veth) and
    /// `to_pod` (the client's veth). Every run must say TCX_NEXT.
    pub fn sctp_probe(
        &self,
        client: Ipv4Addr,
        server: Ipv4Addr,
        port: u16,
    ) -> anyhow::Result<Outcome> {
        let progs = self
            .programs
            .as_ref()
            .context("the pod programs are not open")?;
        let sport = next_sctp_port();
        let tag = 0x5c7b_0000 | u32::from(sport);
        let init = sctp_frame(client, server, sport, port, 0, SCTP_INIT, tag);
        let init_ack = sctp_frame(server, client, port, sport, tag, SCTP_INIT_ACK, !tag);
        let veth_of = |ip: Ipv4Addr| -> anyhow::Result<u32> {
            self.pods
                .iter()
                .find(|p| p.ip == ip)
                .map(|p| p.host_ifindex)
                .with_context(|| format!("no pod has {ip}"))
        };
        let (client_veth, server_veth) = (veth_of(client)?, veth_of(server)?);
        // The device each run is "on" (`__sk_buff.ifindex`): from_pod takes
        // a source address only from its own pod's veth.
        let steps: [(&SchedClassifier, &[u8], u32, &'static str); 4] = [
            (
                &progs.from_pod,
                &init,
                client_veth,
                "from_pod on the client's veth (INIT)",
            ),
            (
                &progs.to_pod,
                &init,
                server_veth,
                "to_pod on the server's veth (INIT)",
            ),
            (
                &progs.from_pod,
                &init_ack,
                server_veth,
                "from_pod on the server's veth (INIT-ACK)",
            ),
            (
                &progs.to_pod,
                &init_ack,
                client_veth,
                "to_pod on the client's veth (INIT-ACK)",
            ),
        ];
        // The kernel resolves the ifindex in the caller's namespace.
        self.node.run(|| {
            for (prog, frame, ifindex, step) in steps {
                let ctx = skb_ctx_on(ifindex);
                let result = prog
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat: 1,
                        ..Default::default()
                    })
                    .with_context(|| format!("BPF_PROG_TEST_RUN of {step}"))?;
                match result.return_value {
                    // Passed on to the stack, or (eBPF host routing) forwarded.
                    TCX_NEXT | TC_ACT_REDIRECT => {}
                    TC_ACT_SHOT => return Ok(Outcome::Shot(step)),
                    other => return Ok(Outcome::Error(format!("{step} returned {other}"))),
                }
            }
            Ok(Outcome::Allowed)
        })
    }

    /// A TCP connection attempt from pod `from` to pod `to`:`port`.
    pub fn tcp_outcome(&self, from: &str, to: &str, port: u16, timeout: Duration) -> Outcome {
        let addr = SocketAddr::new(IpAddr::V4(self.pod(to).ip), port);
        match crate::traffic::tcp_connect(&self.pod(from).ns, addr, timeout) {
            Ok(_) => Outcome::Allowed,
            Err(e) => io_outcome(&e),
        }
    }

    /// A UDP echo from pod `from` to pod `to`:`port`.
    pub fn udp_outcome(&self, from: &str, to: &str, port: u16, timeout: Duration) -> Outcome {
        let addr = SocketAddr::new(IpAddr::V4(self.pod(to).ip), port);
        let token = format!("{from}>{to}");
        self.pod(from)
            .ns
            .run(move || Ok(udp_probe(addr, timeout, &token)))
            .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")))
    }

    /// An open TCP connection from `from` to `to`:`port` (to an echo
    /// server), with a read timeout of 1.5 s.
    pub fn open(&self, from: &str, to: &str, port: u16) -> anyhow::Result<TcpStream> {
        let addr = SocketAddr::new(IpAddr::V4(self.pod(to).ip), port);
        let s = crate::traffic::tcp_connect(&self.pod(from).ns, addr, Duration::from_secs(2))
            .with_context(|| format!("connecting {from} -> {to}:{port}"))?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(s)
    }
}

impl Drop for PolicyWorld {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut self.pods);
        for p in &pods {
            self.del_pod(p);
        }
        drop(pods);
        self.programs = None;
        self.agent = None;
        // Then bpffs (agent --cleanup), the node netns and the temp dir.
    }
}

/// The policies as one `v1 List` JSON manifest, checked to read back (as
/// the agent reads `--manifests`) as exactly `policies`.
pub fn policies_json(policies: &[NetworkPolicy]) -> anyhow::Result<String> {
    let mut items = Vec::new();
    for p in policies {
        let mut v = serde_json::to_value(p).context("serializing a NetworkPolicy")?;
        let obj = v.as_object_mut().context("a NetworkPolicy is an object")?;
        obj.insert("apiVersion".into(), json!("networking.k8s.io/v1"));
        obj.insert("kind".into(), json!("NetworkPolicy"));
        items.push(v);
    }
    let text = serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
    }))?;
    let mut m = Manifests::new();
    m.add_json(POLICIES_FILE, &text)
        .context("the policies JSON does not parse back")?;
    let back: Vec<&NetworkPolicy> = m
        .objects()
        .iter()
        .filter_map(|(_, o)| match o {
            Object::NetworkPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    ensure!(
        back.len() == policies.len() && back.iter().zip(policies).all(|(a, b)| *a == b),
        "the policies JSON reads back differently:\n{text}"
    );
    Ok(text)
}

/// One real TCP or UDP probe, on a thread already inside the client's
/// namespace.
fn real_probe(protocol: Protocol, to: SocketAddr, timeout: Duration, token: &str) -> Outcome {
    match protocol {
        Protocol::Tcp => match TcpStream::connect_timeout(&to, timeout) {
            Ok(_) => Outcome::Allowed,
            Err(e) => io_outcome(&e),
        },
        Protocol::Udp => udp_probe(to, timeout, token),
        Protocol::Sctp => Outcome::Error("SCTP has no sockets here".into()),
    }
}

fn udp_probe(to: SocketAddr, timeout: Duration, token: &str) -> Outcome {
    let run = || -> std::io::Result<Outcome> {
        let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        s.connect(to)?;
        let msg = format!("{token}:{}", random_hex(8));
        s.send(msg.as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Outcome::TimedOut);
            }
            s.set_read_timeout(Some(left))?;
            match s.recv(&mut buf) {
                Ok(n) if &buf[..n] == msg.as_bytes() => return Ok(Outcome::Allowed),
                Ok(_) => continue,
                Err(e) => return Ok(io_outcome(&e)),
            }
        }
    };
    run().unwrap_or_else(|e| Outcome::Error(e.to_string()))
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        ErrorKind::ConnectionRefused => Outcome::Refused,
        _ => Outcome::Error(e.to_string()),
    }
}

/// SCTP chunk types (RFC 9260).
const SCTP_INIT: u8 = 1;
const SCTP_INIT_ACK: u8 = 2;

/// Source ports of SCTP probes (30000-59999, then again): each probe a new
/// association.
fn next_sctp_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    30_000 + (NEXT.fetch_add(1, Ordering::Relaxed) % 30_000) as u16
}

/// An Ethernet/IPv4/SCTP frame with one INIT or INIT-ACK chunk
/// (`initiate_tag`, a_rwnd, streams, initial TSN; no parameters).
fn sctp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    verification_tag: u32,
    chunk: u8,
    initiate_tag: u32,
) -> Vec<u8> {
    let mut packet = frames::sctp(sport, dport);
    packet[4..8].copy_from_slice(&verification_tag.to_be_bytes());
    packet.push(chunk);
    packet.push(0); // flags
    packet.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    packet.extend_from_slice(&initiate_tag.to_be_bytes());
    packet.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    packet.extend_from_slice(&10u16.to_be_bytes()); // outbound streams
    packet.extend_from_slice(&10u16.to_be_bytes()); // inbound streams
    packet.extend_from_slice(&1u32.to_be_bytes()); // initial TSN
    frames::Ipv4::new(src, dst, IPPROTO_SCTP).frame(&packet)
}

/// A TCP or UDP echo server on a port of a pod, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    /// The TCP listener (shut down to wake `accept`).
    listener: Option<Arc<TcpListener>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// TCP echo on `0.0.0.0:port`: each connection gets back what it sends.
    fn tcp(ns: &Netns, port: u16) -> anyhow::Result<Self> {
        let listener = Arc::new(ns.run(move || {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .with_context(|| format!("listening on TCP {port}"))
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, flag) = (listener.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tcp-{port}"))
            .spawn(move || {
                for conn in l.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    std::thread::spawn(move || {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                        let Ok(mut out) = conn.try_clone() else {
                            return;
                        };
                        let mut input = conn;
                        let _ = std::io::copy(&mut input, &mut out);
                        let _ = out.shutdown(Shutdown::Write);
                    });
                }
            })?;
        Ok(Self {
            stop,
            listener: Some(listener),
            thread: Some(thread),
        })
    }

    /// UDP echo on `0.0.0.0:port`: every datagram goes back to its sender.
    fn udp(ns: &Netns, port: u16) -> anyhow::Result<Self> {
        let socket = ns.run(move || {
            let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .with_context(|| format!("binding UDP {port}"))?;
            // Wakes up to look at the stop flag.
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("udp-{port}"))
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], peer);
                    }
                }
            })?;
        Ok(Self {
            stop,
            listener: None,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(l) = &self.listener {
            // SAFETY: shutdown on an fd the listener keeps open; wakes accept.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN's `ctx_in` that puts the
/// packet on device `ifindex` (`__sk_buff.ifindex`, at offset 40; every
/// other field zero, as the kernel requires of the fields it does not
/// take).
fn skb_ctx_on(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
