//! GC (CNI 1.1): remove what this network holds for attachments the
//! runtime no longer lists in `cni.dev/valid-attachments` (or the older
//! `cni.dev/attachments`). An entry without `ifname` keeps every interface
//! of its container.
//!
//! 1. Every state record of this network (`network` equal to the config's
//!    `name`) whose attachment is not valid is torn down as DEL would:
//!    IPAM release for that attachment, veth, link pins, `ENDPOINTS`
//!    entries, masquerade rules, the record, a best-effort `del` to the
//!    agent. Records of other networks sharing the state dir are left
//!    alone.
//! 2. Masquerade rules whose comment names this network and a container
//!    that is not valid (left by an interrupted ADD or DEL).
//! 3. Leftovers nothing owns any more, in the config's bpffs dir: TCX link
//!    pins of Sluice veths (`tcx-slc…`) whose interface no longer exists,
//!    and `ENDPOINTS` entries whose veth no longer exists and that no state
//!    record claims. Live interfaces are never touched, so an ADD running
//!    meanwhile (veth created, record not yet written) is safe.
//! 4. IPAM GC (`ipam::gc`): releases reservations of invalid attachments
//!    that have no record (sluice-ipam; a delegate runs its own GC).
//!
//! Every step runs even when an earlier one failed; the error lists them
//! all.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cni_ebpf_common::maps::{LINKS_DIR, TCX_EGRESS_SUFFIX, TCX_INGRESS_SUFFIX, TCX_LINK_PREFIX};

use crate::{
    attach,
    config::Attachment as Valid,
    error::{CniError, CniResult},
    ipam::{self, IpamEnv},
    masq, netns,
    skel::Request,
    state::{self, Attachment},
    veth::{self, Teardown, HOST_PREFIX},
};

use super::{ipam_env, is_valid_attachment, notify};

/// GC.
pub fn run(req: &Request) -> CniResult<()> {
    let conf = &req.config;
    let valid: &[Valid] = conf.valid_attachments.as_deref().unwrap_or_default();
    let mut errors: Vec<CniError> = Vec::new();

    // 1. Stale state records of this network.
    let (records, unreadable) = state::list(&conf.state_dir)?;
    errors.extend(unreadable);
    let mut removed = 0usize;
    for rec in records.iter().filter(|r| {
        r.network == conf.name && !is_valid_attachment(valid, &r.container_id, &r.ifname)
    }) {
        let errs = remove_attachment(req, rec);
        if errs.is_empty() {
            removed += 1;
        }
        errors.extend(errs);
    }

    // 2. Masquerade rules of this network for containers not listed.
    match masq::list() {
        Ok(rules) => {
            let mut stale = HashSet::new();
            for rule in rules {
                if let Some((id, cid)) = parse_comment(&rule.comment, &conf.name) {
                    let owned = records.iter().any(|r| r.endpoint_id == id);
                    if !owned && !valid.iter().any(|v| v.container_id == cid) {
                        stale.insert(id);
                    }
                }
            }
            for id in stale {
                if let Err(e) = masq::remove(id) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }

    // 3. Pins and endpoint entries whose veth is gone.
    let live: HashSet<u64> = state::list(&conf.state_dir)
        .map(|(r, _)| r.iter().map(|r| r.endpoint_id).collect())
        .unwrap_or_default();
    errors.extend(orphans(&conf.bpffs_dir, &live));

    // 4. IPAM.
    if conf.ipam.is_some() {
        let env = IpamEnv {
            path: ipam_env(req).path,
            ..IpamEnv::default()
        };
        if let Err(e) = ipam::gc(&req.stdin, &env) {
            errors.push(e);
        }
    }

    tracing::info!(
        "GC of network {}: {removed} stale attachment(s) removed, {} valid listed",
        conf.name,
        valid.len()
    );
    veth::join_errors(errors)
}

/// Tears down one stale attachment as DEL would; returns the errors.
fn remove_attachment(req: &Request, rec: &Attachment) -> Vec<CniError> {
    let conf = &req.config;
    tracing::info!(
        "GC: removing stale attachment {} ({}) on {}",
        rec.container_id,
        rec.ifname,
        rec.host_veth
    );
    let mut errors = Vec::new();
    if conf.ipam.is_some() {
        let env = IpamEnv {
            container_id: rec.container_id.clone(),
            ifname: rec.ifname.clone(),
            netns: String::new(),
            args: String::new(),
            path: ipam_env(req).path,
        };
        if let Err(e) = ipam::del(&req.stdin, &env) {
            errors.push(e);
        }
    }
    let bpffs = PathBuf::from(&rec.bpffs_dir);
    errors.extend(veth::teardown(&Teardown {
        container_id: &rec.container_id,
        ifname: &rec.ifname,
        host_veth: Some(&rec.host_veth),
        netns: None,
        bpffs_dir: Some(&bpffs),
    }));
    if let Err(e) = masq::remove(rec.endpoint_id) {
        errors.push(e);
    }
    if errors.is_empty() {
        if let Err(e) = state::remove(&conf.state_dir, &rec.container_id, &rec.ifname) {
            errors.push(e);
        }
    }
    notify::send_best_effort(
        &conf.agent_socket,
        &notify::Request::new(
            notify::Op::Del,
            &conf.name,
            &rec.container_id,
            &rec.ifname,
            rec.endpoint_id,
        ),
    );
    errors
}

/// `sluice <16 hex> <network> <container>` (see `masq.rs`): the endpoint
/// id and container of a rule of `network`. A comment cut at nft's length
/// limit may end in a partial container id; it still names the network
/// exactly only when the container part is non-empty.
fn parse_comment<'c>(comment: &'c str, network: &str) -> Option<(u64, &'c str)> {
    let mut parts = comment.split(' ');
    let (Some("sluice"), Some(id), Some(net), Some(cid), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if net != network || cid.is_empty() || id.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, cid))
}

