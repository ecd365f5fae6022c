//! The IPAM commands over any [`Store`]: what `sluice-ipam` and the plugin
//! (in process) run, and what the unit tests drive with a
//! [`FakeStore`](super::fake::FakeStore).
//!
//! Each command takes the store's lock once, first reclaims everything when
//! the machine rebooted since the store was last used, then does its work.

use std::net::IpAddr;

use super::allocator::Allocator;
use super::config::IpamConfig;
use super::store::{with_lock, Attachment, Reservation, Store};
use crate::error::{CniError, CniResult, Code};
use crate::types::{CniOutput, IpConfig};

/// Where Linux keeps the id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The current boot id, `None` when unreadable (reclaim is then skipped).
pub fn current_boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Releases every reservation when `boot_id` differs from the one recorded
/// in the store: all pods of the previous boot are gone. A store without a
/// recorded boot id (new, or used by host-local so far) adopts the current
/// one and keeps its reservations. Returns what was reclaimed.
///
/// Everything in the store when the boot id changes counts as the previous
/// boot's: host-local records no boot id, so a data dir that host-local
/// and sluice-ipam take turns on across a reboot loses host-local's
/// reservations of the new boot made before sluice-ipam's first call.
pub fn reclaim_after_reboot(
    store: &mut dyn Store,
    boot_id: Option<&str>,
) -> CniResult<Vec<Reservation>> {
    let Some(current) = boot_id else {
        return Ok(Vec::new());
    };
    let recorded = store.boot_id()?;
    if recorded.as_deref() == Some(current) {
        return Ok(Vec::new());
    }
    let mut reclaimed = Vec::new();
    if recorded.is_some() {
        for r in store.list()? {
            // A reservation that cannot be removed stays held; the command
            // itself goes on.
            match store.release(&r) {
                Ok(true) => reclaimed.push(r),
                Ok(false) => {}
                Err(e) => eprintln!("sluice-ipam: reclaim after reboot: {e}"),
            }
        }
    }
    store.set_boot_id(current)?;
    Ok(reclaimed)
}

/// ADD: one address per range set for `att`, with the config's routes and
/// DNS. Idempotent: addresses the attachment already holds are returned,
/// not allocated again. On failure, what this call reserved is released.
pub fn add(
    store: &mut dyn Store,
    cfg: &IpamConfig,
    att: &Attachment,
    boot_id: Option<&str>,
) -> CniResult<CniOutput> {
    let dns = cfg.dns()?;
    let requested = requested_per_set(cfg)?;
    let ips = with_lock(store, |store| {
        reclaim_after_reboot(store, boot_id)?;
        let held = store.get_by_id(&att.container_id, &att.ifname)?;
        let mut new: Vec<Reservation> = Vec::new();
        let mut ips: Vec<IpConfig> = Vec::new();
        for (i, set) in cfg.range_sets.iter().enumerate() {
            let alloc = Allocator::new(set, i);
            let existing = held.iter().copied().find(|ip| set.contains(*ip));
            let got = match (existing, requested[i]) {
                (Some(have), Some(want)) if have != want => Err(CniError::ipam(format!(
                    "container {} ({}) already holds {have} in range set {set}; cannot also take requested {want}",
                    att.container_id, att.ifname
                ))),
                (Some(have), _) => Ok(alloc.ip_config(have)),
                (None, Some(want)) => alloc.allocate_requested(store, att, want),
                (None, None) => alloc.allocate(store, att),
            };
            match got {
                Ok(ip) => {
                    if existing.is_none() {
                        new.push(Reservation {
                            ip: ip.address.addr(),
                            container_id: att.container_id.clone(),
                            ifname: att.ifname.clone(),
                        });
                    }
                    ips.push(ip);
                }
                Err(e) => {
                    for r in &new {
                        if let Err(undo) = store.release(r) {
                            eprintln!("sluice-ipam: undo reservation of {}: {undo}", r.ip);
                        }
                    }
                    let msg = format!("failed to allocate for range set {i}: {}", e.msg);
                    return Err(CniError { msg, ..e });
                }
            }
        }
        Ok(ips)
    })?;
    Ok(CniOutput {
        interfaces: Vec::new(),
        ips,
        routes: cfg.routes.clone(),
        dns,
    })
}

