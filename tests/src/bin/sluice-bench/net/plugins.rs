//! The paths a CNI plugin builds: two pods in a node namespace, made by
//! Debian's reference `bridge` plugin (with `host-local`) or by the real
//! `sluice` plugin with `sluice-agent` running in the node namespace
//! (programs pinned in a pin directory of its own), as a runtime runs them
//! on a node: ADD from the node namespace with a clean environment, DEL
//! with the ADD result as `prevResult` when the world is dropped.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use tests::{agent::bin, bin_dir, random_hex, Agent, BpffsDir, Netns};

use super::{
    spawn::{output, prepare},
    Topology,
};

/// Where Debian puts the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";
/// `PATH` of the plugins (the reference bridge execs iptables, sysctl).
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bridge name inside the node namespace (reference and sluice bridge mode).
pub const BRIDGE: &str = "br-bench";

/// One pod the plugin added: its namespace, container id, ADD result.
struct Pod {
    ns: Netns,
    cid: String,
    result: Value,
}

/// A node namespace and two pods, made and removed by one plugin.
pub struct PluginWorld {
    plugin: PathBuf,
    cni_path: String,
    conf: Value,
    // Dropped in this order after DEL: pods, node, agent, pins, files.
    pods: Vec<Pod>,
    server_ip: Ipv4Addr,
    node: Netns,
    agent: Option<Agent>,
    _bpffs: Option<BpffsDir>,
    tmp: tempfile::TempDir,
}

/// How a sluice world is configured.
#[derive(Clone, Copy, Debug)]
pub struct SluiceConf {
    /// `"mode": "bridge"` instead of routed.
    pub bridge: bool,
    /// `"hostRouting"`: `"ebpf"` (the default) or `"legacy"`; `None` leaves
    /// it out (bridge mode refuses it: the bridge forwards there).
    pub host_routing: Option<&'static str>,
    /// `"tcAttach"`: `"tc"` (the default) or `"tcx"`; `None` leaves it out.
    pub tc_attach: Option<&'static str>,
    /// Third octet of the pod subnet `10.197.N.0/24`.
    pub subnet: u8,
}

impl PluginWorld {
    /// The reference `bridge` plugin with `host-local` on `10.197.3.0/24`,
    /// `isGateway` (what its users write).
    pub fn reference() -> anyhow::Result<Self> {
        let reference = Path::new(REFERENCE_DIR);
        for name in ["bridge", "host-local"] {
            ensure!(
                reference.join(name).is_file(),
                "{REFERENCE_DIR}/{name} is missing: `apt-get install containernetworking-plugins` \
                 (`cargo xtask setup` installs it)"
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("sluice-bench-net-")
            .tempdir()?;
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": format!("bench-net-{}", random_hex(6)),
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.197.3.0/24", "dataDir": tmp.path().join("ipam")},
        });
        let mut world = Self {
            plugin: reference.join("bridge"),
            cni_path: REFERENCE_DIR.to_owned(),
            conf,
            pods: Vec::new(),
            server_ip: Ipv4Addr::UNSPECIFIED,
            node: Netns::new()?,
            agent: None,
            _bpffs: None,
            tmp,
        };
        world.add_pods()?;
        Ok(world)
    }

