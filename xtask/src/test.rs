//! `cargo xtask test`: the whole gate, in order, stopping at the first failing
//! stage: fmt check, clippy, unit tests, then the privileged end-to-end tests
//! (root, serial) against freshly built binaries.
//!
//! The last line is always `N passed, N failed`, summed over every
//! `test result:` line cargo printed; CI parses it.
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::util::{self, Ctx};
use crate::{leaks, setup};

struct Stage {
    name: &'static str,
    took: Duration,
    ok: bool,
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Adds up the `test result: ok. 3 passed; 1 failed; ...` lines of a
    /// `cargo test` run (one per test binary and doc-test run).
    fn add_output(&mut self, output: &str) {
        for line in output.lines() {
            let Some(at) = line.find("test result: ") else {
                continue;
            };
            let result = &line[at + "test result: ".len()..];
            // Skip the verdict ("ok." / "FAILED."), possibly colored.
            let Some((_, counts)) = result.split_once(". ") else {
                continue;
            };
            for part in counts.split(';') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else {
                    continue;
                };
                match kind {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

pub fn run(ctx: &Ctx, filter: Option<&str>) -> anyhow::Result<()> {
    setup::run(ctx)?;
    let bpffs_was_mounted = leaks::is_bpffs("/sys/fs/bpf");
    let mut stages = Vec::new();
    let mut totals = Totals::default();
    let mut result = run_stages(ctx, filter, &mut stages, &mut totals);
    if result.is_ok() {
        result = stage(&mut stages, "leaks", || {
            let found = leaks::find();
            for leak in &found {
                println!("[test] left behind: {leak}");
            }
            Ok(found.is_empty())
        });
    }
    leaks::restore_bpffs(bpffs_was_mounted);
    println!();
    for stage in &stages {
        println!(
            "[test] {:<10} {:<6} {}",
            stage.name,
            if stage.ok { "ok" } else { "FAILED" },
            util::fmt_duration(stage.took)
        );
    }
    println!("{} passed, {} failed", totals.passed, totals.failed);
    result
}

fn cargo(ctx: &Ctx) -> Command {
    let mut cmd = ctx.cargo();
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

/// Runs one stage, records it, and fails when it failed.
fn stage(
    stages: &mut Vec<Stage>,
    name: &'static str,
    body: impl FnOnce() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    println!("[test] {name} ...");
    let started = Instant::now();
    let outcome = body();
    let ok = matches!(outcome, Ok(true));
    let took = started.elapsed();
    stages.push(Stage { name, took, ok });
    println!(
        "[test] {name} ... {} ({})",
        if ok { "ok" } else { "FAILED" },
        util::fmt_duration(took)
    );
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => bail!("stage `{name}` failed"),
        Err(e) => Err(e.context(format!("stage `{name}` failed"))),
    }
}

fn run_stages(
    ctx: &Ctx,
    filter: Option<&str>,
    stages: &mut Vec<Stage>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    stage(stages, "fmt", || {
        Ok(util::status(cargo(ctx).args(["fmt", "--all", "--", "--check"]))?.success())
    })?;
    stage(stages, "clippy", || {
        let mut cmd = cargo(ctx);
        cmd.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        Ok(util::status(&mut cmd)?.success())
    })?;
    stage(stages, "clippy-bpf", || {
        // The eBPF crate compiles as a stub on the host; lint the real code
        // for its own target, with the toolchain that builds it.
        let toolchain = std::env::var("SLUICE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
        let mut cmd = Command::new("rustup");
        cmd.current_dir(&ctx.root).args([
            "run",
            &toolchain,
            "cargo",
            "clippy",
            "-p",
            "cni-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
        Ok(util::status(&mut cmd)?.success())
    })?;
    stage(stages, "unit", || {
        let mut cmd = cargo(ctx);
        // --no-fail-fast: finish every test binary so the totals are complete.
        // Unit tests only (library and binary targets): integration test
        // targets may be privileged and run serially in the e2e stage.
        cmd.args([
            "test",
            "--workspace",
            "--exclude",
            "tests",
            "--lib",
            "--bins",
            "--no-fail-fast",
        ]);
        if let Some(filter) = filter {
            cmd.args(["--", filter]);
        }
        let (status, output) = util::run_tee(&mut cmd)?;
        totals.add_output(&output);
        // The `tests` crate's binaries (sluice-bench's report and summary
        // logic, sluice-demo) have unprivileged unit tests of their own; its
        // library is the privileged harness, exercised by the e2e stage.
        let mut bins = cargo(ctx);
        bins.args(["test", "-p", "tests", "--bins", "--no-fail-fast"]);
        if let Some(filter) = filter {
            bins.args(["--", filter]);
        }
        let (bins_status, bins_output) = util::run_tee(&mut bins)?;
        totals.add_output(&bins_output);
        Ok(status.success() && bins_status.success())
    })?;
    stage(stages, "binaries", || {
        util::require_root("the end-to-end tests (`cargo xtask test`, stage e2e)")?;
        // The end-to-end tests run these from SLUICE_BIN_DIR.
        let mut cmd = cargo(ctx);
        cmd.args(["build", "-p", "cni-agent", "-p", "cni-plugin"]);
        Ok(util::status(&mut cmd)?.success())
    })?;
    stage(stages, "e2e", || {
        let mut cmd = cargo(ctx);
        // Every integration test target of the workspace (the `tests`
        // crate and e.g. cni-plugin/tests): they use the real kernel.
        cmd.env("SLUICE_BIN_DIR", ctx.bin_dir(false)).args([
            "test",
            "--workspace",
            "--test",
            "*",
            "--no-fail-fast",
            "--",
            // Privileged tests share global kernel state (the bpffs mount,
            // sysctls): one at a time.
            "--test-threads=1",
        ]);
        if let Some(filter) = filter {
            cmd.arg(filter);
        }
        let (status, output) = util::run_tee(&mut cmd)?;
        totals.add_output(&output);
        Ok(status.success())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines() {
        let output = "\
running 2 tests
test a ... ok
test b ... FAILED

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 3 tests
test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 4 filtered out; finished in 0.00s

   Doc-tests cni_ebpf_common
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";
        let mut totals = Totals::default();
        totals.add_output(output);
        assert_eq!(
            totals,
            Totals {
                passed: 4,
                failed: 1
            }
        );
        totals.add_output("test result: ok. 10 passed; 0 failed; 0 ignored\n");
        assert_eq!(
            totals,
            Totals {
                passed: 14,
                failed: 1
            }
        );
    }

    #[test]
    fn ignores_colors_and_noise() {
        let mut totals = Totals::default();
        totals.add_output(
            "test result: \x1b[32mok\x1b[0m. 7 passed; 2 failed; 1 ignored\n\
             test something_named_test result: ... ok\n\
             no result here: 5 passed\n",
        );
        assert_eq!(
            totals,
            Totals {
                passed: 7,
                failed: 2
            }
        );
    }
}
