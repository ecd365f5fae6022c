//! Routed mode (the default): no bridge. Each pod sits at the end of its own
//! veth; the node routes to it with a /32 (/128) host route, and the pod's
//! gateway is a link-local address the host side answers for.
//!
//! Container side (`eth0`):
//! - the IPAM addresses as /32 and /128 (IPv6 without DAD);
//! - IPv4: `169.254.1.1 dev eth0 scope link`, a permanent neighbour entry
//!   `169.254.1.1 -> <host veth MAC>`, `default via 169.254.1.1 dev eth0`;
//! - IPv6: `default via fe80::1 dev eth0`;
//! - every IPAM route except defaults, rewritten to go via the link-local
//!   gateway of its family.
//!
//! Node side (host veth `slc…`):
//! - `<pod>/32 dev slc… scope link` and `<pod>/128 dev slc…`;
//! - `proxy_arp=1` (answers ARP for 169.254.1.1 whenever the node has a
//!   route for it, i.e. a default route; the permanent neighbour entry in
//!   the pod makes the gateway work without one, as in a bare test node);
//! - `fe80::1/64` (nodad), so the node answers neighbour solicitations for
//!   the IPv6 gateway itself;
//! - `net.ipv4.ip_forward=1` / `net.ipv6.conf.all.forwarding=1` for the
//!   families the pod has. Note: on a node that learns its own IPv6 default
//!   route from router advertisements, forwarding=1 stops accepting them
//!   unless the uplink has `accept_ra=2`.
//!
//! No address is put on the host veth for IPv4, so the node never sources
//! traffic from 169.254.1.1: traffic from the node to a pod leaves from the
//! node's own address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    addr::{self, AddrOptions},
    attach,
    error::CniResult,
    netlink::{Link, Netlink},
    netns,
    route::{self, RouteSpec},
    state::endpoint_id,
    sysctl,
    types::{CniOutput, IpConfig, Route},
    veth::{self, mismatch, ContainerPlan, Plumbed, PodSpec, VethRequest},
};

/// The pod's IPv4 gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The link-local gateway of `addr`'s family.
pub fn gateway_for(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

fn host_net(addr: IpAddr) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid prefix")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, 128).expect("128 is a valid prefix")),
    }
}

fn default_net(v6: bool) -> IpNet {
    if v6 {
        IpNet::V6(Ipv6Net::default())
    } else {
        IpNet::V4(Ipv4Net::default())
    }
}

/// The container's addresses, routes and neighbours, and the result's ips
/// and routes.
fn plan(spec: &PodSpec<'_>, host_mac: [u8; 6]) -> (ContainerPlan, Vec<IpConfig>, Vec<Route>) {
    let has_v4 = spec.ips.iter().any(|ip| ip.address.addr().is_ipv4());
    let has_v6 = spec.ips.iter().any(|ip| ip.address.addr().is_ipv6());
    let mut plan = ContainerPlan {
        ifname: spec.ifname.to_owned(),
        ..Default::default()
    };
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for ip in spec.ips {
        let net = host_net(ip.address.addr());
        if !plan.addrs.contains(&net) {
            plan.addrs.push(net);
            ips.push(IpConfig {
                address: net,
                gateway: Some(gateway_for(net.addr())),
                interface: Some(1),
            });
        }
    }
    if has_v4 {
        let gw = IpAddr::V4(GATEWAY_V4);
        plan.routes.push(RouteSpec::new(host_net(gw), None, None));
        plan.neighbours.push((gw, host_mac));
        plan.routes
            .push(RouteSpec::new(default_net(false), Some(gw), None));
        routes.push(Route::new(default_net(false), Some(gw)));
    }
    if has_v6 {
        let gw = IpAddr::V6(GATEWAY_V6);
        plan.routes
            .push(RouteSpec::new(default_net(true), Some(gw), None));
        routes.push(Route::new(default_net(true), Some(gw)));
    }
    for r in spec.routes {
        let v6 = r.dst.addr().is_ipv6();
        if r.dst.prefix_len() == 0 || (v6 && !has_v6) || (!v6 && !has_v4) {
            continue;
        }
        let gw = gateway_for(r.dst.addr());
        let mut rs = RouteSpec::new(r.dst, Some(gw), None);
        rs.mtu = r.mtu;
        rs.adv_mss = r.adv_mss;
        rs.priority = r.priority;
        plan.routes.push(rs);
        routes.push(Route {
            gw: Some(gw),
            ..r.clone()
        });
    }
    (plan, ips, routes)
}

