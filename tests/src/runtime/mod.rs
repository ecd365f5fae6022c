//! Real container runtimes calling a CNI plugin the way production does:
//! podman with its CNI backend ([`podman::Podman`]) and containerd's CRI
//! plugin ([`containerd::Containerd`]).
//!
//! Each test builds its own world: a "node" network namespace ([`Netns`])
//! the runtime runs in (so the bridge and the host-side veths the plugin
//! makes live there, never in the machine's own namespace), temp dirs for
//! the runtime's state, config and plugins, and a [`PluginDir`] whose
//! plugin under test is a logging wrapper around the real binary, so a test
//! can assert what the runtime asked (the [`CniCall`]s) and what the plugin
//! answered. [`check_clean`] then asserts that nothing is left: pod netns,
//! veths, IPAM reservations, CNI cache entries, links in the machine's
//! namespace.
//!
//! Containers get a cgroup parent of their own ([`CgroupParent`]), removed
//! afterwards, so the runtimes' default parents never appear on the
//! machine.
//!
//! The plugin under test is a parameter, [`Network`]:
//! [`Network::reference_bridge`] (Debian's `bridge` + `host-local`) or
//! [`Network::sluice_bridge`] (the same network with `"type": "sluice"`),
//! most easily through [`Sluice`], which also makes the pin and state dirs,
//! starts the agent in the node netns, and checks the datapath Sluice
//! attached while a pod lives ([`Sluice::check_attached`]) and that none of
//! it is left afterwards ([`Sluice::check_detached`]).

pub mod containerd;
pub mod podman;
pub mod rootfs;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Value};

