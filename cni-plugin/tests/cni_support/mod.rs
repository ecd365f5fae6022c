//! Shared pieces of the `cni_*` tests: a [`World`] per test (a "node"
//! network namespace, the agent's pins in a bpffs directory of its own,
//! temporary state and data dirs), the real `sluice` binary run *inside*
//! the node namespace the way a runtime runs it, and a check that nothing
//! an attachment owns is left behind ([`World::assert_clean`]).
//!
//! Namespaces, pins and TCP traffic come from `plumbing_support`
//! (namespaces `sluice-t-plumb-<hex>`, pins `/sys/fs/bpf/sluice-test-<hex>`).
//! Addresses: 10.199.0.0/16 and fd00:199::/64 only.

#![allow(dead_code, reason = "each test file uses a different subset")]

#[path = "../plumbing_support/mod.rs"]
pub mod plumbing;

use std::{
    fs::File,
    io::Write,
    net::IpAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use cni_plugin::{addr, attach, masq};
use ipnet::IpNet;
pub use plumbing::{random_hex, require_root, Pins, TestNetns};
use rtnetlink::LinkVeth;
use serde_json::{json, Map, Value};

/// The binary under test.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// Debian's reference plugins (host-local for delegation).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Every version the plugin speaks.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The node's own addresses ([`World::node_addresses`]).
pub const NODE_V4: &str = "10.199.255.1";
/// The node's own IPv6 address.
pub const NODE_V6: &str = "fd00:199::ff:1";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// `CNI_PATH`: the directory of `sluice` (and `sluice-ipam`), then the
/// reference plugins.
pub fn cni_path() -> String {
    let dir = Path::new(SLUICE).parent().unwrap();
    format!("{}:{REFERENCE_PLUGINS}", dir.display())
}

/// What one plugin run printed.
#[derive(Debug)]
pub struct Outcome {
    pub what: String,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The result (or `null` for an empty stdout); panics, with stderr,
    /// unless the run succeeded.
    pub fn ok(&self) -> Value {
        assert!(
            self.success,
            "{} failed: {}\n---- stderr ----\n{}",
            self.what, self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
                panic!("{}: stdout is not JSON ({e}): {}", self.what, self.stdout)
            })
        }
    }

    /// The error object; panics unless the run failed with exactly one
    /// error object on stdout.
    pub fn err(&self) -> Value {
        assert!(
            !self.success,
            "{} succeeded but should have failed: {}\n---- stderr ----\n{}",
            self.what, self.stdout, self.stderr
        );
        let v: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not one JSON object ({e}): {:?}\n---- stderr ----\n{}",
                self.what, self.stdout, self.stderr
            )
        });
        assert!(v["code"].is_u64(), "{}: no code in {v}", self.what);
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: no msg in {v}",
            self.what
        );
        v
    }

    /// The error code; panics unless the run failed.
    pub fn code(&self) -> u64 {
        self.err()["code"].as_u64().unwrap()
    }

    /// Panics unless the run failed with `code`.
    pub fn expect_code(&self, code: u64) -> Value {
        let e = self.err();
        assert_eq!(
            e["code"].as_u64(),
            Some(code),
            "{}: expected code {code}, got {e}\n---- stderr ----\n{}",
            self.what,
            self.stderr
        );
        e
    }
}

