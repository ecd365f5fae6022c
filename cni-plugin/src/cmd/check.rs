//! CHECK: the attachment still is what ADD built and reported in the
//! prevResult. Every mismatch is code 102 (`CheckMismatch`) with a message
//! naming what differs; a netns that no longer exists is code 3 (container
//! unknown), as on ADD.
//!
//! In order: the IP reservation is held (IPAM CHECK: in process, or the
//! delegate's own CHECK); the interfaces, addresses and routes of the mode
//! (`routed::check` / `bridge::check`); the state record exists and names
//! a host veth of the prevResult; `from_pod` and `to_pod` are attached to
//! that veth (TCX ingress and egress); every address of the prevResult has
//! its `ENDPOINTS` entry for this endpoint; with `ipMasq`, the masquerade
//! rules are there.

use std::path::PathBuf;

use crate::{
    attach,
    config::Mode,
    error::{CniError, CniResult, Code},
    ipam, masq,
    netns::NetnsHandle,
    routed,
    skel::Request,
    state::{self, endpoint_id},
};
use cni_ebpf_common::maps::{PROG_FROM_POD, PROG_TO_POD};

use super::ipam_env;

fn mismatch(msg: impl Into<String>) -> CniError {
    CniError::new(Code::CheckMismatch, msg)
}

/// CHECK.
pub fn run(req: &Request) -> CniResult<()> {
    let conf = &req.config;
    let prev = req
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("required prevResult missing"))?;
    let netns_path = req
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "required for CHECK"))?;
    let netns = NetnsHandle::open(netns_path)?;

    if conf.ipam.is_some() {
        ipam::check(&req.stdin, &ipam_env(req)).map_err(|e| {
            if e.code == Code::Ipam {
                CniError {
                    code: Code::CheckMismatch,
                    msg: format!("IP reservation: {}", e.msg),
                    ..e
                }
            } else {
                e
            }
        })?;
    }

    match &conf.mode {
        Mode::Routed => routed::check(&netns, &req.ifname, prev)?,
        Mode::Bridge(b) => {
            crate::bridge::check(&netns, &req.ifname, &super::bridge_options(b), prev)?
        }
    }

    let record =
        state::read(&conf.state_dir, &req.container_id, &req.ifname)?.ok_or_else(|| {
            mismatch(format!(
                "no state record for container {} ({}) in {}",
                req.container_id,
                req.ifname,
                conf.state_dir.display()
            ))
        })?;
    if !prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_none() && i.name == record.host_veth)
    {
        return Err(mismatch(format!(
            "the state record's host veth {} is not in prevResult",
            record.host_veth
        )));
    }

    let how = record.attach_kind();
    let (ingress, egress) = attach::query(&record.host_veth, how)?;
    for (have, want, hook) in [
        (&ingress, PROG_FROM_POD, "ingress"),
        (&egress, PROG_TO_POD, "egress"),
    ] {
        if !have.iter().any(|p| p == want) {
            return Err(mismatch(format!(
                "{want} is not attached to {} ({} {hook}); attached: {have:?}",
                record.host_veth,
                how.as_str()
            )));
        }
    }

    let id = endpoint_id(&req.container_id, &req.ifname);
    let bpffs_dir = PathBuf::from(&record.bpffs_dir);
    let entries = attach::endpoints_of(&bpffs_dir, id)?;
    for ip in &prev.ips {
        let key = attach::endpoint_key(ip.address.addr());
        match entries.iter().find(|(k, _)| *k == key) {
            None => {
                return Err(mismatch(format!(
                    "no ENDPOINTS entry for {} (endpoint {id:016x}) in {}",
                    ip.address.addr(),
                    bpffs_dir.display()
                )))
            }
            Some((_, info)) if info.ifindex != record.host_ifindex => {
                return Err(mismatch(format!(
                    "the ENDPOINTS entry for {} points at ifindex {}, not {} ({})",
                    ip.address.addr(),
                    info.ifindex,
                    record.host_ifindex,
                    record.host_veth
                )))
            }
            Some((_, info)) if info.flags != conf.endpoint_flags() => {
                return Err(mismatch(format!(
                    "the ENDPOINTS entry for {} has flags {:#x}, the config (hostRouting {}, ipMasq {}) means {:#x}",
                    ip.address.addr(),
                    info.flags,
                    conf.host_routing.as_str(),
                    conf.ip_masq,
                    conf.endpoint_flags()
                )))
            }
            Some(_) => {}
        }
    }
    // Each IPv4 address is a source the pod's veth may send from. Without
    // the entry from_pod still finds the pod (in ENDPOINTS), just slower:
    // a mismatch all the same, as a repair (DEL + ADD) restores it. An agent
    // that pins no SOURCES4 has no such fast path to check.
    if attach::sources_pin(&bpffs_dir).exists() {
        let sources = attach::source_entries(&bpffs_dir)?;
        for ip in &prev.ips {
            let Some(key) = attach::source_key(record.host_ifindex, ip.address.addr()) else {
                continue;
            };
            if !sources
                .iter()
                .any(|(k, info)| *k == key && info.endpoint_id == id)
            {
                return Err(mismatch(format!(
                    "no SOURCES4 entry for {} behind ifindex {} ({}) (endpoint {id:016x})",
                    ip.address.addr(),
                    record.host_ifindex,
                    record.host_veth
                )));
            }
        }
    }

    if conf.ip_masq {
        let prefix = masq::comment_prefix(id);
        let rules = masq::list()?
            .into_iter()
            .filter(|r| r.comment.starts_with(&prefix))
            .count();
        if rules < record.addresses.len() {
            return Err(mismatch(format!(
                "{rules} masquerade rule(s) for endpoint {id:016x}, expected {}",
                record.addresses.len()
            )));
        }
    }
    Ok(())
}
