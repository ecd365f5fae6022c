//! `sluice-demo` (`cargo xtask demo`): Sluice in about a minute, in
//! namespaces it creates and removes. A node with an uplink to a peer host
//! and three pods made by the real `sluice` CNI plugin; NetworkPolicy from a
//! manifests directory (default deny, then one port opened), explained and
//! monitored with `sluicectl`; the XDP prefilter on the uplink; the agent
//! killed and restarted without a moment of lost policy; a clean uninstall.
//! Needs root; binaries from `$SLUICE_BIN_DIR`.
//!
//! Everything it makes is owned by drop guards: a panic, an error or Ctrl-C
//! (handled: the story stops at the next step and unwinds) removes it all.
//! Traffic only flows between the namespaces it made (10.199.40.0/24 for
//! pods, 10.199.41.0/24 for the uplink).
//!
//! `--fast` skips the pauses between steps.

#[path = "../demo/cluster.rs"]
mod cluster;

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use cluster::{Cluster, Ctl, Prober, Reach, NODE_UPLINK, POD_SUBNET, UPLINK};
use nix::sys::signal::{SigSet, Signal};
use tests::{traffic::PingLoop, world::PING_TIMEOUT};

/// Set by the signal thread on Ctrl-C / SIGTERM / SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const STEPS: usize = 9;
const PINGS: usize = 3;
/// How long a connection attempt waits for the handshake. Less than the
/// first SYN retransmission (1 s), so a dropped attempt is one SYN, one
/// drop event.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

const CLUSTER_YAML: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {kubernetes.io/metadata.name: shop}
---
apiVersion: v1
kind: Namespace
metadata:
  name: dev
  labels: {kubernetes.io/metadata.name: dev}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {role: client}}
---
apiVersion: v1
kind: Pod
metadata: {name: tester, namespace: dev, labels: {app: tester}}
";

const DEFAULT_DENY_YAML: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

const ALLOW_CLIENT_YAML: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-allow-client
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: client}
    ports:
    - {protocol: TCP, port: 8080}
";

struct Story {
    fast: bool,
    color: bool,
    step: usize,
}

impl Story {
    fn step(&mut self, title: &str) -> anyhow::Result<()> {
        self.check()?;
        self.step += 1;
        println!(
            "\n{}[{}/{STEPS}] {title}{}",
            self.paint("1"),
            self.step,
            self.paint("0")
        );
        Ok(())
    }

