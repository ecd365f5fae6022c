//! GC (CNI 1.1): release every reservation of the network whose attachment
//! is not in the runtime's list of valid ones.

use serde_json::Value;

use super::ops::reclaim_after_reboot;
use super::store::{with_lock, Reservation, Store};
use crate::error::{CniError, CniResult};

/// The spec's key for the still-valid attachments.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
/// An older spelling, accepted too.
pub const ATTACHMENTS: &str = "cni.dev/attachments";

/// A still-valid attachment named by the runtime. Without `ifname` it keeps
/// every reservation of the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidAttachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`, when given.
    pub ifname: Option<String>,
}

impl ValidAttachment {
    fn keeps(&self, r: &Reservation) -> bool {
        self.container_id == r.container_id
            && (r.ifname.is_empty() || self.ifname.as_ref().is_none_or(|i| *i == r.ifname))
    }
}

/// Reads the valid attachments from a GC request's config: code 7 when the
/// list is missing (releasing everything on a malformed request would be
/// worse than doing nothing) or malformed.
pub fn valid_attachments(netconf: &Value) -> CniResult<Vec<ValidAttachment>> {
    let (key, list) = [VALID_ATTACHMENTS, ATTACHMENTS]
        .into_iter()
        .find_map(|k| netconf.get(k).map(|v| (k, v)))
        .ok_or_else(|| CniError::config(format!("GC request has no {VALID_ATTACHMENTS} list")))?;
    let items = list
        .as_array()
        .ok_or_else(|| CniError::config(format!("{key}: expected a list, got {list}")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let container_id = item
                .get("containerID")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| CniError::config(format!("{key}[{i}]: no containerID in {item}")))?;
            let ifname = match item.get("ifname") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(CniError::config(format!(
                        "{key}[{i}].ifname: expected a string, got {other}"
                    )))
                }
            };
            Ok(ValidAttachment {
                container_id: container_id.trim().to_string(),
                ifname,
            })
        })
        .collect()
}

/// Releases every reservation not kept by `valid`, going on past failures;
/// returns what was released, or code 101 listing every failure.
pub fn gc(
    store: &mut dyn Store,
    valid: &[ValidAttachment],
    boot_id: Option<&str>,
) -> CniResult<Vec<Reservation>> {
    with_lock(store, |store| {
        reclaim_after_reboot(store, boot_id)?;
        let mut released = Vec::new();
        let mut errors = Vec::new();
        let all = store.list()?;
        for r in all.iter().filter(|r| !valid.iter().any(|v| v.keeps(r))) {
            match store.release(r) {
                Ok(true) => released.push(r.clone()),
                Ok(false) => {}
                Err(e) => errors.push(format!("{} ({} {}): {e}", r.ip, r.container_id, r.ifname)),
            }
        }
        if errors.is_empty() {
            Ok(released)
        } else {
            Err(CniError::ipam(format!(
                "GC released {} stale reservations but failed to release {}",
                released.len(),
                errors.len()
            ))
            .with_details(errors.join("; ")))
        }
    })
}
