//! Rewriting the `ENDPOINTS` entries of running pods after the map was
//! migrated (an upgrade changed its layout, so the loader replaced it with
//! an empty map). The plugin writes these entries on ADD; without this, pods
//! attached before the upgrade would have none: dropped as spoofed when
//! policy is enforced, and outside eBPF host routing. The state dir's
//! attachment records hold what an entry needs. `SOURCES4`, new or
//! migrated, is filled from `ENDPOINTS`.

use std::ffi::CString;

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use cni_ebpf_common::{
    endpoint::{ENDPOINT_F_HOST_ROUTING, ENDPOINT_F_MASQUERADE},
    maps::{ENDPOINTS, SOURCES4},
    prefilter::FAMILY_IPV4,
    EndpointInfo, EndpointKey, SourceKey4,
};

use crate::{
    bpffs::PinLayout,
    endpoints::{read_state_dir, StateRecord},
    maps::open_pinned,
};

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC of `ifname` in the current network namespace (SIOCGIFHWADDR).
fn interface_mac(ifname: &str) -> std::io::Result<[u8; 6]> {
    let name = CString::new(ifname)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > req.ifr_name.len() {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if ret < 0 {
        return Err(err);
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// The entry a record's endpoint should have, or why it has none: its
/// veth is gone or was recreated under another index.
fn entry_of(record: &StateRecord) -> Result<EndpointInfo, String> {
    let index = crate::attach::ifindex(&record.host_veth).map_err(|e| format!("{e:#}"))?;
    if index != record.host_ifindex {
        return Err(format!(
            "{} has ifindex {index}, the record says {}",
            record.host_veth, record.host_ifindex
        ));
    }
    let host_mac = interface_mac(&record.host_veth).map_err(|e| format!("{e}"))?;
    let mac = parse_mac(&record.container_mac)
        .ok_or_else(|| format!("containerMac {:?}", record.container_mac))?;
    let mut flags = 0;
    if record.mode == "routed" && record.host_routing.as_deref() == Some("ebpf") {
        flags |= ENDPOINT_F_HOST_ROUTING;
        if record.ip_masq {
            flags |= ENDPOINT_F_MASQUERADE;
        }
    }
    Ok(EndpointInfo {
        ifindex: index,
        flags,
        mac,
        host_mac,
        _pad: [0; 4],
        endpoint_id: record.endpoint_id,
    })
}

/// Writes the `ENDPOINTS` entries of every attachment recorded in
/// `state_dir` whose veth still exists (in the current network namespace),
/// as the plugin wrote them. Returns how many endpoints were restored.
pub fn restore_endpoints(layout: &PinLayout, state_dir: &std::path::Path) -> anyhow::Result<usize> {
    let state = read_state_dir(state_dir, Some(layout.root()))
        .with_context(|| format!("reading {}", state_dir.display()))?;
    let mut map: HashMap<MapData, EndpointKey, EndpointInfo> = open_pinned(layout, ENDPOINTS)?;
    let mut restored = 0;
    for record in state.records.values() {
        match entry_of(record) {
            Ok(info) => {
                for addr in record.ips() {
                    map.insert(EndpointKey::of(addr), info, 0)
                        .with_context(|| format!("writing the ENDPOINTS entry of {addr}"))?;
                }
                restored += 1;
            }
            Err(why) => tracing::info!(
                container = %record.container_id,
                "not restoring the endpoint of a record: {why}"
            ),
        }
    }
    Ok(restored)
}

/// Writes the `SOURCES4` entry of every IPv4 `ENDPOINTS` entry: for a
/// `SOURCES4` the loader created (an upgrade from before it) or replaced,
/// so running pods' packets take the fast source lookup again. (Without
/// it they are still found, in `ENDPOINTS`.) Returns how many were written.
pub fn fill_sources(layout: &PinLayout) -> anyhow::Result<usize> {
    let endpoints: HashMap<MapData, EndpointKey, EndpointInfo> = open_pinned(layout, ENDPOINTS)?;
    let mut sources: HashMap<MapData, SourceKey4, EndpointInfo> = open_pinned(layout, SOURCES4)?;
    let mut written = 0;
    for item in endpoints.iter() {
        let (key, info) = item.context("reading ENDPOINTS")?;
        if key.family != FAMILY_IPV4 {
            continue;
        }
        let source = SourceKey4::new(
            info.ifindex,
            [key.addr[0], key.addr[1], key.addr[2], key.addr[3]],
        );
        sources
            .insert(source, info, 0)
            .with_context(|| format!("writing the SOURCES4 entry of {:?}", source))?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("0a:58:0a:f4:01:0b"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x0b])
        );
        assert_eq!(
            parse_mac("0a-58-0a-f4-01-0b"),
            parse_mac("0a:58:0a:f4:01:0b")
        );
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:0b:0c"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:01:0b"), None);
    }
}
