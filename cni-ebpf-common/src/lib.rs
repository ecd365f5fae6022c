//! The kernel ABI shared by the eBPF programs (`cni-ebpf`) and user space
//! (`cni-agent`, `cni-plugin`): map keys and values, map and pin names,
//! stable reason codes.
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields (so a zeroed
//! key really is zeroed: uninitialised padding makes lookups miss), no `bool`
//! and no Rust enums. Byte order is stated per field. Changing a layout is a
//! map migration: bump the map's entry in [`maps::MAP_SPECS`] and the agent
//! replaces the old pin instead of reusing it.
#![no_std]

pub mod counter;
pub mod endpoint;
pub mod layout;
pub mod maps;
pub mod policy;
pub mod prefilter;
pub mod reason;

pub use counter::Counter;
pub use endpoint::{EndpointInfo, EndpointKey, SourceKey4};
pub use prefilter::{ProtoKey, RuleValue};
pub use reason::Reason;
