//! Carrying tracked flows over from the retired single conntrack map `CT`
//! (both families, 40-byte keys) into `CT4` and `CT6`, which replaced it.
//!
//! An agent upgrading a node finds the old pin. Dropping it would forget
//! every tracked flow: a connection that only one side's policy allows
//! would lose its replies until it is opened again. So the agent copies
//! the flows over before the pod programs move to the new maps, copies
//! again afterwards (flows the old programs tracked in between), then
//! removes the pin. An entry the new programs already wrote wins.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, MapError, MapInfo};
use cni_ebpf_common::{
    maps::{BPF_MAP_TYPE_LRU_HASH, CT4, CT6, CT_MAX, RETIRED_CT},
    policy::{Ct4Key, CtEntry, CtKey},
    prefilter::FAMILY_IPV4,
};

use crate::{
    bpffs::PinLayout,
    maps::{open_pinned, open_pinned_path},
};

/// `BPF_NOEXIST`: insert only where no entry is.
const BPF_NOEXIST: u64 = 1;

/// Whether the pin at `path` is the retired map as the last agent that
/// used it made it (an LRU hash of `CtKey` to `CtEntry`).
fn is_retired_layout(path: &Path) -> anyhow::Result<bool> {
    let info = MapInfo::from_pin(path)
        .with_context(|| format!("reading pinned map {}", path.display()))?;
    Ok(
        info.map_type().map(|t| t as u32).ok() == Some(BPF_MAP_TYPE_LRU_HASH)
            && info.key_size() as usize == size_of::<CtKey>()
            && info.value_size() as usize == size_of::<CtEntry>(),
    )
}

/// Inserts unless an entry is there already (then the newer one stays).
fn insert_new<K: aya::Pod>(
    map: &mut HashMap<MapData, K, CtEntry>,
    key: &K,
    entry: &CtEntry,
) -> anyhow::Result<bool> {
    match map.insert(key, entry, BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Copies the flows of the retired `CT` pin, if there is one, into `CT4`
/// and `CT6` (pinned already: call after loading). Returns how many were
/// copied, or `None` without a retired pin. A pin of some other layout is
/// not read (nothing older had one); [`remove_retired`] still removes it.
pub fn copy_retired_flows(layout: &PinLayout) -> anyhow::Result<Option<usize>> {
    let path = layout.map(RETIRED_CT);
    if !path.exists() {
        return Ok(None);
    }
    if !is_retired_layout(&path)? {
        tracing::warn!(pin = %path.display(), "retired conntrack pin of an unknown layout; not read");
        return Ok(Some(0));
    }
    let old: HashMap<MapData, CtKey, CtEntry> = open_pinned_path(&path)?;
    let mut ct4: HashMap<MapData, Ct4Key, CtEntry> = open_pinned(layout, CT4)?;
    let mut ct6: HashMap<MapData, CtKey, CtEntry> = open_pinned(layout, CT6)?;
    let mut copied = 0;
    // Old programs may still add and evict entries during the first copy;
    // a walk whose key was evicted starts over, so it is bounded.
    for item in old.iter().take(2 * CT_MAX as usize) {
        let Ok((key, entry)) = item else { break };
        let inserted = if key.family == FAMILY_IPV4 {
            insert_new(&mut ct4, &key.v4(), &entry)?
        } else {
            insert_new(&mut ct6, &key, &entry)?
        };
        copied += usize::from(inserted);
    }
    Ok(Some(copied))
}

/// Removes the retired `CT` pin, if any (once no program of ours uses it;
/// the kernel frees the map with its last user).
pub fn remove_retired(layout: &PinLayout) -> anyhow::Result<()> {
    let path = layout.map(RETIRED_CT);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