use crate::{random_hex, Netns};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The CNI spec version the conflists declare (the highest the reference
/// plugins 1.1.1 and both runtimes speak).
pub const CNI_VERSION: &str = "1.0.0";

/// Where libcni keeps its cache of results (both runtimes use the default).
pub const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

/// A CNI network for a runtime: one plugin (the one under test) whose
/// configuration the world writes into a conflist, after filling in the
/// paths that live in the world's temp dir (`ipam.dataDir`).
#[derive(Clone, Debug)]
pub struct Network {
    /// Network name (`name` of the conflist); unique per test.
    pub name: String,
    /// The Linux bridge in the node namespace.
    pub bridge: String,
    /// The pod subnet, always inside 10.199.0.0/16.
    pub subnet: Ipv4Net,
    /// `type` of the plugin under test: the name the runtime looks up in
    /// its plugin dir, where a logging wrapper of that name runs
    /// [`Network::plugin_binary`].
    pub plugin_type: String,
    /// The real plugin binary the wrapper runs.
    pub plugin_binary: PathBuf,
    /// The plugin's configuration object (without `cniVersion`/`name`).
    pub plugin_conf: Value,
}

/// Paths a `"type": "sluice"` network needs besides the bridge options.
#[derive(Clone, Debug)]
pub struct SluicePaths {
    /// `bpffsDir`: where the agent pinned the datapath
    /// ([`crate::BpffsDir::path`] of the test's agent).
    pub bpffs_dir: PathBuf,
    /// `stateDir`: one JSON file per attachment.
    pub state_dir: PathBuf,
    /// `agentSocket`: the agent's notify socket, with `waitForPolicy:
    /// true` (ADD returns once the agent has programmed the pod's policy,
    /// as in production); `None` sets `waitForPolicy: false` and leaves the
    /// socket at its default.
    pub agent_socket: Option<PathBuf>,
    /// `logFile`: the plugin's own log (at `debug`).
    pub log_file: Option<PathBuf>,
}

impl SluicePaths {
    /// Adds these paths to a plugin config: `bpffsDir`, `stateDir`,
    /// `agentSocket` with `waitForPolicy: true` (or `waitForPolicy: false`
    /// without one), and `logFile` with `logLevel: debug`. The reference
    /// bridge plugin ignores these keys, so a conflist with them serves
    /// both plugins.
    pub fn apply(&self, conf: &mut Value) {
        conf["bpffsDir"] = json!(self.bpffs_dir);
        conf["stateDir"] = json!(self.state_dir);
        match &self.agent_socket {
            Some(socket) => {
                conf["agentSocket"] = json!(socket);
                conf["waitForPolicy"] = json!(true);
            }
            None => conf["waitForPolicy"] = json!(false),
        }
        if let Some(log) = &self.log_file {
            conf["logFile"] = json!(log);
            conf["logLevel"] = json!("debug");
        }
    }
}

impl Network {
    /// The bridge network with Debian's reference plugins: `bridge`
    /// (`isGateway`, a bridge `cni-<6 hex>`) and `host-local` IPAM on
    /// `10.199.<third_octet>.0/24`, default route via the bridge.
    pub fn reference_bridge(third_octet: u8) -> Self {
        let (name, bridge, subnet) = Self::names(third_octet);
        Self {
            plugin_conf: json!({
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipam": Self::host_local(subnet),
            }),
            name,
            bridge,
            subnet,
            plugin_type: "bridge".into(),
            plugin_binary: Path::new(REFERENCE_PLUGIN_DIR).join("bridge"),
        }
    }

    /// The same network served by Sluice in bridge mode: the reference
    /// bridge options unchanged (which select bridge mode), `"type":
    /// "sluice"`, `host-local` IPAM (delegated by exec, as the spec says),
    /// and the paths of the test's agent. The plugin binary is
    /// `$SLUICE_BIN_DIR/sluice`.
    pub fn sluice_bridge(third_octet: u8, paths: &SluicePaths) -> anyhow::Result<Self> {
        let (name, bridge, subnet) = Self::names(third_octet);
        let mut conf = json!({
            "type": "sluice",
            "bridge": bridge,
            "isGateway": true,
            "ipam": Self::host_local(subnet),
        });
        paths.apply(&mut conf);
        Ok(Self {
            plugin_conf: conf,
            name,
            bridge,
            subnet,
            plugin_type: "sluice".into(),
            plugin_binary: crate::agent::bin("sluice")?,
        })
    }

    fn names(third_octet: u8) -> (String, String, Ipv4Net) {
        let hex = random_hex(6);
        let subnet = Ipv4Net::new(Ipv4Addr::new(10, 199, third_octet, 0), 24)
            .expect("a /24 is a valid prefix");
        (format!("sluice-rt-{hex}"), format!("cni-{hex}"), subnet)
    }

    fn host_local(subnet: Ipv4Net) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{ "subnet": subnet.to_string() }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        })
    }

    /// The gateway (bridge) address: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().expect("a /24 has hosts")
    }

    /// The conflist, with `ipam.dataDir` set to `ipam_dir` when the IPAM is
    /// `host-local` (so reservations stay in the test's temp dir).
    pub fn conflist(&self, ipam_dir: &Path) -> Value {
        let mut plugin = self.plugin_conf.clone();
        if plugin["ipam"]["type"] == "host-local" {
            plugin["ipam"]["dataDir"] = json!(ipam_dir);
        }
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [plugin],
        })
    }

    /// Writes the conflist as `<dir>/10-<name>.conflist`.
    pub fn write_conflist(&self, dir: &Path, ipam_dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("10-{}.conflist", self.name));
        let text = serde_json::to_string_pretty(&self.conflist(ipam_dir))?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// What `"type": "sluice"` needs on the node besides the plugin binary: a
/// pin directory that a `sluice-agent` loads, a state dir shared by the
/// plugin and the agent (`stateDir`, `--state-dir`) and the agent's socket
/// (`agentSocket`, `--api-socket`), all the test's own. Build the network
/// with [`Sluice::network`], the runtime's world with it, then
/// [`Sluice::start_agent`] in the world's node netns.
#[derive(Debug)]
pub struct Sluice {
    bpffs: crate::BpffsDir,
    state: tempfile::TempDir,
}