/// Runs `sluice` inside `node` with exactly `env` (nothing inherited) and
/// `stdin`.
pub fn run_in(node: &Path, env: &[(String, String)], stdin: &[u8]) -> Outcome {
    let what = format!(
        "sluice {}",
        env.iter()
            .filter(|(k, _)| k == "CNI_COMMAND" || k == "CNI_CONTAINERID")
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ns = File::open(node).unwrap();
    let raw = ns.as_raw_fd();
    let mut cmd = Command::new(SLUICE);
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setns between fork and exec, on an fd open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn sluice");
    let mut pipe = child.stdin.take().unwrap();
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let out = child.wait_with_output().expect("wait for sluice");
    drop(ns);
    Outcome {
        what,
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One test's world. Dropping it removes the namespaces, pins and dirs.
pub struct World {
    pub node: TestNetns,
    pub pins: Pins,
    pub tmp: tempfile::TempDir,
    pub net: String,
}

impl World {
    /// Node namespace, programs pinned (the agent ran once and stopped).
    pub fn new() -> Self {
        require_root();
        let node = TestNetns::new();
        let pins = Pins::loaded(&node);
        Self::with(node, pins)
    }

    /// Node namespace, nothing pinned (the agent never ran).
    pub fn unpinned() -> Self {
        require_root();
        Self::with(TestNetns::new(), Pins::empty())
    }

    fn with(node: TestNetns, pins: Pins) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("sluice-cni-")
            .tempdir()
            .unwrap();
        Self {
            node,
            pins,
            tmp,
            net: format!("cnitest-{}", random_hex(6)),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.tmp.path().join("agent.sock")
    }

    /// The network's sluice-ipam store.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir().join(&self.net)
    }

    /// A new pod namespace.
    pub fn pod(&self) -> TestNetns {
        TestNetns::new()
    }

    /// The base config: routed, dual-stack sluice-ipam (10.199.1.0/24 and
    /// fd00:199::/64), this world's dirs, `patch` merged in (top-level keys
    /// replace, `null` removes; an `ipam` object is merged key by key).
    pub fn conf(&self, version: &str, patch: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": self.net,
            "type": "sluice",
            "bpffsDir": self.pins.dir,
            "stateDir": self.state_dir(),
            "agentSocket": self.socket(),
            // No agent answers on this world's socket unless a test starts
            // one (or a fake); tests of the waiting path turn it on.
            "waitForPolicy": false,
            "logLevel": "debug",
            "ipam": {
                "type": "sluice-ipam",
                "ranges": [[{"subnet": "10.199.1.0/24"}], [{"subnet": "fd00:199::/64"}]],
                "dataDir": self.data_dir(),
            }
        });
        merge(&mut c, &patch);
        c
    }

    fn env(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        ifname: &str,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("CNI_COMMAND".to_string(), cmd.to_string()),
            ("CNI_PATH".to_string(), cni_path()),
        ];
        if !cid.is_empty() {
            env.push(("CNI_CONTAINERID".into(), cid.into()));
            env.push(("CNI_IFNAME".into(), ifname.into()));
        }
        if let Some(ns) = netns {
            env.push(("CNI_NETNS".into(), ns.display().to_string()));
        }
        env
    }

    /// Runs any command with extra `CNI_*` variables.
    pub fn run(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        extra: &[(&str, &str)],
        conf: &Value,
    ) -> Outcome {
        let mut env = self.env(cmd, cid, netns, "eth0");
        for (k, v) in extra {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v.to_string()));
        }
        run_in(&self.node.path, &env, conf.to_string().as_bytes())
    }

    pub fn add(&self, cid: &str, pod: &TestNetns, conf: &Value) -> Outcome {
        self.run("ADD", cid, Some(&pod.path), &[], conf)
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(&self, cid: &str, pod: &TestNetns, conf: &Value, prev: &Value) -> Outcome {
        self.run("CHECK", cid, Some(&pod.path), &[], &with_prev(conf, prev))
    }

    /// DEL, with the pod's netns path when given and `prev` when given.
    pub fn del(
        &self,
        cid: &str,
        pod: Option<&Path>,
        conf: &Value,
        prev: Option<&Value>,
    ) -> Outcome {
        let conf = match prev {
            Some(p) => with_prev(conf, p),
            None => conf.clone(),
        };
        self.run("DEL", cid, pod, &[], &conf)
    }

    /// GC keeping `valid` (container id, ifname).
    pub fn gc(&self, conf: &Value, valid: &[(&str, &str)]) -> Outcome {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|(cid, ifname)| json!({"containerID": cid, "ifname": ifname}))
            .collect();
        self.run("GC", "", None, &[], &c)
    }

    pub fn status(&self, conf: &Value) -> Outcome {
        self.run("STATUS", "", None, &[], conf)
    }

    /// Gives the node an interface with [`NODE_V4`] and [`NODE_V6`] (one
    /// end of a veth pair, down peer), so pods can talk to the node.
    pub fn node_addresses(&self) {
        self.node.block_on(async |nl| {
            nl.handle()
                .link()
                .add(LinkVeth::new("node0", "node0p").build())
                .execute()
                .await
                .unwrap();
            let l = nl.require_link("node0").await.unwrap();
            nl.set_up(l.index, "node0").await.unwrap();
            for a in [format!("{NODE_V4}/32"), format!("{NODE_V6}/128")] {
                addr::add(&nl, l.index, "node0", net(&a), addr::AddrOptions::default())
                    .await
                    .unwrap();
            }
        });
    }

    /// Host veths (`slc…`) in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        self.node
            .link_names()
            .into_iter()
            .filter(|n| n.starts_with("slc"))
            .collect()
    }

    /// Addresses reserved in the network's store (files named by address).
    pub fn reservations(&self) -> Vec<IpAddr> {
        reservations_in(&self.store_dir())
    }

    /// State records (file names).
    pub fn state_files(&self) -> Vec<String> {
        files(&self.state_dir())
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Hooks of pod veths running Sluice's programs: a pinned TCX link each
    /// (`tcAttach: tcx`; a pin outlives its veth, so leaked pins count) or
    /// a cls_bpf filter at Sluice's priority (`tcAttach: tc`, the default;
    /// filters go with their veth).
    pub fn datapath_hooks(&self) -> usize {
        let filters: usize = self
            .host_veths()
            .iter()
            .map(|veth| {
                let (ingress, egress) = self
                    .node
                    .run(|| attach::query(veth, attach::TcAttach::Tc))
                    .unwrap();
                ingress.len() + egress.len()
            })
            .sum();
        filters + self.veth_link_pins().len()
    }

    /// TCX link pins of pod veths.
    pub fn veth_link_pins(&self) -> Vec<String> {
        self.pins
            .link_pins()
            .into_iter()
            .filter(|n| n.starts_with("tcx-slc"))
            .collect()
    }

    /// Every `ENDPOINTS` entry as (address, endpoint id).
    pub fn endpoint_entries(&self) -> Vec<(IpAddr, u64)> {
        attach::endpoint_entries(&self.pins.dir)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let addr = if k.family == cni_ebpf_common::prefilter::FAMILY_IPV4 {
                    IpAddr::from(<[u8; 4]>::try_from(&k.addr[..4]).unwrap())
                } else {
                    IpAddr::from(k.addr)
                };
                (addr, v.endpoint_id)
            })
            .collect()
    }

    /// Every `SOURCES4` entry as (address, endpoint id).
    pub fn source_entries(&self) -> Vec<(IpAddr, u64)> {
        attach::source_entries(&self.pins.dir)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (IpAddr::from(k.addr), v.endpoint_id))
            .collect()
    }

    /// Masquerade rules (comments) in the node namespace.
    pub fn masq_rules(&self) -> Vec<String> {
        self.node
            .run(masq::list)
            .unwrap()
            .into_iter()
            .map(|r| r.comment)
            .collect()
    }

    /// Whether the `inet sluice` table exists in the node namespace.
    pub fn masq_table(&self) -> bool {
        self.node.run(masq::table_exists).unwrap()
    }

    /// Nothing any attachment owned is left: no host veth, IP reservation,
    /// state record, `ENDPOINTS` entry, link pin, masquerade table.
    pub fn assert_clean(&self) {
        self.assert_clean_except(0);
    }

    /// As [`World::assert_clean`], with `pods` live attachments allowed.
    pub fn assert_clean_except(&self, pods: usize) {
        let report = format!(
            "veths {:?}\nreservations {:?}\nstate {:?}\nendpoints {:?}\nlink pins {:?}\nhooks {}\nmasq {:?}",
            self.host_veths(),
            self.reservations(),
            self.state_files(),
            self.endpoint_entries(),
            self.veth_link_pins(),
            self.datapath_hooks(),
            self.masq_rules()
        );
        assert_eq!(self.host_veths().len(), pods, "host veths left:\n{report}");
        assert_eq!(
            self.state_files().len(),
            pods,
            "state records left:\n{report}"
        );
        assert_eq!(
            self.datapath_hooks(),
            2 * pods,
            "programs or link pins left:\n{report}"
        );
        let owners: std::collections::HashSet<u64> =
            self.endpoint_entries().iter().map(|(_, id)| *id).collect();
        assert_eq!(owners.len(), pods, "ENDPOINTS entries left:\n{report}");
        // SOURCES4 holds exactly the IPv4 entries of ENDPOINTS.
        let mut v4: Vec<(IpAddr, u64)> = self
            .endpoint_entries()
            .into_iter()
            .filter(|(addr, _)| addr.is_ipv4())
            .collect();
        let mut sources = self.source_entries();
        v4.sort();
        sources.sort();
        assert_eq!(sources, v4, "SOURCES4 against ENDPOINTS:\n{report}");
        let reserved = self.reservations().len();
        assert!(
            if pods == 0 {
                reserved == 0
            } else {
                reserved >= pods
            },
            "IP reservations left:\n{report}"
        );
        assert!(
            files(&self.store_dir().join("by-id"))
                .iter()
                .filter(|n| !n.starts_with('.'))
                .count()
                <= pods,
            "IPAM index entries left:\n{report}"
        );
        if pods == 0 {
            assert!(!self.masq_table(), "masquerade table left:\n{report}");
        }
    }
}

