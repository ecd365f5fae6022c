//! The `cni` group: ADD and DEL latency of `sluice` against the reference
//! `bridge` plugin (Debian's containernetworking-plugins, with `host-local`)
//! on the same network config, measured in the same run.
//!
//! The world: one "node" namespace per plugin, where its bridge and host
//! veths live and where the plugin runs (as a runtime runs it on a node),
//! and a pool of pod namespaces per plugin, one per container at a time
//! (a DEL empties a pod namespace, so the next container can use it).
//! `sluice-agent` runs in sluice's node namespace with a pin directory of
//! its own. Every invocation is a real process started from a thread
//! inside the node namespace, with a clean environment, the config on
//! stdin, and the ADD result as `prevResult` on DEL (what libcni does);
//! its latency is spawn to exit, as the runtime sees it.
//!
//! Noise hits both plugins alike: plugins alternate batch by batch
//! (A/B, then B/A), and one warm-up batch (or round) of each is discarded
//! per variant and mode. Variants: without and with `ipMasq`; modes:
//! sequential (one call at a time) and parallel (`--parallel` containers
//! started together, then deleted together).

mod breakdown;
mod report;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Barrier,
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context as _};
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};
use tests::{agent::bin, Agent, BpffsDir, Netns};

use crate::machine::{utc_now, Machine};
use crate::ratio::Ratio;
use report::Report;

/// Network name, the same for both plugins.
const NETWORK: &str = "sluice-bench";
/// Bridge name (inside each plugin's node namespace).
const BRIDGE: &str = "cni-bench";
/// host-local subnet (inside namespaces the bench created only).
const SUBNET: &str = "10.198.0.0/16";
/// The newest version the reference plugins speak.
const CNI_VERSION: &str = "1.0.0";
const IFNAME: &str = "eth0";
/// `PATH` of the plugins: the reference bridge execs `iptables` for
/// `ipMasq`, found through it.
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where Debian puts the reference plugins.
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// Target: sluice's p50 at most this fraction of the reference's.
pub const TARGET_RATIO: f64 = 0.5;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Samples per plugin, op, variant and mode.
    pub samples: usize,
    /// Containers started together in the parallel mode.
    pub parallel: usize,
    /// Containers per sequential batch.
    pub batch: usize,
    /// Samples of each breakdown step.
    pub breakdown: usize,
    pub quick: bool,
}

impl Params {
    pub fn new(quick: bool, samples: Option<usize>, parallel: usize) -> Self {
        let samples = samples.unwrap_or(if quick { 50 } else { 200 });
        Self {
            samples,
            parallel,
            batch: 10,
            breakdown: if quick { 20 } else { 50 },
            quick,
        }
    }

    /// What kind of run this was, for the report.
    fn label(&self) -> String {
        let default = if self.quick { 50 } else { 200 };
        match (self.quick, self.samples == default) {
            (true, true) => "quick (`--quick`)".into(),
            (false, true) => "full".into(),
            (_, false) => format!("custom (`--samples {}`)", self.samples),
        }
    }

    fn rounds(&self) -> usize {
        self.samples.div_ceil(self.parallel)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Plugin {
    Bridge,
    Sluice,
}

impl Plugin {
    fn name(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Sluice => "sluice",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Sequential,
    Parallel,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::Parallel => "parallel",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Add,
    Del,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
        }
    }
}

/// (ipMasq, mode, op, plugin) → latencies in ms.
type Samples = BTreeMap<(bool, Mode, Op, Plugin), Vec<f64>>;

/// One plugin's side of the world.
struct Side {
    plugin: Plugin,
    binary: PathBuf,
    cni_path: String,
    node: Netns,
    pods: Vec<Netns>,
    /// Its own directory for IPAM data (and sluice's state).
    dir: PathBuf,
    /// sluice's pin directory and agent socket.
    bpffs_dir: Option<PathBuf>,
}

impl Side {
    /// The network config. The reference gets what a user would write for
    /// it (with the bench's own `dataDir`); sluice gets the same with only
    /// `type` changed, plus its pin, state and socket paths.
    fn conf(&self, masq: bool) -> Value {
        let mut conf = json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK,
            "type": self.plugin.name(),
            "bridge": BRIDGE,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "subnet": SUBNET,
                "dataDir": self.dir.join("ipam"),
            },
        });
        if masq {
            conf["ipMasq"] = true.into();
        }
        if let Some(bpffs) = &self.bpffs_dir {
            conf["bpffsDir"] = json!(bpffs);
            conf["stateDir"] = json!(self.dir.join("state"));
            conf["agentSocket"] = json!(self.dir.join("agent.sock"));
            // Measured like the reference: ADD notifies the agent but does
            // not wait for policy (the default waits; see the README).
            conf["waitForPolicy"] = false.into();
        }
        conf
    }

    fn container_id(&self, masq: bool, mode: Mode, i: usize) -> String {
        format!(
            "bench-{}-{}-{}-{i:05}",
            self.plugin.name(),
            if masq { "masq" } else { "plain" },
            mode.name()
        )
    }
}

