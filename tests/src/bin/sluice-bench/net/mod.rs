//! The `net` group: pod-to-pod TCP stream (1 and 2 flows), TCP_RR, TCP_CRR
//! and kernel CPU per Gbit/s on every path, Sluice's and the baselines',
//! all measured in the same run and reported as ratios.
//!
//! Paths, each in namespaces the bench creates (and removes on drop, also on
//! error or Ctrl-C), two pods a (client) and b (server) each:
//! - `veth`: a bare veth pair, the ceiling ([`stack`]);
//! - `host-routed`: /32 routes and ip_forward in a node namespace, no BPF
//!   ([`stack`]);
//! - `bridge-ref`: the reference `bridge` plugin with `host-local`
//!   ([`plugins`]);
//! - `sluice-routed` (`"hostRouting": "ebpf"`), `sluice-routed-legacy`
//!   (`"legacy"`) and `sluice-bridge` (`"mode": "bridge"`): the real plugin
//!   and agent ([`plugins`]);
//! - `sluice-routed+xdp`: sluice-routed with XDP_PASS attached natively to
//!   both host-side veths for the duration of its runs ([`xdp`]), the guard
//!   against moving pod programs to XDP.
//!
//! Clients run on CPU 0, servers on CPU 1 ([`spawn`]). Every round runs
//! every path once (in an order rotated round by round, so drift over the
//! run hits all paths alike); the report gives the median over the rounds
//! with min and max, and ratios of medians ([`report`]).

mod measure;
mod plugins;
mod report;
mod spawn;
mod stack;
mod xdp;

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::Context as _;
use tests::Netns;

use crate::{
    machine::{utc_now, Machine},
    ratio::Ratio,
};
use measure::Servers;
use plugins::{PluginWorld, SluiceConf};
use report::Report;
use stack::{HostRouted, VethPair};
use xdp::XdpGuard;

/// Where a path's client and server run.
pub trait Topology {
    /// Pod a, where the clients run.
    fn client(&self) -> &Netns;
    /// Pod b, where the servers run.
    fn server(&self) -> &Netns;
    /// Pod b's address.
    fn server_ip(&self) -> Ipv4Addr;
}

/// A path as measured (the XDP guard reuses sluice-routed's world).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathId {
    Veth,
    HostRouted,
    BridgeRef,
    SluiceRouted,
    SluiceRoutedTcx,
    SluiceLegacy,
    SluiceBridge,
    SluiceRoutedXdp,
}

impl PathId {
    pub const ALL: [PathId; 8] = [
        Self::Veth,
        Self::HostRouted,
        Self::BridgeRef,
        Self::SluiceRouted,
        Self::SluiceRoutedTcx,
        Self::SluiceLegacy,
        Self::SluiceBridge,
        Self::SluiceRoutedXdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::HostRouted => "host-routed",
            Self::BridgeRef => "bridge-ref",
            Self::SluiceRouted => "sluice-routed",
            Self::SluiceRoutedTcx => "sluice-routed-tcx",
            Self::SluiceLegacy => "sluice-routed-legacy",
            Self::SluiceBridge => "sluice-bridge",
            Self::SluiceRoutedXdp => "sluice-routed+xdp",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Veth => "bare veth pair between the two pod namespaces (the ceiling)",
            Self::HostRouted => {
                "pods behind veths in a node netns, /32 routes, ip_forward=1, no BPF"
            }
            Self::BridgeRef => "reference bridge plugin + host-local (isGateway), two pods",
            Self::SluiceRouted => {
                "sluice routed mode, \"hostRouting\": \"ebpf\" (the default), programs as tc filters (\"tcAttach\": \"tc\", the default)"
            }
            Self::SluiceRoutedTcx => {
                "sluice-routed with the programs on TCX links (\"tcAttach\": \"tcx\")"
            }
            Self::SluiceLegacy => "sluice routed mode, \"hostRouting\": \"legacy\" (host stack)",
            Self::SluiceBridge => {
                "sluice \"mode\": \"bridge\" (isGateway; no hostRouting: the bridge forwards)"
            }
            Self::SluiceRoutedXdp => {
                "sluice-routed with a native XDP_PASS program on both host-side veths"
            }
        }
    }
}

