//! Two pods on one node through the real `sluice` plugin (routed mode,
//! sluice-ipam) and the real agent (`--manifests`, enforcement on), with
//! iperf3, a connect/close loop, `sluicectl sync` timings and the time from
//! a policy change to enforcement. Addresses 10.199.70.0/24 (node
//! 10.199.71.1); traffic only between the bench's namespaces.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use tests::{bin_dir, random_hex, Agent, BpffsDir, Netns, Sluicectl};

const SUBNET: &str = "10.199.70.0/24";
const NODE_ADDRESS: &str = "10.199.71.1";
pub const IPERF_PORT: u16 = 5201;
pub const CPS_PORT: u16 = 7000;
pub const PROBE_PORT: u16 = 7001;
pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;
pub const CHAIN: &str = "SLUICE-BENCH";

/// Pods a and b (eBPF host routing, the default), and la and lb (legacy
/// routing; no policy selects them).
const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: pol, labels: {team: x}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: pol, labels: {app: a}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: pol, labels: {app: b}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: la, namespace: pol, labels: {app: la}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: lb, namespace: pol, labels: {app: lb}}\n";

/// A client/server pod pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// a -> b, `hostRouting: ebpf` (the default): from_pod forwards with
    /// bpf_redirect_peer, so pod-to-pod traffic never reaches the node's
    /// netfilter forward hook.
    HostRouting,
    /// la -> lb, `hostRouting: legacy`: the node's stack routes every
    /// packet, through netfilter's forward hook, where the iptables and
    /// nftables baselines sit.
    Legacy,
}

impl Pair {
    fn indices(self) -> (usize, usize) {
        match self {
            Pair::HostRouting => (0, 1),
            Pair::Legacy => (2, 3),
        }
    }
}

/// The policy selecting the server pod b that allows a on the test ports
/// (`probe`: with the probe port too).
pub fn allow(probe: bool) -> String {
    let mut ports =
        format!("{{protocol: TCP, port: {IPERF_PORT}}}, {{protocol: TCP, port: {CPS_PORT}}}");
    if probe {
        ports.push_str(&format!(", {{protocol: TCP, port: {PROBE_PORT}}}"));
    }
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-a, namespace: pol}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]\n    ports: [{ports}]\n")
}

/// 10 000 rules selecting b (100 policies x 100 ingress rules), each from
/// another peer (namespace team=y) and its own port: none matches a's traffic.
pub fn many() -> String {
    let mut text = String::new();
    for p in 0..100 {
        text.push_str(&format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: many-{p}, namespace: pol}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n"));
        for r in 0..100 {
            let port = 10_000 + p * 100 + r;
            let peer = if r % 2 == 0 {
                "{namespaceSelector: {matchLabels: {team: y}}}".to_owned()
            } else {
                format!("{{ipBlock: {{cidr: 198.18.{}.0/24}}}}", r % 256)
            };
            text.push_str(&format!(
                "  - from: [{peer}]\n    ports: [{{protocol: TCP, port: {port}}}]\n"
            ));
        }
    }
    text
}

/// The same 10 000 rules as linear iptables rules in a chain of their own
/// (none matches the test traffic: other sources, ports 10000-19999; the
/// last one accepts the pod subnet).
fn iptables_rules() -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n");
    for i in 0..9_999u32 {
        let port = 10_000 + i;
        s.push_str(&format!(
            "-A {CHAIN} -s 198.18.{}.0/24 -d {SUBNET} -p tcp --dport {port} -j ACCEPT\n",
            i % 256
        ));
    }
    s.push_str(&format!(
        "-A {CHAIN} -s {SUBNET} -d {SUBNET} -j ACCEPT\nCOMMIT\n"
    ));
    s
}

/// The nftables baseline's table in the node namespace (a fixed name is
/// fine there: the namespace is the bench's own).
pub const NFT_TABLE: &str = "sluice_bench";
const NFT_COUNTER: &str = "reached_last_rule";