/// Everything the group made; dropping it removes it all (fields drop in
/// order: namespaces, then the agent, then its pins, then the directories).
struct World {
    sides: Vec<Side>,
    _agent: Agent,
    bpffs: BpffsDir,
    _tmp: tempfile::TempDir,
}

impl World {
    fn new(pods: usize) -> anyhow::Result<Self> {
        let reference = Path::new(REFERENCE_DIR);
        for name in ["bridge", "host-local"] {
            ensure!(
                reference.join(name).is_file(),
                "{}/{name} is missing: `apt-get install containernetworking-plugins` \
                 (`cargo xtask setup` installs it)",
                REFERENCE_DIR
            );
        }
        ensure!(
            PATH_ENV
                .split(':')
                .any(|d| Path::new(d).join("iptables").is_file()),
            "iptables is missing (the reference bridge plugin runs it for ipMasq): \
             `apt-get install iptables`"
        );
        let sluice = bin("sluice")?;
        let sluice_dir = sluice
            .parent()
            .context("the sluice binary has no directory")?
            .to_owned();
        let tmp = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir()
            .context("creating the bench's directory")?;
        let bpffs = BpffsDir::new();
        let sluice_node = Netns::new()?;
        // The agent reads sluice's state dir and listens on its socket, as
        // on a node: ADD's notification reaches it (without waiting:
        // `waitForPolicy` is off, as in the reference's config).
        let own_dir = tmp.path().join(Plugin::Sluice.name());
        let state_dir = own_dir.join("state");
        let socket = own_dir.join("agent.sock");
        let (state_arg, socket_arg) = (
            state_dir.to_str().context("the bench dir is not UTF-8")?,
            socket.to_str().context("the bench dir is not UTF-8")?,
        );
        let agent = Agent::start(
            &sluice_node,
            &bpffs,
            &["--state-dir", state_arg, "--api-socket", socket_arg],
        )?;
        let mut sides = Vec::new();
        for (plugin, node) in [
            (Plugin::Bridge, Netns::new()?),
            (Plugin::Sluice, sluice_node),
        ] {
            let dir = tmp.path().join(plugin.name());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let pods = (0..pods)
                .map(|_| Netns::new())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (binary, cni_path, bpffs_dir) = match plugin {
                Plugin::Bridge => (reference.join("bridge"), REFERENCE_DIR.to_owned(), None),
                Plugin::Sluice => (
                    sluice.clone(),
                    format!("{}:{REFERENCE_DIR}", sluice_dir.display()),
                    Some(bpffs.path().to_owned()),
                ),
            };
            sides.push(Side {
                plugin,
                binary,
                cni_path,
                node,
                pods,
                dir,
                bpffs_dir,
            });
        }
        Ok(Self {
            sides,
            _agent: agent,
            bpffs,
            _tmp: tmp,
        })
    }

    fn side(&self, plugin: Plugin) -> &Side {
        self.sides
            .iter()
            .find(|s| s.plugin == plugin)
            .expect("both sides exist")
    }

