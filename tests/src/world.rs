//! Ready-made worlds. [`TwoHosts`]: two "hosts" (namespaces) joined by a
//! veth, the node side with a pin directory of its own for an agent.
//!
//! ```text
//!   netns "node"                         netns "peer"
//!   eth0 10.199.1.1/24  <--- veth --->   eth0 10.199.1.2/24
//!        fd00:199::1/64                       fd00:199::2/64
//!   (sluice-agent --uplink eth0: XDP prefilter on ingress here)
//! ```
//!
//! Fields drop in declaration order: the pin directory is cleaned up (links
//! unpinned, so XDP detaches) before the namespaces go, and the scratch
//! directory last. Agents are the test's own values; declared after the
//! world, they are dropped (killed) before it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use ipnet::IpNet;

use crate::{
    link::{self, VethEnd},
    traffic::{self, PingLoop, TcpEchoServer},
    Agent, BpffsDir, Netns, Sluicectl,
};

/// Name of the interface on both ends of the veth.
pub const IFNAME: &str = "eth0";

/// Two namespaces joined by a veth, plus a pin directory and scratch files.
pub struct TwoHosts {
    /// The pins of this world's agent.
    pub bpffs: BpffsDir,
    /// The node: where the agent runs and the prefilter sits (on `eth0`).
    pub node: Netns,
    /// The other host, sending traffic to the node.
    pub peer: Netns,
    /// Node addresses on `eth0`.
    pub node_v4: IpAddr,
    /// Node IPv6 address.
    pub node_v6: IpAddr,
    /// Peer IPv4 address.
    pub peer_v4: IpAddr,
    /// Peer IPv6 address.
    pub peer_v6: IpAddr,
    /// The IPv4 subnet of the veth.
    pub net_v4: IpNet,
    scratch: tempfile::TempDir,
}

impl TwoHosts {
    /// Builds the world: two namespaces, a veth with IPv4 and IPv6
    /// addresses on both ends, everything up.
    pub fn new() -> anyhow::Result<Self> {
        let net_v4: IpNet = "10.199.1.0/24".parse()?;
        let (node4, peer4): (IpNet, IpNet) = ("10.199.1.1/24".parse()?, "10.199.1.2/24".parse()?);
        let (node6, peer6): (IpNet, IpNet) = ("fd00:199::1/64".parse()?, "fd00:199::2/64".parse()?);
        let world = Self {
            bpffs: BpffsDir::new(),
            node: Netns::new().context("creating the node netns")?,
            peer: Netns::new().context("creating the peer netns")?,
            node_v4: node4.addr(),
            node_v6: node6.addr(),
            peer_v4: peer4.addr(),
            peer_v6: peer6.addr(),
            net_v4,
            scratch: tempfile::Builder::new().prefix("sluice-test-").tempdir()?,
        };
        link::connect(
            VethEnd {
                ns: &world.node,
                ifname: IFNAME,
                addrs: &[node4, node6],
            },
            VethEnd {
                ns: &world.peer,
                ifname: IFNAME,
                addrs: &[peer4, peer6],
            },
        )?;
        world.warm_up()?;
        Ok(world)
    }

    /// Pings the node from the peer on both families until one echo is
    /// answered, so neighbours are resolved before a test counts anything:
    /// an echo request that waits on ARP or ND while a link settles can
    /// miss a short reply window.
    fn warm_up(&self) -> anyhow::Result<()> {
        for dst in [self.node_v4, self.node_v6] {
            let answered = crate::wait_until(Duration::from_secs(5), || {
                traffic::ping(&self.peer, dst, 1, Duration::from_millis(200)).is_ok_and(|n| n == 1)
            });
            anyhow::ensure!(
                answered,
                "{dst} does not answer pings from the peer in a fresh world"
            );
        }
        Ok(())
    }

    /// Writes `contents` to a scratch file `name` and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The scratch directory (removed with the world).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// The arguments the agent gets besides `--bpffs-dir`: the node's eth0
    /// as the uplink, and `extra`.
    pub fn agent_args<'a>(&self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--uplink", IFNAME];
        args.extend_from_slice(extra);
        args
    }

    /// Starts `sluice-agent --bpffs-dir <ours> --uplink eth0 EXTRA...` in
    /// the node namespace and waits until it is ready.
    pub fn start_agent(&self, extra: &[&str]) -> anyhow::Result<Agent> {
        Agent::start(&self.node, &self.bpffs, &self.agent_args(extra))
    }

    /// `sluicectl` for this world's pins.
    pub fn sluicectl(&self) -> Sluicectl {
        Sluicectl::new(&self.bpffs)
    }

    /// Echo replies to `count` echo requests from the peer to the node's
    /// `dst` address (IPv4 or IPv6).
    pub fn ping_node(&self, dst: IpAddr, count: usize) -> anyhow::Result<usize> {
        traffic::ping(&self.peer, dst, count, PING_TIMEOUT)
    }

    /// A ping loop from the peer to the node's `dst`, every 5 ms.
    pub fn ping_loop(&self, dst: IpAddr) -> anyhow::Result<PingLoop> {
        PingLoop::start(&self.peer, dst, Duration::from_millis(5))
    }

    /// A TCP echo server on the node at `ip`.
    pub fn echo_server(&self, ip: IpAddr) -> anyhow::Result<TcpEchoServer> {
        TcpEchoServer::start(&self.node, ip)
    }

    /// Whether the kernel reports an XDP program on the node's eth0.
    pub fn xdp_on_uplink(&self) -> anyhow::Result<bool> {
        Ok(link::xdp_attached(&self.node, IFNAME)?.is_some())
    }

    /// Waits up to `timeout` for the XDP program to leave the node's eth0;
    /// returns whether it did. Unpinning a link is asynchronous: the kernel
    /// frees (and so detaches) the last reference of a bpf_link from a
    /// workqueue, so `--cleanup` returns a moment before XDP is gone.
    pub fn wait_xdp_detached(&self, timeout: Duration) -> anyhow::Result<bool> {
        let mut last = Ok(true);
        let gone = crate::wait_until(timeout, || {
            last = self.xdp_on_uplink();
            matches!(last, Ok(false))
        });
        last?;
        Ok(gone)
    }
}

/// How long [`TwoHosts::ping_node`] waits for replies after the last request.
/// Replies on a veth take well under a millisecond; a dropped request never
/// gets one, so this is also the price of every "0 replies" check.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);
