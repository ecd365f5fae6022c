//! `cargo xtask build`: setup checks, then the agent and plugin binaries.
//! The agent's build script builds the eBPF crate with aya-build.
use std::path::PathBuf;

use crate::setup;
use crate::util::{self, Ctx};

/// Binaries the build produces, by crate; `sluice-ipam` arrives later.
pub const AGENT_BINARIES: &[&str] = &["sluice-agent", "sluicectl"];
pub const PLUGIN_BINARIES: &[&str] = &["sluice", "sluice-ipam"];

/// Builds and returns the directory holding the binaries.
pub fn run(ctx: &Ctx, release: bool) -> anyhow::Result<PathBuf> {
    setup::run(ctx)?;
    let mut cmd = ctx.cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "cni-agent", "-p", "cni-plugin"]);
    util::run(&mut cmd)?;
    let bin_dir = ctx.bin_dir(release);
    println!("[build] binaries in {}:", bin_dir.display());
    for name in AGENT_BINARIES.iter().chain(PLUGIN_BINARIES) {
        let path = bin_dir.join(name);
        if path.exists() {
            println!("  {}", path.display());
        }
    }
    Ok(bin_dir)
}