    /// What is left in the namespaces after the last DEL: host veths in
    /// the node namespaces, interfaces other than `lo` in the pods.
    fn leftovers(&self) -> anyhow::Result<Vec<String>> {
        let mut left = Vec::new();
        for side in &self.sides {
            for name in tests::link::link_names(&side.node)? {
                if name != "lo" && name != BRIDGE {
                    left.push(format!("{} node: {name}", side.plugin.name()));
                }
            }
            for pod in &side.pods {
                for name in tests::link::link_names(pod)? {
                    if name != "lo" {
                        left.push(format!("{} pod {}: {name}", side.plugin.name(), pod.name()));
                    }
                }
            }
        }
        Ok(left)
    }
}

/// Runs one plugin command as a runtime does and returns its latency (ms)
/// and stdout. Call it from a thread inside the node namespace: the child
/// inherits the thread's namespace.
fn invoke(
    binary: &Path,
    cni_path: &str,
    command: &str,
    container_id: &str,
    pod: &Path,
    stdin: &[u8],
) -> anyhow::Result<(f64, Vec<u8>)> {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container_id};\
                 K8S_POD_INFRA_CONTAINER_ID={container_id}"
            ),
        )
        .env("PATH", PATH_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut pipe = child.stdin.take().context("stdin was not piped")?;
    // The config is far below the pipe buffer; a plugin that exits without
    // reading it is not an error here.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", binary.display()))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} {command} {container_id} failed ({}): {}\n---- stderr ----\n{}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((elapsed, out.stdout))
}

/// `conf` with the ADD result as `prevResult`, as libcni sends DEL.
fn del_stdin(conf: &Value, add_result: &[u8]) -> anyhow::Result<Vec<u8>> {
    let prev: Value = serde_json::from_slice(add_result).with_context(|| {
        format!(
            "the ADD result is not JSON: {}",
            String::from_utf8_lossy(add_result)
        )
    })?;
    let mut c = conf.clone();
    c["prevResult"] = prev;
    Ok(c.to_string().into_bytes())
}

/// ADD `ids.len()` containers one after the other, then DEL them; returns
/// the latencies of each.
fn sequential_batch(side: &Side, masq: bool, ids: &[String]) -> anyhow::Result<[Vec<f64>; 2]> {
    let conf = side.conf(masq);
    let stdin = conf.to_string().into_bytes();
    side.node.run(|| {
        let mut adds = Vec::with_capacity(ids.len());
        let mut results = Vec::with_capacity(ids.len());
        for (cid, pod) in ids.iter().zip(&side.pods) {
            let (t, out) = invoke(&side.binary, &side.cni_path, "ADD", cid, pod.path(), &stdin)?;
            adds.push(t);
            results.push(out);
        }
        let mut dels = Vec::with_capacity(ids.len());
        for ((cid, pod), result) in ids.iter().zip(&side.pods).zip(&results) {
            let stdin = del_stdin(&conf, result)?;
            let (t, _) = invoke(&side.binary, &side.cni_path, "DEL", cid, pod.path(), &stdin)?;
            dels.push(t);
        }
        Ok([adds, dels])
    })
}

/// ADD `ids.len()` containers at once (threads released together), wait
/// for all, then DEL them at once.
fn parallel_round(side: &Side, masq: bool, ids: &[String]) -> anyhow::Result<[Vec<f64>; 2]> {
    let conf = side.conf(masq);
    let stdin = conf.to_string().into_bytes();
    let barrier = Barrier::new(ids.len());
    let outcomes: Vec<anyhow::Result<(f64, f64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .iter()
            .zip(&side.pods)
            .map(|(cid, pod)| {
                let (conf, stdin, barrier) = (&conf, &stdin, &barrier);
                scope.spawn(move || -> anyhow::Result<(f64, f64)> {
                    // Every worker reaches both barriers, whatever fails,
                    // so none waits forever.
                    let entered = setns(side.node.fd(), CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into {}", side.node.name()));
                    barrier.wait();
                    let added = entered.and_then(|()| {
                        let (t, out) =
                            invoke(&side.binary, &side.cni_path, "ADD", cid, pod.path(), stdin)?;
                        Ok((t, del_stdin(conf, &out)?))
                    });
                    barrier.wait();
                    let (add, del_in) = added?;
                    let (del, _) = invoke(
                        &side.binary,
                        &side.cni_path,
                        "DEL",
                        cid,
                        pod.path(),
                        &del_in,
                    )?;
                    Ok((add, del))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow!("a worker thread panicked")))
            })
            .collect()
    });
    let mut adds = Vec::with_capacity(ids.len());
    let mut dels = Vec::with_capacity(ids.len());
    for outcome in outcomes {
        let (a, d) = outcome?;
        adds.push(a);
        dels.push(d);
    }
    Ok([adds, dels])
}

