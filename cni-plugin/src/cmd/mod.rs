//! The command handlers `sluice` runs: one file per verb, each a function
//! `run(&Request)`; skel (`skel.rs`) parses the request before and writes
//! the result or error after.
//!
//! - [`add`]: IPAM, veth, routes, datapath, masquerade, state record, agent
//!   notification; every side effect is undone when a later step fails.
//! - [`del`]: IPAM release first, then everything else; idempotent, needs
//!   neither the agent nor the netns, reports every error it met.
//! - [`check`]: the attachment against the prevResult, code 102 on drift.
//! - [`gc`](mod@gc): removes the attachments of this network the runtime no
//!   longer lists.
//! - [`status`]: whether ADD could succeed now (code 50 when not).
//! - [`notify`]: the client side of the agent's notify socket.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod notify;
pub mod status;

use crate::bridge::BridgeOptions;
use crate::config::BridgeConf;
use crate::error::{CniError, CniResult};
use crate::ipam::IpamEnv;
use crate::skel::{Commands, Request};
use crate::types::CniOutput;

/// The handlers `sluice` runs.
pub struct Handlers;

impl Commands for Handlers {
    fn add(&self, req: &Request) -> CniResult<CniOutput> {
        add::run(req)
    }
    fn del(&self, req: &Request) -> CniResult<()> {
        del::run(req)
    }
    fn check(&self, req: &Request) -> CniResult<()> {
        check::run(req)
    }
    fn gc(&self, req: &Request) -> CniResult<()> {
        gc::run(req)
    }
    fn status(&self, req: &Request) -> CniResult<()> {
        status::run(req)
    }
}

/// The request's `CNI_*` variables as IPAM (in process or delegated) gets
/// them.
pub(crate) fn ipam_env(req: &Request) -> IpamEnv {
    IpamEnv::from_lookup(|k| req.cni_env.get(k).cloned())
}

/// The bridge plugin's options as `bridge.rs` takes them.
pub(crate) fn bridge_options(b: &BridgeConf) -> BridgeOptions {
    BridgeOptions {
        name: b.name.clone(),
        is_gateway: b.is_gateway,
        is_default_gateway: b.is_default_gateway,
        force_address: b.force_address,
        hairpin_mode: b.hairpin_mode,
        promisc_mode: b.promisc_mode,
    }
}

/// Whether `(container_id, ifname)` is named by the GC list `valid`; an
/// entry without ifname keeps every interface of its container (as
/// `ipam::gc` reads it).
pub(crate) fn is_valid_attachment(
    valid: &[crate::config::Attachment],
    container_id: &str,
    ifname: &str,
) -> bool {
    valid
        .iter()
        .any(|v| v.container_id == container_id && (v.ifname.is_empty() || v.ifname == ifname))
}

type UndoStep<'a> = Box<dyn FnOnce() -> Vec<CniError> + 'a>;

/// The undo stack of a multi-step change (STYLE point 5): push a step right
/// after each side effect; when the guard is dropped without
/// [`Undo::commit`] (an early `?` return, or a panic), the steps run in
/// reverse order. A failing step is logged and the rest still run: the
/// error the caller returns is the one that made the change fail.
pub(crate) struct Undo<'a> {
    steps: Vec<(&'static str, UndoStep<'a>)>,
}

impl<'a> Undo<'a> {
    pub(crate) fn new() -> Self {
        Self { steps: Vec::new() }
    }

    /// Adds a step; `what` names it in the log.
    pub(crate) fn push(&mut self, what: &'static str, step: impl FnOnce() -> Vec<CniError> + 'a) {
        self.steps.push((what, Box::new(step)));
    }

    /// The change succeeded: forget the steps.
    pub(crate) fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            let errors = step();
            if errors.is_empty() {
                tracing::debug!("undid {what}");
            }
            for e in errors {
                tracing::warn!("undoing {what}: {e}");
            }
        }
    }
}

/// One error as the list the undo steps return.
pub(crate) fn errs<T>(r: CniResult<T>) -> Vec<CniError> {
    r.err().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn undo_runs_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut u = Undo::new();
            u.push("a", || {
                log.borrow_mut().push("a");
                Vec::new()
            });
            u.push("b", || {
                log.borrow_mut().push("b");
                vec![CniError::kernel("b failed")]
            });
            u.push("c", || {
                log.borrow_mut().push("c");
                Vec::new()
            });
        }
        assert_eq!(*log.borrow(), ["c", "b", "a"]);
        log.borrow_mut().clear();
        let mut u = Undo::new();
        u.push("a", || {
            log.borrow_mut().push("a");
            Vec::new()
        });
        u.commit();
        assert!(log.borrow().is_empty());
    }

    #[test]
    fn valid_attachments_match_container_and_ifname() {
        let valid = [
            crate::config::Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            crate::config::Attachment {
                container_id: "c2".into(),
                ifname: String::new(),
            },
        ];
        assert!(is_valid_attachment(&valid, "c1", "eth0"));
        assert!(!is_valid_attachment(&valid, "c1", "eth1"));
        assert!(is_valid_attachment(&valid, "c2", "net9"));
        assert!(!is_valid_attachment(&valid, "c3", "eth0"));
    }
}