    /// An ANSI code when writing to a terminal.
    fn paint(&self, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m")
        } else {
            String::new()
        }
    }

    fn say(&self, text: &str) {
        println!("  {text}");
    }

    /// Prints `$ command`.
    fn command(&self, command: &str) {
        println!("  {}$ {command}{}", self.paint("36"), self.paint("0"));
    }

    /// Prints `$ command` and its real output, indented.
    fn show(&self, command: &str, output: &str) {
        self.command(command);
        for line in output.trim_end().lines() {
            println!("    {line}");
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// A pause to read by, cut short by Ctrl-C.
    fn pause(&self, secs: f64) -> anyhow::Result<()> {
        let _ = std::io::stdout().flush();
        if !self.fast {
            let until = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < until {
                self.check()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.check()
    }

    /// `sluicectl ARGS`, shown with its output.
    fn ctl(&self, ctl: &Ctl, args: &[&str]) -> anyhow::Result<String> {
        let out = ctl.run(args)?;
        self.show(&format!("sluicectl {}", args.join(" ")), &out);
        Ok(out)
    }

    /// `cat FILE`, shown (the path relative to the scratch dir).
    fn cat(&self, base: &Path, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)?;
        let shown = path.strip_prefix(base).unwrap_or(path);
        self.show(&format!("cat {}", shown.display()), &text);
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Open,
    Blocked,
}

/// A TCP connection from pod `from` to pod `to`:`port`, printed; fails the
/// demo when it does not end as `expect`ed.
fn attempt(
    story: &Story,
    cluster: &Cluster,
    from: &str,
    to: &str,
    port: u16,
    expect: Expect,
) -> anyhow::Result<()> {
    story.check()?;
    let reach = cluster.reach(from, to, port, CONNECT_TIMEOUT)?;
    let target = format!("{to}:{port}");
    let (green, red, plain) = (story.paint("32"), story.paint("31"), story.paint("0"));
    let text = match &reach {
        Reach::Connected(banner) => format!("{green}connected{plain}: {banner:?}"),
        Reach::Refused => format!("{red}refused{plain}"),
        Reach::TimedOut => format!(
            "{red}no answer in {:.1} s: dropped{plain}",
            CONNECT_TIMEOUT.as_secs_f64()
        ),
    };
    story.say(&format!("TCP {from:<11} -> {target:<15} {text}"));
    match (expect, &reach) {
        (Expect::Open, Reach::Connected(_)) | (Expect::Blocked, Reach::TimedOut) => Ok(()),
        (Expect::Open, _) => bail!("expected {from} -> {target} to connect: {reach:?}"),
        (Expect::Blocked, _) => bail!("expected {from} -> {target} to be dropped: {reach:?}"),
    }
}

/// Pings pod `to` from the peer host (through the node's uplink), printed;
/// fails unless `expect` replies come back.
fn ping_line(story: &Story, cluster: &Cluster, to: &str, expect: usize) -> anyhow::Result<()> {
    story.check()?;
    let dst = IpAddr::V4(cluster.pod(to)?.ip);
    let got = tests::ping(&cluster.peer, dst, PINGS, PING_TIMEOUT)?;
    story.say(&format!(
        "ping {to} ({dst}) from the peer host: {got}/{PINGS} replies"
    ));
    ensure!(
        got == expect,
        "expected {expect}/{PINGS} replies from {dst}, got {got}"
    );
    Ok(())
}

/// The agent's log lines about adopted pins, without timestamp and level.
fn adopted_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Adopted"))
        .map(|l| {
            l.split_once(" INFO ")
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_owned()
        })
        .collect()
}

/// The rows of `sluicectl counters` (its reasons table) that counted
/// something.
fn nonzero_counters(table: &str) -> String {
    let mut out = Vec::new();
    for (i, line) in table.lines().enumerate() {
        if line.trim().is_empty() {
            break;
        }
        let packets = line.split_whitespace().nth(3);
        if i == 0 || packets.is_some_and(|p| p != "0") {
            out.push(line);
        }
    }
    out.join("\n")
}

/// What the demo made, to check that it is gone at the end.
#[derive(Default)]
struct Made {
    paths: Vec<PathBuf>,
}

impl Made {
    /// Paths that still exist, and processes that name one of them (the
    /// agent and sluicectl get the pins and the scratch dir as arguments).
    fn left(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        // Any process still using the demo's pins or scratch dir.
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for entry in procs.flatten() {
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if self
                    .paths
                    .iter()
                    .any(|p| cmdline.contains(&*p.to_string_lossy()))
                {
                    left.push(format!(
                        "process {}: {cmdline}",
                        entry.file_name().to_string_lossy()
                    ));
                }
            }
        }
        left
    }
}

fn run(story: &mut Story, made: &mut Made) -> anyhow::Result<()> {
    // ---------------------------------------------------------------- 1
    story.step("A node, a peer host, and three pods made by the sluice CNI plugin")?;
    let mut cluster = Cluster::new()?;
    made.paths.extend([
        cluster.node.path().to_owned(),
        cluster.peer.path().to_owned(),
        cluster.bpffs.path().to_owned(),
        cluster.dir().to_owned(),
    ]);
    let base = cluster.dir().to_owned();
    story.say(&format!(
        "node netns {}: {UPLINK} {NODE_UPLINK} (the uplink)",
        cluster.node.name()
    ));
    story.say(&format!(
        "peer host netns {}: {UPLINK} {}, joined to the node's {UPLINK} by a veth",
        cluster.peer.name(),
        cluster::PEER_UPLINK
    ));
    let node_ip = Cluster::node_ip()?.to_string();
    let route = ["route", "add", POD_SUBNET, "via", &node_ip];
    tests::cni::run_in(&cluster.peer, "ip", &route)?;
    story.command(&format!(
        "ip route add {POD_SUBNET} via {node_ip}    # in the peer host"
    ));
    story.say(&format!(
        "scratch dir (manifests, state, IPAM): {}",
        base.display()
    ));
    let manifest = cluster.write_manifest("00-cluster.yaml", CLUSTER_YAML)?;
    story.cat(&base, &manifest)?;
    story.pause(2.0)?;

    let ctl = Ctl::new(&cluster);
    let agent_line = format!(
        "sluice-agent --bpffs-dir {} {} &    # in the node netns",
        cluster.bpffs.path().display(),
        cluster.agent_args().join(" ")
    );
    story.command(&agent_line);
    let ready = cluster.start_agent()?;
    let xdp = tests::link::xdp_attached(&cluster.node, UPLINK)?
        .map_or_else(|| "none".to_owned(), |mode| format!("{mode:?}"));
    story.say(&format!(
        "ready in {} ms: programs pinned; XDP on the node's {UPLINK}: {xdp}",
        ready.as_millis()
    ));
    for line in ctl.env_lines() {
        story.command(&line);
    }
    story.say("(sluicectl below reads these: the demo's own pins, state dir and socket)");

    let conf_path = base.join("net.conf");
    std::fs::write(
        &conf_path,
        serde_json::to_string_pretty(&cluster.net_conf())? + "\n",
    )?;
    story.say("the network config a container runtime hands the plugin:");
    story.cat(&base, &conf_path)?;
    story.pause(3.0)?;

    let pods = [("shop", "web"), ("shop", "client"), ("dev", "tester")];
    for (i, (namespace, name)) in pods.into_iter().enumerate() {
        story.check()?;
        let (pod, took) = cluster.add_pod(namespace, name)?;
        made.paths.push(pod.netns.path().to_owned());
        if i == 0 {
            let rt = cluster.pod_rt(0).context("the first pod")?;
            story.command(&format!(
                "CNI_COMMAND=ADD CNI_CONTAINERID={} CNI_IFNAME={} \\",
                rt.container_id, rt.ifname
            ));
            story.say(&format!(
                "    CNI_NETNS={} \\",
                rt.netns.as_deref().unwrap_or(Path::new("")).display()
            ));
            story.say(&format!("    CNI_ARGS='{}' \\", rt.cni_args()));
            story.say(&format!(
                "    CNI_PATH={} sluice < net.conf    # in the node netns",
                tests::cni::cni_path()
            ));
            let pod = cluster.pod("shop/web")?;
            for line in serde_json::to_string_pretty(&pod.result)?.lines() {
                story.say(&format!("  {line}"));
            }
            story.say(&format!(
                "ADD took {} ms and returned once the agent had the pod's policy programmed \
                 (waitForPolicy)",
                took.as_millis()
            ));
            story.pause(3.0)?;
        } else {
            story.say(&format!(
                "ADD {:<11} -> {}  host veth {}  ({} ms)",
                pod.name,
                pod.ip,
                pod.host_veth,
                took.as_millis()
            ));
        }
    }
    story.say("every pod serves TCP 8080 and 9090, answering with its name");
    story.ctl(&ctl, &["endpoints"])?;
    // The peer host reaches the pods through the node (neighbours
    // resolved before anything is counted).
    let tester = IpAddr::V4(cluster.pod("dev/tester")?.ip);
    ensure!(
        tests::wait_until(Duration::from_secs(5), || {
            tests::ping(&cluster.peer, tester, 1, Duration::from_millis(200)).is_ok_and(|n| n == 1)
        }),
        "the peer host does not reach dev/tester through the node"
    );
    story.pause(4.0)?;

    // ---------------------------------------------------------------- 2
    story.step("No policy yet: every pod reaches every pod")?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        8080,
        Expect::Open,
    )?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        9090,
        Expect::Open,
    )?;
    attempt(
        story,
        &cluster,
        "dev/tester",
        "shop/web",
        8080,
        Expect::Open,
    )?;
    attempt(
        story,
        &cluster,
        "shop/web",
        "dev/tester",
        9090,
        Expect::Open,
    )?;
    story.pause(3.0)?;

    // ---------------------------------------------------------------- 3
    story.step("Default-deny ingress for namespace shop")?;
    let deny = cluster.write_manifest("10-default-deny.yaml", DEFAULT_DENY_YAML)?;
    story.cat(&base, &deny)?;
    story.ctl(&ctl, &["sync"])?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        8080,
        Expect::Blocked,
    )?;
    attempt(
        story,
        &cluster,
        "dev/tester",
        "shop/web",
        8080,
        Expect::Blocked,
    )?;
    story.say("namespace dev has no policy: shop/web still reaches dev/tester");
    attempt(
        story,
        &cluster,
        "shop/web",
        "dev/tester",
        9090,
        Expect::Open,
    )?;
    story.pause(4.0)?;

    // ---------------------------------------------------------------- 4
    story.step("Open one port: TCP 8080 of app=web, from pods labelled role=client")?;
    let allow = cluster.write_manifest("20-web-allow-client.yaml", ALLOW_CLIENT_YAML)?;
    story.cat(&base, &allow)?;
    story.ctl(&ctl, &["sync"])?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        8080,
        Expect::Open,
    )?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        9090,
        Expect::Blocked,
    )?;
    story.say("dev/tester has no role=client label:");
    attempt(
        story,
        &cluster,
        "dev/tester",
        "shop/web",
        8080,
        Expect::Blocked,
    )?;
    story.ctl(&ctl, &["policy", "shop/web"])?;
    story.pause(5.0)?;

    // ---------------------------------------------------------------- 5
    story.step("Why? sluicectl explain, and the drops live in sluicectl monitor")?;
    fn explain(port: &str) -> [&str; 9] {
        [
            "explain",
            "--from",
            "shop/client",
            "--to",
            "shop/web",
            "--port",
            port,
            "--proto",
            "tcp",
        ]
    }
    let denied = story.ctl(&ctl, &explain("9090"))?;
    ensure!(denied.contains("DENIED"), "explain 9090: {denied}");
    let allowed = story.ctl(&ctl, &explain("8080"))?;
    ensure!(allowed.contains("ALLOWED"), "explain 8080: {allowed}");
    story.pause(3.0)?;
    let monitor_args = ["monitor", "--count", "2", "--duration", "10"];
    story.command(&format!(
        "sluicectl {} > monitor.log &",
        monitor_args.join(" ")
    ));
    let monitor = ctl.spawn_monitor(&monitor_args, Duration::from_secs(10))?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        9090,
        Expect::Blocked,
    )?;
    attempt(
        story,
        &cluster,
        "dev/tester",
        "shop/web",
        8080,
        Expect::Blocked,
    )?;
    let lines = monitor.finish(Duration::from_secs(10), || {
        INTERRUPTED.load(Ordering::Relaxed)
    })?;
    story.check()?;
    story.show("cat monitor.log", &lines.join("\n"));
    ensure!(
        lines.iter().filter(|l| l.starts_with("DROP")).count() == 2,
        "monitor saw {} drops, expected 2",
        lines.len().saturating_sub(1)
    );
    story.pause(5.0)?;

    // ---------------------------------------------------------------- 6
    story.step("The XDP prefilter on the node's uplink: drop ICMP before the stack sees it")?;
    ping_line(story, &cluster, "dev/tester", PINGS)?;
    story.ctl(&ctl, &["filter", "add", "--proto", "icmp"])?;
    ping_line(story, &cluster, "dev/tester", 0)?;
    let tester_8080 = SocketAddr::new(tester, 8080);
    match cluster::reach_from(&cluster.peer, tester_8080, CONNECT_TIMEOUT) {
        Reach::Connected(banner) => story.say(&format!(
            "TCP from the peer host to dev/tester:8080 still flows: {banner:?}"
        )),
        other => bail!("TCP from the peer host to dev/tester:8080: {other:?}"),
    }
    story.ctl(&ctl, &["filter", "list"])?;
    let counters = ctl.run(&["counters"])?;
    story.show(
        "sluicectl counters    # reasons that counted something",
        &nonzero_counters(&counters),
    );
    story.pause(4.0)?;
    story.ctl(&ctl, &["filter", "del", "--proto", "icmp"])?;
    ping_line(story, &cluster, "dev/tester", PINGS)?;
    story.ctl(&ctl, &["filter", "add", "--proto", "icmp"])?;
    story.say("(back on, for what comes next)");
    story.pause(2.0)?;

    // ---------------------------------------------------------------- 7
    story.step("kill -9 the agent: policy and prefilter stay enforced")?;
    let agent = cluster.agent()?;
    story.command(&format!("kill -9 {}", agent.pid()));
    let status = agent.sigkill()?;
    story.say(&format!("sluice-agent: {status}"));
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        8080,
        Expect::Open,
    )?;
    attempt(
        story,
        &cluster,
        "shop/client",
        "shop/web",
        9090,
        Expect::Blocked,
    )?;
    attempt(
        story,
        &cluster,
        "dev/tester",
        "shop/web",
        8080,
        Expect::Blocked,
    )?;
    ping_line(story, &cluster, "dev/tester", 0)?;
    story.say("nothing needs the agent on the packet path: programs, maps and links are pinned");
    story.pause(4.0)?;

    // ---------------------------------------------------------------- 8
    story.step("Restart it under traffic: it adopts the pins, no gap")?;
    let (client, web) = (cluster.pod("shop/client")?, cluster.pod("shop/web")?);
    let prober = Prober::start(
        &client.netns,
        SocketAddr::new(IpAddr::V4(web.ip), 8080),
        SocketAddr::new(IpAddr::V4(web.ip), 9090),
    )?;
    let pings = PingLoop::start(&cluster.peer, tester, Duration::from_millis(5))?;
    std::thread::sleep(Duration::from_millis(300));
    story.command(&agent_line);
    let ready = cluster.start_agent()?;
    story.say(&format!("ready in {} ms", ready.as_millis()));
    story.ctl(&ctl, &["sync"])?;
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.stop()?;
    let window = pings.stop()?;
    story.say(&format!(
        "meanwhile shop/client -> shop/web:8080: {} connects, {} failed; \
         -> shop/web:9090: {} tries, {} got through",
        probes.allowed_tries, probes.allowed_failed, probes.denied_tries, probes.denied_connected
    ));
    story.say(&format!(
        "meanwhile the peer host pinged dev/tester every 5 ms: {} sent, {} answered",
        window.sent, window.received
    ));
    ensure!(
        probes.allowed_failed == 0 && probes.denied_connected == 0 && probes.allowed_tries > 0,
        "policy slipped during the restart: {probes:?}"
    );
    ensure!(
        window.received == 0 && window.sent > 0,
        "ICMP passed during the restart: {window:?}"
    );
    let log = cluster.agent()?.log();
    story.say("the new agent adopted what the old one pinned:");
    for line in adopted_lines(&log) {
        story.say(&format!("  {line}"));
    }
    story.ctl(&ctl, &["status"])?;
    story.pause(5.0)?;

    // ---------------------------------------------------------------- 9
    story.step("Clean up: DEL the pods through the plugin, sluice-agent --cleanup")?;
    let records = cluster.records_left().len();
    for index in 0..cluster.pods().len() {
        story.check()?;
        let (name, veth) = {
            let pod = &cluster.pods()[index];
            (pod.name.clone(), pod.host_veth.clone())
        };
        if index == 0 {
            let rt = cluster.pod_rt(0).context("the first pod")?;
            story.command(&format!(
                "CNI_COMMAND=DEL CNI_CONTAINERID={} CNI_IFNAME={} ... sluice < net.conf",
                rt.container_id, rt.ifname
            ));
        }
        let (run, took) = cluster.del_pod(index)?;
        let gone = !cluster.node_links()?.contains(&veth);
        story.say(&format!(
            "DEL {name:<11} exit {}, {} ms; host veth {veth} gone: {gone}",
            run.rc.unwrap_or(-1),
            took.as_millis()
        ));
        ensure!(gone, "{veth} still in the node netns after DEL");
    }
    let left = cluster.records_left();
    ensure!(left.is_empty(), "DEL left state behind: {left:?}");
    story.say(&format!(
        "attachment records and IPAM reservations: {records} before, none left"
    ));
    story.ctl(&ctl, &["endpoints"])?;
    cluster.agent()?.sigterm()?;
    story.say("sluice-agent stopped (SIGTERM); its pins stay until --cleanup:");
    let out = cluster.bpffs.cleanup()?;
    story.show(
        &format!(
            "sluice-agent --cleanup --bpffs-dir {}",
            cluster.bpffs.path().display()
        ),
        &String::from_utf8_lossy(&out.stderr),
    );
    // The kernel detaches an unpinned link from a workqueue, a moment later.
    let detached = tests::wait_until(Duration::from_secs(2), || {
        tests::link::xdp_attached(&cluster.node, UPLINK).is_ok_and(|x| x.is_none())
    });
    ensure!(
        detached,
        "XDP still on the node's {UPLINK} 2 s after --cleanup"
    );
    story.say(&format!(
        "{} exists: {}; XDP on the node's {UPLINK}: none",
        cluster.bpffs.path().display(),
        cluster.bpffs.path().exists()
    ));
    story.say("removing the namespaces and the scratch dir");
    cluster.tear_down();
    let left = made.left();
    ensure!(left.is_empty(), "left behind: {left:?}");
    story.say(&format!(
        "checked: {} namespaces gone from /run/netns, the pins, the scratch dir, \
         no sluice process of ours",
        made.paths
            .iter()
            .filter(|p| p.starts_with(tests::netns::NETNS_DIR))
            .count()
    ));
    story.say("nothing left");
    Ok(())
}