/// One variant (ipMasq off or on), both modes, both plugins alternating.
fn run_variant(
    world: &World,
    params: &Params,
    masq: bool,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let label = if masq { "ipMasq on" } else { "ipMasq off" };
    for mode in [Mode::Sequential, Mode::Parallel] {
        let started = Instant::now();
        let per_batch = match mode {
            Mode::Sequential => params.batch,
            Mode::Parallel => params.parallel,
        };
        let batches = params.samples.div_ceil(per_batch);
        let mut next = [0usize; 2];
        // Batch 0 is the warm-up (it also creates each plugin's bridge).
        for b in 0..=batches {
            let order = if b % 2 == 0 {
                [Plugin::Bridge, Plugin::Sluice]
            } else {
                [Plugin::Sluice, Plugin::Bridge]
            };
            let n = match (b, mode) {
                (0, _) => per_batch,
                // Parallel rounds stay full-size: concurrency is the point.
                (_, Mode::Parallel) => per_batch,
                _ => per_batch.min(params.samples - (b - 1) * per_batch),
            };
            for plugin in order {
                crate::check_interrupted()?;
                let side = world.side(plugin);
                let slot = &mut next[plugin as usize];
                let ids: Vec<String> = (*slot..*slot + n)
                    .map(|i| side.container_id(masq, mode, i))
                    .collect();
                *slot += n;
                let [adds, dels] = match mode {
                    Mode::Sequential => sequential_batch(side, masq, &ids),
                    Mode::Parallel => parallel_round(side, masq, &ids),
                }
                .with_context(|| format!("{label}, {}, {}", mode.name(), plugin.name()))?;
                if b > 0 {
                    samples
                        .entry((masq, mode, Op::Add, plugin))
                        .or_default()
                        .extend(adds);
                    samples
                        .entry((masq, mode, Op::Del, plugin))
                        .or_default()
                        .extend(dels);
                }
            }
        }
        let n = samples
            .get(&(masq, mode, Op::Add, Plugin::Sluice))
            .map_or(0, Vec::len);
        println!(
            "[cni] {label}, {}: {n} ADD + {n} DEL per plugin in {:.0} s",
            mode.name(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The group: measures, writes `cni.json` and `cni.md` (or `cni-quick.*`)
/// into `out`, prints the table; returns the summary's ratios (sluice p50 /
/// bridge p50 of every row, target at most [`TARGET_RATIO`]).
pub fn run(params: &Params, out: &Path, workspace: &Path) -> anyhow::Result<Vec<Ratio>> {
    let machine = Machine::describe(workspace);
    let date = utc_now();
    println!("[cni] machine: {}", machine.line());
    let started = Instant::now();
    let world = World::new(params.parallel.max(params.batch))?;
    println!(
        "[cni] world ready in {:.1} s: 2 node netns, {} pod netns each, sluice-agent up",
        started.elapsed().as_secs_f64(),
        world.side(Plugin::Sluice).pods.len()
    );
    let mut samples = Samples::new();
    for masq in [false, true] {
        run_variant(&world, params, masq, &mut samples)?;
    }
    let steps = breakdown::breakdown(&world, params.breakdown)?;
    println!("[cni] breakdown: {} samples per step", params.breakdown);
    let left = world.leftovers()?;
    ensure!(left.is_empty(), "left after the last DEL: {left:?}");
    let confs = [
        world.side(Plugin::Bridge).conf(false),
        world.side(Plugin::Sluice).conf(false),
    ];
    drop(world);

    let report = Report {
        params: *params,
        machine,
        date,
        samples,
        steps,
        confs,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::results::write_group_results(
        out,
        "cni",
        params.quick,
        &report.json(),
        &report.markdown(),
    )?;
    Ok(report.ratios())
}
