//! Interface addresses over rtnetlink, in the namespace of the [`Netlink`]
//! given. IPv6 addresses are added with `IFA_F_NODAD` by default: a pod's
//! address is unique by construction (IPAM), and DAD would make it unusable
//! for about a second.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::{
    packet_core::{NLM_F_CREATE, NLM_F_EXCL},
    packet_route::{
        address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
        },
        AddressFamily, RouteNetlinkMessage,
    },
    AddressMessageBuilder,
};

use crate::{
    error::CniResult,
    netlink::{errno, is_errno, kernel_error, Netlink},
};

/// How to add an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrOptions {
    /// IPv6: skip duplicate address detection (`nodad`).
    pub nodad: bool,
    /// Scope `link` instead of `global` (for the routed gateway address on
    /// the host veth, which must never be picked as a source for other
    /// destinations).
    pub link_scope: bool,
    /// Do not add the prefix route (`noprefixroute`).
    pub no_prefix_route: bool,
}

impl Default for AddrOptions {
    fn default() -> Self {
        Self {
            nodad: true,
            link_scope: false,
            no_prefix_route: false,
        }
    }
}

fn message(index: u32, net: IpNet, opts: AddrOptions) -> AddressMessage {
    let mut msg = match net.addr() {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, net.prefix_len())
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(a, net.prefix_len())
            .build(),
    };
    let mut flags = AddressFlags::empty();
    if opts.nodad && net.addr().is_ipv6() {
        flags |= AddressFlags::Nodad;
        msg.header.flags |= AddressHeaderFlags::Nodad;
    }
    if opts.no_prefix_route {
        flags |= AddressFlags::Noprefixroute;
    }
    if !flags.is_empty() {
        msg.attributes.push(AddressAttribute::Flags(flags));
    }
    if opts.link_scope {
        msg.header.scope = AddressScope::Link;
    }
    msg
}

/// Adds `net` (address with prefix length) to the link `index` (`ifname`
/// names it in errors). Fails if the address is already there.
pub async fn add(
    nl: &Netlink,
    index: u32,
    ifname: &str,
    net: IpNet,
    opts: AddrOptions,
) -> CniResult<()> {
    nl.request_ack(
        RouteNetlinkMessage::NewAddress(message(index, net, opts)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|e| kernel_error(format_args!("adding address {net} to {ifname}"), &e))
}

/// Like [`add`], but an address already there is success. Returns whether
/// it was added.
pub async fn ensure(
    nl: &Netlink,
    index: u32,
    ifname: &str,
    net: IpNet,
    opts: AddrOptions,
) -> CniResult<bool> {
    match nl
        .request_ack(
            RouteNetlinkMessage::NewAddress(message(index, net, opts)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, errno::EEXIST) => Ok(false),
        Err(e) => Err(kernel_error(
            format_args!("adding address {net} to {ifname}"),
            &e,
        )),
    }
}

/// Removes `net` from link `index`; an address not there is success.
/// Returns whether one was removed.
pub async fn del(nl: &Netlink, index: u32, ifname: &str, net: IpNet) -> CniResult<bool> {
    let msg = message(
        index,
        net,
        AddrOptions {
            nodad: false,
            link_scope: false,
            no_prefix_route: false,
        },
    );
    match nl
        .request_ack(RouteNetlinkMessage::DelAddress(msg), 0)
        .await
    {
        Ok(()) => Ok(true),
        Err(e)
            if is_errno(&e, errno::EADDRNOTAVAIL)
                || is_errno(&e, errno::ENODEV)
                || is_errno(&e, errno::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => Err(kernel_error(
            format_args!("removing address {net} from {ifname}"),
            &e,
        )),
    }
}

/// The addresses on link `index` (both families, link-local IPv6 included),
/// as address/prefix.
pub async fn list(nl: &Netlink, index: u32) -> CniResult<Vec<IpNet>> {
    Ok(nl
        .addresses(Some(index), None)
        .await?
        .into_iter()
        .filter_map(|a| IpNet::new(a.addr, a.prefix_len).ok())
        .collect())
}

/// The addresses of one family on link `index`.
pub async fn list_family(nl: &Netlink, index: u32, v6: bool) -> CniResult<Vec<IpNet>> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    Ok(nl
        .addresses(Some(index), Some(family))
        .await?
        .into_iter()
        .filter_map(|a| IpNet::new(a.addr, a.prefix_len).ok())
        .collect())
}
