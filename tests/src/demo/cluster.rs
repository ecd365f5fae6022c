//! The demo's small cluster, built from the end-to-end harness:
//!
//! ```text
//!   netns "peer host"            netns "node"                          pod netns (3)
//!   eth0 10.199.41.2/24 <-veth-> eth0 10.199.41.1/24 (XDP prefilter)
//!   route 10.199.40.0/24              sluice-agent --manifests DIR
//!     via 10.199.41.1                 slcXXXX host veths (TCX) <-veth-> eth0 10.199.40.x
//! ```
//!
//! Pods are made by the real `sluice` plugin (routed mode, `sluice-ipam`,
//! `waitForPolicy`) run inside the node netns with the CNI environment a
//! runtime gives it; their labels come from Pod and Namespace objects in the
//! agent's manifests directory. Every pod runs a small TCP server on 8080
//! and 9090 that answers with its name.
//!
//! Everything is owned by [`Cluster`]: dropping it (also on an error, a
//! panic or Ctrl-C) DELs the pods through the plugin, kills the agent,
//! removes the pins and then the namespaces and the scratch directory.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use serde_json::{json, Value};
use tests::{
    agent::bin,
    cni::{exec_plugin, BannerServer, Outcome, RuntimeConf},
    link::{self, VethEnd},
    random_hex,
    runtime::output_timeout,
    Agent, BpffsDir, Netns,
};

/// The pods' addresses (sluice-ipam).
pub const POD_SUBNET: &str = "10.199.40.0/24";
/// The node's end of the uplink.
pub const NODE_UPLINK: &str = "10.199.41.1/24";
/// The peer host's end of the uplink.
pub const PEER_UPLINK: &str = "10.199.41.2/24";
/// The uplink's name on both ends (in namespaces of our own).
pub const UPLINK: &str = "eth0";
/// The ports every pod serves.
pub const PORTS: [u16; 2] = [8080, 9090];
/// The CNI network name.
pub const NETWORK: &str = "sluice-demo";

/// A pod made by the plugin.
pub struct Pod {
    /// `namespace/name`.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host side of its veth, in the node netns.
    pub host_veth: String,
    /// The ADD result.
    pub result: Value,
    rt: RuntimeConf,
    deleted: bool,
    // Servers before the namespace: they stop before it goes.
    _servers: Vec<BannerServer>,
    /// Its network namespace.
    pub netns: Netns,
}

/// The whole cluster. Fields drop in declaration order after [`Drop`]
/// has DELed the pods and killed the agent.
pub struct Cluster {
    agent: Option<Agent>,
    pods: Vec<Pod>,
    /// The agent's pins, cleaned up (`sluice-agent --cleanup`) on drop.
    pub bpffs: BpffsDir,
    /// The node: agent, host veths, uplink.
    pub node: Netns,
    /// The host on the other end of the uplink.
    pub peer: Netns,
    dir: tempfile::TempDir,
}

/// How a connection attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Connected; what the server said.
    Connected(String),
    /// Refused (a RST: the SYN got through, nobody listened).
    Refused,
    /// No answer within the timeout: dropped.
    TimedOut,
}

