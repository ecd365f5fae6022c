//! Routes and static neighbours over rtnetlink, in the namespace of the
//! [`Netlink`] given.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::{
    packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE},
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{
            RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
            RouteType,
        },
        AddressFamily, RouteNetlinkMessage,
    },
    RouteMessageBuilder,
};

use crate::{
    error::{CniError, CniResult},
    netlink::{errno, is_errno, kernel_error, Netlink, RouteEntry},
    types::Route,
};

/// A route to install or remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// `scope link` (a directly connected destination). Defaults to link for
    /// routes without a gateway, universe otherwise ([`RouteSpec::new`]).
    pub link_scope: bool,
    /// Route MTU.
    pub mtu: Option<u32>,
    /// Advertised MSS.
    pub adv_mss: Option<u32>,
    /// Metric.
    pub priority: Option<u32>,
    /// Table (main when `None`).
    pub table: Option<u32>,
}

impl RouteSpec {
    /// A route to `dst` via `gateway` and/or out of `oif`.
    pub fn new(dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>) -> Self {
        Self {
            dst: dst.trunc(),
            gateway,
            oif,
            link_scope: gateway.is_none() && dst.addr().is_ipv4(),
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
        }
    }

    /// The route of a CNI result (`gw` absent means `default_gw`), out of
    /// `oif`. A CNI `scope` of 253 (link) is honoured.
    pub fn from_cni(route: &Route, default_gw: Option<IpAddr>, oif: u32) -> CniResult<Self> {
        let gw = route.gw.or(default_gw);
        if let Some(gw) = gw {
            if gw.is_ipv4() != route.dst.addr().is_ipv4() {
                return Err(CniError::config(format!(
                    "route to {} has a gateway {gw} of another family",
                    route.dst
                )));
            }
        }
        let mut spec = RouteSpec::new(route.dst, gw, Some(oif));
        spec.mtu = route.mtu;
        spec.adv_mss = route.adv_mss;
        spec.priority = route.priority;
        spec.table = route.table;
        if route.scope == Some(253) {
            spec.link_scope = true;
        }
        Ok(spec)
    }

    fn message(&self, for_delete: bool) -> CniResult<RouteMessage> {
        let dst = self.dst;
        let bad = move |e: &dyn std::fmt::Display| CniError::config(format!("route to {dst}: {e}"));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.addr(), self.dst.prefix_len())
            .map_err(|e| bad(&e))?;
        if let Some(gw) = self.gateway {
            b = b.gateway(gw).map_err(|e| bad(&e))?;
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if let Some(p) = self.priority {
            b = b.priority(p);
        }
        if let Some(t) = self.table {
            b = b.table_id(t);
        }
        if for_delete {
            // Match whatever scope, type and protocol the route has.
            b = b
                .scope(RouteScope::NoWhere)
                .kind(RouteType::Unspec)
                .protocol(RouteProtocol::Unspec);
        } else if self.link_scope {
            b = b.scope(RouteScope::Link);
        }
        let mut msg = b.build();
        let mut metrics = Vec::new();
        if let Some(mtu) = self.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(mss) = self.adv_mss {
            metrics.push(RouteMetric::Advmss(mss));
        }
        if !metrics.is_empty() && !for_delete {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        Ok(msg)
    }

    fn describe(&self) -> String {
        let mut s = format!("route {}", self.dst);
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev #{oif}"));
        }
        s
    }
}

/// Adds a route; one already there is an error.
pub async fn add(nl: &Netlink, route: &RouteSpec) -> CniResult<()> {
    nl.request_ack(
        RouteNetlinkMessage::NewRoute(route.message(false)?),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|e| kernel_error(format_args!("adding {}", route.describe()), &e))
}

/// Adds or replaces a route.
pub async fn replace(nl: &Netlink, route: &RouteSpec) -> CniResult<()> {
    nl.request_ack(
        RouteNetlinkMessage::NewRoute(route.message(false)?),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .map_err(|e| kernel_error(format_args!("replacing {}", route.describe()), &e))
}

/// Removes a route; one not there is success. Returns whether one was
/// removed.
pub async fn del(nl: &Netlink, route: &RouteSpec) -> CniResult<bool> {
    match nl
        .request_ack(RouteNetlinkMessage::DelRoute(route.message(true)?), 0)
        .await
    {
        Ok(()) => Ok(true),
        Err(e)
            if is_errno(&e, errno::ESRCH)
                || is_errno(&e, errno::ENOENT)
                || is_errno(&e, errno::ENODEV) =>
        {
            Ok(false)
        }
        Err(e) => Err(kernel_error(
            format_args!("removing {}", route.describe()),
            &e,
        )),
    }
}

/// Routes of the main table of one family.
pub async fn list_main(nl: &Netlink, v6: bool) -> CniResult<Vec<RouteEntry>> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    Ok(nl
        .routes(family)
        .await?
        .into_iter()
        .filter(|r| r.table == u32::from(RouteHeader::RT_TABLE_MAIN))
        .collect())
}

/// Whether the main table has a route to exactly `dst` (optionally via
/// `gateway`, optionally out of `oif`).
pub async fn exists(
    nl: &Netlink,
    dst: IpNet,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> CniResult<bool> {
    let dst = dst.trunc();
    Ok(list_main(nl, dst.addr().is_ipv6()).await?.iter().any(|r| {
        r.dst == dst.addr()
            && r.dst_len == dst.prefix_len()
            && gateway.is_none_or(|g| r.gateway == Some(g))
            && oif.is_none_or(|o| r.oif == Some(o))
    }))
}

/// Adds (or replaces) a permanent neighbour entry: `addr` is at `mac` on
/// link `index`.
pub async fn add_permanent_neighbour(
    nl: &Netlink,
    index: u32,
    addr: IpAddr,
    mac: [u8; 6],
) -> CniResult<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    nl.request_ack(
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .map_err(|e| kernel_error(format_args!("adding neighbour {addr} on link #{index}"), &e))
}
