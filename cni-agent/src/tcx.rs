//! The agent's TCX links: `from_uplink` on every `--uplink` (eBPF host
//! routing of traffic for local pods), and keeping the pods' programs (the
//! TCX links or cls_bpf filters the plugin attached) on the current
//! programs after an upgrade.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions, TcHandle},
    SchedClassifier, TcAttachType,
};
use cni_ebpf_common::maps::{
    PROG_FROM_POD, PROG_FROM_UPLINK, PROG_TO_POD, TCX_EGRESS_SUFFIX, TCX_INGRESS_SUFFIX,
    TCX_LINK_PREFIX, TC_FILTER_HANDLE, TC_FILTER_PRIORITY, UPLINK_LINK_PREFIX,
};

use crate::{attach::ifindex, bpffs::PinLayout, syscall::pinned_xdp_link_state};

/// Opens a pinned tc program.
fn pinned_classifier(layout: &PinLayout, name: &str) -> anyhow::Result<(SchedClassifier, u32)> {
    let path = layout.prog(name);
    let prog =
        SchedClassifier::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let id = prog.info()?.id();
    Ok((prog, id))
}

/// Points the link pinned at `pin` at `prog` (`bpf_link_update`: atomic,
/// the device never runs without a program) unless it already runs it.
/// Returns whether it changed.
fn update_link(pin: &PathBuf, prog: &mut SchedClassifier, prog_id: u32) -> anyhow::Result<bool> {
    let state = pinned_xdp_link_state(pin).with_context(|| format!("reading {}", pin.display()))?;
    if state.prog_id == prog_id {
        return Ok(false);
    }
    let link = PinnedLink::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let link = SchedClassifierLink::try_from(FdLink::from(link))?;
    let id = prog.attach_to_link(link).context("bpf_link_update")?;
    // The pin keeps the link alive; our fd of it can go.
    drop(prog.take_link(id)?);
    Ok(true)
}

/// Makes `from_uplink` run at the TCX ingress of every interface of
/// `uplinks` and of no other. Returns the uplinks whose link was created.
pub fn sync_uplink_routing(layout: &PinLayout, uplinks: &[String]) -> anyhow::Result<Vec<String>> {
    let (mut prog, prog_id) = pinned_classifier(layout, PROG_FROM_UPLINK)?;
    let mut attached = Vec::new();
    for ifname in uplinks {
        let index = ifindex(ifname)?;
        let pin = layout.uplink_link(ifname);
        if pin.exists() {
            let state = pinned_xdp_link_state(&pin)
                .with_context(|| format!("reading {}", pin.display()))?;
            if state.ifindex == index {
                if update_link(&pin, &mut prog, prog_id)? {
                    tracing::info!(uplink = %ifname, "host routing program updated in place");
                }
                continue;
            }
            // The device was deleted or recreated: the link is defunct.
            std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        }
        let id = prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching {PROG_FROM_UPLINK} to {ifname}"))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        tracing::info!(uplink = %ifname, "host routing attached to uplink");
        attached.push(ifname.clone());
    }
    let wanted: BTreeSet<&str> = uplinks.iter().map(String::as_str).collect();
    for (ifname, pin) in layout.links_with_prefix(UPLINK_LINK_PREFIX)? {
        if !wanted.contains(ifname.as_str()) {
            if let Err(err) = crate::syscall::detach_pinned_link(&pin) {
                tracing::debug!(pin = %pin.display(), %err, "link already detached");
            }
            std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
            tracing::info!(uplink = %ifname, "host routing detached (no longer an uplink)");
        }
    }
    Ok(attached)
}

/// Points every pod link the plugin pinned (`tcx-<veth>-ingress|-egress`)
/// at the programs pinned now. After an upgrade that replaced a program (or
/// migrated a map), pods attached before it would otherwise run the old
/// code against the old maps until they are recreated. Returns how many
/// links changed; links of vanished devices are left to the plugin's GC.
pub fn update_pod_links(layout: &PinLayout) -> anyhow::Result<usize> {
    let (mut from_pod, from_pod_id) = pinned_classifier(layout, PROG_FROM_POD)?;
    let (mut to_pod, to_pod_id) = pinned_classifier(layout, PROG_TO_POD)?;
    let mut changed = 0;
    for (name, pin) in layout.links_with_prefix(TCX_LINK_PREFIX)? {
        let (prog, id) = if name.ends_with(TCX_INGRESS_SUFFIX) {
            (&mut from_pod, from_pod_id)
        } else if name.ends_with(TCX_EGRESS_SUFFIX) {
            (&mut to_pod, to_pod_id)
        } else {
            continue;
        };
        match update_link(&pin, prog, id) {
            Ok(true) => changed += 1,
            Ok(false) => {}
            // A defunct link (its veth is gone) cannot be updated; the
            // plugin's DEL or GC removes its pin.
            Err(err) => tracing::debug!(pin = %pin.display(), "{err:#}"),
        }
    }
    Ok(changed)
}

/// Replaces the cls_bpf filters of every pod attached with `tcAttach: tc`
/// (found through the state dir's records) with filters running the
/// programs pinned now: a netlink change of the filter at Sluice's priority
/// and handle, which cls_bpf applies atomically (no packet meets the hook
/// without a program). Call it when the pinned programs changed; there is
/// no cheap way to read which program a filter runs without a tc dump, and
/// replacing a filter with the same program is harmless. Returns how many
/// filters were replaced; a pod whose veth is gone is skipped (its DEL or
/// GC cleans up).
pub fn update_pod_filters(layout: &PinLayout, state_dir: &Path) -> anyhow::Result<usize> {
    let (mut from_pod, _) = pinned_classifier(layout, PROG_FROM_POD)?;
    let (mut to_pod, _) = pinned_classifier(layout, PROG_TO_POD)?;
    let state = crate::endpoints::read_state_dir(state_dir, Some(layout.root()))
        .with_context(|| format!("reading {}", state_dir.display()))?;
    let mut changed = 0;
    for record in state.records.values() {
        if record.tc_attach.as_deref() != Some("tc") {
            continue;
        }
        match ifindex(&record.host_veth) {
            Ok(index) if index == record.host_ifindex => {}
            // Gone, or recreated by someone else under the same name.
            _ => continue,
        }
        for (prog, attach_type) in [
            (&mut from_pod, TcAttachType::Ingress),
            (&mut to_pod, TcAttachType::Egress),
        ] {
            let link = SchedClassifierLink::attached(
                &record.host_veth,
                attach_type,
                TC_FILTER_PRIORITY,
                TcHandle::from(TC_FILTER_HANDLE),
                None,
            )?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // Dropping an aya tc link detaches it: the filter stays.
                    std::mem::forget(prog.take_link(id)?);
                    changed += 1;
                }
                Err(err) => tracing::warn!(
                    veth = %record.host_veth,
                    ?attach_type,
                    "cannot move the pod's filter to the current program: {err}"
                ),
            }
        }
    }
    Ok(changed)
}