/// What is measured on each path, once per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// iperf3, 1 flow, Gbit/s received.
    Stream1,
    /// iperf3 -P 2, Gbit/s received.
    Stream2,
    /// Kernel CPU-seconds per second per Gbit/s, during the 1-flow run.
    CpuPerGbit,
    /// TCP_RR transactions/s.
    Rr,
    RrP50,
    RrP99,
    /// TCP_CRR transactions/s.
    Crr,
    CrrP50,
    CrrP99,
    /// Failed CRR transactions in the run.
    CrrFailed,
}

impl Metric {
    /// The metrics compared with ratios (throughput, cost, rates).
    pub const RATIOS: [Metric; 5] = [
        Self::Stream1,
        Self::Stream2,
        Self::CpuPerGbit,
        Self::Rr,
        Self::Crr,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Self::Stream1 => "tcp_stream_1_gbps",
            Self::Stream2 => "tcp_stream_2_gbps",
            Self::CpuPerGbit => "cpu_s_per_s_per_gbps",
            Self::Rr => "tcp_rr_per_s",
            Self::RrP50 => "tcp_rr_p50_us",
            Self::RrP99 => "tcp_rr_p99_us",
            Self::Crr => "tcp_crr_per_s",
            Self::CrrP50 => "tcp_crr_p50_us",
            Self::CrrP99 => "tcp_crr_p99_us",
            Self::CrrFailed => "tcp_crr_failed",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Stream1 => "TCP stream, 1 flow",
            Self::Stream2 => "TCP stream, 2 flows",
            Self::CpuPerGbit => "kernel CPU per Gbit/s (1 flow)",
            Self::Rr => "TCP_RR",
            Self::RrP50 => "TCP_RR p50",
            Self::RrP99 => "TCP_RR p99",
            Self::Crr => "TCP_CRR",
            Self::CrrP50 => "TCP_CRR p50",
            Self::CrrP99 => "TCP_CRR p99",
            Self::CrrFailed => "TCP_CRR failed",
        }
    }

    /// Lower is better for costs and latencies.
    pub fn lower_is_better(self) -> bool {
        matches!(
            self,
            Self::CpuPerGbit
                | Self::RrP50
                | Self::RrP99
                | Self::CrrP50
                | Self::CrrP99
                | Self::CrrFailed
        )
    }
}

/// (path, metric) → one value per round.
pub type Samples = BTreeMap<(PathId, Metric), Vec<f64>>;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub quick: bool,
    pub rounds: usize,
    /// iperf3 `-t`.
    pub stream_secs: u32,
    /// sluice-rr `--seconds`, RR and CRR each.
    pub rr_secs: f64,
}

impl Params {
    pub fn new(quick: bool) -> Self {
        if quick {
            // 8 paths x (2 + 2 + 1 + 1 s + process start-up) x 3 rounds:
            // about two and a half minutes with the setup.
            Self {
                quick,
                rounds: 3,
                stream_secs: 2,
                rr_secs: 1.0,
            }
        } else {
            Self {
                quick,
                rounds: 5,
                stream_secs: 10,
                rr_secs: 5.0,
            }
        }
    }
}

/// A world and its servers; the servers drop first (field order).
struct Measured<T> {
    servers: Servers,
    world: T,
}

impl<T: Topology> Measured<T> {
    fn new(world: T, rr_bin: &Path) -> anyhow::Result<Self> {
        let servers = Servers::start(&world, rr_bin)?;
        Ok(Self { servers, world })
    }
}

