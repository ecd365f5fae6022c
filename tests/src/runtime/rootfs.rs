//! What the runtimes run, built from Debian's static binaries because no
//! image registry is reachable: a busybox root filesystem for podman's
//! `--rootfs`, and a one-binary pause image (static `catatonit`) for
//! containerd's `sandbox_image`, as a docker-archive tar for `ctr images
//! import`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// busybox-static's binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// catatonit's binary (static in Debian's package).
pub const CATATONIT: &str = "/usr/bin/catatonit";

/// Makes `dir` a root filesystem with a static busybox and a symlink for
/// every applet in `/bin`, plus the directories a container expects.
pub fn busybox_rootfs(dir: &Path) -> anyhow::Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} not found: install busybox-static (`cargo xtask setup`)");
    }
    let bin = dir.join("bin");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "var/www"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    fs::copy(BUSYBOX, bin.join("busybox"))
        .with_context(|| format!("copying {BUSYBOX} into {}", bin.display()))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list"))?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list failed ({})", list.status);
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking applet {applet}"))?;
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    mode: u32,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, data)
        .with_context(|| format!("adding {name} to a tar"))
}

/// Writes a docker-archive (`docker save` format) image named `image_ref`
/// to `tar_path`: one layer with `/catatonit`, entrypoint `/catatonit -P`
/// (pause mode: it only reaps and waits for a signal).
pub fn pause_image_tar(tar_path: &Path, image_ref: &str) -> anyhow::Result<PathBuf> {
    let catatonit = fs::read(CATATONIT)
        .with_context(|| format!("reading {CATATONIT}: install catatonit (`cargo xtask setup`)"))?;
    let mut layer = tar::Builder::new(Vec::new());
    append_file(&mut layer, "catatonit", 0o755, &catatonit)?;
    let layer = layer.into_inner().context("finishing the layer tar")?;
    let config = serde_json::to_vec(&json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/catatonit", "-P"],
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [format!("sha256:{}", sha256_hex(&layer))],
        },
    }))?;
    let config_name = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [image_ref],
        "Layers": ["layer.tar"],
    }]))?;
    let mut archive = tar::Builder::new(Vec::new());
    append_file(&mut archive, "manifest.json", 0o644, &manifest)?;
    append_file(&mut archive, &config_name, 0o644, &config)?;
    append_file(&mut archive, "layer.tar", 0o644, &layer)?;
    let archive = archive.into_inner().context("finishing the image tar")?;
    fs::write(tar_path, archive).with_context(|| format!("writing {}", tar_path.display()))?;
    Ok(tar_path.to_owned())
}

/// The machine's architecture as OCI image configs name it (Go's GOARCH).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
