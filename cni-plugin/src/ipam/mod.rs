//! IP address management. `sluice-ipam` is a drop-in for host-local (same
//! config, same allocation order, same on-disk layout) that adds GC,
//! STATUS, release through an index by container, and reclaim after a
//! reboot. The plugin calls it in process when `ipam.type` is
//! `sluice-ipam` and delegates by exec to any other IPAM binary in
//! `CNI_PATH`; [`add`], [`del`], [`check`], [`gc`](fn@gc) and [`status`] choose.
//!
//! Layers: [`config`] parses, [`store`] is the `Store` trait with [`disk`]
//! and [`fake`] behind it, [`allocator`] picks addresses in a range set,
//! [`ops`] and [`gc`](mod@gc) are the commands over a store, [`delegate`]
//! runs other IPAM binaries.

pub mod allocator;
pub mod config;
pub mod delegate;
pub mod disk;
pub mod fake;
pub mod gc;
pub mod ops;
pub mod store;

use serde_json::Value;

pub use config::{IpamConfig, Range, RangeSet, StoreLocation};
pub use delegate::{delegate_add, delegate_check, delegate_del, delegate_gc, delegate_status};
pub use disk::DiskStore;
pub use fake::FakeStore;
pub use store::{Attachment, Reservation, Store};

use crate::error::{CniError, CniResult};
use crate::types::CniOutput;

/// The `ipam.type` served in process.
pub const SLUICE_IPAM: &str = "sluice-ipam";

/// The request's `CNI_*` parameters, as IPAM (in process or delegated)
/// needs them. Empty strings stand for absent variables (GC and STATUS
/// have no container, netns or ifname).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamEnv {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
}

impl IpamEnv {
    /// The variables of this process's environment (unset ones empty).
    pub fn from_process_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The variables as `get` finds them, e.g. from skel's
    /// `Request::cni_env`: `IpamEnv::from_lookup(|k| req.cni_env.get(k).cloned())`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| get(k).unwrap_or_default();
        Self {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    /// The attachment (code 4 when container id or ifname is unusable).
    pub fn attachment(&self) -> CniResult<Attachment> {
        Attachment::new(&self.container_id, &self.ifname)
    }
}

fn parse_config(config: &[u8]) -> CniResult<Value> {
    serde_json::from_slice(config)
        .map_err(|e| CniError::decode(format!("invalid network config: {e}")))
}

/// ADD for the network config `config` (the bytes the plugin received).
pub fn add(config: &[u8], env: &IpamEnv) -> CniResult<CniOutput> {
    let netconf = parse_config(config)?;
    match config::ipam_type(&netconf)? {
        SLUICE_IPAM => local_add(&netconf, env),
        other => delegate_add(other, config, env),
    }
}

/// DEL for `config`.
pub fn del(config: &[u8], env: &IpamEnv) -> CniResult<()> {
    let netconf = parse_config(config)?;
    match config::ipam_type(&netconf)? {
        SLUICE_IPAM => local_del(&netconf, env),
        other => delegate_del(other, config, env),
    }
}

/// CHECK for `config` (with its prevResult).
pub fn check(config: &[u8], env: &IpamEnv) -> CniResult<()> {
    let netconf = parse_config(config)?;
    match config::ipam_type(&netconf)? {
        SLUICE_IPAM => local_check(&netconf, env),
        other => delegate_check(other, config, env),
    }
}

/// GC for `config` (with `cni.dev/valid-attachments`).
pub fn gc(config: &[u8], env: &IpamEnv) -> CniResult<()> {
    let netconf = parse_config(config)?;
    match config::ipam_type(&netconf)? {
        SLUICE_IPAM => local_gc(&netconf).map(drop),
        other => delegate_gc(other, config, env),
    }
}

/// STATUS for `config`.
pub fn status(config: &[u8], env: &IpamEnv) -> CniResult<()> {
    let netconf = parse_config(config)?;
    match config::ipam_type(&netconf)? {
        SLUICE_IPAM => local_status(&netconf),
        other => delegate_status(other, config, env),
    }
}

/// In-process ADD against the disk store of the network.
pub fn local_add(netconf: &Value, env: &IpamEnv) -> CniResult<CniOutput> {
    let cfg = IpamConfig::parse_with_args(netconf, &env.args)?;
    let att = env.attachment()?;
    let mut store = DiskStore::open(&cfg.data_dir, &cfg.network)?;
    ops::add(&mut store, &cfg, &att, ops::current_boot_id().as_deref())
}

/// In-process DEL. Needs only the network name and data dir, so it works
/// when the ranges no longer parse, and when the store does not exist.
pub fn local_del(netconf: &Value, env: &IpamEnv) -> CniResult<()> {
    let loc = StoreLocation::parse(netconf)?;
    let att = env.attachment()?;
    match DiskStore::open_existing(&loc.data_dir, &loc.network)? {
        None => Ok(()),
        Some(mut store) => ops::del(&mut store, &att, ops::current_boot_id().as_deref()).map(drop),
    }
}

/// In-process CHECK, against the config's prevResult when present.
pub fn local_check(netconf: &Value, env: &IpamEnv) -> CniResult<()> {
    let cfg = IpamConfig::parse_with_args(netconf, &env.args)?;
    let att = env.attachment()?;
    let prev = match netconf.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v) => Some(CniOutput::from_json(v)?),
    };
    let Some(mut store) = DiskStore::open_existing(&cfg.data_dir, &cfg.network)? else {
        return Err(CniError::ipam(format!(
            "container {} ({}) holds no address in network {}: no store at {}",
            att.container_id,
            att.ifname,
            cfg.network,
            cfg.store_dir().display()
        )));
    };
    ops::check(
        &mut store,
        &cfg,
        &att,
        prev.as_ref(),
        ops::current_boot_id().as_deref(),
    )
}

/// In-process GC; returns what was released.
pub fn local_gc(netconf: &Value) -> CniResult<Vec<Reservation>> {
    let loc = StoreLocation::parse(netconf)?;
    let valid = gc::valid_attachments(netconf)?;
    match DiskStore::open_existing(&loc.data_dir, &loc.network)? {
        None => Ok(Vec::new()),
        Some(mut store) => gc::gc(&mut store, &valid, ops::current_boot_id().as_deref()),
    }
}

/// In-process STATUS (code 50 with the reason when unavailable).
pub fn local_status(netconf: &Value) -> CniResult<()> {
    let cfg = IpamConfig::parse(netconf)?;
    let mut store = DiskStore::open(&cfg.data_dir, &cfg.network).map_err(|e| CniError {
        code: crate::error::Code::PluginNotAvailable,
        ..e
    })?;
    ops::status(&mut store, &cfg, ops::current_boot_id().as_deref())
}

/// An IPAM result in the layout of `version`: as [`CniOutput::to_json`],
/// without the `interfaces` list that IPAM results do not carry.
pub fn result_json(out: &CniOutput, version: &str) -> CniResult<Value> {
    let mut value = out.to_json(version)?;
    if out.interfaces.is_empty() {
        if let Some(obj) = value.as_object_mut() {
            obj.remove("interfaces");
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