/// Element `i` of the nftables set: the same rule as iptables rule `i`
/// (source 198.18.(i mod 256).0/24, the pod subnet, TCP port 10000 + i)
/// for i < 50 000; beyond that ports wrap and the sources move to
/// 198.19.0.0/16, so every element stays distinct (64k rules do not fit
/// 55 536 ports). None matches the test traffic.
fn nft_element(i: u32) -> String {
    let second = if i < 50_000 { 18 } else { 19 };
    format!(
        "198.{second}.{}.0/24 . {SUBNET} . {}",
        i % 256,
        10_000 + i % 50_000
    )
}

/// `n` rules as one nftables rule with a set lookup (a concatenated
/// interval set: source . destination . port), in the forward hook where
/// the iptables baseline sits, then the same last rule accepting the pod
/// subnet, with a counter proving the traffic walked the chain.
fn nft_ruleset(n: u32) -> String {
    let elements: Vec<String> = (0..n).map(nft_element).collect();
    let elements = if elements.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", elements.join(", "))
    };
    format!(
        "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
           counter {NFT_COUNTER} {{ }}\n\
           set rules {{ type ipv4_addr . ipv4_addr . inet_service; flags interval;{elements} }}\n\
           chain forward {{ type filter hook forward priority 0; policy accept;\n\
             ip saddr . ip daddr . tcp dport @rules accept\n\
             ip saddr {SUBNET} ip daddr {SUBNET} counter name {NFT_COUNTER} accept\n\
           }}\n\
         }}\n"
    )
}

pub struct Pod {
    name: &'static str,
    legacy: bool,
    pub ns: Netns,
    pub cid: String,
    pub ip: Ipv4Addr,
}

pub struct World {
    pub node: Netns,
    bpffs: BpffsDir,
    tmp: tempfile::TempDir,
    net: String,
    agent: Option<Agent>,
    pub pods: Vec<Pod>,
    servers: Vec<Sink>,
    iperf: Vec<Child>,
    chain_loaded: bool,
    jumped: bool,
    /// Elements in the nftables baseline's set, when its table is loaded.
    nft_rules: Option<u32>,
}

