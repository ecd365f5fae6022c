//! CNI plugins run by hand, the way libcni runs a conflist, inside a node
//! namespace the test made: [`exec_plugin`] runs one plugin binary with the
//! `CNI_*` environment and a config on stdin; [`Chain`] runs a whole
//! conflist as libcni 1.x does (`AddNetworkList`, `CheckNetworkList`,
//! `DelNetworkList`): ADD in order, each plugin's `prevResult` the result of
//! the one before; CHECK and DEL with the cached result of the whole chain,
//! DEL in reverse order; `runtimeConfig` holds the capability arguments a
//! plugin declares in its `capabilities` (`portMappings`, `bandwidth`, ...).
//!
//! Plugin binaries are looked up in [`cni_path`]: the Sluice binaries
//! ([`crate::bin_dir`]) first, then Debian's reference plugins
//! (`/usr/lib/cni`). Plus small readers of the node's state that the
//! plugins change (`ip -j`, `tc -j`, `iptables-save`, sysctls) and
//! [`SluiceNode`], a node netns with an agent's pins and a state dir.

use std::{
    fmt,
    io::{Read as _, Seek as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

use crate::{
    random_hex,
    runtime::{in_netns, Sluice, REFERENCE_PLUGIN_DIR},
    Agent, Netns,
};

/// How long one plugin call may take (the `dhcp` IPAM waits up to its
/// daemon's 10 s timeout for a lease).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `CNI_PATH`: the Sluice binaries, then the reference plugins.
pub fn cni_path() -> String {
    format!("{}:{REFERENCE_PLUGIN_DIR}", crate::bin_dir().display())
}

/// The binary of plugin `plugin_type`: the first `CNI_PATH` directory that
/// has it.
pub fn find_plugin(plugin_type: &str) -> anyhow::Result<PathBuf> {
    std::env::split_paths(&cni_path())
        .map(|dir| dir.join(plugin_type))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no plugin {plugin_type:?} in {}: build Sluice (`cargo build -p cni-plugin`) \
                 and install containernetworking-plugins (`cargo xtask setup`)",
                cni_path()
            )
        })
}

/// What the runtime passes besides the network config (libcni's
/// `RuntimeConf`).
#[derive(Clone, Debug)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (`None` passes it empty, as containerd's second DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments: each goes into `runtimeConfig` of the plugins
    /// that declare it in `capabilities`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// A container with a random id whose `ifname` is in `netns`, with
    /// `CNI_ARGS` naming a pod (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`) as
    /// the kubelet does.
    pub fn new(netns: &Netns, ifname: &str, pod_name: &str) -> Self {
        Self {
            container_id: format!("sluice-test-{}", random_hex(16)),
            netns: Some(netns.path().to_owned()),
            ifname: ifname.into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "sluice-test".into()),
                ("K8S_POD_NAME".into(), pod_name.into()),
            ],
            capability_args: Map::new(),
        }
    }

    /// `CNI_ARGS` as the runtime writes it.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// One plugin run: what it printed and how it exited.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The plugin's `type`.
    pub plugin: String,
    /// `CNI_COMMAND`.
    pub command: String,
    /// The config it got on stdin.
    pub stdin: Value,
    /// Exit code (`None`: killed by a signal).
    pub rc: Option<i32>,
    /// The result or error JSON.
    pub stdout: String,
    /// Its log.
    pub stderr: String,
}

