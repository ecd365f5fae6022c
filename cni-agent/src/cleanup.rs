//! `sluice-agent --cleanup`: remove everything Sluice pinned. Unpinning a
//! link detaches it; unpinning programs and maps frees them once nothing
//! else holds them.

use anyhow::Context as _;

use crate::bpffs::PinLayout;

/// What was removed.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Link pins removed (each one detached).
    pub links: Vec<String>,
    /// Program pins removed.
    pub progs: Vec<String>,
    /// Map pins removed.
    pub maps: Vec<String>,
}

/// Detaches every pinned link now, then unpins it: when cleanup returns,
/// no Sluice program runs on any interface.
fn detach_links(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    if dir.exists() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if let Err(err) = crate::syscall::detach_pinned_link(&path) {
                // A link whose device is gone is already detached (defunct).
                tracing::debug!(pin = %path.display(), %err, "detach before unpin");
            }
        }
    }
    remove_all_in(dir)
}

fn remove_all_in(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    removed.sort();
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(removed)
}

/// Removes links first (so nothing runs), then programs, then maps, then
/// the directories. Missing pieces are not an error: cleanup is idempotent.
pub fn cleanup(layout: &PinLayout) -> anyhow::Result<CleanupReport> {
    let report = CleanupReport {
        links: detach_links(&layout.links_dir())?,
        progs: remove_all_in(&layout.progs_dir())?,
        maps: remove_all_in(&layout.maps_dir())?,
    };
    if layout.root().exists() {
        std::fs::remove_dir(layout.root()).with_context(|| {
            format!(
                "removing {} (something else is in it?)",
                layout.root().display()
            )
        })?;
    }
    Ok(report)
}