impl Sluice {
    /// A fresh pin directory path (the agent creates it) and state dir.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            bpffs: crate::BpffsDir::new(),
            state: tempfile::Builder::new()
                .prefix("sluice-state-")
                .tempdir()
                .context("creating a temp dir")?,
        })
    }

    /// The paths the conflist names: our pins, state dir and agent
    /// socket (ADD waits for the agent's confirmation), the plugin's log
    /// beside them.
    pub fn paths(&self) -> SluicePaths {
        SluicePaths {
            bpffs_dir: self.bpffs.path().to_owned(),
            state_dir: self.state.path().join("state"),
            agent_socket: Some(self.state.path().join("agent.sock")),
            log_file: Some(self.state.path().join("plugin.log")),
        }
    }

    /// [`Network::sluice_bridge`] on `10.199.<third_octet>.0/24` with
    /// [`Sluice::paths`].
    pub fn network(&self, third_octet: u8) -> anyhow::Result<Network> {
        Network::sluice_bridge(third_octet, &self.paths())
    }

    /// Starts `sluice-agent --bpffs-dir <ours> --state-dir <ours>
    /// --api-socket <ours>` in `node` and waits until it has pinned the
    /// datapath; keep the guard for the test's length.
    pub fn start_agent(&self, node: &Netns) -> anyhow::Result<crate::Agent> {
        let paths = self.paths();
        let state = paths.state_dir.to_string_lossy().into_owned();
        let socket = paths
            .agent_socket
            .as_deref()
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        crate::Agent::start(
            node,
            &self.bpffs,
            &["--state-dir", &state, "--api-socket", &socket],
        )
    }

    /// The plugin's attachment records in its state dir (one file per
    /// attachment; the agent's own files in `agent/` below it are not
    /// records): none must be left after DEL.
    pub fn attachments(&self) -> Vec<PathBuf> {
        fs::read_dir(self.paths().state_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path())
            .collect()
    }

    /// The TCX link pins the plugin made (`links/tcx-<host veth>-ingress`
    /// and `-egress`, one pair per attached veth): none must be left after
    /// DEL.
    pub fn tcx_link_pins(&self) -> Vec<String> {
        let dir = self.bpffs.path().join(cni_ebpf_common::maps::LINKS_DIR);
        let mut names: Vec<String> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(cni_ebpf_common::maps::TCX_LINK_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// The pins of the programs on `host_veth` (ingress, egress).
    pub fn tcx_pins_of(host_veth: &str) -> [String; 2] {
        use cni_ebpf_common::maps::{TCX_EGRESS_SUFFIX, TCX_INGRESS_SUFFIX, TCX_LINK_PREFIX};
        [
            format!("{TCX_LINK_PREFIX}{host_veth}{TCX_INGRESS_SUFFIX}"),
            format!("{TCX_LINK_PREFIX}{host_veth}{TCX_EGRESS_SUFFIX}"),
        ]
    }

    /// The addresses in the pinned `ENDPOINTS` map (none when it is not
    /// pinned): one per pod address while the pod is attached.
    pub fn endpoint_addrs(&self) -> anyhow::Result<Vec<IpAddr>> {
        use aya::maps::{HashMap, Map, MapData};
        use cni_ebpf_common::{EndpointInfo, EndpointKey};
        let pin = self
            .bpffs
            .path()
            .join(cni_ebpf_common::maps::MAPS_DIR)
            .join(cni_ebpf_common::maps::ENDPOINTS);
        if !pin.exists() {
            return Ok(Vec::new());
        }
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let map: HashMap<MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(Map::from_map_data(data)?)?;
        let mut addrs = Vec::new();
        for entry in map.iter() {
            let (key, _) = entry?;
            addrs.push(if key.family == cni_ebpf_common::prefilter::FAMILY_IPV6 {
                IpAddr::from(key.addr)
            } else {
                IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
            });
        }
        addrs.sort();
        Ok(addrs)
    }

    /// Fails unless `from_pod` runs on the ingress and `to_pod` on the
    /// egress hook of `host_veth` in `node` (as cls_bpf filters, or as TCX
    /// links with their pins).
    pub fn check_programs(&self, node: &Netns, host_veth: &str) -> anyhow::Result<()> {
        let progs = crate::link::tc_programs(node, host_veth)?;
        let pins = self.tcx_link_pins();
        for (hook, prog, pin) in [
            ("ingress", "from_pod", &Self::tcx_pins_of(host_veth)[0]),
            ("egress", "to_pod", &Self::tcx_pins_of(host_veth)[1]),
        ] {
            let tc = progs.contains(&format!("tc {hook} {prog}"));
            let tcx = progs.contains(&format!("tcx {hook} {prog}")) && pins.contains(pin);
            if !tc && !tcx {
                bail!(
                    "{prog} is not on the {hook} of {host_veth}: programs {progs:?}, pins {pins:?}"
                );
            }
        }
        Ok(())
    }

    /// Fails unless the datapath of the pod `add` created is in place: the
    /// programs attached to its host veth in `node` ([`Sluice::check_programs`]),
    /// and an `ENDPOINTS` entry for each of its addresses.
    pub fn check_attached(
        &self,
        node: &Netns,
        network: &Network,
        add: &CniCall,
    ) -> anyhow::Result<()> {
        let hosts: Vec<String> = add
            .result_host_interfaces()
            .into_iter()
            .filter(|i| *i != network.bridge)
            .collect();
        let [host] = hosts.as_slice() else {
            bail!(
                "expected one host veth besides the bridge in the ADD result, got {hosts:?}: {}",
                add.stdout
            );
        };
        self.check_programs(node, host)?;
        let endpoints = self.endpoint_addrs()?;
        for ip in add.result_ips() {
            if !endpoints.contains(&ip.addr()) {
                bail!(
                    "no ENDPOINTS entry for the pod's {}; entries: {endpoints:?}",
                    ip.addr()
                );
            }
        }
        Ok(())
    }

    /// Fails, listing them, when attachments, link pins or `ENDPOINTS`
    /// entries are left (after every pod's DEL).
    pub fn check_detached(&self) -> anyhow::Result<()> {
        let mut left = Vec::new();
        for file in self.attachments() {
            left.push(format!("state record {}", file.display()));
        }
        for pin in self.tcx_link_pins() {
            left.push(format!("link pin {pin}"));
        }
        for addr in self.endpoint_addrs()? {
            left.push(format!("ENDPOINTS entry {addr}"));
        }
        if !left.is_empty() {
            bail!("sluice left behind:\n  {}", left.join("\n  "));
        }
        Ok(())
    }

    /// What the plugin logged so far.
    pub fn plugin_log(&self) -> String {
        fs::read_to_string(self.state.path().join("plugin.log")).unwrap_or_default()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sluice plugin log ----\n{}---- end of sluice plugin log ----",
                self.plugin_log()
            );
        }
    }
}

