//! Attaching the XDP prefilter to uplinks with pinned links, adopting the
//! links an earlier agent pinned, and detaching the ones no longer wanted.

use std::{collections::BTreeSet, ffi::CString, path::Path};

use anyhow::{bail, Context as _};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use crate::{
    bpffs::{PinLayout, XDP_LINK_PREFIX},
    loader::pinned_prefilter,
    syscall::pinned_xdp_link_state,
};

/// What happened on one uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkAttach {
    /// A new link was created and pinned.
    Attached,
    /// The pinned link already ran the current program on this device: kept
    /// as is, so filtering never paused.
    Adopted,
    /// The pinned link ran older code: its program was swapped atomically
    /// (`bpf_link_update`), no gap.
    Updated,
    /// The pinned link pointed at a device that is gone or was recreated:
    /// replaced by a fresh link.
    Reattached,
}

/// Resolves an interface name in the current network namespace.
pub fn ifindex(ifname: &str) -> anyhow::Result<u32> {
    let c = CString::new(ifname).with_context(|| format!("interface name {ifname:?} has a NUL"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface named {ifname} in this network namespace");
    }
    Ok(index)
}

/// Makes the prefilter run on every interface of `uplinks` and on no other
/// (links for interfaces that left the list are unpinned, which detaches
/// them).
pub fn sync_uplinks(
    layout: &PinLayout,
    uplinks: &[String],
    mode: XdpMode,
) -> anyhow::Result<Vec<(String, UplinkAttach)>> {
    let mut prog = pinned_prefilter(layout)?;
    let prog_id = prog.info()?.id();
    let mut results = Vec::new();
    for ifname in uplinks {
        let outcome = attach_uplink(layout, &mut prog, prog_id, ifname, mode)
            .with_context(|| format!("attaching the prefilter to {ifname}"))?;
        tracing::info!(uplink = %ifname, outcome = ?outcome, "prefilter on uplink");
        results.push((ifname.clone(), outcome));
    }
    let wanted: BTreeSet<&str> = uplinks.iter().map(String::as_str).collect();
    for (ifname, path) in pinned_xdp_links(layout)? {
        if !wanted.contains(ifname.as_str()) {
            // Detach first: unpinning alone lets the program run on until the
            // kernel drops its last reference.
            if let Err(err) = crate::syscall::detach_pinned_link(&path) {
                tracing::debug!(pin = %path.display(), %err, "link already detached");
            }
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            tracing::info!(uplink = %ifname, "prefilter detached (no longer an uplink)");
        }
    }
    Ok(results)
}

fn attach_uplink(
    layout: &PinLayout,
    prog: &mut Xdp,
    prog_id: u32,
    ifname: &str,
    mode: XdpMode,
) -> anyhow::Result<UplinkAttach> {
    let index = ifindex(ifname)?;
    let pin = layout.xdp_link(ifname);
    let mut reattach = false;
    if pin.exists() {
        let state =
            pinned_xdp_link_state(&pin).with_context(|| format!("reading {}", pin.display()))?;
        if state.ifindex == index {
            if state.prog_id == prog_id {
                return Ok(UplinkAttach::Adopted);
            }
            let link =
                PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
            let xdp_link = XdpLink::try_from(FdLink::from(link))?;
            let id = prog.attach_to_link(xdp_link).context("bpf_link_update")?;
            // The pin keeps the link alive; our fd of it can go.
            drop(prog.take_link(id)?);
            return Ok(UplinkAttach::Updated);
        }
        // The device was deleted (ifindex 0, link defunct) or recreated.
        std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        reattach = true;
    }
    let id = prog.attach_to_if_index(index, mode)?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("the kernel attached XDP without a bpf_link; cannot pin it")?;
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(if reattach {
        UplinkAttach::Reattached
    } else {
        UplinkAttach::Attached
    })
}

/// The XDP links pinned under `layout`, as (interface name, pin path).
pub fn pinned_xdp_links(layout: &PinLayout) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    layout.links_with_prefix(XDP_LINK_PREFIX)
}

/// Whether a pinned XDP link still runs on a live device.
pub fn link_is_live(pin: &Path) -> anyhow::Result<bool> {
    Ok(pinned_xdp_link_state(pin)?.ifindex != 0)
}
