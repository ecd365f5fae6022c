//! `sluicectl`, one file per verb. Every verb reads the pinned maps
//! directly, so it works while the agent is down.

pub mod bpf;
pub mod counters;
pub mod filter;
pub mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cni_ebpf_common::maps::DEFAULT_BPFFS_DIR;

use crate::bpffs::PinLayout;
pub use output::Format;

/// Sluice operator CLI: see and change what the datapath does.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version)]
pub struct Cli {
    /// Root of Sluice's pins (as given to sluice-agent).
    #[arg(long, global = true, env = "SLUICE_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
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
}

/// Runs one invocation; the text to print on stdout.
pub fn run(cli: &Cli) -> anyhow::Result<String> {
    let layout = PinLayout::new(&cli.bpffs_dir);
    match &cli.command {
        Command::Filter(cmd) => filter::run(&layout, cmd, cli.format),
        Command::Bpf(cmd) => bpf::run(&layout, cmd, cli.format),
        Command::Counters => counters::run(&layout, cli.format),
    }
}