/// Every path of the group.
struct Worlds {
    veth: Measured<VethPair>,
    host: Measured<HostRouted>,
    reference: Measured<PluginWorld>,
    routed: Measured<PluginWorld>,
    routed_tcx: Measured<PluginWorld>,
    legacy: Measured<PluginWorld>,
    bridge: Measured<PluginWorld>,
}

impl Worlds {
    fn new(rr_bin: &Path) -> anyhow::Result<Self> {
        let sluice =
            |subnet, bridge, host_routing, tc_attach| -> anyhow::Result<Measured<PluginWorld>> {
                let world = PluginWorld::sluice(SluiceConf {
                    bridge,
                    host_routing,
                    tc_attach,
                    subnet,
                })?;
                Measured::new(world, rr_bin)
            };
        Ok(Self {
            veth: Measured::new(VethPair::new()?, rr_bin).context("veth")?,
            host: Measured::new(HostRouted::new()?, rr_bin).context("host-routed")?,
            reference: Measured::new(PluginWorld::reference()?, rr_bin).context("bridge-ref")?,
            routed: sluice(4, false, Some("ebpf"), None).context("sluice-routed")?,
            routed_tcx: sluice(7, false, Some("ebpf"), Some("tcx")).context("sluice-routed-tcx")?,
            legacy: sluice(5, false, Some("legacy"), None).context("sluice-routed-legacy")?,
            bridge: sluice(6, true, None, None).context("sluice-bridge")?,
        })
    }

    fn topology(&self, id: PathId) -> &dyn Topology {
        match id {
            PathId::Veth => &self.veth.world,
            PathId::HostRouted => &self.host.world,
            PathId::BridgeRef => &self.reference.world,
            PathId::SluiceRouted | PathId::SluiceRoutedXdp => &self.routed.world,
            PathId::SluiceRoutedTcx => &self.routed_tcx.world,
            PathId::SluiceLegacy => &self.legacy.world,
            PathId::SluiceBridge => &self.bridge.world,
        }
    }

    /// Checks that the path's servers still run; returns the rr binary.
    fn check_servers(&mut self, id: PathId) -> anyhow::Result<std::path::PathBuf> {
        let servers = match id {
            PathId::Veth => &mut self.veth.servers,
            PathId::HostRouted => &mut self.host.servers,
            PathId::BridgeRef => &mut self.reference.servers,
            PathId::SluiceRouted | PathId::SluiceRoutedXdp => &mut self.routed.servers,
            PathId::SluiceRoutedTcx => &mut self.routed_tcx.servers,
            PathId::SluiceLegacy => &mut self.legacy.servers,
            PathId::SluiceBridge => &mut self.bridge.servers,
        };
        servers.check()?;
        Ok(servers.rr_bin().to_owned())
    }
}

/// One round of one path: every metric once.
fn measure_path(
    worlds: &mut Worlds,
    id: PathId,
    p: &Params,
    samples: &mut Samples,
) -> anyhow::Result<String> {
    let rr_bin = worlds.check_servers(id)?;
    let path = worlds.topology(id);
    // Attached for this path's runs only, detached on return (or error).
    let _xdp = match id {
        PathId::SluiceRoutedXdp => Some(XdpGuard::attach(
            worlds.routed.world.node(),
            &worlds.routed.world.host_veths(),
        )?),
        _ => None,
    };
    let one = measure::stream(path, p.stream_secs, 1)?;
    let two = measure::stream(path, p.stream_secs, 2)?;
    let rr = measure::rr(path, &rr_bin, false, p.rr_secs)?;
    let crr = measure::rr(path, &rr_bin, true, p.rr_secs)?;
    let mut put = |m: Metric, v: f64| samples.entry((id, m)).or_default().push(v);
    put(Metric::Stream1, one.gbps);
    put(Metric::Stream2, two.gbps);
    put(Metric::CpuPerGbit, one.cpu_per_gbps);
    put(Metric::Rr, rr.tps);
    put(Metric::RrP50, rr.p50_us);
    put(Metric::RrP99, rr.p99_us);
    put(Metric::Crr, crr.tps);
    put(Metric::CrrP50, crr.p50_us);
    put(Metric::CrrP99, crr.p99_us);
    put(Metric::CrrFailed, crr.failed as f64);
    Ok(format!(
        "{:.1} / {:.1} Gbit/s, {:.3} CPU/Gbit/s, RR {:.0}/s, CRR {:.0}/s{}",
        one.gbps,
        two.gbps,
        one.cpu_per_gbps,
        rr.tps,
        crr.tps,
        if crr.failed > 0 {
            format!(" ({} failed)", crr.failed)
        } else {
            String::new()
        }
    ))
}

