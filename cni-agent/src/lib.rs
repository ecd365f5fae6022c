//! The Sluice node agent as a library: loading and pinning the datapath,
//! attaching the prefilter, the prefilter rule store, and what `sluicectl`
//! reads. `sluice-agent` (main.rs) and `sluicectl` (bin/sluicectl.rs) are
//! thin shells over it; the end-to-end tests use it directly.

pub mod agent;
pub mod api;
pub mod attach;
pub mod bpffs;
pub mod cleanup;
pub mod cli;
pub mod conntrack;
pub mod endpoints;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod restore;
pub mod rules;
pub mod syscall;
pub mod tcx;

/// The eBPF object built by `build.rs` from the `cni-ebpf` crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cni-ebpf"));