/// Blocks the terminating signals in every thread and turns them into
/// [`INTERRUPTED`] on a thread of their own, so the story unwinds through
/// its drop guards instead of dying with pins and namespaces in place.
fn handle_signals() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if INTERRUPTED.swap(true, Ordering::Relaxed) {
                    eprintln!("\n{signal}: still cleaning up, a moment please");
                } else {
                    eprintln!("\n{signal}: stopping at the next step and cleaning up");
                }
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    tests::require_root("sluice-demo");
    if let Err(err) = handle_signals() {
        eprintln!("sluice-demo: {err:#}");
        return ExitCode::FAILURE;
    }
    let fast = std::env::args().skip(1).any(|a| a == "--fast");
    println!(
        "Sluice: a Kubernetes CNI with an eBPF datapath (binaries from {})",
        tests::bin_dir().display()
    );
    let started = Instant::now();
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut story = Story {
        fast,
        color,
        step: 0,
    };
    let mut made = Made::default();
    let result = run(&mut story, &mut made);
    // By here every guard has run: the cluster is gone, whatever happened.
    let left = made.left();
    if !left.is_empty() {
        eprintln!("sluice-demo: left behind: {left:?}");
    }
    match result {
        Ok(()) if left.is_empty() => {
            println!("\nDone in {:.0} s.", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Ok(()) => ExitCode::FAILURE,
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) => {
            eprintln!("sluice-demo: interrupted; everything it made is removed");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("\nsluice-demo failed: {err:#}\n(everything it made is removed)");
            ExitCode::FAILURE
        }
    }
}