impl Outcome {
    /// The result JSON (`null` for an empty stdout); fails with the error
    /// object and stderr unless the plugin exited 0.
    pub fn result(&self) -> anyhow::Result<Value> {
        if self.rc != Some(0) {
            bail!("{self}");
        }
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("{} {}: stdout is not JSON", self.plugin, self.command))
    }

    /// The `code` of the error object, when it failed with one.
    pub fn error_code(&self) -> Option<u64> {
        if self.rc == Some(0) {
            return None;
        }
        serde_json::from_str::<Value>(&self.stdout).ok()?["code"].as_u64()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} exited {:?}: {}",
            self.plugin,
            self.command,
            self.rc,
            self.stdout.trim()
        )?;
        if !self.stderr.trim().is_empty() {
            write!(f, "\n---- stderr ----\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// Runs plugin `conf["type"]` for `command` inside `node` (the plugin's
/// "host" namespace), with only `PATH` and the `CNI_*` variables in its
/// environment and `conf` on stdin; kills it after [`PLUGIN_TIMEOUT`].
pub fn exec_plugin(
    node: &Netns,
    command: &str,
    rt: &RuntimeConf,
    conf: &Value,
) -> anyhow::Result<Outcome> {
    let plugin = conf["type"]
        .as_str()
        .context("the plugin config has no \"type\"")?
        .to_owned();
    let binary = find_plugin(&plugin)?;
    let mut stdin = tempfile::tempfile().context("creating a temp file")?;
    stdin.write_all(serde_json::to_string(conf)?.as_bytes())?;
    stdin.rewind()?;
    let mut stdout = tempfile::tempfile().context("creating a temp file")?;
    let mut stderr = tempfile::tempfile().context("creating a temp file")?;
    let mut cmd = Command::new(&binary);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &rt.container_id)
        .env(
            "CNI_NETNS",
            rt.netns.as_deref().unwrap_or(Path::new("")).as_os_str(),
        )
        .env("CNI_IFNAME", &rt.ifname)
        .env("CNI_PATH", cni_path())
        .stdin(stdin)
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?);
    if !rt.args.is_empty() {
        cmd.env("CNI_ARGS", rt.cni_args());
    }
    in_netns(&mut cmd, node);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{plugin} {command} still running after {PLUGIN_TIMEOUT:?}, killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    stdout.rewind()?;
    stdout.read_to_string(&mut out)?;
    stderr.rewind()?;
    stderr.read_to_string(&mut err)?;
    Ok(Outcome {
        plugin,
        command: command.into(),
        stdin: conf.clone(),
        rc: status.code(),
        stdout: out,
        stderr: err,
    })
}

/// A conflist run the way libcni runs it (see the module docs).
#[derive(Clone, Debug)]
pub struct Chain {
    conflist: Value,
}

impl Chain {
    /// A chain of `plugins` named `name` in CNI version `cni_version`.
    pub fn new(name: &str, cni_version: &str, plugins: Vec<Value>) -> Self {
        Self {
            conflist: json!({
                "cniVersion": cni_version,
                "name": name,
                "plugins": plugins,
            }),
        }
    }

    /// The conflist.
    pub fn conflist(&self) -> &Value {
        &self.conflist
    }

    /// `name`.
    pub fn name(&self) -> &str {
        self.conflist["name"].as_str().unwrap_or_default()
    }

