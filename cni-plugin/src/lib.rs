//! The Sluice CNI plugin as a library: the protocol (skel), the commands,
//! plumbing and IPAM. `sluice` and `sluice-ipam` are thin shells over it.

pub mod addr;
pub mod args;
pub mod attach;
pub mod bridge;
pub mod cmd;
pub mod config;
pub mod error;
pub mod ipam;
pub mod log;
pub mod masq;
pub mod mtu;
pub mod netlink;
pub mod netns;
pub mod route;
pub mod routed;
pub mod skel;
pub mod state;
pub mod sysctl;
pub mod timing;
pub mod types;
pub mod veth;
