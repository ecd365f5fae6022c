//! `cargo xtask bench [--quick] [--only NAME] [-- ARGS]`: setup, a release
//! build of the agent and the plugins, then the benchmarks themselves, which
//! live in the `sluice-bench` binary of the `tests` crate so they share the
//! end-to-end harness (namespaces, the agent, pins) instead of duplicating
//! it. Every benchmark measures its baseline in the same run and reports
//! ratios; results go to `bench/results/`: each group's `<group>.{json,md}`
//! and the summary of all of them, `summary.{json,md,png}` (see the README,
//! "Benchmarks").
use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;

use crate::build;
use crate::util::{self, Ctx};

/// `cargo xtask bench` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// A short run of every group (fewer samples, shorter transfers): a few
    /// minutes in all on a 2-CPU machine. Writes
    /// `bench/results/<group>-quick.*` and `summary-quick.*` (git-ignored),
    /// so the full run's results stay.
    #[arg(long)]
    quick: bool,
    /// Run only this group (repeatable); the summary keeps the other
    /// groups' latest results. Groups: cni (ADD/DEL latency vs the
    /// reference bridge plugin), policy (NetworkPolicy per-packet cost,
    /// throughput and conn/s with 10k rules, sync), net (pod TCP stream,
    /// TCP_RR, TCP_CRR, CPU per Gbit/s vs bare veth, the reference bridge
    /// and a routed baseline), xdp (prefilter drop rate vs an empty
    /// XDP_DROP and nftables), progs (per-program cost via
    /// BPF_PROG_TEST_RUN, minus an empty program).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// More arguments for `sluice-bench` (`--samples N`, `--parallel N`,
    /// `--out DIR`; `cargo xtask bench -- --help` lists them).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<()> {
    util::require_root("`cargo xtask bench`")?;
    // Setup first, then `cargo build --release -p cni-agent -p cni-plugin`:
    // what is measured is what would be installed.
    let bin_dir = build::run(ctx, true)?;
    let mut cmd = ctx.cargo();
    cmd.env("SLUICE_BIN_DIR", &bin_dir)
        .env("RUST_BACKTRACE", "1")
        .args(["run", "-q", "-p", "tests", "--bin", "sluice-bench", "--"])
        .arg("--out")
        .arg(ctx.root.join("bench/results"));
    if args.quick {
        cmd.arg("--quick");
    }
    for name in &args.only {
        cmd.args(["--only", name]);
    }
    cmd.args(&args.args);
    println!("$ {}", util::display(&cmd));
    // The harness owns the terminal from here: Ctrl-C reaches it directly,
    // and it removes its namespaces, agent and pins before exiting.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{}`", util::display(&cmd)))
}