    fn plugins(&self) -> &[Value] {
        self.conflist["plugins"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The config plugin `index` gets on stdin (libcni's `buildOneConfig`):
    /// its own object plus the list's `name` and `cniVersion`, the
    /// `prevResult` when there is one, and `runtimeConfig` with each
    /// capability it declares that the runtime has an argument for
    /// (`injectRuntimeConfig`).
    pub fn plugin_conf(&self, index: usize, rt: &RuntimeConf, prev: Option<&Value>) -> Value {
        let mut conf = self.plugins()[index].clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut runtime_config = Map::new();
        if let Some(caps) = conf["capabilities"].as_object() {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(arg) = rt.capability_args.get(cap) {
                        runtime_config.insert(cap.clone(), arg.clone());
                    }
                }
            }
        }
        if !runtime_config.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime_config);
        }
        conf
    }

    /// ADD: every plugin in order; returns every run (the last one's result
    /// is the chain's). Fails at the first failing plugin, as libcni does
    /// (the runtime then calls DEL).
    pub fn add(&self, node: &Netns, rt: &RuntimeConf) -> anyhow::Result<Vec<Outcome>> {
        let mut runs: Vec<Outcome> = Vec::new();
        let mut prev: Option<Value> = None;
        for index in 0..self.plugins().len() {
            let conf = self.plugin_conf(index, rt, prev.as_ref());
            let run = exec_plugin(node, "ADD", rt, &conf)?;
            let result = run
                .result()
                .with_context(|| format!("ADD of plugin {index} of {} failed", self.name()))?;
            prev = Some(result);
            runs.push(run);
        }
        Ok(runs)
    }

    /// ADD; returns the chain's result (what libcni caches).
    pub fn add_result(&self, node: &Netns, rt: &RuntimeConf) -> anyhow::Result<Value> {
        let runs = self.add(node, rt)?;
        runs.last()
            .context("an empty chain has no result")?
            .result()
    }

    /// CHECK: every plugin in order, each with the cached result; fails at
    /// the first failing plugin, as libcni does.
    pub fn check(
        &self,
        node: &Netns,
        rt: &RuntimeConf,
        cached: &Value,
    ) -> anyhow::Result<Vec<Outcome>> {
        let mut runs = Vec::new();
        for index in 0..self.plugins().len() {
            let conf = self.plugin_conf(index, rt, Some(cached));
            let run = exec_plugin(node, "CHECK", rt, &conf)?;
            run.result()
                .with_context(|| format!("CHECK of plugin {index} of {} failed", self.name()))?;
            runs.push(run);
        }
        Ok(runs)
    }

    /// CHECK of every plugin, in order, each with the cached result, going
    /// on past failures: every outcome, for a caller that judges each
    /// plugin on its own (e.g. to tell a reference plugin's known bug from
    /// a failure of the plugin under test).
    pub fn check_each(
        &self,
        node: &Netns,
        rt: &RuntimeConf,
        cached: &Value,
    ) -> anyhow::Result<Vec<Outcome>> {
        (0..self.plugins().len())
            .map(|index| {
                let conf = self.plugin_conf(index, rt, Some(cached));
                exec_plugin(node, "CHECK", rt, &conf)
            })
            .collect()
    }

    /// DEL: every plugin in reverse order, each with the cached result
    /// (`None` when the runtime has none). Fails at the first failing
    /// plugin, as libcni does.
    pub fn del(
        &self,
        node: &Netns,
        rt: &RuntimeConf,
        cached: Option<&Value>,
    ) -> anyhow::Result<Vec<Outcome>> {
        let mut runs = Vec::new();
        for index in (0..self.plugins().len()).rev() {
            let conf = self.plugin_conf(index, rt, cached);
            let run = exec_plugin(node, "DEL", rt, &conf)?;
            run.result()
                .with_context(|| format!("DEL of plugin {index} of {} failed", self.name()))?;
            runs.push(run);
        }
        Ok(runs)
    }
}

/// Runs `program ARGS` inside `ns` (at most 30 s); returns stdout, fails
/// with stderr.
pub fn run_in(ns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    in_netns(&mut cmd, ns);
    crate::runtime::run_timeout(&mut cmd, Duration::from_secs(30))
}

/// `ip -j ARGS` inside `ns`, parsed.
pub fn ip_json(ns: &Netns, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = run_in(ns, "ip", &all)?;
    if out.trim().is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_str(&out).with_context(|| format!("`ip {}` printed {out:?}", all.join(" ")))
}

