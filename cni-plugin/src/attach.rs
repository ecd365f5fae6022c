//! Attaching the agent's pinned programs to a pod's host-side veth, and the
//! pod's entries in the pinned `ENDPOINTS` map.
//!
//! The agent loads and pins `from_pod` and `to_pod` under
//! `<bpffsDir>/progs/`; the plugin only attaches them: `from_pod` on the
//! ingress hook of the host veth (what the pod sends), `to_pod` on its
//! egress hook (what the pod receives). Two ways, by the conflist's
//! `tcAttach` ([`TcAttach`]):
//!
//! - `tc` (default): a `clsact` qdisc on the veth and one direct-action
//!   cls_bpf filter per hook (priority [`TC_FILTER_PRIORITY`], handle
//!   [`TC_FILTER_HANDLE`]), over rtnetlink. The filters belong to the
//!   device: they outlive the plugin and the agent and go with the veth.
//! - `tcx`: a TCX bpf_link per hook, pinned at
//!   `<bpffsDir>/links/tcx-<host ifname>-ingress|-egress` so it outlives
//!   the plugin; unpinning it (with the veth gone or not) detaches it.
//!
//! Why `tc` is the default: every TCX attach and every TCX detach (also
//! the one deleting a veth does) waits for a full RCU grace period
//! (`synchronize_rcu()` under `rtnl_lock`) to retire the device's previous
//! program array. Two hooks per pod made that 20–25 ms of every ADD and
//! another 20–25 ms of every DEL on these machines, three quarters of
//! ADD's time, while adding a `clsact` qdisc and two filters takes about
//! 0.3 ms. `tcx` stays for nodes that need it: the reference `bandwidth`
//! plugin's egress shaping adds an `ingress` qdisc to the host veth, which
//! cannot coexist with `clsact` (it fails with "file exists"), while TCX
//! programs run beside it.
//!
//! When the programs were never pinned, ADD fails with code 11 (try again
//! later) before creating anything.
//!
//! Everything here acts on the calling thread's network namespace (aya
//! resolves the interface name there): call it from the node's namespace.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError},
    programs::{
        links::{FdLink, LinkOrder},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        ProgramError, SchedClassifier, TcAttachType,
    },
};
use cni_ebpf_common::{
    maps::{
        ENDPOINTS, LINKS_DIR, MAPS_DIR, PROGS_DIR, PROG_FROM_POD, PROG_TO_POD, SOURCES4,
        TCX_EGRESS_SUFFIX, TCX_INGRESS_SUFFIX, TCX_LINK_PREFIX, TC_FILTER_HANDLE,
        TC_FILTER_PRIORITY,
    },
    EndpointInfo, EndpointKey, SourceKey4,
};

use crate::error::{CniError, CniResult, Code};

/// `BPF_ANY`: create or update (an address reused by a new pod before the
/// old one's DEL belongs to the new pod).
const BPF_ANY: u64 = 0;

/// How the programs are attached to a host veth: the conflist's
/// `tcAttach`, recorded in the state record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcAttach {
    /// `"tc"`: cls_bpf filters in a `clsact` qdisc (see the module docs).
    #[default]
    Tc,
    /// `"tcx"`: pinned TCX links.
    Tcx,
}

impl TcAttach {
    /// `"tc"` or `"tcx"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Tcx => "tcx",
        }
    }

    /// The inverse of [`TcAttach::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tc" => Some(Self::Tc),
            "tcx" => Some(Self::Tcx),
            _ => None,
        }
    }
}

/// The pin of a program.
pub fn prog_pin(bpffs_dir: &Path, prog: &str) -> PathBuf {
    bpffs_dir.join(PROGS_DIR).join(prog)
}

/// The pin of a TCX link on `host_ifname`: ingress (`from_pod`) or egress
/// (`to_pod`).
pub fn link_pin(bpffs_dir: &Path, host_ifname: &str, ingress: bool) -> PathBuf {
    let suffix = if ingress {
        TCX_INGRESS_SUFFIX
    } else {
        TCX_EGRESS_SUFFIX
    };
    bpffs_dir
        .join(LINKS_DIR)
        .join(format!("{TCX_LINK_PREFIX}{host_ifname}{suffix}"))
}

/// The pin of the `ENDPOINTS` map.
pub fn endpoints_pin(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join(MAPS_DIR).join(ENDPOINTS)
}

