//! Network sysctls, written through `/proc/sys` in the namespace of the
//! calling thread.
//!
//! The kernel resolves `/proc/sys/net/...` against the network namespace of
//! the task doing the lookup (not of the process), so a thread that entered
//! a namespace with `setns` reads and writes that namespace's values. Call
//! these from inside [`crate::netns::run_in`] / [`crate::netns::run_here`].
//! Paths are built from segments, never by replacing dots, because interface
//! names may contain dots (`eth0.100`).

use std::path::PathBuf;

use crate::error::{CniError, CniResult};

/// The `/proc/sys` path of a sysctl given as segments.
pub fn path(segments: &[&str]) -> CniResult<PathBuf> {
    let mut p = PathBuf::from("/proc/sys");
    for seg in segments {
        if seg.is_empty() || *seg == "." || *seg == ".." || seg.contains('/') {
            return Err(CniError::config(format!(
                "invalid sysctl path segment {seg:?}"
            )));
        }
        p.push(seg);
    }
    Ok(p)
}

/// Writes `value` to the sysctl `segments` (e.g. `["net", "ipv4",
/// "ip_forward"]`). Skips the write when the value is already set, so an
/// unchanged sysctl never needs write access.
pub fn set(segments: &[&str], value: &str) -> CniResult<()> {
    let p = path(segments)?;
    if let Ok(current) = std::fs::read_to_string(&p) {
        if current.trim() == value {
            return Ok(());
        }
    }
    std::fs::write(&p, value)
        .map_err(|e| CniError::kernel(format!("writing {value} to {}: {e}", p.display())))
}

/// Reads the sysctl `segments`, trimmed.
pub fn get(segments: &[&str]) -> CniResult<String> {
    let p = path(segments)?;
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_owned())
        .map_err(|e| CniError::kernel(format!("reading {}: {e}", p.display())))
}

/// `net.ipv4.ip_forward = 1`.
pub fn enable_ipv4_forwarding() -> CniResult<()> {
    set(&["net", "ipv4", "ip_forward"], "1")
}

/// `net.ipv6.conf.all.forwarding = 1`.
pub fn enable_ipv6_forwarding() -> CniResult<()> {
    set(&["net", "ipv6", "conf", "all", "forwarding"], "1")
}

/// `net.ipv4.conf.<ifname>.<key> = value`.
pub fn set_ipv4_conf(ifname: &str, key: &str, value: &str) -> CniResult<()> {
    set(&["net", "ipv4", "conf", ifname, key], value)
}

/// `net.ipv6.conf.<ifname>.<key> = value`. A no-op when IPv6 is disabled
/// (no `/proc/sys/net/ipv6`), so IPv4-only nodes work.
pub fn set_ipv6_conf(ifname: &str, key: &str, value: &str) -> CniResult<()> {
    if !path(&["net", "ipv6"])?.exists() {
        return Ok(());
    }
    set(&["net", "ipv6", "conf", ifname, key], value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_dotted_interface_names_whole() {
        let p = path(&["net", "ipv4", "conf", "eth0.100", "proxy_arp"]).unwrap();
        assert_eq!(
            p,
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/proxy_arp")
        );
        assert!(path(&["net", "..", "x"]).is_err());
        assert!(path(&["net", "a/b"]).is_err());
    }
}