/// `tc -j qdisc show dev DEV` inside `ns`, parsed.
pub fn qdiscs(ns: &Netns, dev: &str) -> anyhow::Result<Vec<Value>> {
    let out = run_in(ns, "tc", &["-j", "-s", "qdisc", "show", "dev", dev])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value =
        serde_json::from_str(&out).with_context(|| format!("`tc qdisc` printed {out:?}"))?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

/// `iptables-save` (IPv4, every table) inside `ns`.
pub fn iptables_save(ns: &Netns) -> anyhow::Result<String> {
    run_in(ns, "iptables-save", &[])
}

/// `ip6tables-save` (every table) inside `ns`.
pub fn ip6tables_save(ns: &Netns) -> anyhow::Result<String> {
    run_in(ns, "ip6tables-save", &[])
}

/// The rules and chains (`-A ...` and `:CHAIN ...` lines) of
/// `iptables-save` and `ip6tables-save` inside `ns` that mention `needle`.
pub fn iptables_rules_with(ns: &Netns, needle: &str) -> anyhow::Result<Vec<String>> {
    let text = iptables_save(ns)? + &ip6tables_save(ns)?;
    Ok(text
        .lines()
        .filter(|l| (l.starts_with("-A ") || l.starts_with(':')) && l.contains(needle))
        .map(str::to_owned)
        .collect())
}

/// A sysctl read inside `ns`, e.g. `net/ipv4/ip_forward`, trimmed.
pub fn sysctl(ns: &Netns, name: &str) -> anyhow::Result<String> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    ns.run(move || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("reading {}", path.display()))
    })
}

/// A node for Sluice: a netns, an agent's pins and a state dir
/// ([`Sluice`]), the agent itself (started by [`SluiceNode::new`]), and a
/// scratch dir (IPAM data and the like). Fields drop in order: the agent
/// is killed, the pins cleaned up, then the netns and the scratch dir go.
pub struct SluiceNode {
    agent: Option<Agent>,
    /// Pins, state dir and plugin log.
    pub sluice: Sluice,
    /// The node netns: bridges and host-side veths live here.
    pub node: Netns,
    dir: tempfile::TempDir,
}

impl SluiceNode {
    /// A node netns with `sluice-agent` running in it (its programs
    /// pinned, so ADD works).
    pub fn new() -> anyhow::Result<Self> {
        let mut node = Self::without_agent()?;
        node.agent = Some(node.sluice.start_agent(&node.node)?);
        Ok(node)
    }

    /// A node netns only (for the reference plugins).
    pub fn without_agent() -> anyhow::Result<Self> {
        Ok(Self {
            agent: None,
            sluice: Sluice::new()?,
            node: Netns::new().context("creating the node netns")?,
            dir: tempfile::Builder::new()
                .prefix("sluice-cni-")
                .tempdir()
                .context("creating a temp dir")?,
        })
    }

    /// The scratch dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A subdirectory of the scratch dir (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent, when one runs.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// Adds the keys `"type": "sluice"` needs besides the bridge options
    /// to `conf` ([`crate::runtime::SluicePaths::apply`]): our pins, state
    /// dir, log file, no policy wait.
    pub fn sluice_keys(&self, conf: &mut Value) {
        self.sluice.paths().apply(conf);
    }
}

/// A TCP server in a namespace that, to every connection, writes a banner
/// and closes, remembering who connected: "the pod's service" for port
/// mappings, and the way to see a connection's source address after NAT.
/// Stopped on drop.
pub struct BannerServer {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BannerServer {
    /// Listens on `bind` (port 0: any free port) inside `ns`.
    pub fn start(ns: &Netns, bind: SocketAddr, banner: &str) -> anyhow::Result<Self> {
        let listener = Arc::new(ns.run(move || {
            TcpListener::bind(bind).with_context(|| format!("listening on {bind}"))
        })?);
        let addr = listener.local_addr()?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, accepting, seen) = (stop.clone(), listener.clone(), peers.clone());
        let banner = banner.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("banner-{addr}"))
            .spawn(move || {
                for conn in accepting.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    if let Ok(peer) = conn.peer_addr() {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
                    }
                    let _ = conn.write_all(banner.as_bytes());
                    let _ = conn.shutdown(Shutdown::Both);
                }
            })
            .context("spawning the banner server")?;
        Ok(Self {
            addr,
            peers,
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The source address of every connection so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown(2) on a listening socket wakes a blocked accept(2).
        // SAFETY: shutdown on an fd the listener owns and keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `client` to `addr` (within `timeout`) and reads until the
/// server closes: a [`BannerServer`]'s banner.
pub fn fetch(client: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let mut stream = crate::traffic::tcp_connect(client, addr, timeout)
        .with_context(|| format!("connecting to {addr} from {}", client.name()))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(text)
}
