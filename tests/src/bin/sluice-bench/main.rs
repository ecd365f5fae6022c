//! `sluice-bench` (`cargo xtask bench`): benchmarks of Sluice against a
//! baseline measured in the same run, in namespaces it creates and removes,
//! reported as ratios. Needs root; binaries from `$SLUICE_BIN_DIR` (xtask
//! points it at the release build).
//!
//! Groups (all by default, in this order; `--only NAME` runs some of them):
//! - `cni`: ADD and DEL latency of the `sluice` plugin against the
//!   reference `bridge` plugin ([`cni`]).
//! - `policy`: NetworkPolicy costs: per-packet cost of `from_pod` over an
//!   empty tc program, pod throughput and conn/s with 10k rules, sync
//!   ([`policy`]).
//! - `net`: pod-to-pod TCP stream, TCP_RR, TCP_CRR and CPU per Gbit/s on
//!   every path against bare veth, the reference bridge and a routed
//!   host-namespace baseline ([`net`]).
//! - `xdp`: the XDP prefilter's drop rate with live frames against an empty
//!   XDP_DROP program and an nftables drop ([`xdp`]).
//! - `progs`: the cost of each program under BPF_PROG_TEST_RUN, minus an
//!   empty program ([`progs`]).
//!
//! Each group writes `bench/results/<group>.json` and `<group>.md` with its
//! measurements and returns its ratios; the suite then writes the summary of
//! every group's latest run, `summary.json`, `summary.md` and the chart
//! `summary.png` ([`summary`]), merging a partial (`--only`) run into the
//! summary already there, and prints the ratios.
//!
//! `--quick` is a short run of every group (fewer samples, shorter
//! transfers; a few minutes in all on a 2-CPU machine) for a look, not for
//! keeping: it writes `<group>-quick.*` and `summary-quick.*` (git-ignored),
//! so it never overwrites a full run's results. A group that fails is
//! reported and the others still run (the summary keeps the failed group's
//! previous rows); the exit status is then non-zero. Ctrl-C stops at the
//! next batch and removes everything.

mod bpfrun;
mod cni;
mod machine;
mod net;
mod policy;
mod progs;
mod ratio;
mod results;
mod stats;
mod summary;
mod xdp;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

/// Set by the signal thread on Ctrl-C / SIGTERM / SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Every group: name and what it measures.
const GROUPS: &[(&str, &str)] = &[
    (
        "cni",
        "ADD/DEL latency of sluice vs the reference bridge plugin",
    ),
    (
        "policy",
        "NetworkPolicy: per-packet cost, pod throughput/conn/s, sync",
    ),
    (
        "net",
        "pod-to-pod TCP stream, TCP_RR, TCP_CRR and CPU per Gbit/s on every path",
    ),
    (
        "xdp",
        "XDP prefilter capacity with live frames vs empty XDP_DROP and nftables",
    ),
    (
        "progs",
        "per-program cost via BPF_PROG_TEST_RUN, minus an empty program",
    ),
];

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Sluice benchmarks against a baseline measured in the same run (root)"
)]
struct Cli {
    /// A short run of every group (fewer samples, shorter transfers): a few
    /// minutes in all. Writes `<group>-quick.*` and `summary-quick.*`, so the
    /// full run's results stay.
    #[arg(long)]
    quick: bool,
    /// Run only this group (repeatable): cni, policy, net, xdp, progs. The
    /// summary keeps the other groups' latest results.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Where results go.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// cni: samples per plugin, op and mode (overrides the --quick/full
    /// default of 50/200).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// cni: containers started at once in the parallel mode.
    #[arg(long, value_name = "N", default_value_t = 20)]
    parallel: usize,
}