/// Node side: forwarding, proxy ARP, the IPv6 gateway address, host routes.
async fn configure_host(nl: &Netlink, host: &Link, addrs: &[IpNet]) -> CniResult<()> {
    let has_v4 = addrs.iter().any(|a| a.addr().is_ipv4());
    let has_v6 = addrs.iter().any(|a| a.addr().is_ipv6());
    if has_v4 {
        sysctl::enable_ipv4_forwarding()?;
        sysctl::set_ipv4_conf(&host.name, "proxy_arp", "1")?;
    }
    if has_v6 {
        sysctl::enable_ipv6_forwarding()?;
        sysctl::set_ipv6_conf(&host.name, "accept_ra", "0")?;
        let gw = IpNet::V6(Ipv6Net::new(GATEWAY_V6, 64).expect("64 is a valid prefix"));
        addr::add(nl, host.index, &host.name, gw, AddrOptions::default()).await?;
    }
    for a in addrs {
        route::add(
            nl,
            &RouteSpec::new(host_net(a.addr()), None, Some(host.index)),
        )
        .await?;
    }
    Ok(())
}

/// ADD in routed mode: veth, node side, datapath (when `spec.bpffs_dir`),
/// container side. Fails with code 11 before creating anything when the
/// programs are not pinned; on any later failure removes what it created.
/// Call from a thread in the node's namespace.
pub fn add(spec: &PodSpec<'_>) -> CniResult<Plumbed> {
    spec.validate()?;
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
    let host_addrs: Vec<IpNet> = spec
        .ips
        .iter()
        .map(|ip| host_net(ip.address.addr()))
        .collect();
    let host = netns::run_here(async |nl| {
        let host = veth::create_pair(&nl, spec.netns, &vreq).await?;
        if let Err(e) = configure_host(&nl, &host, &host_addrs).await {
            let _ = nl.delete_link_by_name(&host.name).await;
            return Err(e);
        }
        Ok(host)
    })?;
    let host_mac = host.mac.unwrap_or_default();
    let (plan, ips, routes) = plan(spec, host_mac);
    let (container, attached) = veth::finish_add(spec, &host, container_mac, &plan)?;
    let interfaces =
        veth::result_interfaces(&host, &container, spec.netns.path(), spec.mtu).to_vec();
    Ok(Plumbed {
        endpoint_id: endpoint_id(spec.container_id, spec.ifname),
        attached,
        output: CniOutput {
            interfaces,
            ips,
            routes,
            ..Default::default()
        },
        host,
        container,
    })
}

/// CHECK in routed mode against the prevResult: the veth pair (see
/// [`veth::check_pair`]), the container's addresses and routes, and the
/// node's host routes to every pod address. Code 102 on a mismatch.
pub fn check(netns: &netns::NetnsHandle, ifname: &str, prev: &CniOutput) -> CniResult<()> {
    let (host, container) = veth::check_pair(netns, ifname, prev)?;
    veth::check_container_config(netns, &container, prev)?;
    let host_index = host.index;
    let host_name = host.name.clone();
    netns::run_here(async |nl| {
        for ip in &prev.ips {
            let dst = host_net(ip.address.addr());
            if !route::exists(&nl, dst, None, Some(host_index)).await? {
                return Err(mismatch(format!(
                    "node route to {dst} dev {host_name} is missing"
                )));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_rewrites_ipam_routes_via_the_link_local_gateway() {
        let ns = netns::NetnsHandle::current().unwrap();
        let ips = [
            IpConfig {
                address: "10.199.0.5/24".parse().unwrap(),
                gateway: Some("10.199.0.1".parse().unwrap()),
                interface: None,
            },
            IpConfig {
                address: "fd00:199::5/64".parse().unwrap(),
                gateway: None,
                interface: None,
            },
        ];
        let routes = [
            Route::new("0.0.0.0/0".parse().unwrap(), None),
            Route::new(
                "10.200.0.0/16".parse().unwrap(),
                Some("10.199.0.1".parse().unwrap()),
            ),
            Route::new("fd00:200::/64".parse().unwrap(), None),
        ];
        let spec = PodSpec {
            container_id: "c1",
            ifname: "eth0",
            netns: &ns,
            mtu: 1500,
            container_mac: None,
            ips: &ips,
            routes: &routes,
            bpffs_dir: None,
            endpoint_flags: 0,
            tc_attach: Default::default(),
        };
        let (plan, ips, routes) = plan(&spec, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            plan.addrs,
            [
                "10.199.0.5/32".parse::<IpNet>().unwrap(),
                "fd00:199::5/128".parse().unwrap()
            ]
        );
        assert_eq!(ips[0].gateway, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(ips[1].gateway, Some("fe80::1".parse().unwrap()));
        assert_eq!(ips[0].interface, Some(1));
        let dsts: Vec<String> = routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.gw.unwrap()))
            .collect();
        assert_eq!(
            dsts,
            [
                "0.0.0.0/0 via 169.254.1.1",
                "::/0 via fe80::1",
                "10.200.0.0/16 via 169.254.1.1",
                "fd00:200::/64 via fe80::1"
            ]
        );
        assert_eq!(
            plan.neighbours,
            [("169.254.1.1".parse().unwrap(), [2, 0, 0, 0, 0, 1])]
        );
        // gateway /32, default v4, default v6, two IPAM routes
        assert_eq!(plan.routes.len(), 5);
        assert!(plan.routes[0].link_scope);
    }
}