/// Runs `cmd` with its network namespace switched to `ns`.
pub fn in_ns(ns: &Netns, cmd: &mut Command) {
    let fd = ns.fd().as_raw_fd();
    // SAFETY: only setns between fork and exec, on an fd the parent keeps open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn output(cmd: &mut Command, input: Option<&str>) -> anyhow::Result<String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

impl World {
    pub fn new() -> anyhow::Result<Self> {
        let node = Netns::new()?;
        let tmp = tempfile::Builder::new()
            .prefix("sluice-bench-pol-")
            .tempdir()?;
        tests::link::add_veth(&node, "node0", &node, "node0p")?;
        tests::link::add_address(&node, "node0", format!("{NODE_ADDRESS}/32").parse()?)?;
        tests::link::set_up(&node, "node0")?;
        tests::link::set_up(&node, "node0p")?;
        let mut w = World {
            node,
            bpffs: BpffsDir::new(),
            tmp,
            net: format!("bench-pol-{}", random_hex(6)),
            agent: None,
            pods: Vec::new(),
            servers: Vec::new(),
            iperf: Vec::new(),
            chain_loaded: false,
            jumped: false,
            nft_rules: None,
        };
        std::fs::create_dir_all(w.path("manifests"))?;
        w.write("00-base.yaml", BASE)?;
        w.write("10-allow.yaml", &allow(true))?;
        let args = [
            "--manifests".to_owned(),
            w.path("manifests").display().to_string(),
            "--state-dir".into(),
            w.path("state").display().to_string(),
            "--api-socket".into(),
            w.path("run/agent.sock").display().to_string(),
            "--policy-enforcement".into(),
            "true".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.agent = Some(Agent::start(&w.node, &w.bpffs, &args)?);
        for (name, legacy) in [("a", false), ("b", false), ("la", true), ("lb", true)] {
            w.add_pod(name, legacy)?;
        }
        for (server, ports) in [(1, &[CPS_PORT, PROBE_PORT][..]), (3, &[CPS_PORT][..])] {
            for port in ports {
                let sink = Sink::start(&w.pods[server].ns, *port)?;
                w.servers.push(sink);
            }
            let mut cmd = Command::new("taskset");
            cmd.args([
                "-c",
                &SERVER_CPU.to_string(),
                "iperf3",
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            in_ns(&w.pods[server].ns, &mut cmd);
            w.iperf.push(cmd.spawn().context("iperf3 -s")?);
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(w)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.path("manifests").join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.path("manifests").join(name))?;
        Ok(())
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.path("manifests").join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// `sluicectl sync -o json`.
    pub fn sync(&self) -> anyhow::Result<Value> {
        let args = [
            "--state-dir".to_owned(),
            self.path("state").display().to_string(),
            "--api-socket".into(),
            self.path("run/agent.sock").display().to_string(),
            "sync".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = Sluicectl::new(&self.bpffs).json(&args)?;
        ensure!(v["ok"] == true, "sync: {v}");
        Ok(v)
    }

    fn conf(&self, legacy: bool) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": self.net,
            "type": "sluice",
            "bpffsDir": self.bpffs.path(),
            "stateDir": self.path("state"),
            "agentSocket": self.path("run/agent.sock"),
            "waitForPolicy": true,
            "policyTimeoutMs": 5000,
            "ipam": {"type": "sluice-ipam", "ranges": [[{"subnet": SUBNET}]], "dataDir": self.path("ipam")},
        });
        if legacy {
            conf["hostRouting"] = "legacy".into();
        }
        conf
    }

    fn plugin(
        &self,
        command: &str,
        cid: &str,
        ns: &Netns,
        pod: &str,
        legacy: bool,
    ) -> anyhow::Result<Value> {
        let mut cmd = Command::new(bin_dir().join("sluice"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir())
            .env("CNI_NETNS", ns.path())
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=pol;K8S_POD_NAME={pod}"),
            );
        in_ns(&self.node, &mut cmd);
        let out = output(&mut cmd, Some(&self.conf(legacy).to_string()))?;
        Ok(serde_json::from_str(&out).unwrap_or(Value::Null))
    }

    fn add_pod(&mut self, name: &'static str, legacy: bool) -> anyhow::Result<()> {
        let ns = Netns::new()?;
        let cid = format!("bench-pol-{name}-{}", random_hex(8));
        let result = self.plugin("ADD", &cid, &ns, name, legacy)?;
        let ip = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                i["address"]
                    .as_str()?
                    .split('/')
                    .next()?
                    .parse::<Ipv4Addr>()
                    .ok()
            })
            .next()
            .with_context(|| format!("no IPv4 address in {result}"))?;
        self.pods.push(Pod {
            name,
            legacy,
            ns,
            cid,
            ip,
        });
        Ok(())
    }

    fn server(&self, pair: Pair, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pods[pair.indices().1].ip), port)
    }

    /// Loads the iptables chain (once) and jumps to it from FORWARD, or
    /// removes the jump.
    pub fn iptables(&mut self, on: bool) -> anyhow::Result<()> {
        if on && !self.chain_loaded {
            let mut cmd = Command::new("iptables-restore");
            cmd.arg("-n");
            in_ns(&self.node, &mut cmd);
            output(&mut cmd, Some(&iptables_rules()))?;
            self.chain_loaded = true;
        }
        if on != self.jumped {
            let mut cmd = Command::new("iptables");
            cmd.args([if on { "-I" } else { "-D" }, "FORWARD", "-j", CHAIN]);
            in_ns(&self.node, &mut cmd);
            output(&mut cmd, None)?;
            self.jumped = on;
        }
        Ok(())
    }

    /// Loads the nftables baseline with `n` rules in its set (replacing any
    /// table loaded before), or removes it (`None`).
    pub fn nftables(&mut self, n: Option<u32>) -> anyhow::Result<()> {
        if n == self.nft_rules {
            return Ok(());
        }
        match n {
            Some(n) => super::nft::apply(&self.node, &nft_ruleset(n))?,
            None => super::nft::delete_table(&self.node, "inet", NFT_TABLE)?,
        }
        self.nft_rules = n;
        Ok(())
    }

    /// Packets that reached the nftables baseline's last rule since its
    /// table was loaded.
    pub fn nftables_last_rule_packets(&self) -> anyhow::Result<u64> {
        super::nft::counter_packets(&self.node, "inet", NFT_TABLE, NFT_COUNTER)
    }

    /// Packets that reached the last iptables rule (proof the traffic
    /// walked the whole chain).
    pub fn iptables_last_rule_packets(&self) -> anyhow::Result<u64> {
        let mut cmd = Command::new("iptables");
        cmd.args(["-L", CHAIN, "-n", "-v", "-x"]);
        in_ns(&self.node, &mut cmd);
        let out = output(&mut cmd, None)?;
        let last = out.lines().last().context("empty chain listing")?;
        Ok(last
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// One iperf3 run from the pair's client to its server: Gbit/s received.
    pub fn iperf(&self, pair: Pair, secs: u32) -> anyhow::Result<f64> {
        let (client, server) = pair.indices();
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c",
            &CLIENT_CPU.to_string(),
            "iperf3",
            "-c",
            &self.pods[server].ip.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ]);
        in_ns(&self.pods[client].ns, &mut cmd);
        let out = output(&mut cmd, None)?;
        let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no sum_received in iperf3 output: {}", v["error"]))?;
        Ok(bps / 1e9)
    }

    /// Connections per second: connect, close (RST: no TIME_WAIT) for
    /// `secs` seconds from the pair's client (pinned to CLIENT_CPU) to its
    /// server's CPS_PORT.
    pub fn cps(&self, pair: Pair, secs: f64) -> anyhow::Result<f64> {
        let addr = self.server(pair, CPS_PORT);
        self.pods[pair.indices().0].ns.run(move || {
            pin(CLIENT_CPU);
            let started = Instant::now();
            let (mut n, mut failed) = (0u64, 0u64);
            while started.elapsed().as_secs_f64() < secs {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(s) => {
                        linger0(&s);
                        n += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            if failed > 0 {
                eprintln!("connect loop: {failed} attempts failed (200 ms timeout), {n} succeeded");
            }
            Ok(n as f64 / started.elapsed().as_secs_f64())
        })
    }

    /// Whether a connection to b:PROBE_PORT is established within `timeout`.
    pub fn probe(&self, timeout: Duration) -> bool {
        let addr = self.server(Pair::HostRouting, PROBE_PORT);
        self.pods[0]
            .ns
            .run(move || {
                Ok(TcpStream::connect_timeout(&addr, timeout)
                    .map(|s| linger0(&s))
                    .is_ok())
            })
            .unwrap_or(false)
    }
}

fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut c in std::mem::take(&mut self.iperf) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.servers.clear();
        let _ = self.iptables(false);
        if let Err(e) = self.nftables(None) {
            eprintln!("warning: removing the nftables table: {e:#}");
        }
        if self.chain_loaded {
            for op in ["-F", "-X"] {
                let mut cmd = Command::new("iptables");
                cmd.args([op, CHAIN]);
                in_ns(&self.node, &mut cmd);
                let _ = output(&mut cmd, None);
            }
        }
        let pods = std::mem::take(&mut self.pods);
        for p in &pods {
            if let Err(e) = self.plugin("DEL", &p.cid, &p.ns, p.name, p.legacy) {
                eprintln!("DEL {}: {e:#}", p.cid);
            }
        }
        drop(pods);
        self.agent = None;
    }
}

/// Accepts and drops connections on `[::]:port`, on SERVER_CPU.
struct Sink {
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &Netns, port: u16) -> anyhow::Result<Self> {
        let listener = Arc::new(ns.run(move || {
            let listener =
                TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))?;
            // std listens with a backlog of 128. At 20k+ connections/s an
            // accept thread that loses its CPU for a few ms overflows it,
            // the kernel drops the SYN, and the client's retransmission
            // comes after 1 s, past the connect loop's 200 ms timeout: each
            // such drop cost the loop 200 ms in every scenario alike.
            // listen() again on a listening socket only resizes the queue.
            // SAFETY: listen on a socket we own.
            if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(listener)
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, flag) = (listener.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            pin(SERVER_CPU);
            for conn in l.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
        Ok(Self {
            listener,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown on an fd the listener keeps open; wakes accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