/// Short unrecorded runs on every path: neighbours resolved, conntrack and
/// caches warm, and a broken path fails before the first round.
fn warm_up(worlds: &mut Worlds) -> anyhow::Result<()> {
    for id in PathId::ALL {
        if id == PathId::SluiceRoutedXdp {
            continue;
        }
        let rr_bin = worlds.check_servers(id)?;
        let path = worlds.topology(id);
        measure::rr(path, &rr_bin, false, 0.3).with_context(|| format!("{} warm-up", id.name()))?;
        measure::stream(path, 1, 1).with_context(|| format!("{} warm-up", id.name()))?;
    }
    Ok(())
}

/// The group: measures, writes `net.json` and `net.md` (or `net-quick.*`)
/// into `out`, prints the table, returns the ratios.
pub fn run(quick: bool, out: &Path, workspace: &Path) -> anyhow::Result<Vec<Ratio>> {
    let params = Params::new(quick);
    let machine = Machine::describe(workspace);
    let date = utc_now();
    println!("[net] machine: {}", machine.line());
    println!(
        "[net] placement: clients (iperf3 -c, sluice-rr client) on CPU {}, servers on CPU {}",
        spawn::CLIENT_CPU,
        spawn::SERVER_CPU
    );
    let started = Instant::now();
    let load_before = measure::loadavg();
    let rr_bin = spawn::sluice_rr(workspace)?;
    let mut worlds = Worlds::new(&rr_bin)?;
    println!(
        "[net] {} paths ready in {:.1} s",
        PathId::ALL.len(),
        started.elapsed().as_secs_f64()
    );
    warm_up(&mut worlds)?;
    let mut samples = Samples::new();
    for round in 0..params.rounds {
        // Rotated each round: no path always runs first or last.
        let mut order = PathId::ALL;
        order.rotate_left(round % PathId::ALL.len());
        for id in order {
            crate::check_interrupted()?;
            let line = measure_path(&mut worlds, id, &params, &mut samples)
                .with_context(|| format!("round {}, {}", round + 1, id.name()))?;
            println!(
                "[net] round {}/{} {:<22} {line}",
                round + 1,
                params.rounds,
                id.name()
            );
        }
    }
    let ignored = [&worlds.routed, &worlds.legacy]
        .map(|m| m.world.ignored_host_routing())
        .into_iter()
        .flatten()
        .any(|ignored| ignored);
    let confs = [
        worlds.reference.world.conf().clone(),
        worlds.routed.world.conf().clone(),
        worlds.legacy.world.conf().clone(),
        worlds.bridge.world.conf().clone(),
        worlds.routed_tcx.world.conf().clone(),
    ];
    drop(worlds);
    let load = [load_before, measure::loadavg()];
    let rr_profile = rr_bin
        .parent()
        .and_then(|d| d.file_name())
        .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned());

    let report = Report {
        params,
        machine,
        date,
        samples,
        host_routing_ignored: ignored,
        confs,
        load,
        rr_profile,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::results::write_group_results(out, "net", quick, &report.json(), &report.markdown())?;
    Ok(report.ratios())
}
