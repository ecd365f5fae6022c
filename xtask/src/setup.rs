//! `cargo xtask setup`: installs what building and testing Sluice need.
//!
//! Idempotent. Each step first runs a cheap check and only installs what is
//! missing, so on a ready machine the whole command takes well under a second;
//! `build`, `test` and `demo` run it first.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::util::{self, Ctx};

/// Debian packages, installed in one `apt-get install` when any is missing.
const DEBIAN_PACKAGES: &[&str] = &[
    // LLVM 22 libraries and headers that bpf-linker is built against.
    "llvm-22-dev",
    // Polly: libLLVM-22's link line names it, so building bpf-linker needs it.
    "libpolly-22-dev",
    // bpf-linker links zlib through LLVM.
    "zlib1g-dev",
    // bpf-linker links zstd through LLVM.
    "libzstd-dev",
    // `bpftool map dump pinned ...`: inspecting pins in tests and docs.
    "bpftool",
    // `ip` / `tc`: namespaces, veths and links in tests and the demo.
    "iproute2",
    // TCP transfers in the demo and benchmarks.
    "iperf3",
    // Reference CNI plugins (bridge, host-local, ...) as peers in tests.
    "containernetworking-plugins",
    // podman with its CNI backend: a real runtime in tests.
    "podman",
    // OCI runtime of podman and containerd (listed so apt picks it over crun).
    "runc",
    // Static busybox: the root filesystem of the podman tests' containers.
    "busybox-static",
    // containerd with its CRI plugin, `ctr` and the runc shim: a real runtime in tests.
    "containerd",
    // Static catatonit: the pause image of the containerd tests' sandboxes.
    "catatonit",
    // `protoc`: the `k8s-cri` crate generates the tests' CRI client at build time.
    "protobuf-compiler",
    // `iptables`/`iptables-save`: the reference `portmap` and `bridge`
    // (`ipMasq`) plugins exec it; the chaining tests read their rules back.
    "iptables",
    // `nft list ruleset`: the side-by-side test reads both plugins'
    // masquerade rules back (Sluice writes nftables over netlink itself).
    "nftables",
    // `dnsmasq` (the binary only, no system service): the DHCP server the
    // `dhcp` IPAM delegation test runs in a namespace of its own.
    "dnsmasq-base",
    // DejaVu Sans: the font of the benchmark summary's chart
    // (`bench/results/summary.png`, drawn with plotters).
    "fonts-dejavu-core",
];

/// The LLVM that `DEBIAN_PACKAGES` installs and bpf-linker is built with.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Written next to cargo's install records after `setup` installed (or
/// verified) bpf-linker for LLVM 22; holds `bpf-linker --version`, so a later
/// reinstall of another build invalidates it.
const LINKER_MARKER: &str = ".sluice-bpf-linker-llvm22";

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    rust_components(ctx)?;
    ebpf_toolchain(ctx)?;
    debian_packages(ctx)?;
    bpf_linker(ctx)?;
    println!("[setup] ready ({})", util::fmt_duration(started.elapsed()));
    Ok(())
}

fn ok(step: &str) {
    println!("[setup] {step} ... ok (already present)");
}

fn installing(step: &str, what: &str) {
    println!("[setup] {step} ... installing {what}");
}

fn installed(step: &str) {
    println!("[setup] {step} ... ok (installed)");
}

fn rustup(ctx: &Ctx) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&ctx.root);
    cmd
}

