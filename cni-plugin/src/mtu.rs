//! The pod MTU when the config has none: the MTU of the node's uplink, the
//! device of the default route (IPv4, else IPv6) in the node's namespace,
//! and 1500 when there is no default route. An overlay subtracts its own
//! overhead from this (VXLAN: 50) where it is configured.

use crate::{
    error::CniResult,
    netlink::{Netlink, RouteEntry},
    netns, route,
};

/// MTU used when no uplink can be found.
pub const FALLBACK_MTU: u32 = 1500;

fn default_route_oif(routes: &[RouteEntry]) -> Option<u32> {
    // Lowest metric first, like the kernel's choice among defaults.
    let mut defaults: Vec<&RouteEntry> = routes
        .iter()
        .filter(|r| r.dst_len == 0 && r.oif.is_some())
        .collect();
    defaults.sort_by_key(|r| {
        r.message
            .attributes
            .iter()
            .find_map(|a| match a {
                rtnetlink::packet_route::route::RouteAttribute::Priority(p) => Some(*p),
                _ => None,
            })
            .unwrap_or(0)
    });
    defaults.first().and_then(|r| r.oif)
}

/// The uplink as `(ifname, mtu)`: the device of the default route (IPv4
/// first), `None` when the namespace has no default route.
pub async fn uplink(nl: &Netlink) -> CniResult<Option<(String, u32)>> {
    for v6 in [false, true] {
        let routes = route::list_main(nl, v6).await?;
        if let Some(oif) = default_route_oif(&routes) {
            if let Some(link) = nl.link_by_index(oif).await? {
                return Ok(Some((link.name, link.mtu)));
            }
        }
    }
    Ok(None)
}

/// The MTU of the uplink, or [`FALLBACK_MTU`].
pub async fn detect(nl: &Netlink) -> CniResult<u32> {
    Ok(uplink(nl)
        .await?
        .map(|(_, mtu)| mtu)
        .filter(|m| *m >= 68)
        .unwrap_or(FALLBACK_MTU))
}

/// `configured` when set, else [`detect`] in the calling thread's
/// namespace (the node's).
pub fn resolve(configured: Option<u32>) -> CniResult<u32> {
    match configured {
        Some(m) => Ok(m),
        None => netns::run_here(async |nl| detect(&nl).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
    use std::net::IpAddr;

    fn entry(dst_len: u8, oif: u32, metric: Option<u32>) -> RouteEntry {
        let mut message = RouteMessage::default();
        if let Some(m) = metric {
            message.attributes.push(RouteAttribute::Priority(m));
        }
        RouteEntry {
            dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            dst_len,
            gateway: None,
            oif: Some(oif),
            table: 254,
            mtu: None,
            message,
        }
    }

    #[test]
    fn lowest_metric_default_wins() {
        let routes = [
            entry(24, 1, None),
            entry(0, 2, Some(600)),
            entry(0, 3, Some(100)),
        ];
        assert_eq!(default_route_oif(&routes), Some(3));
        assert_eq!(default_route_oif(&routes[..1]), None);
    }
}
