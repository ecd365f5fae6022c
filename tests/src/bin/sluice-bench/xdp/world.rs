//! The `xdp` group's world: one namespace of the bench's own with two veth
//! pairs, `xdp0` (where `sluice-agent --uplink xdp0` attaches the
//! prefilter) and `nft0` (where the nftables baseline's netdev ingress
//! chain sits, with no XDP program on it). Both host ends get the crafted
//! frames' destination MAC, so the frames are unicast to the interface, as
//! real traffic would be. Frames never leave the namespace: they are
//! dropped, or handed to this namespace's stack.

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    process::Command,
};

use anyhow::{ensure, Context as _};
use cni_agent::{
    maps::{counters::read_reasons, prefilter::PrefilterMaps},
    rules::Match,
};
use cni_ebpf_common::{maps::PROG_XDP_PREFILTER, Reason};
use ipnet::IpNet;
use tests::{
    frames::{tcp, Ipv4, DST_MAC, IPPROTO_TCP},
    link, Agent, BpffsDir, Netns,
};

use super::rules::DenySet;
use crate::{bpfrun, policy::nft};

pub const XDP_IF: &str = "xdp0";
pub const NFT_IF: &str = "nft0";
/// Addresses of the host ends (the frames' destination).
const XDP_ADDR: &str = "10.199.80.1/24";
const NFT_ADDR: &str = "10.199.81.1/24";
/// The baseline's table (in the bench's namespace, so a fixed name is fine).
pub const TABLE: &str = "sluice_bench";
const COUNTER: &str = "denied";

pub struct World {
    pub node: Netns,
    pub xdp_ifindex: u32,
    pub nft_ifindex: u32,
    tmp: tempfile::TempDir,
    nft_loaded: bool,
}

impl World {
    pub fn new() -> anyhow::Result<Self> {
        let node = Netns::new()?;
        let tmp = tempfile::Builder::new()
            .prefix("sluice-bench-xdp-")
            .tempdir()?;
        for (ifname, addr) in [(XDP_IF, XDP_ADDR), (NFT_IF, NFT_ADDR)] {
            let peer = format!("{ifname}p");
            link::add_veth(&node, ifname, &node, &peer)?;
            let mac = DST_MAC.map(|b| format!("{b:02x}")).join(":");
            let mut cmd = Command::new("ip");
            cmd.args(["link", "set", "dev", ifname, "address", &mac]);
            nft::run_in(&node, &mut cmd)?;
            link::add_address(&node, ifname, addr.parse()?)?;
            link::set_up(&node, ifname)?;
            link::set_up(&node, &peer)?;
        }
        Ok(Self {
            xdp_ifindex: link::ifindex(&node, XDP_IF)?,
            nft_ifindex: link::ifindex(&node, NFT_IF)?,
            node,
            tmp,
            nft_loaded: false,
        })
    }

    /// A TCP SYN from `src` to the host end of `ifname`, port 80.
    pub fn frame(&self, src: std::net::Ipv4Addr, ifname: &str) -> Vec<u8> {
        let dst: IpNet = if ifname == XDP_IF { XDP_ADDR } else { NFT_ADDR }
            .parse()
            .expect("valid address");
        let IpAddr::V4(dst) = dst.addr() else {
            unreachable!("IPv4 addresses")
        };
        Ipv4::new(src, dst, IPPROTO_TCP).frame(&tcp(40_000, 80))
    }

    /// Replaces the baseline's table: `set`'s CIDRs in an interval set, one
    /// rule on `nft0`'s netdev ingress hook dropping sources in it, with a
    /// named counter.
    pub fn nft_load(&mut self, set: &DenySet) -> anyhow::Result<()> {
        let script = format!(
            "table netdev {TABLE}\ndelete table netdev {TABLE}\n\
             table netdev {TABLE} {{\n\
               counter {COUNTER} {{ }}\n\
               set deny4 {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n\
               chain ingress {{ type filter hook ingress device \"{NFT_IF}\" priority 0; policy accept; ip saddr @deny4 counter name {COUNTER} drop\n }}\n\
             }}\n",
            set.nft_elements()
        );
        nft::apply(&self.node, &script)?;
        self.nft_loaded = true;
        Ok(())
    }

    /// Packets the baseline's rule dropped so far.
    pub fn nft_dropped(&self) -> anyhow::Result<u64> {
        nft::counter_packets(&self.node, "netdev", TABLE, COUNTER)
    }

    /// The prefilter with `set` as its rules file: `sluice-agent` started
    /// in the namespace with `--uplink xdp0 --prefilter FILE`.
    pub fn prefilter(&self, set: &DenySet) -> anyhow::Result<Prefilter> {
        let file = self.tmp.path().join(format!("{}.yaml", set.name));
        std::fs::write(&file, set.rules_yaml())?;
        let bpffs = BpffsDir::new();
        let file_arg = file.to_str().context("utf-8 temp path")?;
        let agent = Agent::start(
            &self.node,
            &bpffs,
            &["--uplink", XDP_IF, "--prefilter", file_arg],
        )?;
        ensure!(
            link::xdp_attached(&self.node, XDP_IF)?.is_some(),
            "the agent attached no XDP program to {XDP_IF}"
        );
        let prog = bpfrun::pinned_prog(&bpffs.layout().prog(PROG_XDP_PREFILTER))?;
        let covering = Match::Cidr(IpNet::V4(set.covering()));
        let rules = PrefilterMaps::open(&bpffs.layout())?.list()?;
        ensure!(
            rules.len() == set.cidrs.len(),
            "the agent installed {} rules of {}",
            rules.len(),
            set.cidrs.len()
        );
        let rule_id = rules
            .iter()
            .find(|r| r.rule.matcher == covering)
            .map(|r| r.id)
            .with_context(|| format!("no rule {covering:?} installed"))?;
        Ok(Prefilter {
            prog,
            rule_id,
            agent: Some(agent),
            bpffs,
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The namespace's end would take the table along; removing it first
        // keeps the order obvious and the error visible.
        if self.nft_loaded {
            if let Err(e) = nft::delete_table(&self.node, "netdev", TABLE) {
                eprintln!("warning: removing the nftables table: {e:#}");
            }
        }
    }
}

/// The prefilter of one rule set. Fields drop in order: the program fd,
/// then the agent (killed), then the pin directory (`--cleanup`, which
/// detaches the XDP link).
pub struct Prefilter {
    prog: OwnedFd,
    /// The rule that covers the frames' source.
    pub rule_id: u32,
    agent: Option<Agent>,
    bpffs: BpffsDir,
}

impl Prefilter {
    /// The pinned `xdp_prefilter` program the agent loaded and attached.
    pub fn prog(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// Packets counted by the covering rule, and by the reason
    /// `prefilter-drop-cidr`.
    pub fn counted(&self) -> anyhow::Result<(u64, u64)> {
        let layout = self.bpffs.layout();
        let rule = PrefilterMaps::open(&layout)?
            .list()?
            .into_iter()
            .find(|r| r.id == self.rule_id)
            .with_context(|| format!("rule {} gone", self.rule_id))?;
        let reason = read_reasons(&layout)?
            .into_iter()
            .find(|r| r.code == Reason::PREFILTER_DROP_CIDR.0)
            .context("no prefilter-drop-cidr counter")?;
        Ok((rule.packets, reason.packets))
    }

    /// The agent's log (for the report when it misbehaves).
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(Agent::log).unwrap_or_default()
    }
}