/// Addresses reserved in a host-local layout store.
pub fn reservations_in(dir: &Path) -> Vec<IpAddr> {
    files(dir).iter().filter_map(|n| n.parse().ok()).collect()
}

/// File names in `dir` (none when it is missing).
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `conf` with `prev` as `prevResult`.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Merges `patch` into `base` (see [`World::conf`]).
pub fn merge(base: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        return;
    };
    let target: &mut Map<String, Value> = base.as_object_mut().unwrap();
    for (k, v) in patch {
        match (k.as_str(), v, target.get_mut(k)) {
            (_, Value::Null, _) => {
                target.remove(k);
            }
            ("ipam", Value::Object(_), Some(existing @ Value::Object(_))) => merge(existing, v),
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The addresses of a result.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .parse::<IpNet>()
                .unwrap()
                .addr()
        })
        .collect()
}

/// A fake agent: a listener on `path` (in the test's own namespace: unix
/// path sockets do not belong to a network namespace) that reads one
/// request line per connection and answers with `answer` (no answer when
/// `None`, closing after `hold`). Returns the request lines it saw.
pub struct FakeAgent {
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl FakeAgent {
    pub fn start(path: &Path, answer: Option<&'static str>, hold: std::time::Duration) -> Self {
        use std::io::{BufRead, BufReader};
        use std::os::unix::net::UnixListener;
        use std::sync::{atomic::Ordering, Arc, Mutex};
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l2, s2) = (lines.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                            .unwrap();
                        let mut line = String::new();
                        let _ = BufReader::new(&conn).read_line(&mut line);
                        if line.trim().is_empty() {
                            continue; // a STATUS probe
                        }
                        l2.lock()
                            .unwrap()
                            .push(serde_json::from_str(line.trim()).unwrap());
                        match answer {
                            Some(a) => {
                                let _ = (&conn).write_all(a.as_bytes());
                            }
                            None => std::thread::sleep(hold),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("fake agent accept: {e}"),
                }
            }
        });
        Self {
            lines,
            stop,
            thread: Some(thread),
            path: path.to_owned(),
        }
    }

    /// The request lines received so far.
    pub fn seen(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// The request lines, once there are `n` (best-effort requests arrive
    /// after the plugin exited; waits at most 5 s).
    pub fn seen_n(&self, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.seen().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.seen()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
