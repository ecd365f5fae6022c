//! The veth pair between the node and a container.
//!
//! The host end lives in the calling thread's namespace (the node's) and is
//! named `slc` + 11 hex digits of the endpoint id (a stable hash of container
//! id and ifname, [`crate::state::endpoint_id`]), so the same container and
//! ifname always map to the same name and DEL can find it without state.
//! On `EEXIST` for that name (a hash collision, or a leftover) the name gets
//! a random suffix instead.
//!
//! The container end is created directly inside the container's namespace
//! with its final name (`IFLA_NET_NS_FD` on the peer): it never appears in
//! the node's namespace under a temporary name, and a name clash in the
//! container is reported as such.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;
use rtnetlink::{
    packet_route::link::{InfoData, InfoKind, InfoVeth},
    LinkMessageBuilder, LinkUnspec,
};

use crate::{
    addr::{self, AddrOptions},
    attach,
    error::{CniError, CniResult, Code},
    netlink::{errno, is_errno, kernel_error, Link, Netlink},
    netns::{self, NetnsHandle, NsError},
    route::{self, RouteSpec},
    state::endpoint_id,
    sysctl,
    types::{CniOutput, Interface, IpConfig, Route},
};

/// Prefix of every host-side veth Sluice creates.
pub const HOST_PREFIX: &str = "slc";
/// Attempts with a random name after the hashed name is taken.
const NAME_RETRIES: usize = 4;

