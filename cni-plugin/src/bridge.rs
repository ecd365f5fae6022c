//! Bridge mode: the reference bridge plugin's model and options, so a
//! conflist can swap `"type": "bridge"` for `"type": "sluice"`.
//!
//! - The bridge (`bridge`, default `cni0`) is created when missing (with
//!   `mtu`), set up, `accept_ra=0` on it, and never deleted (DEL leaves it,
//!   as the reference does: other pods may use it).
//! - `promiscMode`: the bridge is set promiscuous.
//! - The host veth is enslaved to the bridge; `hairpinMode` sets hairpin on
//!   that bridge port. `hairpinMode` with `promiscMode` is code 7.
//! - `isGateway` (implied by `isDefaultGateway`): an address without a
//!   gateway gets the first address of its subnet as gateway; the bridge
//!   gets each gateway with the subnet's prefix length, and forwarding is
//!   turned on for that family. An IPv4 address already on the bridge that
//!   differs, or an overlapping IPv6 one, is an error unless
//!   `forceAddress`, which replaces it. The bridge's MAC is then pinned to
//!   itself so it stops following the lowest port MAC.
//! - `isDefaultGateway`: a default route via the gateway in the container,
//!   unless IPAM already gave one with a gateway for that family.
//! - The container gets the IPAM addresses with their prefix length and the
//!   IPAM routes (a route without `gw` goes via the address's gateway).
//! - Result interfaces in the reference order: bridge, host veth,
//!   container; every IP points at the container (index 2).

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec};

use crate::{
    addr::{self, AddrOptions},
    attach,
    error::{CniError, CniResult},
    netlink::{errno, is_errno, kernel_error, Link, Netlink},
    netns,
    route::RouteSpec,
    state::endpoint_id,
    sysctl,
    types::{CniOutput, Interface, IpConfig, Route},
    veth::{self, mismatch, ContainerPlan, Plumbed, PodSpec, VethRequest},
};

/// The reference bridge plugin's options (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeOptions {
    /// `bridge`.
    pub name: String,
    /// `isGateway`.
    pub is_gateway: bool,
    /// `isDefaultGateway`.
    pub is_default_gateway: bool,
    /// `forceAddress`.
    pub force_address: bool,
    /// `hairpinMode`.
    pub hairpin_mode: bool,
    /// `promiscMode`.
    pub promisc_mode: bool,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            name: "cni0".into(),
            is_gateway: false,
            is_default_gateway: false,
            force_address: false,
            hairpin_mode: false,
            promisc_mode: false,
        }
    }
}

/// The first address of `net`'s subnet (the reference's `calcGatewayIP`).
pub fn first_address(net: IpNet) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
    }
}

/// The result's ips and routes and the bridge's gateway addresses (the
/// reference's `calcGateways`).
fn gateways(
    spec: &PodSpec<'_>,
    opts: &BridgeOptions,
) -> CniResult<(Vec<IpConfig>, Vec<Route>, Vec<IpNet>)> {
    let is_gateway = opts.is_gateway || opts.is_default_gateway;
    let mut ips = Vec::new();
    let mut routes: Vec<Route> = spec.routes.to_vec();
    let mut bridge_addrs = Vec::new();
    for ip in spec.ips {
        let v6 = ip.address.addr().is_ipv6();
        let mut gateway = ip.gateway;
        if gateway.is_none() && is_gateway {
            gateway = Some(first_address(ip.address));
        }
        if opts.is_default_gateway {
            let found = routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6 && r.gw.is_some());
            if !found {
                let dst = if v6 {
                    IpNet::V6(Default::default())
                } else {
                    IpNet::V4(Default::default())
                };
                routes.push(Route::new(dst, gateway));
            }
        }
        if is_gateway {
            if let Some(gw) = gateway {
                let net = IpNet::new(gw, ip.address.prefix_len()).map_err(|e| {
                    CniError::config(format!("gateway {gw}/{}: {e}", ip.address.prefix_len()))
                })?;
                if !bridge_addrs.contains(&net) {
                    bridge_addrs.push(net);
                }
            }
        }
        ips.push(IpConfig {
            address: ip.address,
            gateway,
            interface: Some(2),
        });
    }
    Ok((ips, routes, bridge_addrs))
}