/// A runtime's plugin directory: symlinks to every reference plugin and to
/// the Sluice binaries, except the plugin under test, which is a shell
/// wrapper that records each call in `log/` and then runs the real binary
/// with the same environment and stdin.
#[derive(Debug)]
pub struct PluginDir {
    bin: PathBuf,
    log: PathBuf,
}

/// The wrapper; `@LOG@` and `@REAL@` are replaced by shell-quoted paths.
/// One directory per call, named `<ns since the epoch>-<pid>-<command>`
/// (so names sort by time), holding `env`, `stdin`, `stdout`, `stderr`
/// and `rc` (the exit code).
const WRAPPER: &str = r#"#!/bin/sh
# Written by the Sluice runtime tests (tests/src/runtime/mod.rs): records
# one CNI call, then runs the real plugin with the same environment and stdin.
log=@LOG@
real=@REAL@
dir="$log/$(date +%s%N)-$$-${CNI_COMMAND:-unset}"
mkdir "$dir" || exit 99
env > "$dir/env"
cat > "$dir/stdin"
"$real" < "$dir/stdin" > "$dir/stdout" 2> "$dir/stderr"
rc=$?
echo "$rc" > "$dir/rc"
cat "$dir/stdout"
cat "$dir/stderr" >&2
exit "$rc"
"#;

