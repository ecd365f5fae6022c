//! `sluice-agent`: the per-node daemon. Thin: flags here, work in the library.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use cni_agent::{
    agent::{run, AgentConfig},
    api::{DEFAULT_API_SOCKET, DEFAULT_STATE_DIR},
    bpffs::PinLayout,
    cleanup::cleanup,
    policy::kube::KubeArgs,
};
use cni_ebpf_common::maps::DEFAULT_BPFFS_DIR;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    /// Let the kernel pick (native when the driver supports it).
    Auto,
    /// Native (driver) XDP; fails on drivers without it.
    Native,
    /// Generic (skb) XDP: works everywhere, slower.
    Generic,
}

/// Sluice node agent: loads and pins the eBPF datapath, compiles
/// NetworkPolicy into its maps, attaches the XDP prefilter to uplinks, and
/// keeps it all running across its own restarts.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Root of everything Sluice pins (on a bpffs; mounted if missing).
    #[arg(long, env = "SLUICE_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Attach the XDP prefilter to this interface (repeatable). Interfaces
    /// attached earlier and not named now are detached.
    #[arg(long = "uplink", value_name = "IFACE")]
    uplinks: Vec<String>,
    /// Prefilter rules file (YAML or JSON, `rules: [...]`). Rules added by
    /// `sluicectl filter add` are kept across restarts either way.
    #[arg(long, value_name = "FILE")]
    prefilter: Option<PathBuf>,
    /// XDP attach mode for uplinks.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// Serve Prometheus metrics here (e.g. 127.0.0.1:9962).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// The CNI plugin's state dir: its attachment records are the local
    /// endpoints; the agent keeps its policy snapshot in `agent/` below it.
    #[arg(long, env = "SLUICE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Unix socket for the plugin's notifications and sluicectl (mode 0600).
    #[arg(long, env = "SLUICE_API_SOCKET", default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Directory of Kubernetes manifests (Namespaces, Pods, NetworkPolicies)
    /// to enforce; watched, every change applied. Invalid manifests change
    /// nothing and are logged with the object named.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    #[command(flatten)]
    kube: KubeArgs,
    /// An address of this node (identity "host"; repeatable). Default: the
    /// addresses of the agent's network namespace, re-read at every sync.
    #[arg(long = "node-address", value_name = "IP")]
    node_addresses: Vec<IpAddr>,
    /// Apply ingress policy to traffic from the node too (by default the
    /// node, e.g. kubelet probes, reaches every pod).
    #[arg(long)]
    no_allow_host: bool,
    /// Enforce NetworkPolicy (default: on when a policy source such as
    /// --manifests is given, else off: the datapath only observes).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    policy_enforcement: Option<bool>,
    /// Log filter (tracing env-filter syntax); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Remove every pin (links, programs, maps) under --bpffs-dir and exit.
    #[arg(long)]
    cleanup: bool,
}

fn ebpf_log_level(filter: &str) -> u8 {
    // aya-log levels: 1 error .. 5 trace; records above are never written.
    match filter.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "debug" => 4,
        "trace" => 5,
        _ => 3,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .context("--log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if args.cleanup {
        let layout = PinLayout::new(&args.bpffs_dir);
        let report = cleanup(&layout)?;
        tracing::info!(
            links = ?report.links,
            progs = ?report.progs,
            maps = report.maps.len(),
            "cleanup done: {} removed",
            layout.root().display()
        );
        return Ok(());
    }

    let config = AgentConfig {
        bpffs_dir: args.bpffs_dir,
        uplinks: args.uplinks,
        prefilter: args.prefilter,
        xdp_mode: match args.xdp_mode {
            XdpModeArg::Auto => aya::programs::XdpMode::Default,
            XdpModeArg::Native => aya::programs::XdpMode::Driver,
            XdpModeArg::Generic => aya::programs::XdpMode::Skb,
        },
        ebpf_log_level: ebpf_log_level(&args.log_level),
        metrics_addr: args.metrics_addr,
        state_dir: args.state_dir,
        api_socket: args.api_socket,
        kube: args.kube.options(args.manifests.is_some())?,
        manifests: args.manifests,
        node_addresses: args.node_addresses,
        allow_host: !args.no_allow_host,
        policy_enforcement: args.policy_enforcement,
    };
    // A current-thread runtime: the agent's work is a few fds and a signal.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}
