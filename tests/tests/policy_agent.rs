//! NetworkPolicy end to end: the real agent (`--manifests`), the real plugin
//! binary (`sluice` ADD/DEL, routed mode, sluice-ipam) run inside a node
//! namespace the test made, pods in namespaces of their own, real TCP
//! between them, and `sluicectl` reading what the datapath does.
//!
//! Addresses: pods in 10.199.60.0/24 and fd00:199:60::/64 (dual stack),
//! the node's own address 10.199.61.1.
//! Traffic only between namespaces the test created.
//!
//! Needs root; run serially:
//! `cargo build -p cni-agent -p cni-plugin && cargo test -p tests --test policy_agent -- --test-threads=1`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tests::{bin_dir, random_hex, require_root, wait_until, Agent, BpffsDir, Netns, Sluicectl};

const SUBNET: &str = "10.199.60.0/24";
const SUBNET6: &str = "fd00:199:60::/64";
const NODE_ADDRESS: &str = "10.199.61.1";
/// The pods' Kubernetes namespace.
const NS: &str = "pol";

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: pol
  labels: {team: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: pol, labels: {app: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: pol, labels: {app: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: pol, labels: {app: c}}
"#;

const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: pol}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

const ALLOW_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-80, namespace: pol}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: a}}
    ports:
    - {protocol: TCP, port: 80}
"#;

/// A policy about pod c only: unrelated to a → b.
const UNRELATED: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-b, namespace: pol}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: b}}
    ports:
    - {protocol: TCP, port: 8080}
"#;

const BROKEN: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: pol}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {protocol: TCP, port: 0}
"#;

/// A pod: its namespace, container id, address, endpoint id, servers.
struct Pod {
    name: String,
    ns: Netns,
    cid: String,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
    _servers: Vec<Server>,
}

/// One test's world: a node namespace with the agent's pins, a state dir,
/// an IPAM dir, a manifests dir and the API socket in a temp dir, the agent,
/// and pods added through the plugin. Dropping it DELs the pods, stops the
/// agent and removes pins and namespaces.
struct World {
    node: Netns,
    bpffs: BpffsDir,
    tmp: tempfile::TempDir,
    net: String,
    agent: Option<Agent>,
    pods: Vec<Pod>,
    agent_args: Vec<String>,
}

