//! The end-to-end test world: network namespaces the test creates, veths
//! between them, real traffic, and the Sluice binaries running inside them.
//! Every piece removes what it made when dropped, also when a test panics.
//!
//! - [`netns`]: [`Netns`], a named network namespace entered only on
//!   dedicated threads.
//! - [`link`]: veth pairs, addresses and link state over rtnetlink, opened
//!   inside the namespace.
//! - [`traffic`]: ICMP echo over raw sockets, TCP echo transfers.
//! - [`agent`]: the binaries: [`Agent`], [`Sluicectl`], [`BpffsDir`].
//! - [`frames`]: crafted frames for BPF_PROG_TEST_RUN.
//! - [`datapath`]: the datapath loaded into a pin directory of the test's
//!   own, map writes, program runs, counters and drop events.
//! - [`world`]: ready-made topologies ([`TwoHosts`]).
//! - [`policy_world`]: the NetworkPolicy scenario cluster (9 pods through
//!   the real plugin, the agent, TCP/UDP servers, matrix probes, SCTP
//!   under BPF_PROG_TEST_RUN).
//! - [`runtime`]: real container runtimes (podman, containerd) calling a
//!   CNI plugin.
//! - [`cni`]: CNI plugins and conflists run by hand, the way libcni runs
//!   them.
//! - [`dhcp`]: a DHCP server (dnsmasq) and the reference `dhcp` daemon
//!   for the `dhcp` IPAM.
//!
//! Everything here needs root; [`require_root`] says so plainly.

pub mod agent;
pub mod cni;
pub mod datapath;
pub mod dhcp;
pub mod frames;
pub mod link;
pub mod netns;
pub mod policy_world;
pub mod runtime;
pub mod traffic;
pub mod world;

use std::time::{Duration, Instant};

pub use agent::{bin_dir, Agent, BpffsDir, Sluicectl};
pub use netns::Netns;
pub use traffic::{ping, PingLoop, PingStats, TcpEchoServer};
pub use world::TwoHosts;

/// Fails (panics) with a clear message unless running as root: the tests
/// create namespaces, veths and bpffs pins, and load eBPF programs.
pub fn require_root(what: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "{what} needs root (network namespaces, veths, bpffs, eBPF): \
             run it as root, e.g. `sudo -E cargo test -p tests -- --test-threads=1` \
             or `cargo xtask test`"
        );
    }
}

/// `n` random lowercase hex digits, for names that must not collide.
pub fn random_hex(n: usize) -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
