//! The two baselines without any CNI plugin: a bare veth pair between two
//! namespaces (the ceiling of any pod path on veth) and the classic
//! host-routed path (two pods behind /32 routes in a node namespace, the
//! kernel's forwarding, no BPF) that Sluice's routed mode replaces.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use ipnet::IpNet;
use tests::{
    link::{connect, VethEnd},
    Netns,
};

use super::{spawn::run_in, Topology};

/// `veth`: pod a `10.197.1.1/24` — pod b `10.197.1.2/24`, one veth.
pub struct VethPair {
    a: Netns,
    b: Netns,
}

const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 197, 1, 1);
const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 197, 1, 2);

impl VethPair {
    pub fn new() -> anyhow::Result<Self> {
        let (a, b) = (Netns::new()?, Netns::new()?);
        let a_addr: IpNet = format!("{VETH_A}/24").parse()?;
        let b_addr: IpNet = format!("{VETH_B}/24").parse()?;
        connect(
            VethEnd {
                ns: &a,
                ifname: "eth0",
                addrs: &[a_addr],
            },
            VethEnd {
                ns: &b,
                ifname: "eth0",
                addrs: &[b_addr],
            },
        )
        .context("veth path")?;
        Ok(Self { a, b })
    }
}

impl Topology for VethPair {
    fn client(&self) -> &Netns {
        &self.a
    }
    fn server(&self) -> &Netns {
        &self.b
    }
    fn server_ip(&self) -> Ipv4Addr {
        VETH_B
    }
}

/// `host-routed`: pods a and b (`10.197.2.2`, `.3`, each a /32 on its
/// `eth0`) behind veths `veth-a`/`veth-b` in a node namespace with
/// `ip_forward=1` and a /32 route per pod: what Calico-style routed CNIs do
/// without eBPF, and what Sluice's legacy host routing also goes through.
/// The pods' gateway is `169.254.1.1`, an address of the node's `lo`, so
/// the node answers ARP for it on every veth and sources its own ARP
/// requests from it.
pub struct HostRouted {
    // Pods first: the node namespace goes last.
    pods: Vec<Netns>,
    _node: Netns,
}

const GATEWAY: &str = "169.254.1.1";
const ROUTED_PODS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 197, 2, 2), Ipv4Addr::new(10, 197, 2, 3)];

impl HostRouted {
    pub fn new() -> anyhow::Result<Self> {
        let node = Netns::new()?;
        run_in(
            &node,
            "ip",
            &["addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"],
        )?;
        run_in(&node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let mut pods = Vec::new();
        for (ip, host) in ROUTED_PODS.iter().zip(["veth-a", "veth-b"]) {
            let pod = Netns::new()?;
            let addr: IpNet = format!("{ip}/32").parse()?;
            connect(
                VethEnd {
                    ns: &pod,
                    ifname: "eth0",
                    addrs: &[addr],
                },
                VethEnd {
                    ns: &node,
                    ifname: host,
                    addrs: &[],
                },
            )
            .context("host-routed path")?;
            run_in(
                &pod,
                "ip",
                &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
            )?;
            run_in(
                &pod,
                "ip",
                &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
            )?;
            run_in(
                &node,
                "ip",
                &["route", "add", &format!("{ip}/32"), "dev", host],
            )?;
            pods.push(pod);
        }
        Ok(Self { pods, _node: node })
    }
}

impl Topology for HostRouted {
    fn client(&self) -> &Netns {
        &self.pods[0]
    }
    fn server(&self) -> &Netns {
        &self.pods[1]
    }
    fn server_ip(&self) -> Ipv4Addr {
        ROUTED_PODS[1]
    }
}