impl Cluster {
    /// The node and peer namespaces joined by the uplink, the peer's route
    /// to the pod network, and the scratch directory with an empty
    /// manifests directory. No agent yet.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-demo-")
            .tempdir()
            .context("creating the scratch dir")?;
        let cluster = Self {
            agent: None,
            pods: Vec::new(),
            bpffs: BpffsDir::new(),
            node: Netns::new().context("creating the node netns")?,
            peer: Netns::new().context("creating the peer netns")?,
            dir,
        };
        for sub in ["manifests", "state", "ipam", "run"] {
            std::fs::create_dir_all(cluster.dir.path().join(sub))?;
        }
        let node: IpNet = NODE_UPLINK.parse()?;
        let peer: IpNet = PEER_UPLINK.parse()?;
        link::connect(
            VethEnd {
                ns: &cluster.node,
                ifname: UPLINK,
                addrs: &[node],
            },
            VethEnd {
                ns: &cluster.peer,
                ifname: UPLINK,
                addrs: &[peer],
            },
        )?;
        Ok(cluster)
    }

    /// The node's uplink address.
    pub fn node_ip() -> anyhow::Result<IpAddr> {
        Ok(NODE_UPLINK.parse::<IpNet>()?.addr())
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's manifests directory.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The plugin's state dir, which the agent reads.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/agent.sock")
    }

    /// The IPAM store.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Writes manifest `name` atomically (tmp + rename) and returns its path.
    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.manifests().join(name);
        let tmp = self.manifests().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }

    /// The agent's arguments besides `--bpffs-dir`.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--uplink".into(),
            UPLINK.into(),
            "--manifests".into(),
            self.manifests().display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--api-socket".into(),
            self.socket().display().to_string(),
        ]
    }

    /// Starts the agent in the node netns; returns how long it took to be
    /// ready.
    pub fn start_agent(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let args = self.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent = Some(Agent::start(&self.node, &self.bpffs, &args)?);
        Ok(started.elapsed())
    }

    /// The running agent.
    pub fn agent(&mut self) -> anyhow::Result<&mut Agent> {
        self.agent.as_mut().context("no agent running")
    }

    /// The plugin's network config (what a runtime passes on stdin).
    pub fn net_conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "sluice",
            "waitForPolicy": true,
            "bpffsDir": self.bpffs.path(),
            "stateDir": self.state_dir(),
            "agentSocket": self.socket(),
            "ipam": {
                "type": "sluice-ipam",
                "ranges": [[{"subnet": POD_SUBNET}]],
                "dataDir": self.ipam_dir(),
            }
        })
    }

    /// The runtime side of pod `namespace/name`: a new netns, a container
    /// id, `CNI_ARGS` as the kubelet writes them.
    pub fn runtime_conf(netns: &Netns, namespace: &str, name: &str) -> RuntimeConf {
        RuntimeConf {
            container_id: format!("demo-{name}-{}", random_hex(12)),
            netns: Some(netns.path().to_owned()),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), name.into()),
            ],
            capability_args: Default::default(),
        }
    }

    /// ADD of pod `namespace/name` through the plugin; starts its servers.
    /// Returns the ADD's run and how long it took.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<(&Pod, Duration)> {
        let netns = Netns::new().context("creating a pod netns")?;
        let rt = Self::runtime_conf(&netns, namespace, name);
        let started = Instant::now();
        let run = exec_plugin(&self.node, "ADD", &rt, &self.net_conf())?;
        let took = started.elapsed();
        let result = run.result().context("sluice ADD failed")?;
        let ip = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .with_context(|| format!("no IPv4 address in {result}"))?;
        let host_veth = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| {
                i.get("sandbox")
                    .is_none_or(|s| s.as_str().unwrap_or("").is_empty())
            })
            .and_then(|i| i["name"].as_str())
            .unwrap_or("?")
            .to_owned();
        // Recorded before anything else can fail: from here DEL cleans up.
        self.pods.push(Pod {
            name: format!("{namespace}/{name}"),
            ip,
            host_veth,
            result,
            rt,
            deleted: false,
            _servers: Vec::new(),
            netns,
        });
        let pod = self.pods.last_mut().context("just pushed")?;
        for port in PORTS {
            let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            let banner = format!("hello from {} port {port}", pod.name);
            pod._servers
                .push(BannerServer::start(&pod.netns, bind, &banner)?);
        }
        Ok((pod, took))
    }

    /// The pods.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pod `namespace/name`.
    pub fn pod(&self, name: &str) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    /// DEL of pod `index` through the plugin (with the ADD result as
    /// `prevResult`, as a runtime does).
    pub fn del_pod(&mut self, index: usize) -> anyhow::Result<(Outcome, Duration)> {
        let mut conf = self.net_conf();
        let pod = self.pods.get_mut(index).context("no such pod")?;
        conf["prevResult"] = pod.result.clone();
        let started = Instant::now();
        let run = exec_plugin(&self.node, "DEL", &pod.rt, &conf)?;
        let took = started.elapsed();
        run.result().context("sluice DEL failed")?;
        pod.deleted = true;
        Ok((run, took))
    }

    /// The pod's runtime conf (for printing the command line).
    pub fn pod_rt(&self, index: usize) -> Option<&RuntimeConf> {
        self.pods.get(index).map(|p| &p.rt)
    }

    /// Names of the links in the node netns.
    pub fn node_links(&self) -> anyhow::Result<Vec<String>> {
        link::link_names(&self.node)
    }

    /// A TCP connection from pod `from` to pod `to` on `port`; reads what
    /// the server says when it connects.
    pub fn reach(
        &self,
        from: &str,
        to: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<Reach> {
        let src = &self.pod(from)?.netns;
        let addr = SocketAddr::new(IpAddr::V4(self.pod(to)?.ip), port);
        Ok(reach_from(src, addr, timeout))
    }

    /// What the pods left in the state and IPAM directories: attachment
    /// records (`<container>@<ifname>.json`), address reservations (files
    /// named by the address) and the per-container index (`by-id/`).
    pub fn records_left(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in [self.state_dir(), self.ipam_dir()] {
            walk(&dir, &mut files);
        }
        files
            .into_iter()
            .filter(|path| {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let by_id = path
                    .parent()
                    .is_some_and(|p| p.file_name().is_some_and(|n| n == "by-id"));
                name.contains('@')
                    || name.parse::<IpAddr>().is_ok()
                    || (by_id && !name.starts_with('.'))
            })
            .collect()
    }

    /// Drops everything in order (see [`Drop`]).
    pub fn tear_down(self) {
        drop(self);
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A TCP connection from `ns` to `addr`, reading what the server says.
pub fn reach_from(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Reach {
    match tests::traffic::tcp_connect(ns, addr, timeout) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            Reach::Connected(text.trim().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Err(_) => Reach::TimedOut,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // DEL every pod still there, as the runtime would, while the node
        // netns exists; DEL needs neither the agent nor the pod netns.
        for index in 0..self.pods.len() {
            if !self.pods[index].deleted {
                if let Err(err) = self.del_pod(index) {
                    eprintln!("warning: DEL of {}: {err:#}", self.pods[index].name);
                }
            }
        }
        self.pods.clear();
        // Killed before its pins go; then the fields drop: pins, node,
        // peer, scratch dir.
        self.agent = None;
    }
}

/// `sluicectl` with the demo's pins, state dir and socket in its
/// environment (`SLUICE_BPFFS_DIR`, `SLUICE_STATE_DIR`,
/// `SLUICE_API_SOCKET`), so command lines read as a user types them.
pub struct Ctl {
    env: Vec<(&'static str, PathBuf)>,
}

impl Ctl {
    /// For `cluster`.
    pub fn new(cluster: &Cluster) -> Self {
        Self {
            env: vec![
                ("SLUICE_BPFFS_DIR", cluster.bpffs.path().to_owned()),
                ("SLUICE_STATE_DIR", cluster.state_dir()),
                ("SLUICE_API_SOCKET", cluster.socket()),
            ],
        }
    }

    /// `export ...` lines for the environment.
    pub fn env_lines(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|(k, v)| format!("export {k}={}", v.display()))
            .collect()
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin("sluicectl")?);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(args).env_remove("RUST_LOG");
        Ok(cmd)
    }

    /// Runs `sluicectl ARGS` (at most 30 s); stdout, or the failure with
    /// stderr.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = output_timeout(&mut self.command(args)?, Duration::from_secs(30))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`sluicectl {}` failed ({}):\n{}{stdout}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Starts `sluicectl ARGS` (a `monitor`) in the background, collecting
    /// its stdout lines; returns once it printed its first line (it is
    /// watching) or fails after `timeout`.
    pub fn spawn_monitor(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Background> {
        let mut cmd = self.command(args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting sluicectl monitor")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let reader = std::thread::Builder::new()
            .name("monitor-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })?;
        let mut bg = Background {
            child,
            lines,
            reader: Some(reader),
        };
        let deadline = Instant::now() + timeout;
        while bg.lines().is_empty() {
            if let Some(status) = bg.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = bg.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("sluicectl monitor exited at once ({status}): {err}");
            }
            if Instant::now() >= deadline {
                bail!("sluicectl monitor printed nothing in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(bg)
    }
}

/// A background `sluicectl`; killed on drop.
pub struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Background {
    /// The lines it printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until it exits (`--count` or `--duration`), `stop()` says so,
    /// or `timeout` passes (then kills it); returns everything it printed.
    pub fn finish(
        mut self,
        timeout: Duration,
        stop: impl Fn() -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() && Instant::now() < deadline && !stop() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(self.lines())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`Prober`] counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeStats {
    /// Connections tried to the allowed port.
    pub allowed_tries: u64,
    /// Of those, failed.
    pub allowed_failed: u64,
    /// Connections tried to the denied port.
    pub denied_tries: u64,
    /// Of those, connected.
    pub denied_connected: u64,
}

/// From a pod's netns, over and over: a connection to an allowed port
/// (must connect) and one to a denied port (must not). Stopped on drop.
pub struct Prober {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Prober {
    /// Starts probing `allowed` and `denied` from `ns`.
    pub fn start(ns: &Netns, allowed: SocketAddr, denied: SocketAddr) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let (flag, c) = (stop.clone(), counts.clone());
        let thread = ns.spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                c[0].fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(&allowed, Duration::from_secs(1)).is_err() {
                    c[1].fetch_add(1, Ordering::Relaxed);
                }
                c[2].fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(&denied, Duration::from_millis(100)).is_ok() {
                    c[3].fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })?;
        Ok(Self {
            stop,
            counts,
            thread: Some(thread),
        })
    }

    /// Stops and returns the counts.
    pub fn stop(mut self) -> anyhow::Result<ProbeStats> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the prober panicked"))??;
        }
        let c = &self.counts;
        Ok(ProbeStats {
            allowed_tries: c[0].load(Ordering::Relaxed),
            allowed_failed: c[1].load(Ordering::Relaxed),
            denied_tries: c[2].load(Ordering::Relaxed),
            denied_connected: c[3].load(Ordering::Relaxed),
        })
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