    /// The `sluice` plugin (sluice-ipam, `waitForPolicy` off: the agent has
    /// no policy source) with `sluice-agent` in the node namespace. Like
    /// the policy bench's world, the node gets an address of its own
    /// (`10.197.<subnet+100>.1` on a veth pair inside it), as a real node
    /// has one on its uplink.
    pub fn sluice(c: SluiceConf) -> anyhow::Result<Self> {
        let plugin = bin("sluice")?;
        let tmp = tempfile::Builder::new()
            .prefix("sluice-bench-net-")
            .tempdir()?;
        let node = Netns::new()?;
        tests::link::add_veth(&node, "node0", &node, "node0p")?;
        tests::link::add_address(
            &node,
            "node0",
            format!("10.197.{}.1/32", u16::from(c.subnet) + 100).parse()?,
        )?;
        tests::link::set_up(&node, "node0")?;
        tests::link::set_up(&node, "node0p")?;
        let bpffs = BpffsDir::new();
        let path = |p: &str| tmp.path().join(p).display().to_string();
        let (state, socket) = (path("state"), path("run/agent.sock"));
        let agent = Agent::start(
            &node,
            &bpffs,
            &["--state-dir", &state, "--api-socket", &socket],
        )?;
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": format!("bench-net-{}", random_hex(6)),
            "type": "sluice",
            "bpffsDir": bpffs.path(),
            "stateDir": state,
            "agentSocket": socket,
            "waitForPolicy": false,
            // Debug level: the log then says whether the plugin ignored
            // `hostRouting` as an unknown key (see `ignored_host_routing`).
            "logLevel": "debug",
            "logFile": path("plugin.log"),
            "ipam": {
                "type": "sluice-ipam",
                "ranges": [[{"subnet": format!("10.197.{}.0/24", c.subnet)}]],
                "dataDir": path("ipam"),
            },
        });
        if let Some(routing) = c.host_routing {
            conf["hostRouting"] = routing.into();
        }
        if let Some(attach) = c.tc_attach {
            conf["tcAttach"] = attach.into();
        }
        if c.bridge {
            conf["mode"] = "bridge".into();
            conf["bridge"] = BRIDGE.into();
            conf["isGateway"] = true.into();
        }
        let mut world = Self {
            cni_path: format!("{}:{REFERENCE_DIR}", bin_dir().display()),
            plugin,
            conf,
            pods: Vec::new(),
            server_ip: Ipv4Addr::UNSPECIFIED,
            node,
            agent: Some(agent),
            _bpffs: Some(bpffs),
            tmp,
        };
        world.add_pods()?;
        Ok(world)
    }

    /// The network config ADD ran with.
    pub fn conf(&self) -> &Value {
        &self.conf
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The host-side interfaces of the pods (the result's interfaces
    /// without a sandbox, other than the bridge).
    pub fn host_veths(&self) -> Vec<String> {
        self.pods
            .iter()
            .flat_map(|p| {
                p.result["interfaces"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|i| i.get("sandbox").is_none() && i["name"] != BRIDGE)
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Whether the sluice plugin logged `hostRouting` among the config keys
    /// it ignores (it does not know the option yet); `None` for the
    /// reference plugin or when its log cannot be read.
    pub fn ignored_host_routing(&self) -> Option<bool> {
        self.agent.as_ref()?;
        let log = std::fs::read_to_string(self.tmp.path().join("plugin.log")).ok()?;
        Some(
            log.lines()
                .any(|l| l.contains("ignoring unknown config keys") && l.contains("hostRouting")),
        )
    }

    /// The agent's log, for error messages.
    pub fn agent_log(&self) -> Option<String> {
        self.agent.as_ref().map(Agent::log)
    }

    fn invoke(
        &self,
        command: &str,
        pod: &Netns,
        cid: &str,
        stdin: &Value,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.plugin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"),
            )
            .env("PATH", PATH_ENV);
        prepare(&mut cmd, &self.node, None);
        output(
            &mut cmd,
            Some(stdin.to_string().as_bytes()),
            Duration::from_secs(60),
        )
        .with_context(|| format!("{} {command} {cid}", self.plugin.display()))
    }

    fn add_pods(&mut self) -> anyhow::Result<()> {
        for name in ["a", "b"] {
            let ns = Netns::new()?;
            let cid = format!("bench-net-{name}-{}", random_hex(8));
            let out = match self.invoke("ADD", &ns, &cid, &self.conf) {
                Ok(out) => out,
                Err(e) => match self.agent_log() {
                    Some(log) => return Err(e.context(format!("sluice-agent's log:\n{log}"))),
                    None => return Err(e),
                },
            };
            let result: Value = serde_json::from_str(&out)
                .with_context(|| format!("the ADD result is not JSON: {out}"))?;
            self.server_ip = result["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
                .next()
                .with_context(|| format!("no IPv4 address in {result}"))?;
            self.pods.push(Pod { ns, cid, result });
        }
        Ok(())
    }
}

impl Topology for PluginWorld {
    fn client(&self) -> &Netns {
        &self.pods[0].ns
    }
    fn server(&self) -> &Netns {
        &self.pods[1].ns
    }
    fn server_ip(&self) -> Ipv4Addr {
        // The second pod's: add_pods adds a, then b.
        self.server_ip
    }
}

impl Drop for PluginWorld {
    fn drop(&mut self) {
        for pod in std::mem::take(&mut self.pods) {
            let mut conf = self.conf.clone();
            conf["prevResult"] = pod.result.clone();
            if let Err(e) = self.invoke("DEL", &pod.ns, &pod.cid, &conf) {
                eprintln!("[net] warning: DEL {}: {e:#}", pod.cid);
            }
        }
    }
}
