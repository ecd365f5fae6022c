//! The Sluice CNI plugin as a library: the protocol (skel), the commands,
//! plumbing and IPAM. `sluice` and `sluice-ipam` are thin shells over it.

pub mod error;
pub mod types;