/// What to create.
#[derive(Clone, Debug)]
pub struct VethRequest<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`: the container-side name.
    pub ifname: &'a str,
    /// MTU of both ends.
    pub mtu: u32,
    /// MAC of the container end (`runtimeConfig.mac`, `args.cni.mac` or
    /// `CNI_ARGS` `MAC=`); the kernel picks a random one when `None`.
    pub container_mac: Option<[u8; 6]>,
    /// Keep IPv6 duplicate address detection on the container end
    /// (`enabledad`); off by default, as in the reference plugins, so the
    /// addresses are usable at once.
    pub enable_dad: bool,
}

/// A created pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    /// Host end, in the node's namespace.
    pub host: Link,
    /// Container end, in the container's namespace.
    pub container: Link,
}

/// Checks a `CNI_IFNAME`: 1..=15 bytes, no `/`, no whitespace, not `.`/`..`.
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let bad = |why: &str| CniError::env("CNI_IFNAME", format!("{name:?} {why}"));
    if name.is_empty() || name.len() > 15 {
        return Err(bad("must be 1 to 15 bytes long"));
    }
    if name == "." || name == ".." {
        return Err(bad("is not a valid interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(bad("contains '/', ':' or whitespace"));
    }
    Ok(())
}

/// The host-side name for a container and ifname: `slc` + 11 hex digits.
pub fn host_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_PREFIX}{:011x}",
        endpoint_id(container_id, ifname) >> 20
    )
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes. getrandom(2) does not fail
    // for 8 bytes once the pool is initialised; on a failure the hashed
    // time below still varies between calls.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return endpoint_id(&t.as_nanos().to_string(), &std::process::id().to_string());
    }
    u64::from_le_bytes(bytes)
}

fn random_host_name() -> String {
    format!("{HOST_PREFIX}{:011x}", random_u64() >> 20)
}

/// A random locally administered unicast MAC (what the kernel would pick),
/// chosen here so the endpoint entry can be written before the container
/// side is configured.
pub fn random_mac() -> [u8; 6] {
    let r = random_u64().to_le_bytes();
    [(r[0] & 0xfe) | 0x02, r[1], r[2], r[3], r[4], r[5]]
}

/// Creates the pair: host end in `nl`'s namespace, up; container end inside
/// `container` named `req.ifname`, down. Returns the host end. Does nothing
/// else in the container: see [`configure_container_end`].
pub async fn create_pair(
    nl: &Netlink,
    container: &NetnsHandle,
    req: &VethRequest<'_>,
) -> CniResult<Link> {
    let mut name = host_name(req.container_id, req.ifname);
    for attempt in 0..=NAME_RETRIES {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(req.ifname)
            .mtu(req.mtu)
            .setns_by_fd(container.raw_fd());
        if let Some(mac) = req.container_mac {
            peer = peer.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.clone())
            .mtu(req.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        match nl.handle().link().add(msg).execute().await {
            Ok(()) => break,
            Err(e) if is_errno(&e, errno::EEXIST) => {
                if nl.link_by_name(&name).await?.is_none() {
                    return Err(CniError::kernel(format!(
                        "container {} already has an interface named {}",
                        req.container_id, req.ifname
                    ))
                    .with_details(format!("netns {}", container.path().display())));
                }
                if attempt == NAME_RETRIES {
                    return Err(kernel_error(format_args!("creating veth {name}"), &e));
                }
                name = random_host_name();
            }
            Err(e) => {
                return Err(kernel_error(
                    format_args!(
                        "creating veth {name} with peer {} in {}",
                        req.ifname,
                        container.path().display()
                    ),
                    &e,
                ))
            }
        }
    }
    let host = nl.require_link(&name).await?;
    if let Err(e) = nl.set_up(host.index, &name).await {
        let _ = nl.delete_link_by_name(&name).await;
        return Err(e);
    }
    // Re-read: flags changed, and the kernel may pick the MAC only now.
    nl.require_link(&name).await
}

/// Inside the container: IPv6 DAD per `enable_dad`, `arp_notify`, then up.
/// Returns the container end.
pub async fn configure_container_end(
    nl: &Netlink,
    ifname: &str,
    enable_dad: bool,
) -> CniResult<Link> {
    let link = nl.require_link(ifname).await?;
    sysctl::set_ipv6_conf(ifname, "accept_dad", if enable_dad { "1" } else { "0" })?;
    sysctl::set_ipv4_conf(ifname, "arp_notify", "1")?;
    nl.set_up(link.index, ifname).await?;
    nl.require_link(ifname).await
}

/// Creates the pair and brings both ends up ([`create_pair`] in the calling
/// thread's namespace, then [`configure_container_end`] inside
/// `container`). On failure nothing is left behind.
pub fn create(container: &NetnsHandle, req: &VethRequest<'_>) -> CniResult<Veth> {
    validate_ifname(req.ifname)?;
    let host = netns::run_here(async |nl| create_pair(&nl, container, req).await)?;
    let ifname = req.ifname;
    let enable_dad = req.enable_dad;
    match netns::run_in(container, async move |nl| {
        configure_container_end(&nl, ifname, enable_dad).await
    }) {
        Ok(container) => Ok(Veth { host, container }),
        Err(e) => {
            let _ = delete(&host.name);
            Err(e.into())
        }
    }
}

/// Deletes the host end by name (which removes the pair); a missing link is
/// success. Returns whether a link was deleted.
pub fn delete(host_name: &str) -> CniResult<bool> {
    netns::run_here(async |nl| nl.delete_link_by_name(host_name).await)
}

/// Deletes the container end by name from inside `container` (DEL uses
/// [`delete`] on the host name instead; this is for cleaning a container
/// whose host name is unknown). A missing namespace or link is success.
pub fn delete_in_container(container_netns: &std::path::Path, ifname: &str) -> CniResult<bool> {
    match netns::run_in_path(container_netns, async |nl| {
        nl.delete_link_by_name(ifname).await
    }) {
        Ok(deleted) => Ok(deleted),
        Err(NsError::Gone(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The addresses configured on `ifname` inside the container (for DEL's
/// cleanup of masquerade rules and endpoint entries when no state exists).
pub async fn container_addresses(nl: &Netlink, ifname: &str) -> CniResult<Vec<(IpAddr, u8)>> {
    let Some(link) = nl.link_by_name(ifname).await? else {
        return Ok(Vec::new());
    };
    Ok(nl
        .addresses(Some(link.index), None)
        .await?
        .into_iter()
        .filter(|a| !matches!(a.addr, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|a| (a.addr, a.prefix_len))
        .collect())
}

/// What both modes need to connect a pod.
#[derive(Clone, Debug)]
pub struct PodSpec<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The container's namespace (`CNI_NETNS`, opened).
    pub netns: &'a NetnsHandle,
    /// MTU of the veth ends ([`crate::mtu::resolve`] when not configured).
    pub mtu: u32,
    /// MAC of the container interface; a random one when `None`.
    pub container_mac: Option<[u8; 6]>,
    /// Addresses from IPAM (at least one).
    pub ips: &'a [IpConfig],
    /// Routes from IPAM.
    pub routes: &'a [Route],
    /// Attach the pinned programs and write `ENDPOINTS` entries from this
    /// bpffs dir; `None` skips the datapath (plumbing only).
    pub bpffs_dir: Option<&'a Path>,
    /// `ENDPOINT_F_*` flags of the endpoint entries
    /// ([`crate::config::NetConf::endpoint_flags`]).
    pub endpoint_flags: u32,
    /// How the programs are attached (`tcAttach`).
    pub tc_attach: attach::TcAttach,
}

impl PodSpec<'_> {
    /// The container MAC to use: requested or random.
    pub(crate) fn mac(&self) -> [u8; 6] {
        self.container_mac.unwrap_or_else(random_mac)
    }

    /// Code 7 unless there is at least one address, and every route's
    /// gateway is of its destination's family.
    pub(crate) fn validate(&self) -> CniResult<()> {
        validate_ifname(self.ifname)?;
        if self.ips.is_empty() {
            return Err(CniError::config("IPAM returned no addresses"));
        }
        for r in self.routes {
            if let Some(gw) = r.gw {
                if gw.is_ipv4() != r.dst.addr().is_ipv4() {
                    return Err(CniError::config(format!(
                        "route to {} has a gateway {gw} of another family",
                        r.dst
                    )));
                }
            }
        }
        for ip in self.ips {
            if let Some(gw) = ip.gateway {
                if gw.is_ipv4() != ip.address.addr().is_ipv4() {
                    return Err(CniError::config(format!(
                        "address {} has a gateway {gw} of another family",
                        ip.address
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What a mode's ADD built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbed {
    /// Host end, in the node's namespace.
    pub host: Link,
    /// Container end.
    pub container: Link,
    /// [`crate::state::endpoint_id`] of the attachment.
    pub endpoint_id: u64,
    /// Whether the programs were attached and `ENDPOINTS` written.
    pub attached: bool,
    /// The result: interfaces, ips and routes (`dns` left to the caller).
    pub output: CniOutput,
}

impl Plumbed {
    /// The pod's addresses as configured in the container.
    pub fn addresses(&self) -> Vec<IpNet> {
        self.output.ips.iter().map(|ip| ip.address).collect()
    }
}

/// The container side to configure, applied by [`apply_container_plan`].
#[derive(Clone, Debug, Default)]
pub(crate) struct ContainerPlan {
    pub ifname: String,
    pub addrs: Vec<IpNet>,
    /// Permanent neighbours on the interface.
    pub neighbours: Vec<(IpAddr, [u8; 6])>,
    /// Routes out of the interface (their `oif` is filled in).
    pub routes: Vec<RouteSpec>,
}

/// Inside the container: interface up (DAD off), addresses, neighbours,
/// routes, in that order. Returns the interface. Leaves partial work on
/// failure: the caller deletes the veth, which takes all of it along.
pub(crate) async fn apply_container_plan(nl: &Netlink, plan: &ContainerPlan) -> CniResult<Link> {
    let link = configure_container_end(nl, &plan.ifname, false).await?;
    for net in &plan.addrs {
        addr::add(nl, link.index, &plan.ifname, *net, AddrOptions::default()).await?;
    }
    for (ip, mac) in &plan.neighbours {
        route::add_permanent_neighbour(nl, link.index, *ip, *mac).await?;
    }
    for r in &plan.routes {
        let mut r = r.clone();
        r.oif = Some(link.index);
        route::add(nl, &r).await?;
    }
    Ok(link)
}

/// The interface entries of a result for the veth: host end (no sandbox)
/// and container end.
pub(crate) fn result_interfaces(
    host: &Link,
    container: &Link,
    netns: &Path,
    mtu: u32,
) -> [Interface; 2] {
    [
        Interface {
            name: host.name.clone(),
            mac: Some(host.mac_string()),
            mtu: Some(mtu),
            ..Default::default()
        },
        Interface {
            name: container.name.clone(),
            mac: Some(container.mac_string()),
            mtu: Some(mtu),
            sandbox: Some(netns.display().to_string()),
            ..Default::default()
        },
    ]
}

/// The common tail of a mode's ADD once the host side exists: attach the
/// datapath, then configure the container. On failure the datapath is
/// detached and the veth deleted (which removes the host routes and the
/// container's addresses and routes with it).
pub(crate) fn finish_add(
    spec: &PodSpec<'_>,
    host: &Link,
    container_mac: [u8; 6],
    plan: &ContainerPlan,
) -> CniResult<(Link, bool)> {
    let id = endpoint_id(spec.container_id, spec.ifname);
    let attach_and_configure = || -> CniResult<(Link, bool)> {
        let mut attached = false;
        let t = std::time::Instant::now();
        if let Some(bpffs) = spec.bpffs_dir {
            let addrs: Vec<IpAddr> = plan.addrs.iter().map(|n| n.addr()).collect();
            attach::attach_endpoint(&attach::EndpointAttach {
                bpffs_dir: bpffs,
                host_ifname: &host.name,
                host_ifindex: host.index,
                container_mac,
                host_mac: host.mac.unwrap_or_default(),
                flags: spec.endpoint_flags,
                tc_attach: spec.tc_attach,
                endpoint_id: id,
                addrs: &addrs,
            })?;
            attached = true;
            tracing::debug!(
                "attached the datapath in {:.3} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
        let t = std::time::Instant::now();
        let container =
            netns::run_in(spec.netns, async |nl| apply_container_plan(&nl, plan).await)?;
        tracing::debug!(
            "configured the container in {:.3} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        Ok((container, attached))
    };
    match attach_and_configure() {
        Ok(done) => Ok(done),
        Err(e) => {
            if let Some(bpffs) = spec.bpffs_dir {
                let _ = attach::detach_endpoint(bpffs, &host.name, id);
            }
            let _ = delete(&host.name);
            Err(e)
        }
    }
}

/// What DEL knows about an attachment. Everything but the ids is optional:
/// DEL must work with no state, no netns and no agent.
#[derive(Clone, Debug, Default)]
pub struct Teardown<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The host veth name from the state record or prevResult, if known.
    pub host_veth: Option<&'a str>,
    /// `CNI_NETNS`, if given (used to find the host veth through its peer
    /// when the name is unknown).
    pub netns: Option<&'a Path>,
    /// bpffs dir of the config: links unpinned, endpoint entries removed.
    pub bpffs_dir: Option<&'a Path>,
}

/// The host-side peer of `ifname` in the container at `netns`, if both
/// are there and it is a veth whose peer lives in the calling thread's
/// namespace.
pub fn host_peer_of(netns: &Path, ifname: &str) -> CniResult<Option<String>> {
    let peer = match netns::run_in_path(netns, async |nl| {
        Ok(nl
            .link_by_name(ifname)
            .await?
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .and_then(|l| l.peer_index.map(|p| (l.index, p))))
    }) {
        Ok(p) => p,
        Err(NsError::Gone(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some((container_index, peer_index)) = peer else {
        return Ok(None);
    };
    netns::run_here(async |nl| {
        Ok(nl
            .link_by_index(peer_index)
            .await?
            .filter(|l| l.kind.as_deref() == Some("veth") && l.peer_index == Some(container_index))
            .map(|l| l.name))
    })
}

/// The host veth a prevResult names: its first interface without a
/// sandbox whose name has Sluice's prefix (DEL's fallback when the state
/// record is gone).
pub fn host_veth_in(prev: &CniOutput) -> Option<&str> {
    prev.interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name.starts_with(HOST_PREFIX))
        .map(|i| i.name.as_str())
}

/// Removes everything ADD built for one attachment except IPAM, masquerade
/// rules, the state record and a bridge: endpoint entries, TCX link pins,
/// the veth pair. Idempotent; keeps going past errors and returns all of
/// them (empty: success).
pub fn teardown(t: &Teardown<'_>) -> Vec<CniError> {
    let mut errors = Vec::new();
    let hashed = host_name(t.container_id, t.ifname);
    let mut names: Vec<String> = Vec::new();
    if let Some(n) = t.host_veth {
        names.push(n.to_owned());
    } else if let Some(ns) = t.netns {
        match host_peer_of(ns, t.ifname) {
            Ok(Some(n)) => names.push(n),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if !names.contains(&hashed) {
        names.push(hashed);
    }
    if let Some(bpffs) = t.bpffs_dir {
        if let Err(e) = attach::remove_endpoints(bpffs, endpoint_id(t.container_id, t.ifname)) {
            errors.push(e);
        }
    }
    // The veth before its link pins: unregistering the device drops its
    // TCX entries at once (one RCU grace period per direction), after
    // which the pinned links are defunct and unpinning them costs nothing.
    // Unpinning first would hand each live link to a kworker (bpffs frees
    // the inode after a grace period, then `bpf_link_put` defers the
    // release), which detaches it later with two grace periods per link
    // under rtnl_lock, stalling this DEL's own netlink requests and every
    // other caller's: about 10 ms more per DEL, measured by `cargo xtask
    // bench`.
    for n in &names {
        if let Err(e) = delete(n) {
            errors.push(e);
        }
    }
    if let Some(bpffs) = t.bpffs_dir {
        for n in &names {
            if let Err(e) = attach::detach_programs(bpffs, n) {
                errors.push(e);
            }
        }
    }
    errors
}

