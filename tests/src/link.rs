//! Links and addresses inside a test namespace, over rtnetlink sockets
//! opened in that namespace ([`Netns::netlink`]). Interface names only ever
//! live in namespaces the test created, so fixed names such as `eth0` are
//! fine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoVeth, LinkAttribute, LinkMessage, LinkXdp, State, XdpAttached},
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth,
};

use crate::Netns;

async fn get_link(handle: &Handle, ifname: &str) -> anyhow::Result<LinkMessage> {
    handle
        .link()
        .get()
        .match_name(ifname.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("looking up link {ifname}"))?
        .with_context(|| format!("no link named {ifname}"))
}

/// The index of `ifname` in `ns`.
pub fn ifindex(ns: &Netns, ifname: &str) -> anyhow::Result<u32> {
    ns.netlink(|handle| async move { Ok(get_link(&handle, ifname).await?.header.index) })
}

/// Sets `ifname` in `ns` up.
pub fn set_up(ns: &Netns, ifname: &str) -> anyhow::Result<()> {
    ns.netlink(|handle| async move {
        let index = get_link(&handle, ifname).await?.header.index;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting {ifname} up"))
    })
}

/// Adds `addr` (e.g. `10.199.1.1/24`) to `ifname` in `ns`; IPv6 addresses
/// skip duplicate address detection so they are usable at once.
pub fn add_address(ns: &Netns, ifname: &str, addr: IpNet) -> anyhow::Result<()> {
    ns.netlink(|handle| async move {
        let index = get_link(&handle, ifname).await?.header.index;
        let mut request = handle.address().add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request
            .execute()
            .await
            .with_context(|| format!("adding {addr} to {ifname}"))
    })
}

/// Creates a veth pair: `a_name` in `a`, its peer `b_name` directly in `b`.
/// Both stay down.
pub fn add_veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let b_fd = b.fd().as_raw_fd();
    a.netlink(|handle| async move {
        // The peer is created in `b` at once (IFLA_NET_NS_FD in the peer's
        // message), like `ip link add a type veth peer name b netns B`.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(b_name.to_owned())
            .setns_by_fd(b_fd)
            .build();
        let message = LinkVeth::new(a_name, b_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        handle
            .link()
            .add(message)
            .execute()
            .await
            .with_context(|| format!("creating veth {a_name} <-> {b_name}"))
    })
}

/// Waits until the kernel reports `ifname` in `ns` operationally up
/// (carrier on both ends of a veth): until then its qdisc drops what is
/// sent, the first ARP request included.
pub fn wait_oper_up(ns: &Netns, ifname: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let link = ns.netlink(|handle| async move { get_link(&handle, ifname).await })?;
        let state = link.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::OperState(state) => Some(*state),
            _ => None,
        });
        if state == Some(State::Up) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{ifname} in {} not up after {timeout:?} (state {state:?})",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One side of a veth: the namespace, the interface and its addresses.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    /// Namespace of this end.
    pub ns: &'a Netns,
    /// Interface name of this end.
    pub ifname: &'a str,
    /// Addresses to give it (IPv4 and/or IPv6, with prefix length).
    pub addrs: &'a [IpNet],
}

/// Joins two namespaces with a veth, addresses both ends, sets them up and
/// waits until both are operationally up.
pub fn connect(a: VethEnd<'_>, b: VethEnd<'_>) -> anyhow::Result<()> {
    add_veth(a.ns, a.ifname, b.ns, b.ifname)?;
    for end in [a, b] {
        for addr in end.addrs {
            add_address(end.ns, end.ifname, *addr)?;
        }
        set_up(end.ns, end.ifname)?;
    }
    for end in [a, b] {
        wait_oper_up(end.ns, end.ifname, Duration::from_secs(5))?;
    }
    Ok(())
}

