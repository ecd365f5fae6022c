//! `cargo xtask <command>`: the developer entry point for Sluice.
//!
//! One module per command; `util` runs child processes and prints each one
//! before it starts, so a newcomer can see (and copy) what happens.
mod bench;
mod build;
mod demo;
mod install;
mod leaks;
mod setup;
mod test;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Sluice developer tasks"
)]
struct Cli {
    /// Also print the cheap probe commands `setup` runs (dpkg-query, rustup, ...).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; fast when ready).
    Setup,
    /// Build sluice-agent, sluicectl and the CNI plugin binaries.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then install the binaries under PREFIX (atomic replace).
    Install {
        /// Root of the installation: plugins go to PREFIX/opt/cni/bin, the
        /// agent and sluicectl to PREFIX/usr/local/bin.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// fmt check, clippy, unit tests, then privileged end-to-end tests (root).
    Test {
        /// Only run tests whose name contains SUBSTR (unit and end-to-end).
        #[arg(long, value_name = "SUBSTR")]
        filter: Option<String>,
    },
    /// Run the demo story in network namespaces (root).
    Demo {
        /// Arguments passed to the `sluice-demo` binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks against a baseline measured in the same run (root):
    /// build --release, then `sluice-bench`; results in bench/results/.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of contexts, without anyhow's backtrace: the failing
            // command has already printed its own diagnostics.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = util::Ctx::new(cli.verbose)?;
    match cli.command {
        Command::Setup => setup::run(&ctx).map(|_| ()),
        Command::Build { release } => build::run(&ctx, release).map(|_| ()),
        Command::Install { prefix, release } => install::run(&ctx, &prefix, release),
        Command::Test { filter } => test::run(&ctx, filter.as_deref()),
        Command::Demo { args } => demo::run(&ctx, &args),
        Command::Bench(args) => bench::run(&ctx, &args),
    }
}