/// What a plugin run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// The CNI error code (the error JSON's `code`); panics unless the run
    /// failed with an error object.
    fn error_code(&self) -> u64 {
        assert_ne!(self.code, Some(0), "succeeded: {}", self.stdout);
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("no error JSON ({e}): {}\n{}", self.stdout, self.stderr));
        v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
    }

    fn ok(&self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "plugin failed: {}\n---- stderr ----\n{}",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

impl World {
    fn new(extra_agent_args: &[&str]) -> World {
        require_root("policy_agent");
        let node = Netns::new().expect("node netns");
        let tmp = tempfile::Builder::new()
            .prefix("sluice-pol-")
            .tempdir()
            .unwrap();
        // The node's own address, on an interface of the node namespace
        // (the agent finds it there: identity host).
        tests::link::add_veth(&node, "node0", &node, "node0p").expect("node0");
        tests::link::add_address(
            &node,
            "node0",
            format!("{NODE_ADDRESS}/32").parse().unwrap(),
        )
        .expect("node address");
        tests::link::set_up(&node, "node0").unwrap();
        tests::link::set_up(&node, "node0p").unwrap();
        let mut w = World {
            node,
            bpffs: BpffsDir::new(),
            tmp,
            net: format!("pol-{}", random_hex(6)),
            agent: None,
            pods: Vec::new(),
            agent_args: Vec::new(),
        };
        std::fs::create_dir_all(w.manifests()).unwrap();
        w.write_manifest("00-base.yaml", BASE);
        let mut args: Vec<String> = vec![
            "--manifests".into(),
            w.manifests().display().to_string(),
            "--state-dir".into(),
            w.state_dir().display().to_string(),
            "--api-socket".into(),
            w.socket().display().to_string(),
        ];
        args.extend(extra_agent_args.iter().map(|s| s.to_string()));
        w.agent_args = args;
        w.start_agent();
        w
    }

    fn start_agent(&mut self) -> Duration {
        let started = Instant::now();
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        self.agent = Some(Agent::start(&self.node, &self.bpffs, &args).expect("agent"));
        started.elapsed()
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent running")
    }

    fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    fn manifests(&self) -> PathBuf {
        self.tmp.path().join("manifests")
    }

    fn socket(&self) -> PathBuf {
        self.tmp.path().join("run/agent.sock")
    }

    /// Writes a manifest file atomically (tmp + rename), as editors and
    /// ConfigMap updates do.
    fn write_manifest(&self, name: &str, text: &str) {
        let tmp = self.manifests().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests().join(name)).unwrap();
    }

    fn remove_manifest(&self, name: &str) {
        std::fs::remove_file(self.manifests().join(name)).unwrap();
    }

    fn ctl(&self) -> Sluicectl {
        Sluicectl::new(&self.bpffs)
    }

    /// `--state-dir S --api-socket K ARGS`.
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

    /// `sluicectl ... ARGS`: stdout, or the failure with stderr.
    fn sluicectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let full = self.ctl_args(args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.ctl().run(&full)
    }

    /// `sluicectl -o json ... ARGS`, parsed.
    fn sluicectl_json(&self, args: &[&str]) -> Value {
        let full = self.ctl_args(args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.ctl().json(&full).expect("sluicectl -o json")
    }

    /// `sluicectl sync -o json`; panics unless it succeeds.
    fn sync(&self) -> Value {
        let v = self.sluicectl_json(&["sync"]);
        assert_eq!(v["ok"], true, "sync: {v}");
        v
    }

    fn revision(&self) -> u64 {
        self.sluicectl_json(&["status"])["datapath"]["revision"]
            .as_u64()
            .unwrap()
    }

    fn conf(&self, wait: bool, timeout_ms: u64) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.net,
            "type": "sluice",
            "bpffsDir": self.bpffs.path(),
            "stateDir": self.state_dir(),
            "agentSocket": self.socket(),
            "waitForPolicy": wait,
            "policyTimeoutMs": timeout_ms,
            "ipam": {
                "type": "sluice-ipam",
                "ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]],
                "dataDir": self.ipam_dir(),
            }
        })
    }

    /// Runs the plugin inside the node namespace with exactly the CNI
    /// environment.
    fn plugin(
        &self,
        command: &str,
        cid: &str,
        netns: Option<&Path>,
        pod: &str,
        conf: &Value,
    ) -> Run {
        let mut cmd = Command::new(bin_dir().join("sluice"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir())
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = netns {
            cmd.env("CNI_NETNS", p);
        }
        let fd = self.node.fd().as_raw_fd();
        // SAFETY: only setns between fork and exec, on an fd the parent keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawning sluice");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    }

    /// ADD of pod `name` (waitForPolicy on), with TCP servers on 80 and 81.
    fn add_pod(&mut self, name: &str) -> Duration {
        let ns = Netns::new().expect("pod netns");
        let cid = format!("pol-{name}-{}", random_hex(8));
        let run = self.plugin("ADD", &cid, Some(ns.path()), name, &self.conf(true, 5000));
        let result = run.ok();
        let addrs: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let ip = addrs
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
        let ip6 = addrs
            .iter()
            .find_map(|a| match a {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .unwrap_or_else(|| panic!("no IPv6 address in {result}"));
        let servers = vec![Server::start(&ns, 80), Server::start(&ns, 81)];
        self.pods.push(Pod {
            name: name.into(),
            ns,
            cid,
            ip,
            ip6,
            _servers: servers,
        });
        run.took
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    /// Whether a TCP connection from pod `from` to pod `to`:`port` is
    /// established within `timeout`.
    fn connects(&self, from: &str, to: &str, port: u16, timeout: Duration) -> bool {
        self.reach(from, to, port, timeout) == Reach::Connected
    }

    /// What a TCP connection attempt meets.
    fn reach(&self, from: &str, to: &str, port: u16, timeout: Duration) -> Reach {
        self.reach_addr(from, IpAddr::V4(self.pod(to).ip), port, timeout)
    }

    /// Over IPv6.
    fn reach6(&self, from: &str, to: &str, port: u16, timeout: Duration) -> Reach {
        self.reach_addr(from, IpAddr::V6(self.pod(to).ip6), port, timeout)
    }

    fn reach_addr(&self, from: &str, to: IpAddr, port: u16, timeout: Duration) -> Reach {
        let addr = SocketAddr::new(to, port);
        match tests::traffic::tcp_connect(&self.pod(from).ns, addr, timeout) {
            Ok(_) => Reach::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(_) => Reach::Dropped,
        }
    }

    /// A connection kept open, with an echo check.
    fn open(&self, from: &str, to: &str, port: u16) -> TcpStream {
        let addr = SocketAddr::new(IpAddr::V4(self.pod(to).ip), port);
        let s = tests::traffic::tcp_connect(&self.pod(from).ns, addr, Duration::from_secs(2))
            .expect("connecting");
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    }

    /// What a TCP connection from the node to pod `to`:`port` meets.
    fn reach_from_node(&self, to: &str, port: u16, timeout: Duration) -> Reach {
        let addr = SocketAddr::new(IpAddr::V4(self.pod(to).ip), port);
        match tests::traffic::tcp_connect(&self.node, addr, timeout) {
            Ok(_) => Reach::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(_) => Reach::Dropped,
        }
    }

    fn del_pod(&self, pod: &Pod) {
        let run = self.plugin(
            "DEL",
            &pod.cid,
            Some(pod.ns.path()),
            &pod.name,
            &self.conf(false, 1000),
        );
        if run.code != Some(0) {
            eprintln!("DEL {} failed: {}\n{}", pod.cid, run.stdout, run.stderr);
        }
    }

    fn host_veths(&self) -> Vec<String> {
        tests::link::link_names(&self.node)
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("slc"))
            .collect()
    }

    fn state_records(&self) -> Vec<String> {
        files(&self.state_dir())
            .into_iter()
            .filter(|n| n.contains('@'))
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut self.pods);
        for p in &pods {
            self.del_pod(p);
        }
        drop(pods);
        self.agent = None;
    }
}

/// How a connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Established.
    Connected,
    /// Refused (a RST came back: the SYN got through, nobody listens).
    Refused,
    /// Timed out (dropped).
    Dropped,
}

fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP echo server on a fixed port in a pod namespace.
struct Server {
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `[::]:port`: IPv6 and (v4-mapped, `bindv6only` is 0 in
    /// a new namespace) IPv4.
    fn start(ns: &Netns, port: u16) -> Server {
        let listener = Arc::new(
            ns.run(move || {
                Ok(TcpListener::bind(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    port,
                ))?)
            })
            .expect("listening"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (l, flag) = (listener.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
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
        });
        Server {
            listener,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown on an fd the listener keeps open; wakes accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One echo round trip on an open connection.
fn echo(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

/// A world with pods a, b, c and deny-all + allow-80 applied.
fn world_with_policy(extra: &[&str]) -> World {
    let mut w = World::new(extra);
    for p in ["a", "b", "c"] {
        w.add_pod(p);
    }
    w.write_manifest("10-deny-all.yaml", DENY_ALL);
    w.write_manifest("20-allow-80.yaml", ALLOW_80);
    let v = w.sync();
    eprintln!(
        "sync with deny-all + allow-80 (3 pods): {} µs",
        v["syncMicros"]
    );
    w
}

const SHORT: Duration = Duration::from_millis(700);
const LONG: Duration = Duration::from_secs(3);

#[test]
fn policy_is_enforced_explained_and_monitored() {
    let mut w = World::new(&["--metrics-addr", "127.0.0.1:9962"]);
    for p in ["a", "b", "c"] {
        let took = w.add_pod(p);
        eprintln!("ADD {p} with waitForPolicy: {took:?}");
    }
    // No policy: everything connects.
    assert!(w.connects("a", "b", 80, LONG));
    assert!(w.connects("a", "b", 81, LONG));
    assert!(w.connects("c", "b", 80, LONG));
    let before = w.revision();

    w.write_manifest("10-deny-all.yaml", DENY_ALL);
    w.write_manifest("20-allow-80.yaml", ALLOW_80);
    let v = w.sync();
    eprintln!("sync deny-all + allow-80: {} µs", v["syncMicros"]);
    assert!(v["revision"].as_u64().unwrap() > before, "{v}");
    // In force as soon as sync returns.
    assert!(
        w.connects("a", "b", 80, LONG),
        "the allow rule opens TCP/80"
    );
    assert!(!w.connects("a", "b", 81, SHORT), "TCP/81 stays denied");
    assert!(!w.connects("c", "b", 80, SHORT), "only app=a may reach b");
    assert!(!w.connects("b", "a", 80, SHORT), "deny-all isolates a too");
    // The same over IPv6 (IPCACHE6).
    assert_eq!(w.reach6("a", "b", 80, LONG), Reach::Connected);
    assert_eq!(w.reach6("a", "b", 81, SHORT), Reach::Dropped);
    assert_eq!(w.reach6("c", "b", 80, SHORT), Reach::Dropped);

    // explain, JSON and table.
    let e = w.sluicectl_json(&[
        "explain", "--from", "pol/a", "--to", "pol/b", "--port", "80", "--proto", "tcp",
    ]);
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["rules"][0]["policy"]["name"], "allow-80", "{e}");
    let t = w
        .sluicectl(&[
            "explain", "--from", "pol/a", "--to", "pol/b", "--port", "80",
        ])
        .unwrap();
    eprintln!("{t}");
    assert!(t.contains("verdict: ALLOWED"), "{t}");
    assert!(t.contains("allowed by pol/allow-80 ingress[0]"), "{t}");
    let t = w
        .sluicectl(&[
            "explain", "--from", "pol/a", "--to", "pol/b", "--port", "81",
        ])
        .unwrap();
    eprintln!("{t}");
    assert!(t.contains("verdict: DENIED"), "{t}");
    assert!(
        t.contains("no rule allows pol/a") && t.contains("on tcp/81"),
        "{t}"
    );
    assert!(
        t.contains("(policies selecting pol/b: pol/allow-80, pol/deny-all)"),
        "{t}"
    );
    let b_ip6 = w.pod("b").ip6.to_string();
    let e = w.sluicectl_json(&["explain", "--from", "pol/a", "--to", &b_ip6, "--port", "80"]);
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["to"], b_ip6.as_str(), "the IPv6 address of a: {e}");
    let c_ip = w.pod("c").ip.to_string();
    let e = w.sluicectl_json(&["explain", "--from", &c_ip, "--to", "pol/b", "--port", "80"]);
    assert_eq!(e["verdict"], "denied", "{e}");
    assert_eq!(e["fromPod"], "pol/c", "{e}");
    // From the node: allowed (kubelet probes) whatever ingress says.
    let e = w.sluicectl_json(&[
        "explain",
        "--from",
        NODE_ADDRESS,
        "--to",
        "pol/b",
        "--port",
        "81",
    ]);
    assert_eq!(e["verdict"], "allowed", "{e}");

    // endpoints and policy.
    let eps = w.sluicectl_json(&["endpoints"]);
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 3, "{eps:?}");
    for ep in eps {
        assert_eq!(ep["programmed"], true, "{ep}");
        assert_eq!(ep["ingressIsolated"], true, "{ep}");
        assert_eq!(ep["egressIsolated"], false, "{ep}");
        assert!(ep["veth"].as_str().unwrap().starts_with("slc"), "{ep}");
    }
    let b = eps.iter().find(|e| e["pod"] == "pol/b").unwrap();
    assert_eq!(b["ips"][0], w.pod("b").ip.to_string());
    let table = w.sluicectl(&["endpoints"]).unwrap();
    eprintln!("{table}");
    assert!(
        table.contains("pol/b") && table.contains("isolated"),
        "{table}"
    );
    let pol = w.sluicectl_json(&["policy", "pol/b"]);
    let entries = pol[0]["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|x| x["port"] == 80
            && x["protocol"] == "tcp"
            && x["policy"]["name"] == "allow-80"
            && x["peer"].as_str().unwrap().contains("app=a")),
        "{pol}"
    );
    let table = w.sluicectl(&["policy", "pol/b"]).unwrap();
    eprintln!("{table}");
    assert!(
        table.contains("isolated by pol/allow-80, pol/deny-all"),
        "{table}"
    );

    // monitor: a live drop, with pods, reason and policies.
    let mut mon = spawn_monitor(
        &w,
        &["-o", "json", "monitor", "--count", "1", "--duration", "15"],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.connects("c", "b", 80, SHORT));
    let out = wait_output(&mut mon, Duration::from_secs(15));
    eprintln!("monitor: {out}");
    let d: Value = serde_json::from_str(out.lines().next().expect("one event")).unwrap();
    assert_eq!(d["reason"], "from-pod-drop-ingress-policy", "{d}");
    assert_eq!(d["direction"], "ingress");
    assert_eq!(d["srcPod"], "pol/c");
    assert_eq!(d["dstPod"], "pol/b");
    assert_eq!(d["endpointPod"], "pol/b");
    assert_eq!(d["dport"], 80);
    assert_eq!(d["protocol"], "tcp");
    assert!(d["peer"].as_str().unwrap().contains("app=c"), "{d}");
    assert_eq!(d["policies"], json!(["pol/allow-80", "pol/deny-all"]));
    let mut mon = spawn_monitor(&w, &["monitor", "--count", "1", "--duration", "15"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.connects("a", "b", 81, SHORT));
    let out = wait_output(&mut mon, Duration::from_secs(15));
    eprintln!("monitor: {out}");
    assert!(
        out.contains("DROP ingress from-pod-drop-ingress-policy pol/a")
            && out.contains(&format!("-> pol/b {}:81 tcp", w.pod("b").ip))
            && out.contains("policies pol/allow-80, pol/deny-all"),
        "{out}"
    );

    // Metrics.
    let m = scrape(&w.node, "127.0.0.1:9962");
    for want in [
        "sluice_endpoints 3",
        "sluice_endpoints_programmed 3",
        "sluice_policy_enforcing 1",
        "sluice_policy_sync_duration_seconds_count",
        "sluice_map_entries{map=\"POLICY\"}",
        "sluice_map_capacity{map=\"CT4\"} 131072",
        "sluice_map_capacity{map=\"CT6\"} 131072",
        "sluice_verdict_packets_total{reason=\"from-pod-drop-ingress-policy\"",
    ] {
        assert!(m.contains(want), "metrics lack {want}:\n{m}");
    }
    let ct = metric(&m, "sluice_map_entries{map=\"CT4\"}");
    assert!(ct >= 1.0, "conntrack holds the allowed flows: {ct}");
}

fn spawn_monitor(w: &World, args: &[&str]) -> Child {
    let mut full = vec![
        "--bpffs-dir".to_owned(),
        w.bpffs.path().display().to_string(),
        "--state-dir".to_owned(),
        w.state_dir().display().to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    Command::new(bin_dir().join("sluicectl"))
        .args(&full)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluicectl monitor")
}

fn wait_output(child: &mut Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = child.wait();
    assert!(err.is_empty(), "monitor stderr: {err}");
    out
}

fn scrape(node: &Netns, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    node.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
    .expect("scraping metrics")
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn established_connection_survives_an_unrelated_change_and_the_watch_applies_edits() {
    let w = world_with_policy(&[]);
    let mut conn = w.open("a", "b", 80);
    assert!(echo(&mut conn, b"hello"));
    let r1 = w.revision();

    // An unrelated policy: the maps change (revision moves, conntrack
    // re-checks), the flow is still allowed and goes on.
    w.write_manifest("30-unrelated.yaml", UNRELATED);
    let v = w.sync();
    eprintln!("sync unrelated change: {} µs", v["syncMicros"]);
    assert!(v["revision"].as_u64().unwrap() > r1, "{v}");
    assert!(echo(&mut conn, b"still there"), "established flow survived");
    assert_eq!(
        w.reach("b", "c", 8080, LONG),
        Reach::Refused,
        "c-from-b lets b in on 8080"
    );
    assert_eq!(w.reach("b", "c", 80, SHORT), Reach::Dropped);

    // The watch: an edit without `sluicectl sync` is applied on its own;
    // dropping allow-80 cuts the established flow (re-checked after the
    // revision moved) and new ones.
    let r2 = w.revision();
    let edited = Instant::now();
    w.remove_manifest("20-allow-80.yaml");
    assert!(
        wait_until(Duration::from_secs(5), || w.revision() > r2),
        "the manifests watch did not apply the change"
    );
    let latency = edited.elapsed();
    eprintln!("manifest edit to revision change (watch): {latency:?}");
    assert!(
        !echo(&mut conn, b"now denied"),
        "a flow the policy now denies is cut"
    );
    assert!(!w.connects("a", "b", 80, SHORT));

    // The tables for people.
    let t = w.sluicectl(&["sync"]).unwrap();
    assert!(
        t.starts_with("synced: revision ") && t.contains("nothing to change"),
        "{t}"
    );
    let t = w.sluicectl(&["status"]).unwrap();
    eprintln!("{t}");
    assert!(
        t.contains("agent") && t.contains("up (source manifests"),
        "{t}"
    );
    assert!(t.contains("enforcing         true"), "{t}");

    // And putting it back opens it again, also through the watch: time
    // from the edit to the first successful connection.
    let edited = Instant::now();
    w.write_manifest("20-allow-80.yaml", ALLOW_80);
    assert!(wait_until(Duration::from_secs(5), || w.connects(
        "a",
        "b",
        80,
        Duration::from_millis(100)
    )));
    eprintln!(
        "manifest edit to enforcement (first allowed connect): {:?}",
        edited.elapsed()
    );
}

#[test]
fn agent_restart_keeps_enforcement_without_an_allow_all_window() {
    let mut w = world_with_policy(&[]);
    let ids_before = w.sluicectl_json(&["policy", "pol/b"]);
    let rev_before = w.revision();

    // Probes during the restart: TCP/81 must never connect, TCP/80 must
    // never fail.
    let stop = Arc::new(AtomicBool::new(false));
    let denied_ok = Arc::new(AtomicU64::new(0));
    let denied_tries = Arc::new(AtomicU64::new(0));
    let allowed_fail = Arc::new(AtomicU64::new(0));
    let allowed_tries = Arc::new(AtomicU64::new(0));
    let a_ns = w.pod("a").ns.fd().as_raw_fd();
    let b_ip = w.pod("b").ip;
    let prober = {
        let (stop, dok, dt, af, at) = (
            stop.clone(),
            denied_ok.clone(),
            denied_tries.clone(),
            allowed_fail.clone(),
            allowed_tries.clone(),
        );
        // A thread of its own inside pod a (the fd stays open: the world
        // outlives the thread).
        let fd = nix::unistd::dup(a_ns).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on a dup'ed namespace fd, closed right after.
            unsafe {
                assert_eq!(libc::setns(fd, libc::CLONE_NEWNET), 0);
                libc::close(fd);
            }
            while !stop.load(Ordering::Relaxed) {
                dt.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(
                    &SocketAddr::from((b_ip, 81)),
                    Duration::from_millis(150),
                )
                .is_ok()
                {
                    dok.fetch_add(1, Ordering::Relaxed);
                }
                at.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(&SocketAddr::from((b_ip, 80)), Duration::from_secs(1))
                    .is_err()
                {
                    af.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    w.agent().sigkill().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let ready = w.start_agent();
    eprintln!("agent restart to ready: {ready:?}");
    let v = w.sync();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    eprintln!(
        "during restart: {} denied-port tries ({} connected), {} allowed-port tries ({} failed)",
        denied_tries.load(Ordering::Relaxed),
        denied_ok.load(Ordering::Relaxed),
        allowed_tries.load(Ordering::Relaxed),
        allowed_fail.load(Ordering::Relaxed)
    );
    assert!(denied_tries.load(Ordering::Relaxed) >= 5);
    assert_eq!(
        denied_ok.load(Ordering::Relaxed),
        0,
        "TCP/81 connected during the restart"
    );
    assert_eq!(
        allowed_fail.load(Ordering::Relaxed),
        0,
        "TCP/80 failed during the restart"
    );

    // Same identities, nothing to rewrite, enforcement on.
    assert_eq!(
        v["changed"], false,
        "the restarted agent found the maps as they should be: {v}"
    );
    assert_eq!(w.revision(), rev_before);
    let ids_after = w.sluicectl_json(&["policy", "pol/b"]);
    assert_eq!(ids_before, ids_after);
    let status = w.sluicectl_json(&["status"]);
    assert_eq!(status["datapath"]["enforcing"], true, "{status}");
    assert!(
        w.agent().log().contains("keeping it until the first sync"),
        "{}",
        w.agent().log()
    );

    // The snapshot can go (identities then start above every number in
    // use): still no window, and the policy holds.
    std::fs::remove_file(w.state_dir().join("agent/policy.json")).unwrap();
    w.agent().sigkill().unwrap();
    w.start_agent();
    let v = w.sync();
    eprintln!("resync after losing the snapshot: {v}");
    assert!(w.connects("a", "b", 80, LONG));
    assert!(!w.connects("a", "b", 81, SHORT));
}

#[test]
fn bad_manifests_are_refused_naming_the_object_and_change_nothing() {
    let mut w = world_with_policy(&[]);
    let rev = w.revision();
    w.write_manifest("40-broken.yaml", BROKEN);
    let err = w.sluicectl(&["sync"]).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("NetworkPolicy pol/broken"), "{err}");
    assert!(err.contains("40-broken.yaml"), "{err}");
    assert!(err.contains("exit 1"), "{err}");
    assert_eq!(w.revision(), rev, "nothing was written");
    assert!(w.connects("a", "b", 80, LONG));
    assert!(!w.connects("a", "b", 81, SHORT));
    // The watch logs it too, naming the object.
    assert!(wait_until(Duration::from_secs(3), || w
        .agent()
        .log()
        .contains("NetworkPolicy pol/broken")));
    let status = w.sluicectl_json(&["status"]);
    assert!(
        status["agent"]["sourceError"]
            .as_str()
            .unwrap()
            .contains("pol/broken"),
        "{status}"
    );
    // Fixed: accepted again.
    w.remove_manifest("40-broken.yaml");
    w.sync();
    assert!(w.connects("a", "b", 80, LONG));

    // Valid objects the datapath cannot hold (9 wide endPort ranges for
    // one peer: 8 fit): refused the same way, naming the policy.
    let mut ranges = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: wide, namespace: pol}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports:\n",
    );
    for i in 0..9 {
        let first = 1000 + i * 3000;
        ranges.push_str(&format!(
            "    - {{protocol: TCP, port: {first}, endPort: {}}}\n",
            first + 2000
        ));
    }
    w.write_manifest("45-wide.yaml", &ranges);
    let rev = w.revision();
    let err = w.sluicectl(&["sync"]).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(
        err.contains("NetworkPolicy pol/wide") && err.contains("pod pol/b"),
        "{err}"
    );
    assert_eq!(w.revision(), rev, "nothing was written");
    assert!(!w.connects("a", "b", 81, SHORT));
    // A new pod is still served (with the policy in force).
    w.add_pod("e");
    assert!(w.connects("a", "b", 80, LONG));
    w.remove_manifest("45-wide.yaml");
    w.sync();
}

#[test]
fn wait_for_policy_add_returns_once_programmed_and_fails_cleanly_without_the_agent() {
    let mut w = world_with_policy(&[]);
    // A new pod, in a namespace the policies isolate: ADD returns with
    // its policy in the maps.
    let took = w.add_pod("d");
    // At once: the node reaches it (allow-host). Were d not programmed
    // yet, the datapath would drop the first SYN (fail-closed), and 500 ms
    // is less than the SYN retransmission time.
    assert_eq!(
        w.reach_from_node("d", 80, Duration::from_millis(500)),
        Reach::Connected
    );
    eprintln!("ADD d (waitForPolicy, deny-all in force): {took:?}");
    let eps = w.sluicectl_json(&["endpoints"]);
    let d = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == "pol/d")
        .expect("d is an endpoint")
        .clone();
    assert_eq!(d["programmed"], true, "{d}");
    assert_eq!(d["ingressIsolated"], true, "{d}");
    // d has no Pod object: no labels, so allow-80 (from app=a) does not
    // let it in, deny-all keeps it isolated; a may not reach it.
    assert!(!w.connects("a", "d", 80, SHORT));
    assert!(!w.connects("d", "a", 80, SHORT));

    let veths = w.host_veths().len();
    let records = w.state_records().len();
    let reservations = files(&w.ipam_dir().join(&w.net)).len();

    // The agent down (stale socket): code 11, nothing left behind.
    w.agent().sigkill().unwrap();
    let ns = Netns::new().unwrap();
    let run = w.plugin("ADD", "pol-e-1", Some(ns.path()), "e", &w.conf(true, 1000));
    eprintln!("ADD with the agent down: {:?} {}", run.took, run.stdout);
    assert_eq!(run.error_code(), 11, "{}", run.stderr);
    assert!(run.stdout.contains("try again later"), "{}", run.stdout);
    // A socket that accepts but never answers: the timeout.
    std::fs::remove_file(w.socket()).ok();
    let silent = std::os::unix::net::UnixListener::bind(w.socket()).unwrap();
    let run = w.plugin("ADD", "pol-e-2", Some(ns.path()), "e", &w.conf(true, 800));
    eprintln!("ADD with a silent agent: {:?}", run.took);
    assert_eq!(run.error_code(), 11, "{}", run.stderr);
    assert!(run.took >= Duration::from_millis(800), "{:?}", run.took);
    assert!(run.stdout.contains("policyTimeoutMs 800"), "{}", run.stdout);
    drop(silent);
    assert_eq!(w.host_veths().len(), veths, "no veth left");
    assert_eq!(w.state_records().len(), records, "no state record left");
    assert_eq!(
        files(&w.ipam_dir().join(&w.net)).len(),
        reservations,
        "no address left reserved"
    );
    assert!(
        !w.sluicectl_json(&["endpoints"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["pod"] == "pol/e"),
        "no endpoint left"
    );

    // Back up: the agent prunes nothing it should keep, and DEL of d
    // prunes d's policy state.
    std::fs::remove_file(w.socket()).ok();
    w.start_agent();
    let d_id = d["endpointId"].as_str().unwrap().to_owned();
    let pod_d = w.pods.pop().unwrap();
    assert_eq!(pod_d.name, "d");
    w.del_pod(&pod_d);
    assert!(wait_until(Duration::from_secs(3), || !w
        .sluicectl_json(&["endpoints"])
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["endpointId"] == d_id.as_str())));
}

/// Policy size: 10 000 rules (100 policies × 100 ingress rules, each its
/// own port) selecting pod b. Reports the sync time and the time from an
/// edit to enforcement.
#[test]
fn ten_thousand_rules() {
    let mut w = World::new(&[]);
    for p in ["a", "b"] {
        w.add_pod(p);
    }
    let mut text = String::new();
    for p in 0..100 {
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: many-{p}, namespace: pol}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n"
        ));
        for r in 0..100 {
            let port = 10_000 + p * 100 + r;
            text.push_str(&format!(
                "  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]\n    ports: [{{protocol: TCP, port: {port}}}]\n"
            ));
        }
    }
    w.write_manifest("50-many.yaml", &text);
    let started = Instant::now();
    let v = w.sync();
    eprintln!("10k rules: {v}");
    eprintln!(
        "10k rules: sluicectl sync {:?} (agent: sync {} µs, compile {} µs, apply {} µs, {} entries written)",
        started.elapsed(),
        v["syncMicros"],
        v["report"]["compileMicros"],
        v["report"]["apply"]["duration"],
        v["report"]["apply"]["written"]
    );
    assert!(
        v["report"]["counts"]["policy"].as_u64().unwrap() >= 10_000,
        "{v}"
    );
    assert!(v["report"]["rules"].as_u64().unwrap() >= 10_000, "{v}");
    // One more rule (port 81) on top: time from `sync` to enforcement, and
    // from a file edit (watch) to enforcement.
    assert!(!w.connects("a", "b", 81, SHORT));
    let extra = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open-81, namespace: pol}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{protocol: TCP, port: 81}]\n";
    w.write_manifest("60-open-81.yaml", extra);
    let started = Instant::now();
    let v = w.sync();
    assert!(w.connects("a", "b", 81, LONG));
    eprintln!(
        "10k rules + 1: sync and first connect {:?} (agent sync {} µs, {} written)",
        started.elapsed(),
        v["syncMicros"],
        v["report"]["apply"]["written"]
    );
    let edited = Instant::now();
    w.remove_manifest("60-open-81.yaml");
    assert!(wait_until(Duration::from_secs(10), || !w.connects(
        "a",
        "b",
        81,
        Duration::from_millis(100)
    )));
    eprintln!(
        "10k rules, edit to enforcement through the watch: {:?}",
        edited.elapsed()
    );
    // A rule deep in the table still works: a SYN to 19999 gets through
    // (refused: nobody listens there).
    assert_eq!(w.reach("a", "b", 19_999, LONG), Reach::Refused);
    assert_eq!(w.reach("a", "b", 20_000, SHORT), Reach::Dropped);
}