/// The XDP attachment state the kernel reports for `ifname`
/// (`IFLA_XDP_ATTACHED`): `None` means no XDP program.
pub fn xdp_attached(ns: &Netns, ifname: &str) -> anyhow::Result<Option<XdpAttached>> {
    let link = ns.netlink(|handle| async move { get_link(&handle, ifname).await })?;
    for attr in &link.attributes {
        if let LinkAttribute::Xdp(xdp) = attr {
            for item in xdp {
                if let LinkXdp::Attached(state) = item {
                    return Ok(match state {
                        XdpAttached::None => None,
                        other => Some(*other),
                    });
                }
            }
        }
    }
    bail!("the kernel reported no IFLA_XDP for {ifname}")
}

/// A program on a tc hook of a link: a TCX program or a cls_bpf filter of
/// `clsact`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcProgram {
    /// `"tcx"` or `"tc"`.
    pub how: &'static str,
    /// `"ingress"` or `"egress"`.
    pub hook: &'static str,
    /// The program's name (a filter's, as attached).
    pub name: String,
    /// The program's id.
    pub id: u32,
}

/// Every program on `ifname`'s tc hooks in `ns`, TCX programs and cls_bpf
/// filters alike, so a test sees how Sluice attached a pod whichever
/// `tcAttach` it used.
pub fn tc_hook_programs(ns: &Netns, ifname: &str) -> anyhow::Result<Vec<TcProgram>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut out = Vec::new();
    for (hook, attach_type) in [
        ("ingress", TcAttachType::Ingress),
        ("egress", TcAttachType::Egress),
    ] {
        let (_, progs) = ns.run(|| {
            SchedClassifier::query_tcx(ifname, attach_type)
                .with_context(|| format!("querying TCX {hook} of {ifname}"))
        })?;
        for prog in progs {
            out.push(TcProgram {
                how: "tcx",
                hook,
                name: prog.name_as_str().unwrap_or("").to_owned(),
                id: prog.id(),
            });
        }
    }
    let index = ifindex(ns, ifname)?;
    // The plugin's own reader of cls_bpf filters (what its CHECK uses).
    let filters = ns.netlink(|handle| async move {
        let nl = cni_plugin::netlink::Netlink::new(handle);
        let mut found = Vec::new();
        for (hook, ingress) in [("ingress", true), ("egress", false)] {
            for f in nl.bpf_filters(index, ingress).await? {
                found.push(TcProgram {
                    how: "tc",
                    hook,
                    name: f.name,
                    id: f.prog_id,
                });
            }
        }
        Ok(found)
    })?;
    out.extend(filters);
    Ok(out)
}

/// [`tc_hook_programs`] as `"<how> <hook> <name>"` (e.g.
/// `"tc ingress from_pod"`, `"tcx egress to_pod"`).
pub fn tc_programs(ns: &Netns, ifname: &str) -> anyhow::Result<Vec<String>> {
    Ok(tc_hook_programs(ns, ifname)?
        .into_iter()
        .map(|p| format!("{} {} {}", p.how, p.hook, p.name))
        .collect())
}

/// Names of every link in `ns`.
pub fn link_names(ns: &Netns) -> anyhow::Result<Vec<String>> {
    ns.netlink(|handle| async move {
        let mut links = handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links.try_next().await.context("listing links")? {
            for attr in link.attributes {
                if let LinkAttribute::IfName(name) = attr {
                    names.push(name);
                }
            }
        }
        Ok(names)
    })
}

/// Adds a route to `dst` via `gateway` in `ns` (e.g. a peer's route to a
/// node's pod CIDR).
pub fn add_route(ns: &Netns, dst: IpNet, gateway: std::net::IpAddr) -> anyhow::Result<()> {
    use rtnetlink::RouteMessageBuilder;
    ns.netlink(|handle| async move {
        let message = match (dst, gateway) {
            (IpNet::V4(d), std::net::IpAddr::V4(g)) => {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(d.addr(), d.prefix_len())
                    .gateway(g)
                    .build()
            }
            (IpNet::V6(d), std::net::IpAddr::V6(g)) => {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(d.addr(), d.prefix_len())
                    .gateway(g)
                    .build()
            }
            _ => bail!("route {dst} via {gateway}: families differ"),
        };
        handle
            .route()
            .add(message)
            .execute()
            .await
            .with_context(|| format!("adding route {dst} via {gateway}"))
    })
}
