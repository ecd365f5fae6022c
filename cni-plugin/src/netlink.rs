//! Shared rtnetlink helpers over one connection.
//!
//! A [`Netlink`] is bound to the network namespace it was opened in: open it
//! with [`crate::netns::run_in`] (a container's namespace) or
//! [`crate::netns::run_here`] (the namespace of the calling thread, the node's),
//! never on a tokio worker that may change namespace under it.
//!
//! Every failure becomes a [`CniError`] with code 100 that names the object
//! and carries the kernel's errno text. Dumps are retried when the kernel
//! flags them `NLM_F_DUMP_INTR` (the table changed during the dump).

use std::{fmt, net::IpAddr};

use futures::StreamExt;
use rtnetlink::{
    packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    },
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{
            InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage},
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
        AddressFamily, RouteNetlinkMessage,
    },
    Handle,
};

use crate::error::{CniError, CniResult};

/// How often a dump interrupted by a concurrent change is retried.
const DUMP_RETRIES: usize = 8;

/// An rtnetlink connection in one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

/// `ENODEV`, `ENOENT`, `EEXIST`, ...: errno values netlink reports.
pub mod errno {
    /// No such device.
    pub const ENODEV: i32 = libc::ENODEV;
    /// No such file or object.
    pub const ENOENT: i32 = libc::ENOENT;
    /// Already exists.
    pub const EEXIST: i32 = libc::EEXIST;
    /// No such process (route/neighbour not found).
    pub const ESRCH: i32 = libc::ESRCH;
    /// Cannot assign requested address (address not found on delete).
    pub const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;
}

/// The positive errno of a netlink error, if the kernel sent one.
pub fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Whether `err` is the kernel's `errno`.
pub fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    errno_of(err) == Some(errno)
}

/// Code 100 naming what failed, with the kernel's message.
pub fn kernel_error(what: impl fmt::Display, err: &rtnetlink::Error) -> CniError {
    let why = match errno_of(err) {
        Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
        None => err.to_string(),
    };
    CniError::kernel(format!("netlink: {what}: {why}"))
}

/// A MAC address in the lowercase colon form CNI results use.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fields of a link plumbing looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index in its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up (`IFF_LOWER_UP`, i.e. carrier).
    pub lower_up: bool,
    /// Promiscuous (`IFF_PROMISC`).
    pub promisc: bool,
    /// `veth`, `bridge`, ... when the link has a kind.
    pub kind: Option<String>,
    /// The bridge (or other controller) this link is enslaved to.
    pub controller: Option<u32>,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a bridge port: hairpin mode.
    pub hairpin: Option<bool>,
}

impl Link {
    /// Decodes a link message.
    pub fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) if mac.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(mac);
                    link.mac = Some(m);
                }
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(c) if *c != 0 => link.controller = Some(*c),
                LinkAttribute::Link(peer) if *peer != 0 => link.peer_index = Some(*peer),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                for p in port {
                                    if let InfoBridgePort::HairpinMode(on) = p {
                                        link.hairpin = Some(*on);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC in colon form, or an empty string.
    pub fn mac_string(&self) -> String {
        self.mac.map(|m| format_mac(&m)).unwrap_or_default()
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Dummy => "dummy".into(),
        InfoKind::Vxlan => "vxlan".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// An address as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address (`IFA_LOCAL` for IPv4, `IFA_ADDRESS` for IPv6).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// The raw message, for deletion.
    pub message: AddressMessage,
}

impl Address {
    fn from_message(msg: AddressMessage) -> Option<Self> {
        let mut local = None;
        let mut address = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Address(a) => address = Some(*a),
                _ => {}
            }
        }
        let addr = local.or(address)?;
        Some(Address {
            index: msg.header.index,
            addr,
            prefix_len: msg.header.prefix_len,
            message: msg,
        })
    }
}

/// A route as the kernel reports it (main table, unicast or otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination address (unspecified address for a default route).
    pub dst: IpAddr,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Routing table.
    pub table: u32,
    /// Route MTU (`RTAX_MTU`), if set.
    pub mtu: Option<u32>,
    /// The raw message, for deletion.
    pub message: RouteMessage,
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl RouteEntry {
    fn from_message(msg: RouteMessage) -> Option<Self> {
        let unspecified = match msg.header.address_family {
            AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let mut entry = RouteEntry {
            dst: unspecified,
            dst_len: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            table: u32::from(msg.header.table),
            mtu: None,
            message: RouteMessage::default(),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => entry.dst = route_addr(a).unwrap_or(unspecified),
                RouteAttribute::Gateway(a) => entry.gateway = route_addr(a),
                RouteAttribute::Oif(i) => entry.oif = Some(*i),
                RouteAttribute::Table(t) => entry.table = *t,
                RouteAttribute::Metrics(metrics) => {
                    for m in metrics {
                        if let rtnetlink::packet_route::route::RouteMetric::Mtu(mtu) = m {
                            entry.mtu = Some(*mtu);
                        }
                    }
                }
                _ => {}
            }
        }
        entry.message = msg;
        Some(entry)
    }
}

/// A cls_bpf filter (`tc filter show dev X ingress|egress`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    /// `pref`.
    pub priority: u16,
    /// `handle`.
    pub handle: u32,
    /// The name it was attached with (the program's name for Sluice's).
    pub name: String,
    /// The id of the program it runs.
    pub prog_id: u32,
}