/// Joins DEL's errors into one (code of the first), or `Ok`.
pub fn join_errors(errors: Vec<CniError>) -> CniResult<()> {
    let mut it = errors.into_iter();
    let Some(first) = it.next() else {
        return Ok(());
    };
    let rest: Vec<String> = it.map(|e| e.to_string()).collect();
    if rest.is_empty() {
        Err(first)
    } else {
        let details = if first.details.is_empty() {
            rest.join("; ")
        } else {
            format!("{}; {}", first.details, rest.join("; "))
        };
        Err(CniError { details, ..first })
    }
}

/// Code 102 with a message.
pub(crate) fn mismatch(msg: impl Into<String>) -> CniError {
    CniError::new(Code::CheckMismatch, msg)
}

/// CHECK of the veth against a prevResult: the container interface
/// (`ifname` with sandbox `netns`) exists in the container, is a veth, has
/// the MAC of the result, is up, and its peer is the host interface of the
/// result in the calling thread's namespace. Returns (host, container).
pub fn check_pair(netns: &NetnsHandle, ifname: &str, prev: &CniOutput) -> CniResult<(Link, Link)> {
    let path = netns.path().display().to_string();
    let cont_if = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(path.as_str()))
        .ok_or_else(|| {
            mismatch(format!(
                "prevResult has no interface {ifname} in sandbox {path}"
            ))
        })?;
    let container = netns::run_in(netns, async |nl| nl.link_by_name(ifname).await)?
        .ok_or_else(|| mismatch(format!("interface {ifname} not found in {path}")))?;
    if container.kind.as_deref() != Some("veth") {
        return Err(mismatch(format!(
            "interface {ifname} in {path} is not a veth"
        )));
    }
    if let Some(mac) = &cont_if.mac {
        if !mac.eq_ignore_ascii_case(&container.mac_string()) {
            return Err(mismatch(format!(
                "interface {ifname} has MAC {}, prevResult says {mac}",
                container.mac_string()
            )));
        }
    }
    if !container.up {
        return Err(mismatch(format!("interface {ifname} in {path} is down")));
    }
    let peer = container
        .peer_index
        .ok_or_else(|| mismatch(format!("veth {ifname} has no peer")))?;
    let host = netns::run_here(async |nl| nl.link_by_index(peer).await)?.ok_or_else(|| {
        mismatch(format!(
            "the host side of {ifname} (ifindex {peer}) is gone"
        ))
    })?;
    let named = prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_none() && i.name == host.name);
    if !named {
        return Err(mismatch(format!(
            "the host side of {ifname} is {}, which prevResult does not list",
            host.name
        )));
    }
    if host.peer_index != Some(container.index) {
        return Err(mismatch(format!(
            "{} is not the peer of {ifname}",
            host.name
        )));
    }
    Ok((host, container))
}