/// Creates the bridge if missing, checks it is one, applies promisc, turns
/// off `accept_ra` on it and sets it up.
async fn ensure_bridge(nl: &Netlink, opts: &BridgeOptions, mtu: u32) -> CniResult<Link> {
    let msg = LinkBridge::new(&opts.name).mtu(mtu).build();
    match nl.handle().link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if is_errno(&e, errno::EEXIST) => {}
        Err(e) => {
            return Err(kernel_error(
                format_args!("creating bridge {}", opts.name),
                &e,
            ))
        }
    }
    let br = nl.require_link(&opts.name).await?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(CniError::kernel(format!(
            "{:?} already exists but is not a bridge",
            opts.name
        )));
    }
    if opts.promisc_mode && !br.promisc {
        let msg = LinkUnspec::new_with_index(br.index)
            .promiscuous(true)
            .build();
        nl.handle().link().set(msg).execute().await.map_err(|e| {
            kernel_error(format_args!("setting bridge {} promiscuous", opts.name), &e)
        })?;
    }
    sysctl::set_ipv6_conf(&opts.name, "accept_ra", "0")?;
    if !br.up {
        nl.set_up(br.index, &opts.name).await?;
    }
    nl.require_link(&opts.name).await
}

/// The reference's `ensureAddr`: puts `net` on the bridge unless there;
/// a conflicting address is an error, or replaced with `force`.
async fn ensure_bridge_addr(nl: &Netlink, br: &Link, net: IpNet, force: bool) -> CniResult<()> {
    let v6 = net.addr().is_ipv6();
    let have = addr::list_family(nl, br.index, v6).await?;
    if have.contains(&net) {
        return Ok(());
    }
    for a in have {
        if v6
            && a.addr().is_ipv6()
            && matches!(a.addr(), IpAddr::V6(x) if x.is_unicast_link_local())
        {
            continue;
        }
        let conflicts = !v6 || a.contains(&net.addr()) || net.contains(&a.addr());
        if conflicts {
            if force {
                addr::del(nl, br.index, &br.name, a).await?;
            } else {
                return Err(CniError::kernel(format!(
                    "{:?} already has an IP address different from {net}",
                    br.name
                )));
            }
        }
    }
    addr::ensure(
        nl,
        br.index,
        &br.name,
        net,
        AddrOptions {
            nodad: true,
            ..Default::default()
        },
    )
    .await?;
    // Pin the bridge MAC to its current value, so it no longer follows the
    // lowest port MAC as ports come and go. Re-read it: the port just
    // enslaved may have changed it, and a bridge whose last port left has
    // the all-zero MAC, which the kernel refuses to set.
    let current = nl.require_link(&br.name).await?;
    if let Some(mac) = current.mac.filter(|m| *m != [0; 6] && m[0] & 1 == 0) {
        let msg = LinkUnspec::new_with_index(br.index)
            .address(mac.to_vec())
            .build();
        nl.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel_error(format_args!("setting the MAC of bridge {}", br.name), &e))?;
    }
    Ok(())
}

/// Enslaves `host` to `br` and sets hairpin on the port.
async fn enslave(nl: &Netlink, br: &Link, host: &Link, hairpin: bool) -> CniResult<()> {
    let msg = LinkUnspec::new_with_index(host.index)
        .controller(br.index)
        .build();
    nl.handle().link().set(msg).execute().await.map_err(|e| {
        kernel_error(
            format_args!("connecting {} to bridge {}", host.name, br.name),
            &e,
        )
    })?;
    let msg = LinkBridgePort::new(host.index).hairpin(hairpin).build();
    nl.handle()
        .link()
        .set_port(msg)
        .execute()
        .await
        .map_err(|e| {
            kernel_error(
                format_args!("setting hairpin mode {hairpin} on {}", host.name),
                &e,
            )
        })
}

/// The bridge port of a pod, made before IPAM runs ([`create_port`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The bridge.
    pub bridge: Link,
    /// The host end of the veth, a port of the bridge.
    pub host: Link,
    /// The MAC the container end was given.
    pub container_mac: [u8; 6],
}

/// ADD in bridge mode: [`create_port`], then [`configure`]. Fails with code
/// 11 before creating anything when the programs are not pinned; on a
/// later failure removes the veth and datapath state it created (the
/// bridge and its gateway address stay, as shared resources). Call from a
/// thread in the node's namespace.
pub fn add(spec: &PodSpec<'_>, opts: &BridgeOptions) -> CniResult<Plumbed> {
    spec.validate()?;
    let port = create_port(spec, opts)?;
    configure(spec, opts, &port)
}

