//! The pin directory: making sure it is on a real bpffs, and where each pin
//! lives under it.

use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use cni_ebpf_common::maps::{LINKS_DIR, MAPS_DIR, PROGS_DIR};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

/// Where bpffs is mounted by convention.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// The layout of everything Sluice pins under one directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// A layout rooted at `root` (e.g. `/sys/fs/bpf/sluice`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(MAPS_DIR)
    }

    /// Directory of pinned programs.
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join(PROGS_DIR)
    }

    /// Directory of pinned links.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join(LINKS_DIR)
    }

    /// Pin of the map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Pin of the program `name`.
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    /// Pin of the prefilter's XDP link on `ifname`.
    pub fn xdp_link(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(format!("{XDP_LINK_PREFIX}{ifname}"))
    }

    /// Pin of the `from_uplink` TCX link on `ifname`.
    pub fn uplink_link(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(format!(
            "{}{ifname}",
            cni_ebpf_common::maps::UPLINK_LINK_PREFIX
        ))
    }

    /// Link pins whose file name starts with `prefix`, as (the rest of the
    /// name, path), sorted; none when `links/` does not exist.
    pub fn links_with_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let dir = self.links_dir();
        let mut links = Vec::new();
        if !dir.exists() {
            return Ok(links);
        }
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(prefix) {
                links.push((rest.to_owned(), entry.path()));
            }
        }
        links.sort();
        Ok(links)
    }

    /// Creates the directories (the root must be on bpffs already).
    pub fn create_dirs(&self) -> anyhow::Result<()> {
        for dir in [self.maps_dir(), self.progs_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}

/// File name prefix of XDP link pins in `links/`.
pub const XDP_LINK_PREFIX: &str = "xdp-";

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(statfs(path).map_err(io::Error::from)?.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpffs, mounting bpffs on `/sys/fs/bpf` when
/// `dir` is below it and nothing is mounted there yet (it is not mounted at
/// boot on these machines). Any other non-bpffs location is an error: pins
/// on tmpfs would silently vanish with the process.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .with_context(|| format!("no existing ancestor of {}", dir.display()))?;
    if !is_bpffs(existing).with_context(|| format!("statfs {}", existing.display()))? {
        let mount_point = Path::new(BPFFS_MOUNT);
        if dir.starts_with(mount_point) && mount_point.is_dir() {
            tracing::info!(mount_point = BPFFS_MOUNT, "bpffs not mounted; mounting it");
            mount(
                Some("bpf"),
                mount_point,
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .with_context(|| format!("mount -t bpf bpf {BPFFS_MOUNT}"))?;
        } else {
            bail!(
                "{} is not on a bpffs (found on {}); mount one there: mount -t bpf bpf <dir>",
                dir.display(),
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !is_bpffs(dir)? {
        bail!("{} is not on a bpffs after mounting", dir.display());
    }
    Ok(())
}