/// Code 11 unless both programs and the endpoint map are pinned.
pub fn check_pinned(bpffs_dir: &Path) -> CniResult<()> {
    for p in [
        prog_pin(bpffs_dir, PROG_FROM_POD),
        prog_pin(bpffs_dir, PROG_TO_POD),
        endpoints_pin(bpffs_dir),
    ] {
        if !p.exists() {
            return Err(CniError::new(
                Code::TryAgainLater,
                "sluice-agent has not pinned its programs yet; try again later",
            )
            .with_details(format!("{} does not exist", p.display())));
        }
    }
    Ok(())
}

fn prog_error(what: String, e: ProgramError) -> CniError {
    CniError::kernel(format!("{what}: {e}")).with_details(format!("{e:?}"))
}

fn map_error(what: String, e: MapError) -> CniError {
    CniError::kernel(format!("{what}: {e}")).with_details(format!("{e:?}"))
}

fn remove_pin(path: &Path) -> CniResult<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CniError::kernel(format!(
            "unpinning {}: {e}",
            path.display()
        ))),
    }
}

/// The program for a hook: `from_pod` on ingress, `to_pod` on egress.
fn hook_program(ingress: bool) -> (&'static str, TcAttachType) {
    if ingress {
        (PROG_FROM_POD, TcAttachType::Ingress)
    } else {
        (PROG_TO_POD, TcAttachType::Egress)
    }
}

/// Opens the pinned program `name` (code 11 when it is not pinned).
fn open_program(bpffs_dir: &Path, name: &str) -> CniResult<SchedClassifier> {
    let prog_path = prog_pin(bpffs_dir, name);
    match SchedClassifier::from_pin(&prog_path) {
        Ok(p) => Ok(p),
        Err(e) if !prog_path.exists() => Err(CniError::new(
            Code::TryAgainLater,
            "sluice-agent has not pinned its programs yet; try again later",
        )
        .with_details(format!("{}: {e}", prog_path.display()))),
        Err(e) => Err(prog_error(
            format!("opening pinned program {}", prog_path.display()),
            e,
        )),
    }
}

/// The filter of a hook as an aya link, to replace or detach it.
fn tc_filter_link(host_ifname: &str, ingress: bool) -> CniResult<SchedClassifierLink> {
    let handle = TcHandle::from(TC_FILTER_HANDLE);
    SchedClassifierLink::attached(
        host_ifname,
        hook_program(ingress).1,
        TC_FILTER_PRIORITY,
        handle,
        None,
    )
    .map_err(|e| CniError::kernel(format!("looking up {host_ifname}: {e}")))
}

/// Attaches a hook's program (`from_pod` on ingress, `to_pod` on egress)
/// with `options`; returns aya's handle of the attachment, which detaches
/// it when dropped. `what` names the kind in errors.
fn attach_hook(
    bpffs_dir: &Path,
    host_ifname: &str,
    ingress: bool,
    options: TcAttachOptions,
    what: &str,
) -> CniResult<SchedClassifierLink> {
    let (name, attach_type) = hook_program(ingress);
    let mut prog = open_program(bpffs_dir, name)?;
    let id = prog
        .attach_with_options(host_ifname, attach_type, options)
        .map_err(|e| {
            prog_error(
                format!("attaching {name} to {host_ifname} ({what} {attach_type:?})"),
                e,
            )
        })?;
    prog.take_link(id)
        .map_err(|e| prog_error(format!("taking the {name} {what} link on {host_ifname}"), e))
}

/// Attaches a hook's program as a cls_bpf filter (the `clsact` qdisc must
/// exist).
fn attach_tc(bpffs_dir: &Path, host_ifname: &str, ingress: bool) -> CniResult<()> {
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: TC_FILTER_PRIORITY,
        handle: TcHandle::from(TC_FILTER_HANDLE),
        ..Default::default()
    });
    let link = attach_hook(bpffs_dir, host_ifname, ingress, options, "tc")?;
    // Dropping an aya tc link detaches it; the filter must stay.
    std::mem::forget(link);
    Ok(())
}

/// Adds the `clsact` qdisc to `host_ifname` (one already there is fine).
fn add_clsact(host_ifname: &str) -> CniResult<()> {
    match tc::qdisc_add_clsact(host_ifname) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(CniError::kernel(format!(
            "adding the clsact qdisc to {host_ifname}: {e}"
        ))),
    }
}

/// Attaches a hook's program with a pinned TCX link.
fn attach_tcx(bpffs_dir: &Path, host_ifname: &str, ingress: bool) -> CniResult<()> {
    let name = hook_program(ingress).0;
    let pin = link_pin(bpffs_dir, host_ifname, ingress);
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CniError::kernel(format!("creating {}: {e}", dir.display())))?;
    }
    // A pin left by an earlier veth of the same name (deleted without DEL)
    // holds a defunct link: replace it.
    remove_pin(&pin)?;
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let link = attach_hook(bpffs_dir, host_ifname, ingress, options, "TCX")?;
    let fd_link: FdLink = link.try_into().map_err(|e| {
        CniError::kernel(format!(
            "the {name} attachment on {host_ifname} is not a bpf_link: {e}"
        ))
    })?;
    fd_link.pin(&pin).map_err(|e| {
        CniError::kernel(format!("pinning the {name} link at {}: {e}", pin.display()))
    })?;
    Ok(())
}