/// The first half of ADD, which needs no addresses: the bridge (created
/// when missing), the veth pair with the host end a port of the bridge
/// (hairpin as configured) and the container end up, without addresses.
/// ADD runs IPAM only after this, as the reference bridge plugin does: the
/// `dhcp` IPAM runs DHCP on the container's interface, which must exist.
/// Fails with code 11 before creating anything when the programs are not
/// pinned; on failure leaves no veth. `spec.ips` and `spec.routes` are not
/// read. Call from a thread in the node's namespace.
pub fn create_port(spec: &PodSpec<'_>, opts: &BridgeOptions) -> CniResult<Port> {
    veth::validate_ifname(spec.ifname)?;
    if opts.hairpin_mode && opts.promisc_mode {
        return Err(CniError::config(
            "cannot set hairpin mode and promiscuous mode at the same time",
        ));
    }
    if let Some(bpffs) = spec.bpffs_dir {
        attach::check_pinned(bpffs)?;
    }
    let container_mac = spec.mac();
    let vreq = VethRequest {
        container_id: spec.container_id,
        ifname: spec.ifname,
        mtu: spec.mtu,
        container_mac: Some(container_mac),
        enable_dad: false,
    };
    let (bridge, host) = netns::run_here(async |nl| {
        let br = ensure_bridge(&nl, opts, spec.mtu).await?;
        let host = veth::create_pair(&nl, spec.netns, &vreq).await?;
        if let Err(e) = enslave(&nl, &br, &host, opts.hairpin_mode).await {
            let _ = nl.delete_link_by_name(&host.name).await;
            return Err(e);
        }
        Ok((br, host))
    })?;
    let ifname = spec.ifname;
    if let Err(e) = netns::run_in(spec.netns, async move |nl| {
        veth::configure_container_end(&nl, ifname, false).await
    }) {
        let _ = veth::delete(&host.name);
        return Err(e.into());
    }
    Ok(Port {
        bridge,
        host,
        container_mac,
    })
}

/// The second half of ADD, with the addresses from IPAM: the gateway
/// addresses on the bridge and forwarding (`isGateway`), the datapath
/// attached, the container's addresses and routes, and the result. On
/// failure removes the veth and the datapath state (the bridge and its
/// gateway address stay, as shared resources). Call from a thread in the
/// node's namespace.
pub fn configure(spec: &PodSpec<'_>, opts: &BridgeOptions, port: &Port) -> CniResult<Plumbed> {
    let Port {
        bridge: br,
        host,
        container_mac,
    } = port;
    let container_mac = *container_mac;
    let configured = spec.validate().and_then(|()| {
        let (ips, routes, bridge_addrs) = gateways(spec, opts)?;
        netns::run_here(async |nl| {
            for net in &bridge_addrs {
                ensure_bridge_addr(&nl, br, *net, opts.force_address).await?;
            }
            if bridge_addrs.iter().any(|n| n.addr().is_ipv4()) {
                sysctl::enable_ipv4_forwarding()?;
            }
            if bridge_addrs.iter().any(|n| n.addr().is_ipv6()) {
                sysctl::enable_ipv6_forwarding()?;
            }
            CniResult::Ok(())
        })?;
        Ok((ips, routes))
    });
    let (ips, routes) = match configured {
        Ok(v) => v,
        Err(e) => {
            let _ = veth::delete(&host.name);
            return Err(e);
        }
    };

    let mut plan = ContainerPlan {
        ifname: spec.ifname.to_owned(),
        ..Default::default()
    };
    plan.addrs = ips.iter().map(|ip| ip.address).collect();
    for r in &routes {
        let default_gw = ips
            .iter()
            .find(|ip| ip.address.addr().is_ipv6() == r.dst.addr().is_ipv6())
            .and_then(|ip| ip.gateway);
        match RouteSpec::from_cni(r, default_gw, 0) {
            Ok(route) => plan.routes.push(route),
            Err(e) => {
                let _ = veth::delete(&host.name);
                return Err(e);
            }
        }
    }
    let (container, attached) = veth::finish_add(spec, host, container_mac, &plan)?;

    // The bridge's and host veth's MACs may change as ports join: re-read.
    let host_name = host.name.clone();
    let br_name = br.name.clone();
    let (br, host) = match netns::run_here(async |nl| {
        Ok((
            nl.require_link(&br_name).await?,
            nl.require_link(&host_name).await?,
        ))
    }) {
        Ok(v) => v,
        Err(e) => {
            let _ = veth::join_errors(veth::teardown(&veth::Teardown {
                container_id: spec.container_id,
                ifname: spec.ifname,
                host_veth: Some(&host_name),
                netns: None,
                bpffs_dir: spec.bpffs_dir,
            }));
            return Err(e);
        }
    };
    let [host_if, cont_if] =
        veth::result_interfaces(&host, &container, spec.netns.path(), spec.mtu);
    let br_if = Interface {
        name: br.name.clone(),
        mac: Some(br.mac_string()),
        ..Default::default()
    };
    Ok(Plumbed {
        endpoint_id: endpoint_id(spec.container_id, spec.ifname),
        attached,
        output: CniOutput {
            interfaces: vec![br_if, host_if, cont_if],
            ips,
            routes,
            ..Default::default()
        },
        host,
        container,
    })
}

