//! nftables in a namespace of the bench's own: load a ruleset with `nft -f`,
//! read a named counter (the proof that the baseline's rule, not something
//! else, handled the traffic), and the version for the report. Used by the
//! `policy` group's nftables-set baseline and the `xdp` group's nftables
//! drop.

use std::process::Command;

use anyhow::Context as _;
use serde_json::Value;
use tests::Netns;

use super::world::{in_ns, output};

/// Runs `nft -f -` with `script` inside `ns`.
pub fn apply(ns: &Netns, script: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]);
    in_ns(ns, &mut cmd);
    output(&mut cmd, Some(script)).context("nft -f")?;
    Ok(())
}

/// Packets of the named counter `name` of table `family table` in `ns`.
pub fn counter_packets(ns: &Netns, family: &str, table: &str, name: &str) -> anyhow::Result<u64> {
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "list", "counter", family, table, name]);
    in_ns(ns, &mut cmd);
    let out = output(&mut cmd, None)?;
    let v: Value = serde_json::from_str(&out).context("nft -j output")?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .with_context(|| format!("no counter {name} in {out}"))
}

/// Deletes table `family table` in `ns` if it exists.
pub fn delete_table(ns: &Netns, family: &str, table: &str) -> anyhow::Result<()> {
    apply(
        ns,
        &format!("table {family} {table}\ndelete table {family} {table}\n"),
    )
}

/// Runs `cmd` (nft, ip, ...) inside `ns`; its stdout, or an error with its
/// output.
pub fn run_in(ns: &Netns, cmd: &mut Command) -> anyhow::Result<String> {
    in_ns(ns, cmd);
    output(cmd, None)
}

/// `nft --version`.
pub fn version() -> String {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
