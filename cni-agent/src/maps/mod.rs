//! Typed access to the pinned maps, one file per map family. Everything
//! here opens pins directly, so it works with the agent down (sluicectl).

pub mod counters;
pub mod policy;
pub mod prefilter;

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Map, MapData};

use crate::bpffs::PinLayout;

/// Opens the pinned map `name` under `layout` as a typed aya map `T`.
pub fn open_pinned<T>(layout: &PinLayout, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    open_pinned_path(&layout.map(name))
}

/// Opens the map pinned at `path` as a typed aya map `T`.
pub fn open_pinned_path<T>(path: &Path) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(path).with_context(|| {
        format!(
            "opening pinned map {} (is sluice-agent started, and --bpffs-dir right?)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))?;
    T::try_from(map).with_context(|| format!("{} has an unexpected type or layout", path.display()))
}

/// An exclusive lock over the pin directory for read-modify-write of rule
/// maps (agent and sluicectl both edit them). Released on drop.
pub struct PinLock {
    _dir: std::fs::File,
}

impl PinLock {
    /// Blocks until the lock on `layout`'s root is held.
    pub fn acquire(layout: &PinLayout) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let dir = std::fs::File::open(layout.root())
            .with_context(|| format!("opening {}", layout.root().display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", layout.root().display()));
        }
        Ok(Self { _dir: dir })
    }
}