impl Netlink {
    /// Wraps a handle whose connection task runs on this thread's runtime.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// The rtnetlink handle, for requests these helpers do not cover.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Sends a request and waits for its ACK.
    pub async fn request_ack(
        &self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(payload);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(msg) = response.next().await {
            if let NetlinkPayload::Error(err) = msg.payload {
                if err.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
            }
        }
        Ok(())
    }

    /// Runs a dump, retrying when the kernel marks it interrupted.
    pub async fn dump(
        &self,
        payload: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, rtnetlink::Error> {
        let mut last_interrupted = false;
        for _ in 0..DUMP_RETRIES {
            let mut req = NetlinkMessage::from(payload.clone());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut handle = self.handle.clone();
            let mut response = handle.request(req)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            while let Some(msg) = response.next().await {
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        return Err(rtnetlink::Error::NetlinkError(err));
                    }
                    _ => {}
                }
            }
            if !interrupted {
                return Ok(out);
            }
            last_interrupted = true;
        }
        debug_assert!(last_interrupted);
        Err(rtnetlink::Error::NamespaceError(format!(
            "dump interrupted by concurrent changes {DUMP_RETRIES} times in a row"
        )))
    }

    /// The cls_bpf filters in the `clsact` qdisc of the link `index`, on
    /// its ingress or egress hook (none when it has no `clsact`).
    pub async fn bpf_filters(&self, index: u32, ingress: bool) -> CniResult<Vec<BpfFilter>> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: if ingress {
                TcHandle::MIN_INGRESS
            } else {
                TcHandle::MIN_EGRESS
            },
        };
        let hook = if ingress { "ingress" } else { "egress" };
        let replies = match self.dump(RouteNetlinkMessage::GetTrafficFilter(msg)).await {
            Ok(r) => r,
            // No clsact qdisc on the link: nothing attached.
            Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ENOENT) => Vec::new(),
            Err(e) => return Err(kernel_error(format!("listing tc {hook} filters"), &e)),
        };
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewTrafficFilter(f) = reply else {
                continue;
            };
            let is_bpf = f
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
            if !is_bpf {
                continue;
            }
            let mut filter = BpfFilter {
                priority: (f.header.info >> 16) as u16,
                handle: u32::from(f.header.handle),
                name: String::new(),
                prog_id: 0,
            };
            for attr in &f.attributes {
                if let TcAttribute::Options(opts) = attr {
                    for opt in opts {
                        match opt {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                filter.name = n.clone()
                            }
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = *id,
                            _ => {}
                        }
                    }
                }
            }
            // The kernel also reports the (empty) chain head of each
            // priority, without a handle.
            if filter.handle != 0 {
                out.push(filter);
            }
        }
        Ok(out)
    }

    /// All links.
    pub async fn links(&self) -> CniResult<Vec<Link>> {
        let msgs = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await
            .map_err(|e| kernel_error("listing links", &e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> CniResult<Option<Link>> {
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.next().await {
            Some(Ok(msg)) => Ok(Some(Link::from_message(&msg))),
            Some(Err(e)) if is_errno(&e, errno::ENODEV) || is_errno(&e, errno::ENOENT) => Ok(None),
            Some(Err(e)) => Err(kernel_error(format_args!("looking up link {name}"), &e)),
            None => Ok(None),
        }
    }

    /// The link with ifindex `index`, `None` when there is none.
    pub async fn link_by_index(&self, index: u32) -> CniResult<Option<Link>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.next().await {
            Some(Ok(msg)) => Ok(Some(Link::from_message(&msg))),
            Some(Err(e)) if is_errno(&e, errno::ENODEV) || is_errno(&e, errno::ENOENT) => Ok(None),
            Some(Err(e)) => Err(kernel_error(format_args!("looking up link #{index}"), &e)),
            None => Ok(None),
        }
    }

    /// The link called `name`, code 100 when missing.
    pub async fn require_link(&self, name: &str) -> CniResult<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| CniError::kernel(format!("no link named {name}")))
    }

    /// Sets a link up (`what` names it in errors).
    pub async fn set_up(&self, index: u32, what: &str) -> CniResult<()> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel_error(format_args!("setting {what} up"), &e))
    }

    /// Deletes a link by name; a missing link is success. Returns whether a
    /// link was deleted.
    pub async fn delete_link_by_name(&self, name: &str) -> CniResult<bool> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, errno::ENODEV) || is_errno(&e, errno::ENOENT) => Ok(false),
            Err(e) => Err(kernel_error(format_args!("deleting link {name}"), &e)),
        }
    }

    /// Addresses of one family (`None`: both) on one link (`None`: all links).
    pub async fn addresses(
        &self,
        index: Option<u32>,
        family: Option<AddressFamily>,
    ) -> CniResult<Vec<Address>> {
        let mut msg = AddressMessage::default();
        if let Some(f) = family {
            msg.header.family = f;
        }
        let msgs = self
            .dump(RouteNetlinkMessage::GetAddress(msg))
            .await
            .map_err(|e| kernel_error("listing addresses", &e))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .filter(|a| family.is_none_or(|f| a.message.header.family == f))
            .collect())
    }

    /// Routes of one family in every table.
    pub async fn routes(&self, family: AddressFamily) -> CniResult<Vec<RouteEntry>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let msgs = self
            .dump(RouteNetlinkMessage::GetRoute(msg))
            .await
            .map_err(|e| kernel_error("listing routes", &e))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => RouteEntry::from_message(r),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_lowercase_with_colons() {
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0xAB, 0, 0, 5]),
            "0a:58:ab:00:00:05"
        );
    }
}