/// CHECK inside the container: every address of `prev.ips` is on the
/// interface and every route of `prev.routes` is in the main table.
pub fn check_container_config(
    netns: &NetnsHandle,
    container: &Link,
    prev: &CniOutput,
) -> CniResult<()> {
    let ifname = container.name.clone();
    let index = container.index;
    netns::run_in(netns, async |nl| {
        let have = addr::list(&nl, index).await?;
        for ip in &prev.ips {
            if !have.contains(&ip.address) {
                return Err(mismatch(format!(
                    "address {} is not on {ifname}",
                    ip.address
                )));
            }
        }
        for r in &prev.routes {
            if !route::exists(&nl, r.dst, r.gw, None).await? {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(mismatch(format!(
                    "route to {}{via} is missing in the container",
                    r.dst
                )));
            }
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_name("c1", "eth0");
        assert_eq!(a, host_name("c1", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("slc"));
        assert_ne!(a, host_name("c1", "eth1"));
        assert_ne!(a, host_name("c2", "eth0"));
        let r = random_host_name();
        assert_eq!(r.len(), 14);
        assert!(validate_ifname(&r).is_ok());
    }

    #[test]
    fn host_veth_from_a_prev_result() {
        let prev = CniOutput {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    ..Default::default()
                },
                Interface {
                    name: "slc0123456789a".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    sandbox: Some("/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(host_veth_in(&prev), Some("slc0123456789a"));
        assert_eq!(host_veth_in(&CniOutput::default()), None);
    }

    #[test]
    fn ifnames_are_checked() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("eth0.100").is_ok());
        for bad in ["", "a/b", "a b", "sixteen-chars-xx", ".", ".."] {
            assert_eq!(
                validate_ifname(bad).unwrap_err().code,
                Code::InvalidEnvironment,
                "{bad}"
            );
        }
    }
}