/// Step 3: link pins of vanished Sluice veths, and `ENDPOINTS` entries
/// whose veth vanished and whose endpoint has no state record (`live`).
fn orphans(bpffs_dir: &Path, live: &HashSet<u64>) -> Vec<CniError> {
    let mut errors = Vec::new();
    let links = match netns::run_here(async |nl| nl.links().await) {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    let names: HashSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
    let pins = bpffs_dir.join(LINKS_DIR);
    let prefix = format!("{TCX_LINK_PREFIX}{HOST_PREFIX}");
    if let Ok(dir) = std::fs::read_dir(&pins) {
        for entry in dir.filter_map(Result::ok) {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(TCX_LINK_PREFIX) else {
                continue;
            };
            let ifname = rest
                .strip_suffix(TCX_INGRESS_SUFFIX)
                .or_else(|| rest.strip_suffix(TCX_EGRESS_SUFFIX));
            if let Some(ifname) = ifname.filter(|_| file.starts_with(&prefix)) {
                if !names.contains(ifname) {
                    tracing::info!("GC: unpinning {file}: {ifname} no longer exists");
                    if let Err(e) = std::fs::remove_file(entry.path()) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            errors.push(CniError::kernel(format!(
                                "unpinning {}: {e}",
                                entry.path().display()
                            )));
                        }
                    }
                }
            }
        }
    }
    let veths: HashSet<u32> = links
        .iter()
        .filter(|l| l.name.starts_with(HOST_PREFIX))
        .map(|l| l.index)
        .collect();
    // SOURCES4 entries too: a DEL interrupted between the two maps leaves
    // its ENDPOINTS entries, but a source whose ENDPOINTS entry is gone
    // must be found on its own.
    let entries = attach::endpoint_entries(bpffs_dir).and_then(|endpoints| {
        let sources = attach::source_entries(bpffs_dir)?;
        Ok(endpoints
            .into_iter()
            .map(|(_, v)| v)
            .chain(sources.into_iter().map(|(_, v)| v))
            .collect::<Vec<_>>())
    });
    match entries {
        Ok(entries) => {
            let stale: HashSet<u64> = entries
                .iter()
                .filter(|v| !veths.contains(&v.ifindex) && !live.contains(&v.endpoint_id))
                .map(|v| v.endpoint_id)
                .collect();
            for id in stale {
                tracing::info!(
                    "GC: removing ENDPOINTS and SOURCES4 entries of vanished endpoint {id:016x}"
                );
                if let Err(e) = attach::remove_endpoints(bpffs_dir, id) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_comments() {
        assert_eq!(
            parse_comment("sluice 00000000000000ab net1 c1", "net1"),
            Some((0xab, "c1"))
        );
        assert_eq!(
            parse_comment("sluice 00000000000000ab net2 c1", "net1"),
            None
        );
        assert_eq!(parse_comment("sluice 00000000000000ab net1", "net1"), None);
        assert_eq!(
            parse_comment("other 00000000000000ab net1 c1", "net1"),
            None
        );
        assert_eq!(parse_comment("sluice zz net1 c1", "net1"), None);
    }
}