#[test]
fn the_node_reaches_pods_unless_no_allow_host() {
    let mut w = world_with_policy(&["--node-address", NODE_ADDRESS]);
    // kubelet probes: the node reaches b on a port no rule opens.
    assert_eq!(w.reach_from_node("b", 81, LONG), Reach::Connected);
    let e = w.sluicectl_json(&[
        "explain",
        "--from",
        NODE_ADDRESS,
        "--to",
        "pol/b",
        "--port",
        "81",
    ]);
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(
        e["fromIdentity"], 1,
        "the node address is identity host: {e}"
    );

    w.agent().sigterm().unwrap();
    w.agent_args.push("--no-allow-host".into());
    w.start_agent();
    let v = w.sync();
    eprintln!("after restart with --no-allow-host: {v}");
    assert_eq!(w.reach_from_node("b", 81, SHORT), Reach::Dropped);
    assert_eq!(w.reach_from_node("b", 80, SHORT), Reach::Dropped);
    let t = w
        .sluicectl(&[
            "explain",
            "--from",
            NODE_ADDRESS,
            "--to",
            "pol/b",
            "--port",
            "81",
        ])
        .unwrap();
    assert!(
        t.contains("verdict: DENIED") && t.contains("no rule allows 10.199.61.1 (host)"),
        "{t}"
    );
    // c is not isolated for egress: pods still reach the node.
    let eps = w.sluicectl_json(&["endpoints"]);
    assert!(
        eps.as_array()
            .unwrap()
            .iter()
            .all(|e| e["allowHost"] == false),
        "{eps}"
    );
}

