//! `cargo xtask demo`: setup, build, then the story itself, which lives in the
//! `sluice-demo` binary of the `tests` crate so it shares the end-to-end
//! harness (namespaces, veths, traffic) instead of duplicating it.
use std::os::unix::process::CommandExt as _;

use anyhow::{bail, Context as _};

use crate::build;
use crate::util::{self, Ctx};

pub fn run(ctx: &Ctx, args: &[String]) -> anyhow::Result<()> {
    util::require_root("`cargo xtask demo`")?;
    let tests = ctx.root.join("tests");
    let has_demo = tests.join("src/bin/sluice-demo.rs").exists()
        || tests.join("src/bin/sluice-demo/main.rs").exists()
        || std::fs::read_to_string(tests.join("Cargo.toml"))
            .context("reading tests/Cargo.toml")?
            .contains("\"sluice-demo\"");
    if !has_demo {
        bail!(
            "the demo story is not written yet: it will be the `sluice-demo` binary \
             of the tests crate (tests/src/bin/sluice-demo.rs)"
        );
    }
    // Runs the setup checks first.
    let bin_dir = build::run(ctx, false)?;
    let mut cmd = ctx.cargo();
    cmd.env("SLUICE_BIN_DIR", &bin_dir)
        .env("RUST_BACKTRACE", "1")
        .args(["run", "-q", "-p", "tests", "--bin", "sluice-demo", "--"])
        .args(args);
    println!("$ {}", util::display(&cmd));
    // The story owns the terminal from here (Ctrl-C goes straight to it).
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{}`", util::display(&cmd)))
}