/// Attaches `from_pod` (ingress) and `to_pod` (egress) to `host_ifname`,
/// `how` the config says. On failure nothing stays attached.
pub fn attach_programs(bpffs_dir: &Path, host_ifname: &str, how: TcAttach) -> CniResult<()> {
    check_pinned(bpffs_dir)?;
    match how {
        TcAttach::Tc => {
            add_clsact(host_ifname)?;
            attach_tc(bpffs_dir, host_ifname, true)?;
            if let Err(e) = attach_tc(bpffs_dir, host_ifname, false) {
                // Dropping the aya link detaches the filter.
                drop(tc_filter_link(host_ifname, true));
                return Err(e);
            }
        }
        TcAttach::Tcx => {
            attach_tcx(bpffs_dir, host_ifname, true)?;
            if let Err(e) = attach_tcx(bpffs_dir, host_ifname, false) {
                let _ = remove_pin(&link_pin(bpffs_dir, host_ifname, true));
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Unpins (and so detaches) both TCX links of `host_ifname`; missing pins
/// are success. Returns how many pins were removed. (`tc` filters need no
/// detaching: they go with the veth, which every caller deletes.)
pub fn detach_programs(bpffs_dir: &Path, host_ifname: &str) -> CniResult<usize> {
    let mut removed = 0;
    let mut first_err = None;
    for ingress in [true, false] {
        match remove_pin(&link_pin(bpffs_dir, host_ifname, ingress)) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// The programs attached to `ifname` in the calling thread's namespace,
/// `how` Sluice attaches them (TCX links, or cls_bpf filters at Sluice's
/// priority and handle), as (ingress, egress) program names.
pub fn query(ifname: &str, how: TcAttach) -> CniResult<(Vec<String>, Vec<String>)> {
    match how {
        TcAttach::Tcx => {
            let names = |t: TcAttachType| -> CniResult<Vec<String>> {
                let (_, progs) = SchedClassifier::query_tcx(ifname, t)
                    .map_err(|e| prog_error(format!("querying TCX on {ifname}"), e))?;
                Ok(progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("").to_owned())
                    .collect())
            };
            Ok((names(TcAttachType::Ingress)?, names(TcAttachType::Egress)?))
        }
        TcAttach::Tc => crate::netns::run_here(async |nl| {
            let link = nl.require_link(ifname).await?;
            let mut hooks = Vec::new();
            for ingress in [true, false] {
                hooks.push(
                    nl.bpf_filters(link.index, ingress)
                        .await?
                        .into_iter()
                        .filter(|f| {
                            f.priority == TC_FILTER_PRIORITY && f.handle == TC_FILTER_HANDLE
                        })
                        .map(|f| f.name)
                        .collect::<Vec<_>>(),
                );
            }
            let egress = hooks.pop().unwrap_or_default();
            let ingress = hooks.pop().unwrap_or_default();
            Ok((ingress, egress))
        }),
    }
}

/// The `ENDPOINTS` key of an address.
pub fn endpoint_key(addr: IpAddr) -> EndpointKey {
    EndpointKey::of(addr)
}

fn open_endpoints(bpffs_dir: &Path) -> CniResult<HashMap<MapData, EndpointKey, EndpointInfo>> {
    let path = endpoints_pin(bpffs_dir);
    let data = match MapData::from_pin(&path) {
        Ok(d) => d,
        Err(e) if !path.exists() => {
            return Err(CniError::new(
                Code::TryAgainLater,
                "sluice-agent has not pinned its maps yet; try again later",
            )
            .with_details(format!("{}: {e}", path.display())))
        }
        Err(e) => return Err(map_error(format!("opening {}", path.display()), e)),
    };
    typed_map(&path, data)
}

fn typed_map<K: aya::Pod, V: aya::Pod>(
    path: &Path,
    data: MapData,
) -> CniResult<HashMap<MapData, K, V>> {
    let map = Map::from_map_data(data)
        .map_err(|e| map_error(format!("reading {}", path.display()), e))?;
    HashMap::try_from(map)
        .map_err(|e| map_error(format!("{} has another layout", path.display()), e))
}

/// The pin of the `SOURCES4` map.
pub fn sources_pin(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join(MAPS_DIR).join(SOURCES4)
}

/// `SOURCES4`, or `None` when the agent pinned none (an agent from before
/// it: `from_pod` then finds every source in `ENDPOINTS`).
fn open_sources(bpffs_dir: &Path) -> CniResult<Option<HashMap<MapData, SourceKey4, EndpointInfo>>> {
    let path = sources_pin(bpffs_dir);
    match MapData::from_pin(&path) {
        Ok(data) => typed_map(&path, data).map(Some),
        Err(_) if !path.exists() => Ok(None),
        Err(e) => Err(map_error(format!("opening {}", path.display()), e)),
    }
}

/// The `SOURCES4` key of `addr` (IPv4 only) behind the veth `ifindex`.
pub fn source_key(ifindex: u32, addr: IpAddr) -> Option<SourceKey4> {
    match addr {
        IpAddr::V4(a) => Some(SourceKey4::new(ifindex, a.octets())),
        IpAddr::V6(_) => None,
    }
}

/// Treats "no such entry" as removed.
fn remove_entry<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), MapError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One `ENDPOINTS` entry per pod address and one `SOURCES4` entry per IPv4
/// address (behind `info.ifindex`), all with `info`. When a later insert
/// fails, the entries written so far are removed again.
pub fn write_endpoints(bpffs_dir: &Path, addrs: &[IpAddr], info: EndpointInfo) -> CniResult<()> {
    let mut map = open_endpoints(bpffs_dir)?;
    let mut sources = open_sources(bpffs_dir)?;
    let undo = |map: &mut HashMap<MapData, EndpointKey, EndpointInfo>,
                sources: &mut Option<HashMap<MapData, SourceKey4, EndpointInfo>>,
                done: &[IpAddr]| {
        for addr in done {
            if let (Some(sources), Some(key)) = (sources.as_mut(), source_key(info.ifindex, *addr))
            {
                let _ = remove_entry(sources, &key);
            }
            let _ = remove_entry(map, &endpoint_key(*addr));
        }
    };
    for (i, addr) in addrs.iter().enumerate() {
        if let Err(e) = map.insert(endpoint_key(*addr), info, BPF_ANY) {
            undo(&mut map, &mut sources, &addrs[..i]);
            return Err(map_error(
                format!("writing the ENDPOINTS entry of {addr}"),
                e,
            ));
        }
        if let (Some(map4), Some(key)) = (sources.as_mut(), source_key(info.ifindex, *addr)) {
            if let Err(e) = map4.insert(key, info, BPF_ANY) {
                undo(&mut map, &mut sources, &addrs[..=i]);
                return Err(map_error(
                    format!("writing the SOURCES4 entry of {addr}"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Removes every `SOURCES4` and `ENDPOINTS` entry whose `endpoint_id` is
/// `endpoint_id` (found by a scan, so DEL needs neither state nor
/// addresses), `SOURCES4` first: GC finds what an interrupted DEL left by
/// `ENDPOINTS`. Entries of other endpoints (an address reused meanwhile)
/// are left alone. A missing map is success. Returns the `ENDPOINTS` keys
/// removed.
pub fn remove_endpoints(bpffs_dir: &Path, endpoint_id: u64) -> CniResult<Vec<EndpointKey>> {
    let removal_error = |map: &str, e: MapError| {
        map_error(
            format!("removing a {map} entry of endpoint {endpoint_id:016x}"),
            e,
        )
    };
    if let Some(mut sources) = open_sources(bpffs_dir)? {
        remove_owned(&mut sources, endpoint_id).map_err(|e| removal_error(SOURCES4, e))?;
    }
    if !endpoints_pin(bpffs_dir).exists() {
        return Ok(Vec::new());
    }
    let mut map = open_endpoints(bpffs_dir)?;
    remove_owned(&mut map, endpoint_id).map_err(|e| removal_error(ENDPOINTS, e))
}

/// Removes the entries of `map` that belong to `endpoint_id` (found by a
/// scan); returns their keys.
fn remove_owned<K: aya::Pod>(
    map: &mut HashMap<MapData, K, EndpointInfo>,
    endpoint_id: u64,
) -> Result<Vec<K>, MapError> {
    let mine: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.endpoint_id == endpoint_id)
        .map(|(k, _)| k)
        .collect();
    for key in &mine {
        remove_entry(map, key)?;
    }
    Ok(mine)
}

/// Every `SOURCES4` entry (none when the map is not pinned).
pub fn source_entries(bpffs_dir: &Path) -> CniResult<Vec<(SourceKey4, EndpointInfo)>> {
    Ok(match open_sources(bpffs_dir)? {
        Some(map) => map.iter().filter_map(Result::ok).collect(),
        None => Vec::new(),
    })
}

/// Every `ENDPOINTS` entry (none when the map is not pinned).
pub fn endpoint_entries(bpffs_dir: &Path) -> CniResult<Vec<(EndpointKey, EndpointInfo)>> {
    if !endpoints_pin(bpffs_dir).exists() {
        return Ok(Vec::new());
    }
    let map = open_endpoints(bpffs_dir)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// The `ENDPOINTS` entries of `endpoint_id`.
pub fn endpoints_of(
    bpffs_dir: &Path,
    endpoint_id: u64,
) -> CniResult<Vec<(EndpointKey, EndpointInfo)>> {
    if !endpoints_pin(bpffs_dir).exists() {
        return Ok(Vec::new());
    }
    let map = open_endpoints(bpffs_dir)?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.endpoint_id == endpoint_id)
        .collect())
}

/// What [`attach_endpoint`] needs.
#[derive(Clone, Debug)]
pub struct EndpointAttach<'a> {
    /// `bpffsDir` of the config.
    pub bpffs_dir: &'a Path,
    /// Host-side veth name.
    pub host_ifname: &'a str,
    /// Its ifindex in the node's namespace.
    pub host_ifindex: u32,
    /// The pod interface's MAC.
    pub container_mac: [u8; 6],
    /// The host-side veth's MAC (the pod's gateway MAC).
    pub host_mac: [u8; 6],
    /// `ENDPOINT_F_*` flags (mode, masquerade).
    pub flags: u32,
    /// How the programs are attached.
    pub tc_attach: TcAttach,
    /// [`crate::state::endpoint_id`].
    pub endpoint_id: u64,
    /// The pod's addresses.
    pub addrs: &'a [IpAddr],
}

/// Attaches the programs and writes the endpoint entries; on failure
/// neither stays.
pub fn attach_endpoint(req: &EndpointAttach<'_>) -> CniResult<()> {
    attach_programs(req.bpffs_dir, req.host_ifname, req.tc_attach)?;
    let info = EndpointInfo {
        ifindex: req.host_ifindex,
        flags: req.flags,
        mac: req.container_mac,
        host_mac: req.host_mac,
        _pad: [0; 4],
        endpoint_id: req.endpoint_id,
    };
    if let Err(e) = write_endpoints(req.bpffs_dir, req.addrs, info) {
        let _ = detach_programs(req.bpffs_dir, req.host_ifname);
        return Err(e);
    }
    Ok(())
}

/// Removes the endpoint entries of `endpoint_id` and unpins the links of
/// `host_ifname`, continuing past errors and returning them all.
pub fn detach_endpoint(bpffs_dir: &Path, host_ifname: &str, endpoint_id: u64) -> Vec<CniError> {
    let mut errors = Vec::new();
    if let Err(e) = remove_endpoints(bpffs_dir, endpoint_id) {
        errors.push(e);
    }
    if let Err(e) = detach_programs(bpffs_dir, host_ifname) {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_paths_follow_the_layout() {
        let root = Path::new("/sys/fs/bpf/sluice");
        assert_eq!(
            link_pin(root, "slc0123456789a", true),
            Path::new("/sys/fs/bpf/sluice/links/tcx-slc0123456789a-ingress")
        );
        assert_eq!(
            link_pin(root, "slc0123456789a", false),
            Path::new("/sys/fs/bpf/sluice/links/tcx-slc0123456789a-egress")
        );
        assert_eq!(
            prog_pin(root, PROG_FROM_POD),
            Path::new("/sys/fs/bpf/sluice/progs/from_pod")
        );
        assert_eq!(
            endpoints_pin(root),
            Path::new("/sys/fs/bpf/sluice/maps/ENDPOINTS")
        );
    }

    #[test]
    fn missing_pins_are_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_pinned(dir.path()).unwrap_err().code,
            Code::TryAgainLater
        );
        assert_eq!(
            attach_programs(dir.path(), "lo", TcAttach::Tc)
                .unwrap_err()
                .code,
            Code::TryAgainLater
        );
        assert!(remove_endpoints(dir.path(), 1).unwrap().is_empty());
        assert_eq!(detach_programs(dir.path(), "lo").unwrap(), 0);
    }

    #[test]
    fn keys_are_zero_padded() {
        let k = endpoint_key("10.199.0.5".parse().unwrap());
        assert_eq!(k.family, cni_ebpf_common::prefilter::FAMILY_IPV4);
        assert_eq!(&k.addr[..4], &[10, 199, 0, 5]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
    }
}