/// Fails once Ctrl-C was pressed, so the run unwinds through its guards.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Blocks the terminating signals in every thread and turns them into
/// [`INTERRUPTED`] on a thread of their own (as `sluice-demo` does).
fn handle_signals() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if !INTERRUPTED.swap(true, Ordering::Relaxed) {
                    eprintln!("\n{signal}: stopping after this batch and cleaning up");
                }
            }
        })?;
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    for name in &cli.only {
        if !GROUPS.iter().any(|(g, _)| g == name) {
            let known: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
            bail!("no benchmark group {name:?}; groups: {}", known.join(", "));
        }
    }
    if cli.parallel == 0 || cli.samples == Some(0) {
        bail!("--parallel and --samples must be at least 1");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?
        .to_path_buf();
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| workspace.join("bench/results"));
    println!(
        "sluice-bench: binaries from {}, results to {}",
        tests::bin_dir().display(),
        out.display()
    );
    let machine = machine::Machine::describe(&workspace);
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    let mut failed: Vec<(&str, anyhow::Error)> = Vec::new();
    for (name, what) in GROUPS {
        if !cli.only.is_empty() && !cli.only.iter().any(|o| o == name) {
            continue;
        }
        println!("\n== {name}: {what}");
        let date = machine::utc_now();
        let started = Instant::now();
        match run_group(cli, name, &out, &workspace) {
            Ok(group_ratios) => {
                let seconds = started.elapsed().as_secs_f64();
                let run = summary::GroupRun::new(name, date, &machine, cli.quick, seconds);
                rows.extend(group_ratios.iter().map(|r| summary::Row::new(r, &run)));
                runs.push(run);
                println!("== {name} done in {seconds:.0} s");
            }
            Err(err) if INTERRUPTED.load(Ordering::Relaxed) => {
                // What finished still goes into the summary.
                write_summary(&out, cli.quick, runs, rows)?;
                return Err(err);
            }
            Err(err) => {
                eprintln!("== {name} FAILED: {err:#}\n(the other groups still run)");
                failed.push((name, err));
            }
        }
    }
    write_summary(&out, cli.quick, runs, rows)?;
    match failed.as_slice() {
        [] => Ok(()),
        [(name, err)] => Err(anyhow::anyhow!("group {name} failed: {err:#}")),
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| *n).collect();
            bail!("groups {} failed (errors above)", names.join(", "))
        }
    }
}

/// Runs one group; its ratios for the summary.
fn run_group(
    cli: &Cli,
    name: &str,
    out: &Path,
    workspace: &Path,
) -> anyhow::Result<Vec<ratio::Ratio>> {
    let (out, workspace) = (out.to_path_buf(), workspace.to_path_buf());
    Ok(match name {
        "cni" => {
            let params = cni::Params::new(cli.quick, cli.samples, cli.parallel);
            cni::run(&params, &out, &workspace)?
        }
        "policy" => policy::run(&policy::Params::new(cli.quick), &out, &workspace)?,
        "net" => net::run(cli.quick, &out, &workspace)?,
        "xdp" => xdp::run(cli.quick, &out, &workspace)?,
        "progs" => progs::run(cli.quick, &out, &workspace)?,
        other => bail!("group {other} has no runner"),
    })
}

/// Merges this run's groups into the summary in `out` (`summary.*`, or
/// `summary-quick.*`), writes it and prints this run's ratios.
fn write_summary(
    out: &Path,
    quick: bool,
    runs: Vec<summary::GroupRun>,
    rows: Vec<summary::Row>,
) -> anyhow::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let paths = summary::Paths::new(out, quick);
    let mut summary = summary::Summary::load(&paths.json).unwrap_or_else(|err| {
        eprintln!(
            "sluice-bench: ignoring the old summary ({err:#}); the new one has only this run's groups"
        );
        summary::Summary::default()
    });
    let ran: Vec<String> = runs.iter().map(|r| r.group.clone()).collect();
    let order: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
    summary.merge(runs, rows, &order);
    let ran: Vec<&str> = ran.iter().map(String::as_str).collect();
    println!("\n== summary of this run\n{}", summary.terminal(&ran));
    let (met, missed, none) = summary.counts();
    summary.write(&paths)?;
    println!(
        "summary of every group's latest run ({met} met, {missed} missed, {none} without a target): {}, {} and {}",
        paths.json.display(),
        paths.markdown.display(),
        paths.png.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    tests::require_root("sluice-bench");
    let cli = Cli::parse();
    if let Err(err) = handle_signals() {
        eprintln!("sluice-bench: {err:#}");
        return ExitCode::FAILURE;
    }
    // By the time `run` returns every guard has run: namespaces, agent,
    // pins and directories are gone, whatever happened.
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) => {
            eprintln!("sluice-bench: interrupted; everything it made is removed");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("sluice-bench failed: {err:#}\n(everything it made is removed)");
            ExitCode::FAILURE
        }
    }
}