/// Eight ADDs at once, each waiting for its policy: the agent batches what
/// arrives together into one sync, and every ADD returns programmed.
#[test]
fn parallel_waited_adds_are_all_programmed() {
    let mut w = World::new(&[]);
    w.write_manifest("10-deny-all.yaml", DENY_ALL);
    w.sync();
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let nss: Vec<Netns> = names.iter().map(|_| Netns::new().unwrap()).collect();
    let started = Instant::now();
    let runs: Vec<(String, Run)> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .zip(&nss)
            .map(|(name, ns)| {
                let w = &w;
                scope.spawn(move || {
                    let cid = format!("pol-{name}-{}", random_hex(8));
                    let run = w.plugin("ADD", &cid, Some(ns.path()), name, &w.conf(true, 10_000));
                    (cid, run)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed();
    let slowest = runs.iter().map(|(_, r)| r.took).max().unwrap();
    eprintln!("8 parallel ADDs with waitForPolicy: wall {wall:?}, slowest {slowest:?}");
    for ((cid, run), (name, ns)) in runs.into_iter().zip(names.iter().zip(nss)) {
        let result = run.ok();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap();
        let ip6 = result["ips"][1]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        w.pods.push(Pod {
            name: name.clone(),
            ns,
            cid,
            ip,
            ip6,
            _servers: Vec::new(),
        });
    }
    let eps = w.sluicectl_json(&["endpoints"]);
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 8, "{eps:?}");
    assert!(
        eps.iter()
            .all(|e| e["programmed"] == true && e["ingressIsolated"] == true),
        "{eps:?}"
    );
    let syncs = w.agent().log().matches("policy synced in").count();
    eprintln!("syncs that changed the maps: {syncs} (8 ADDs + 1 policy)");
}
