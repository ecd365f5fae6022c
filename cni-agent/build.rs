//! Builds the eBPF object (`cni-ebpf`, bpfel) with aya-build so the agent can
//! embed it with `include_bytes_aligned!`.
//!
//! Toolchain: nightly with rust-src (`-Z build-std=core`), as aya-build
//! defaults to. `SLUICE_EBPF_TOOLCHAIN` names another toolchain; with
//! `RUSTC_BOOTSTRAP=1`, stable works too (see RECIPES.md).
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SLUICE_EBPF_TOOLCHAIN");
    let toolchain_name = std::env::var("SLUICE_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain_name.as_deref() {
        Some(name) => Toolchain::Custom(name),
        None => Toolchain::Nightly,
    };
    let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("cni-agent has no parent directory"))?
        .join("cni-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {root_dir:?}"))?;
    aya_build::build_ebpf(
        [Package {
            name: "cni-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .context(
        "building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}
