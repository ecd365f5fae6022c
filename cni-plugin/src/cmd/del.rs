//! DEL: remove a container's attachment. Never needs the agent or the
//! netns, and is idempotent: whatever is already gone counts as removed, so
//! DEL after DEL, DEL without prevResult, DEL after the netns is gone and
//! DEL after a failed ADD all succeed.
//!
//! Order (STYLE point 5): IPAM first, so an address is released even when
//! the rest fails; then the datapath and veth (the host veth named by the
//! state record, else by the prevResult, else found through the
//! container's interface or derived from the container id and ifname), the
//! masquerade rules, the state record, and a best-effort `del` to the
//! agent. Every step runs even when an earlier one failed; the error
//! returned lists them all. The state record is kept when removing the
//! veth, datapath or masquerade rules failed, so a retried DEL still knows
//! the host veth.

use std::path::PathBuf;

use crate::{
    error::{CniError, CniResult},
    ipam, masq,
    skel::Request,
    state::{self, endpoint_id},
    timing::StepTimer,
    veth::{self, Teardown},
};

use super::{ipam_env, notify};

/// DEL.
pub fn run(req: &Request) -> CniResult<()> {
    let mut timer = StepTimer::start("DEL");
    let conf = &req.config;
    let mut ipam_errors: Vec<CniError> = Vec::new();
    let mut errors: Vec<CniError> = Vec::new();

    if conf.ipam.is_some() {
        if let Err(e) = ipam::del(&req.stdin, &ipam_env(req)) {
            ipam_errors.push(CniError {
                msg: format!("releasing the IP reservation: {}", e.msg),
                ..e
            });
        }
    }
    timer.step("ipam");

    let record = state::read(&conf.state_dir, &req.container_id, &req.ifname).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let host_veth = record
        .as_ref()
        .map(|r| r.host_veth.as_str())
        .or_else(|| req.prev_result.as_ref().and_then(veth::host_veth_in));
    let bpffs_dir = record
        .as_ref()
        .map(|r| PathBuf::from(&r.bpffs_dir))
        .unwrap_or_else(|| conf.bpffs_dir.clone());
    errors.extend(veth::teardown(&Teardown {
        container_id: &req.container_id,
        ifname: &req.ifname,
        host_veth,
        netns: req.netns.as_deref(),
        bpffs_dir: Some(&bpffs_dir),
    }));
    timer.step("teardown");

    let id = endpoint_id(&req.container_id, &req.ifname);
    // Always, not only with ipMasq: the config may have changed since ADD.
    if let Err(e) = masq::remove(id) {
        errors.push(e);
    }

    if errors.is_empty() {
        if let Err(e) = state::remove(&conf.state_dir, &req.container_id, &req.ifname) {
            errors.push(e);
        }
    } else if record.is_some() {
        tracing::warn!("keeping the state record for a retried DEL");
    }

    timer.step("masquerade and state record");
    notify::send_best_effort(
        &conf.agent_socket,
        &notify::Request::new(
            notify::Op::Del,
            &conf.name,
            &req.container_id,
            &req.ifname,
            id,
        ),
    );

    timer.step("agent");
    ipam_errors.extend(errors);
    veth::join_errors(ipam_errors)
}