/// Maps each requested address to the range set holding it: code 101 when
/// one is in no set, or two fall in the same set.
fn requested_per_set(cfg: &IpamConfig) -> CniResult<Vec<Option<IpAddr>>> {
    let mut per_set = vec![None; cfg.range_sets.len()];
    for ip in &cfg.requested_ips {
        let Some(i) = cfg.range_sets.iter().position(|s| s.contains(*ip)) else {
            let sets: Vec<String> = cfg.range_sets.iter().map(ToString::to_string).collect();
            return Err(CniError::ipam(format!(
                "requested IP address {ip} is not in any range set ({})",
                sets.join("; ")
            )));
        };
        if let Some(other) = per_set[i] {
            return Err(CniError::ipam(format!(
                "requested IP addresses {other} and {ip} are both in range set {i} ({}); one address per set",
                cfg.range_sets[i]
            )));
        }
        per_set[i] = Some(*ip);
    }
    Ok(per_set)
}

/// DEL: releases what `att` holds. Nothing held is success.
pub fn del(
    store: &mut dyn Store,
    att: &Attachment,
    boot_id: Option<&str>,
) -> CniResult<Vec<IpAddr>> {
    with_lock(store, |store| {
        reclaim_after_reboot(store, boot_id)?;
        store.release_by_id(&att.container_id, &att.ifname)
    })
}

/// CHECK: `att` still holds an address, and every address of `prev` (the
/// prevResult) that lies in this network's range sets. Code 101 otherwise.
pub fn check(
    store: &mut dyn Store,
    cfg: &IpamConfig,
    att: &Attachment,
    prev: Option<&CniOutput>,
    boot_id: Option<&str>,
) -> CniResult<()> {
    let held = with_lock(store, |store| {
        reclaim_after_reboot(store, boot_id)?;
        store.get_by_id(&att.container_id, &att.ifname)
    })?;
    if held.is_empty() {
        return Err(CniError::ipam(format!(
            "container {} ({}) holds no address in network {}",
            att.container_id, att.ifname, cfg.network
        )));
    }
    for ip in prev.map(|p| p.ips.as_slice()).unwrap_or_default() {
        let addr = ip.address.addr();
        if cfg.range_sets.iter().any(|s| s.contains(addr)) && !held.contains(&addr) {
            return Err(CniError::ipam(format!(
                "address {addr} of prevResult is not held by container {} ({}) in network {}",
                att.container_id, att.ifname, cfg.network
            ))
            .with_details(format!("held: {held:?}")));
        }
    }
    Ok(())
}

/// STATUS: the store is writable and every range set has a free address.
/// Every failure is code 50 with the reason.
pub fn status(store: &mut dyn Store, cfg: &IpamConfig, boot_id: Option<&str>) -> CniResult<()> {
    let unavailable = |e: CniError| CniError {
        code: Code::PluginNotAvailable,
        ..e
    };
    let reservations = with_lock(store, |store| {
        reclaim_after_reboot(store, boot_id)?;
        store.check_writable()?;
        store.list()
    })
    .map_err(unavailable)?;
    for (i, set) in cfg.range_sets.iter().enumerate() {
        let used = reservations
            .iter()
            .filter(|r| set.allocatable(r.ip))
            .count() as u128;
        if set.capacity() <= used {
            return Err(CniError::new(
                Code::PluginNotAvailable,
                format!("no IP addresses available in range set {i}: {set}"),
            )
            .with_details(format!("{used} of {} addresses reserved", set.capacity())));
        }
    }
    Ok(())
}