/// CHECK in bridge mode against the prevResult: the bridge exists, is a
/// bridge, has the MAC of the result and the configured promisc state; the
/// veth pair matches and its host end is a port of the bridge; the
/// container's addresses and routes are there. Code 102 on a mismatch.
pub fn check(
    netns: &netns::NetnsHandle,
    ifname: &str,
    opts: &BridgeOptions,
    prev: &CniOutput,
) -> CniResult<()> {
    let br_if = prev
        .interfaces
        .iter()
        .find(|i| i.name == opts.name && i.sandbox.is_none())
        .ok_or_else(|| mismatch(format!("prevResult does not list bridge {}", opts.name)))?;
    let name = opts.name.clone();
    let br = netns::run_here(async |nl| nl.link_by_name(&name).await)?
        .ok_or_else(|| mismatch(format!("bridge {} not found", opts.name)))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(mismatch(format!("{} is not a bridge", opts.name)));
    }
    if let Some(mac) = &br_if.mac {
        if !mac.eq_ignore_ascii_case(&br.mac_string()) {
            return Err(mismatch(format!(
                "bridge {} has MAC {}, prevResult says {mac}",
                br.name,
                br.mac_string()
            )));
        }
    }
    if br.promisc != opts.promisc_mode {
        return Err(mismatch(format!(
            "bridge {} promiscuous mode is {}, config says {}",
            br.name, br.promisc, opts.promisc_mode
        )));
    }
    let (host, container) = veth::check_pair(netns, ifname, prev)?;
    if host.controller != Some(br.index) {
        return Err(mismatch(format!(
            "{} is not a port of bridge {}",
            host.name, br.name
        )));
    }
    veth::check_container_config(netns, &container, prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with<'a>(
        ns: &'a netns::NetnsHandle,
        ips: &'a [IpConfig],
        routes: &'a [Route],
    ) -> PodSpec<'a> {
        PodSpec {
            container_id: "c1",
            ifname: "eth0",
            netns: ns,
            mtu: 1500,
            container_mac: None,
            ips,
            routes,
            bpffs_dir: None,
            endpoint_flags: 0,
            tc_attach: Default::default(),
        }
    }

    #[test]
    fn gateways_follow_the_reference() {
        let ns = netns::NetnsHandle::current().unwrap();
        let ips = [
            IpConfig {
                address: "10.199.3.7/24".parse().unwrap(),
                gateway: None,
                interface: None,
            },
            IpConfig {
                address: "fd00:199::7/64".parse().unwrap(),
                gateway: Some("fd00:199::fe".parse().unwrap()),
                interface: None,
            },
        ];
        let spec = spec_with(&ns, &ips, &[]);
        let opts = BridgeOptions {
            is_default_gateway: true,
            ..Default::default()
        };
        let (ips_out, routes, bridge) = gateways(&spec, &opts).unwrap();
        assert_eq!(ips_out[0].gateway, Some("10.199.3.1".parse().unwrap()));
        assert_eq!(ips_out[1].gateway, Some("fd00:199::fe".parse().unwrap()));
        assert!(ips_out.iter().all(|ip| ip.interface == Some(2)));
        assert_eq!(
            bridge,
            [
                "10.199.3.1/24".parse::<IpNet>().unwrap(),
                "fd00:199::fe/64".parse().unwrap()
            ]
        );
        let r: Vec<String> = routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.gw.unwrap()))
            .collect();
        assert_eq!(r, ["0.0.0.0/0 via 10.199.3.1", "::/0 via fd00:199::fe"]);

        // Not a gateway: no gateway invented, nothing on the bridge.
        let (ips_out, routes, bridge) = gateways(&spec, &BridgeOptions::default()).unwrap();
        assert_eq!(ips_out[0].gateway, None);
        assert!(routes.is_empty() && bridge.is_empty());

        // An IPAM default route with a gateway is kept, not duplicated.
        let ipam_routes = [Route::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.199.3.254".parse().unwrap()),
        )];
        let spec = spec_with(&ns, &ips[..1], &ipam_routes);
        let (_, routes, _) = gateways(&spec, &opts).unwrap();
        assert_eq!(routes, ipam_routes);
    }

    #[test]
    fn first_address_of_subnet() {
        assert_eq!(
            first_address("10.1.2.3/16".parse().unwrap()),
            "10.1.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            first_address("fd00::9/64".parse().unwrap()),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
    }
}