/// Installed components of `toolchain` (the workspace's default when `None`),
/// as rustup names them: `rust-src`, `clippy-x86_64-unknown-linux-gnu`, ...
fn installed_components(ctx: &Ctx, toolchain: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut cmd = rustup(ctx);
    cmd.args(["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        cmd.args(["--toolchain", toolchain]);
    }
    let output = util::probe(ctx, &mut cmd)?
        .context("rustup is not installed; Sluice's builds need it (https://rustup.rs)")?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            util::display(&cmd),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Matches `name` itself or `name-<target triple>`; fine for the names we ask
/// about (rustfmt, clippy, rust-src), none of which prefixes another.
fn has_component(components: &[String], name: &str) -> bool {
    components.iter().any(|c| {
        c == name
            || c.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

/// rustfmt and clippy on the workspace's toolchain: `cargo xtask test` runs both.
fn rust_components(ctx: &Ctx) -> anyhow::Result<()> {
    const STEP: &str = "rustfmt and clippy";
    let components = installed_components(ctx, None)?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has_component(&components, c))
        .collect();
    if missing.is_empty() {
        ok(STEP);
        return Ok(());
    }
    installing(STEP, &missing.join(" "));
    util::run(rustup(ctx).args(["component", "add"]).args(&missing))?;
    installed(STEP);
    Ok(())
}

/// The toolchain aya-build compiles `cni-ebpf` with (`-Z build-std=core`
/// needs rust-src): nightly, or `SLUICE_EBPF_TOOLCHAIN` (see cni-agent/build.rs).
fn ebpf_toolchain(ctx: &Ctx) -> anyhow::Result<()> {
    let name = std::env::var("SLUICE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let step = format!("{name} toolchain with rust-src (builds the eBPF crate)");
    let mut version = rustup(ctx);
    version
        .args(["run", &name, "rustc", "--version"])
        // Never let a probe download a toolchain behind our back.
        .env("RUSTUP_AUTO_INSTALL", "0");
    let present = util::probe(ctx, &mut version)?
        .context("rustup is not installed; Sluice's builds need it (https://rustup.rs)")?
        .status
        .success();
    if !present {
        if name != "nightly" {
            bail!("toolchain `{name}` (from SLUICE_EBPF_TOOLCHAIN) is not installed");
        }
        installing(&step, "nightly");
        util::run(rustup(ctx).args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "installing nightly failed; stable can build the eBPF crate too: \
             SLUICE_EBPF_TOOLCHAIN=stable RUSTC_BOOTSTRAP=1 cargo xtask ... \
             (after `rustup component add rust-src`)",
        )?;
        installed(&step);
        return Ok(());
    }
    if has_component(&installed_components(ctx, Some(&name))?, "rust-src") {
        ok(&step);
        return Ok(());
    }
    installing(&step, "rust-src");
    util::run(rustup(ctx).args(["component", "add", "rust-src", "--toolchain", &name]))?;
    installed(&step);
    Ok(())
}

fn debian_packages(ctx: &Ctx) -> anyhow::Result<()> {
    const STEP: &str = "Debian packages";
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}", package]);
        let output = util::probe(ctx, &mut cmd)?
            .context("dpkg-query not found: `cargo xtask setup` supports Debian and Ubuntu")?;
        if String::from_utf8_lossy(&output.stdout).trim() != "install ok installed" {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        ok(STEP);
        return Ok(());
    }
    installing(STEP, &missing.join(" "));
    if !util::is_root() {
        bail!(
            "missing Debian packages: {}; run `cargo xtask setup` as root or \
             `apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    installed(STEP);
    Ok(())
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

enum Linker {
    /// Runs and was built for LLVM 22; says how we know.
    Ready(&'static str),
    /// Not installed, broken, or built for another LLVM; says which.
    Reinstall(&'static str),
    Missing,
}

/// bpf-linker, which rustc calls to link the eBPF object, built for the
/// LLVM 22 that `DEBIAN_PACKAGES` installs.
fn bpf_linker(ctx: &Ctx) -> anyhow::Result<()> {
    const STEP: &str = "bpf-linker for LLVM 22";
    let cargo_home = cargo_home()?;
    let marker = cargo_home.join(LINKER_MARKER);
    let state = linker_state(ctx, &cargo_home)?;
    let reinstall = match state {
        Linker::Ready(how) => {
            println!("[setup] {STEP} ... ok (already present; {how})");
            return Ok(());
        }
        Linker::Missing => {
            installing(STEP, "bpf-linker (about a minute)");
            false
        }
        Linker::Reinstall(why) => {
            installing(STEP, &format!("bpf-linker again ({why})"));
            true
        }
    };
    let mut cmd = ctx.cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX);
    if reinstall {
        cmd.arg("--force");
    }
    util::run(&mut cmd)?;
    let version = linker_version(ctx, &cargo_home)?
        .context("bpf-linker does not run after `cargo install`")?;
    std::fs::write(&marker, format!("{version}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    installed(STEP);
    Ok(())
}

/// `bpf-linker --version` (first line), `None` when it is not installed or
/// does not run.
fn linker_version(ctx: &Ctx, cargo_home: &std::path::Path) -> anyhow::Result<Option<String>> {
    let mut cmd = Command::new("bpf-linker");
    cmd.arg("--version");
    let Some(output) = util::probe(ctx, &mut cmd)? else {
        let installed = cargo_home.join("bin/bpf-linker");
        if installed.exists() {
            bail!(
                "{} exists but is not on PATH; rustc looks bpf-linker up in PATH: \
                 add {} to PATH",
                installed.display(),
                cargo_home.join("bin").display()
            );
        }
        return Ok(None);
    };
    if !output.status.success() {
        return Ok(None);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(Some(
        stdout.lines().next().unwrap_or_default().trim().to_owned(),
    ))
}

fn linker_state(ctx: &Ctx, cargo_home: &std::path::Path) -> anyhow::Result<Linker> {
    let Some(version) = linker_version(ctx, cargo_home)? else {
        return Ok(if cargo_home.join("bin/bpf-linker").exists() {
            Linker::Reinstall("it does not run")
        } else {
            Linker::Missing
        });
    };
    let marker = cargo_home.join(LINKER_MARKER);
    if let Ok(recorded) = std::fs::read_to_string(&marker) {
        if recorded.lines().next() == Some(version.as_str()) {
            return Ok(Linker::Ready("marker"));
        }
    }
    // `bpf-linker --version` does not name its LLVM. cargo's install record
    // keeps the features it was built with; a dynamic build also shows the
    // libLLVM it loads.
    let verified = match features_in_install_record(cargo_home) {
        Some(features) => features.iter().any(|f| f == "llvm-22"),
        None => links_llvm22(ctx)?,
    };
    if !verified {
        return Ok(Linker::Reinstall("built for another LLVM"));
    }
    std::fs::write(&marker, format!("{version}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(Linker::Ready("verified built with llvm-22"))
}

/// The features bpf-linker was installed with, from `$CARGO_HOME/.crates2.json`.
fn features_in_install_record(cargo_home: &std::path::Path) -> Option<Vec<String>> {
    let record = std::fs::read_to_string(cargo_home.join(".crates2.json")).ok()?;
    let record: serde_json::Value = serde_json::from_str(&record).ok()?;
    let (_, install) = record
        .get("installs")?
        .as_object()?
        .iter()
        .find(|(package, _)| package.starts_with("bpf-linker "))?;
    Some(
        install
            .get("features")?
            .as_array()?
            .iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect(),
    )
}

fn links_llvm22(ctx: &Ctx) -> anyhow::Result<bool> {
    let mut which = Command::new("sh");
    which.args(["-c", "ldd \"$(command -v bpf-linker)\""]);
    Ok(util::probe(ctx, &mut which)?.is_some_and(|output| {
        let libs = String::from_utf8_lossy(&output.stdout);
        libs.contains("libLLVM.so.22") || libs.contains("libLLVM-22")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names() {
        let installed = [
            "rust-src".to_owned(),
            "clippy-x86_64-unknown-linux-gnu".to_owned(),
        ];
        assert!(has_component(&installed, "rust-src"));
        assert!(has_component(&installed, "clippy"));
        assert!(!has_component(&installed, "rustfmt"));
        assert!(!has_component(&installed, "clip"));
    }
}
