//! `sluice-bench` (`cargo xtask bench`): benchmarks of Sluice against a
//! baseline measured in the same run, in namespaces it creates and removes,
//! reported as ratios. Needs root; binaries from `$SLUICE_BIN_DIR` (xtask
//! points it at the release build).
//!
//! Groups (`--only NAME`):
//! - `cni`: ADD and DEL latency of the `sluice` plugin against the
//!   reference `bridge` plugin ([`cni`]).
//!
//! Results go to `bench/results/<group>.json` and `<group>.md` (a `--quick`
//! run writes `<group>-quick.*` instead, so it never overwrites a full
//! run's results). Ctrl-C stops at the next batch and removes everything.

mod bpfrun;
mod cni;
mod machine;
mod net;
mod policy;
mod progs;
mod ratio;
mod stats;
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
    /// Fewer samples (50 instead of 200 per plugin, op and mode): about a
    /// minute. Writes `<group>-quick.*`.
    #[arg(long)]
    quick: bool,
    /// Run only this group (repeatable): cni.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Where results go.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Samples per plugin, op and mode (overrides the --quick/full default).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Containers started at once in the parallel mode.
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
    let mut ratios: Vec<ratio::Ratio> = Vec::new();
    for (name, what) in GROUPS {
        if !cli.only.is_empty() && !cli.only.iter().any(|o| o == name) {
            continue;
        }
        println!("\n== {name}: {what}");
        let started = Instant::now();
        let group_ratios = match *name {
            "cni" => {
                let params = cni::Params::new(cli.quick, cli.samples, cli.parallel);
                cni::run(&params, &out, &workspace)?;
                Vec::new()
            }
            "policy" => policy::run(&policy::Params::new(cli.quick), &out, &workspace)?,
            "net" => net::run(cli.quick, &out, &workspace)?,
            "xdp" => xdp::run(cli.quick, &out, &workspace)?,
            "progs" => progs::run(cli.quick, &out, &workspace)?,
            other => bail!("group {other} has no runner"),
        };
        ratios.extend(group_ratios);
        println!("== {name} done in {:.0} s", started.elapsed().as_secs_f64());
    }
    // The summary (JSON, Markdown, PNG chart) is written by `summary`
    // (being written); until then the ratios are printed.
    for r in &ratios {
        println!(
            "{:<8} {:<50} {:.3}x {}",
            r.group,
            r.name,
            r.value,
            r.baseline
        );
    }
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