fn shell_quote(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

impl PluginDir {
    /// Makes `<root>/plugins` (the binaries) and `<root>/cni-calls` (the
    /// wrapper's records) for `network`.
    pub fn new(root: &Path, network: &Network) -> anyhow::Result<Self> {
        let bin = root.join("plugins");
        let log = root.join("cni-calls");
        fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        fs::create_dir_all(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut targets: BTreeMap<String, PathBuf> = BTreeMap::new();
        let reference = fs::read_dir(REFERENCE_PLUGIN_DIR).with_context(|| {
            format!(
                "reading {REFERENCE_PLUGIN_DIR}: install containernetworking-plugins \
                 (`cargo xtask setup`)"
            )
        })?;
        for entry in reference {
            let entry = entry?;
            targets.insert(
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            );
        }
        // The Sluice binaries, when built, so a conflist can name them
        // (also as the IPAM of another plugin).
        for name in ["sluice", "sluice-ipam"] {
            let path = crate::agent::bin_dir().join(name);
            if path.is_file() {
                targets.insert(name.into(), path);
            }
        }
        targets.remove(&network.plugin_type);
        for (name, target) in &targets {
            let link = bin.join(name);
            std::os::unix::fs::symlink(target, &link)
                .with_context(|| format!("symlinking {}", link.display()))?;
        }
        if !network.plugin_binary.is_file() {
            bail!(
                "the plugin under test {} does not exist",
                network.plugin_binary.display()
            );
        }
        let wrapper = bin.join(&network.plugin_type);
        let script = WRAPPER
            .replace("@LOG@", &shell_quote(&log)?)
            .replace("@REAL@", &shell_quote(&network.plugin_binary)?);
        fs::write(&wrapper, script).with_context(|| format!("writing {}", wrapper.display()))?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
        Ok(Self { bin, log })
    }

    /// The directory to give the runtime (`cni_plugin_dirs`, `bin_dir`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Every call recorded so far, oldest first.
    pub fn calls(&self) -> anyhow::Result<Vec<CniCall>> {
        let mut names: Vec<String> = fs::read_dir(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| CniCall::read(&self.log.join(name)))
            .collect()
    }

    /// A one-line-per-call summary, for assertion messages.
    pub fn summary(&self) -> String {
        match self.calls() {
            Ok(calls) => summarize(&calls),
            Err(err) => format!("(cannot read the CNI call log: {err:#})"),
        }
    }
}

/// One line per call: command, exit code, container id, netns, and the
/// start of stderr when there is any.
pub fn summarize(calls: &[CniCall]) -> String {
    let mut text = String::new();
    for call in calls {
        text.push_str(&format!(
            "  {} rc={} container={} netns={} args={}",
            call.command,
            call.rc,
            call.env_var("CNI_CONTAINERID").unwrap_or("-"),
            call.env_var("CNI_NETNS").unwrap_or("-"),
            call.env_var("CNI_ARGS").unwrap_or("-"),
        ));
        if !call.stderr.trim().is_empty() {
            text.push_str(&format!(" stderr={:?}", call.stderr.trim()));
        }
        if call.rc != 0 {
            text.push_str(&format!(" stdout={:?}", call.stdout.trim()));
        }
        text.push('\n');
    }
    text
}

/// One call of the plugin under test, as the wrapper recorded it.
#[derive(Clone, Debug)]
pub struct CniCall {
    /// `CNI_COMMAND` (`VERSION`, `ADD`, `DEL`, `CHECK`, ...).
    pub command: String,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// The network configuration on stdin (with `prevResult` on DEL/CHECK).
    pub config: Value,
    /// What the plugin printed (the result or error JSON).
    pub stdout: String,
    /// What the plugin logged.
    pub stderr: String,
    /// The plugin's exit code.
    pub rc: i32,
}

impl CniCall {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let file = |name: &str| -> anyhow::Result<String> {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let env = file("env")?
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let stdin = file("stdin")?;
        // A call still running has no rc yet.
        let rc = match file("rc") {
            Ok(rc) => rc.trim().parse().unwrap_or(-1),
            Err(_) => -1,
        };
        let dir_name = dir.file_name().unwrap_or_default().to_string_lossy();
        Ok(Self {
            command: dir_name.rsplit('-').next().unwrap_or_default().to_owned(),
            config: serde_json::from_str(&stdin).unwrap_or(Value::String(stdin)),
            env,
            stdout: file("stdout").unwrap_or_default(),
            stderr: file("stderr").unwrap_or_default(),
            rc,
        })
    }

    /// A variable of its environment.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// The `KEY=VALUE` pairs of `CNI_ARGS`.
    pub fn cni_args(&self) -> BTreeMap<String, String> {
        self.env_var("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The result JSON it printed (ADD), when it printed one.
    pub fn result(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The addresses of an ADD result (or of a DEL's `prevResult`).
    pub fn result_ips(&self) -> Vec<IpNet> {
        let result = match self.command.as_str() {
            "ADD" => self.result(),
            _ => self.config.get("prevResult").cloned(),
        };
        result
            .as_ref()
            .and_then(|r| r["ips"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.parse().ok())
            .collect()
    }

    /// Host-side interfaces named in an ADD result (or a DEL's
    /// `prevResult`): those without a `sandbox`; includes the bridge.
    pub fn result_host_interfaces(&self) -> Vec<String> {
        let result = match self.command.as_str() {
            "ADD" => self.result(),
            _ => self.config.get("prevResult").cloned(),
        };
        result
            .as_ref()
            .and_then(|r| r["interfaces"].as_array())
            .into_iter()
            .flatten()
            .filter(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
            .filter_map(|i| Some(i["name"].as_str()?.to_owned()))
            .collect()
    }
}

/// The calls of one command, e.g. every `ADD`.
pub fn calls_of<'a>(calls: &'a [CniCall], command: &str) -> Vec<&'a CniCall> {
    calls.iter().filter(|c| c.command == command).collect()
}

/// Links of the machine's own namespace whose names look like CNI's
/// (`cni*`, `veth*`), recorded before a test so it can tell what it added.
#[derive(Clone, Debug)]
pub struct MachineLinks(BTreeSet<String>);

impl MachineLinks {
    /// The `cni*`/`veth*` links of the machine's namespace now.
    pub fn now() -> anyhow::Result<Self> {
        let names = nix::net::if_::if_nameindex().context("if_nameindex")?;
        Ok(Self(
            names
                .iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni") || n.starts_with("veth"))
                .collect(),
        ))
    }

    /// Those present now that were not in `self`.
    pub fn added(&self) -> anyhow::Result<Vec<String>> {
        Ok(Self::now()?.0.difference(&self.0).cloned().collect())
    }
}

/// Fails, listing everything found, unless the runtime left nothing behind
/// for `calls`: every pod netns (`CNI_NETNS` of an ADD) is gone and no
/// longer mounted, no host-side interface of an ADD result exists in the
/// node namespace (the bridge may stay: the reference plugin never deletes
/// it), `ipam_dir` holds no reservation, libcni's cache holds no result for
/// these containers, and the machine's namespace gained no `cni*`/`veth*`
/// link since `before`.
pub fn check_clean(
    network: &Network,
    calls: &[CniCall],
    node: &Netns,
    ipam_dir: &Path,
    before: &MachineLinks,
) -> anyhow::Result<()> {
    let mut left = Vec::new();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let node_links: BTreeSet<String> = crate::link::link_names(node)?.into_iter().collect();
    for add in calls_of(calls, "ADD") {
        if let Some(netns) = add.env_var("CNI_NETNS").filter(|n| !n.is_empty()) {
            if Path::new(netns).exists() {
                left.push(format!("pod netns {netns} still exists"));
            }
            if mounts.lines().any(|l| l.split(' ').nth(4) == Some(netns)) {
                left.push(format!("pod netns {netns} still mounted"));
            }
        }
        for ifname in add.result_host_interfaces() {
            if ifname != network.bridge && node_links.contains(&ifname) {
                left.push(format!("host interface {ifname} still in the node netns"));
            }
        }
        if let (Some(id), Some(ifname)) =
            (add.env_var("CNI_CONTAINERID"), add.env_var("CNI_IFNAME"))
        {
            let cached = Path::new(CNI_CACHE_DIR).join(format!("{}-{id}-{ifname}", network.name));
            if cached.exists() {
                left.push(format!("libcni cache entry {}", cached.display()));
            }
        }
    }
    for reservation in ipam_reservations(ipam_dir)? {
        left.push(format!("IPAM reservation {}", reservation.display()));
    }
    for link in before.added()? {
        left.push(format!("link {link} in the machine's own netns"));
    }
    if !left.is_empty() {
        bail!(
            "left behind:\n  {}\nCNI calls:\n{}",
            left.join("\n  "),
            summarize(calls)
        );
    }
    Ok(())
}

/// host-local's reservation files under `dir` (files named like an IP
/// address, in a directory per network).
pub fn ipam_reservations(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(networks) = fs::read_dir(dir) else {
        return Ok(found);
    };
    for network in networks {
        let network = network?.path();
        if !network.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&network)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.parse::<IpAddr>().is_ok() {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// Makes `cmd` run inside `ns` (a `setns` between fork and exec) and die
/// with the thread that started it (`PR_SET_PDEATHSIG`). `ns` must outlive
/// the spawn.
pub fn in_netns(cmd: &mut Command, ns: &Netns) {
    let netns_fd = ns.fd().as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe syscalls run
    // (setns, prctl), on an fd that stays open in the parent meanwhile.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` to completion with its output collected, killing it (only
/// that process) when it runs longer than `timeout`.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut stdout = tempfile::tempfile().context("creating a temp file")?;
    let mut stderr = tempfile::tempfile().context("creating a temp file")?;
    cmd.stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?);
    let line = display(cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::io::Seek::rewind(&mut stderr);
            let _ = stderr.read_to_string(&mut err);
            bail!("`{line}` still running after {timeout:?}, killed; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    std::io::Seek::rewind(&mut stdout)?;
    stdout.read_to_end(&mut out)?;
    std::io::Seek::rewind(&mut stderr)?;
    stderr.read_to_end(&mut err)?;
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

/// Like [`output_timeout`], but fails on a non-zero exit, with stderr; on
/// success returns stdout.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let output = output_timeout(cmd, timeout)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            display(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The command line as a person would type it (without the environment).
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Lazily unmounts every mount point at or below `dir` (deepest first):
/// a runtime killed mid-way can leave netns, shm or rootfs mounts there,
/// and a mounted directory cannot be removed.
pub fn unmount_below(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(err) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: umount {}: {err}", point.display());
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let code = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Fails with the package to install when `binary` is not on PATH.
pub fn which(binary: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("`{binary}` not found on PATH: install {package} (`cargo xtask setup`)")
        })
}

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup parent of its own (`/sluice-rt-<8 hex>`) for the containers of
/// one test, so the runtimes' defaults (`libpod_parent`, `k8s.io`) are
/// never created; dropping it removes it, with the sub-cgroups the runtime
/// made (conmon's, the containers'), from every hierarchy: v2 and each v1
/// controller.
#[derive(Debug)]
pub struct CgroupParent {
    name: String,
}

impl CgroupParent {
    /// A fresh name; the runtime creates the cgroups.
    pub fn new() -> Self {
        Self {
            name: format!("sluice-rt-{}", random_hex(8)),
        }
    }

    /// The path to give the runtime (`--cgroup-parent`, `cgroup_parent`).
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Its directories in every hierarchy that has it.
    fn dirs(&self) -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        let mut dirs = vec![root.join(&self.name)];
        if let Ok(hierarchies) = fs::read_dir(root) {
            for hierarchy in hierarchies.filter_map(Result::ok) {
                dirs.push(hierarchy.path().join(&self.name));
            }
        }
        dirs.retain(|d| d.is_dir());
        dirs
    }

    /// Removes it everywhere, sub-cgroups first; fails, naming them, when
    /// some cannot be removed (a process is still in one).
    pub fn remove(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for dir in self.dirs() {
            let mut all = Vec::new();
            collect_dirs(&dir, &mut all);
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for cgroup in all {
                if let Err(err) = fs::remove_dir(&cgroup) {
                    failed.push(format!("{}: {err}", cgroup.display()));
                }
            }
        }
        if !failed.is_empty() {
            bail!("cgroups not removed:\n  {}", failed.join("\n  "));
        }
        Ok(())
    }
}

impl Default for CgroupParent {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        // A cgroup whose last process just exited can be busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.remove() {
                Ok(()) => return,
                Err(err) if Instant::now() >= deadline => {
                    eprintln!("warning: {err:#}");
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// `dir` and every directory below it.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}
