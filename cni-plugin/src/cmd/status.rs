//! STATUS (CNI 1.1): whether an ADD could succeed now. Code 50 ("plugin not
//! available") with the reason when:
//! - the agent's programs and endpoint map are not pinned in `bpffsDir`
//!   (the agent never ran there; ADD would answer 11);
//! - IPAM is not ready: sluice-ipam's store is not writable or a range set
//!   has no free address; a delegate's own STATUS failed;
//! - `waitForPolicy` is on and nothing accepts connections on
//!   `agentSocket` (every ADD would time out).
//!
//! A config without `ipam` is code 7, as ADD would answer.

use crate::{
    attach,
    error::{CniError, CniResult, Code},
    ipam,
    skel::Request,
};

use super::{ipam_env, notify};

fn unavailable(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(Code::PluginNotAvailable, msg).with_details(details)
}

/// STATUS.
pub fn run(req: &Request) -> CniResult<()> {
    let conf = &req.config;
    attach::check_pinned(&conf.bpffs_dir).map_err(|e| {
        unavailable(
            "the sluice-agent has not pinned its programs",
            format!(
                "{}; start sluice-agent --bpffs-dir {}",
                e.details,
                conf.bpffs_dir.display()
            ),
        )
    })?;
    if conf.ipam.is_none() {
        return Err(CniError::config("missing \"ipam\""));
    }
    ipam::status(&req.stdin, &ipam_env(req)).map_err(|e| match e.code {
        Code::PluginNotAvailable | Code::PluginNotAvailableLimitedConnectivity => e,
        _ => CniError {
            code: Code::PluginNotAvailable,
            msg: format!("IPAM is not available: {}", e.msg),
            ..e
        },
    })?;
    if conf.wait_for_policy {
        notify::probe(&conf.agent_socket, conf.policy_timeout).map_err(|e| {
            unavailable(
                "waitForPolicy is on but the agent does not accept connections",
                e.to_string(),
            )
        })?;
    }
    Ok(())
}
