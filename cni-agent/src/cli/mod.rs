//! `sluicectl`, one file per verb. Every verb but `sync` reads the pinned
//! maps (and the files in the state dir) directly, so it works while the
//! agent is down; `sync` and the agent half of `status` use its socket.

pub mod bpf;
pub mod counters;
pub mod endpoints;
pub mod explain;
pub mod filter;
pub mod monitor;
pub mod output;
pub mod policy;
pub mod status;
pub mod sync;
pub mod view;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use cni_ebpf_common::maps::DEFAULT_BPFFS_DIR;

use crate::{
    api::{DEFAULT_API_SOCKET, DEFAULT_STATE_DIR},
    bpffs::PinLayout,
};
pub use output::Format;

/// Sluice operator CLI: see and change what the datapath does.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version)]
pub struct Cli {
    /// Root of Sluice's pins (as given to sluice-agent).
    #[arg(long, global = true, env = "SLUICE_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// The state dir (as given to sluice-agent and the plugin).
    #[arg(long, global = true, env = "SLUICE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The agent's API socket.
    #[arg(long, global = true, env = "SLUICE_API_SOCKET", default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// How long to wait for the agent's answer (sync, status), in seconds.
    #[arg(long, global = true, default_value_t = 60.0)]
    pub timeout: f64,
    /// Output format: a table for people, JSON for scripts.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// XDP prefilter rules: list, add, delete.
    #[command(subcommand)]
    Filter(filter::FilterCommand),
    /// Raw view of the pinned BPF objects.
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
    /// Verdict counters by reason, and per prefilter rule.
    Counters,
    /// Make the agent re-read its policy source and sync the maps; returns
    /// once they are written (fails, naming the object, on bad manifests).
    Sync,
    /// The agent's policy engine and the datapath's policy state.
    Status,
    /// Local endpoints: pod, addresses, veth, id, isolation, programmed.
    Endpoints,
    /// Compiled rules per endpoint (all, or one pod: NAMESPACE/POD).
    Policy {
        /// NAMESPACE/POD (or an endpoint id in hex).
        pod: Option<String>,
    },
    /// The datapath's verdict for a new flow, and the rule behind it.
    Explain(explain::ExplainArgs),
    /// Policy drops, live (POLICY_EVENTS).
    Monitor(monitor::MonitorArgs),
}

/// Runs one invocation; the text to print on stdout.
pub fn run(cli: &Cli) -> anyhow::Result<String> {
    let layout = PinLayout::new(&cli.bpffs_dir);
    match &cli.command {
        Command::Filter(cmd) => filter::run(&layout, cmd, cli.format),
        Command::Bpf(cmd) => bpf::run(&layout, cmd, cli.format),
        Command::Counters => counters::run(&layout, cli.format),
        Command::Sync => sync::run(&cli.api_socket, timeout(cli.timeout), cli.format),
        Command::Status => status::run(
            &layout,
            &cli.state_dir,
            &cli.api_socket,
            timeout(cli.timeout.min(5.0)),
            cli.format,
        ),
        Command::Endpoints => endpoints::run(&layout, &cli.state_dir, cli.format),
        Command::Policy { pod } => policy::run(&layout, &cli.state_dir, pod.as_deref(), cli.format),
        Command::Explain(args) => explain::run(&layout, &cli.state_dir, args, cli.format),
        Command::Monitor(args) => monitor::run(&layout, &cli.state_dir, args, cli.format),
    }
}

fn timeout(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.clamp(0.001, 86_400.0))
}
