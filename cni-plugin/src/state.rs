//! Attachment records: one JSON file per container + ifname in the state
//! directory, the plugin's durable account of what ADD built. The agent
//! reads them to learn endpoints (and to prune what has no owner); DEL and
//! CHECK read them to find the host veth and the addresses.
//!
//! # File format (stable API, version 1)
//!
//! Path: `<stateDir>/<containerId>@<ifname>.json`. Container ids never
//! contain `@` (the spec allows only alphanumerics, `_`, `.`, `-`), so the
//! name splits at the first `@`. Files are written to a temporary name in
//! the same directory and renamed over the final name, so a reader sees a
//! whole old or a whole new record, never a partial one. Files whose name
//! starts with `.` are temporaries and not records.
//!
//! ```json
//! {
//!   "version": 1,
//!   "network": "sluice",
//!   "containerId": "c1",
//!   "ifname": "eth0",
//!   "netns": "/var/run/netns/p1",
//!   "endpointId": "00f3a2c19b7d4e51",
//!   "hostVeth": "slc00f3a2c19b7",
//!   "hostIfindex": 12,
//!   "containerMac": "0a:58:0a:16:00:05",
//!   "mode": "routed",
//!   "bridge": null,
//!   "addresses": ["10.22.0.5/24", "fd00::5/64"],
//!   "ipMasq": false,
//!   "podNamespace": "default",
//!   "podName": "web-0",
//!   "podUid": null,
//!   "bpffsDir": "/sys/fs/bpf/sluice",
//!   "createdAt": 1767225600,
//!   "updatedAt": 1767225600
//! }
//! ```
//!
//! - `version`: this layout is 1. A reader refuses a record with a higher
//!   version (code 100 naming the file) instead of guessing; fields are only
//!   ever added with a version bump.
//! - `endpointId`: [`endpoint_id`] as 16 lowercase hex digits (a string, as
//!   JSON numbers above 2^53 lose precision in many readers). It is the
//!   `endpoint_id` of the pod's `ENDPOINTS` entries and the agent's key.
//! - `hostIfindex`: in the node's namespace.
//! - `mode`: `routed` or `bridge`; `bridge` names the bridge in bridge mode.
//! - `addresses`: the pod's addresses with the prefix length IPAM gave.
//! - `podNamespace` / `podName` / `podUid`: from `CNI_ARGS`
//!   (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`), `null` if absent.
//! - `createdAt` / `updatedAt`: seconds since the Unix epoch.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, CniResult};

/// The record layout this code writes and the newest it reads.
pub const STATE_VERSION: u32 = 1;
/// File name suffix of a record.
const SUFFIX: &str = ".json";

/// A stable 64-bit id for a container + ifname: FNV-1a over the container
/// id, a NUL byte and the ifname. Stable across releases and machines (unlike
/// std's `DefaultHasher`), so it can key pinned maps and name veths.
pub fn endpoint_id(container_id: &str, ifname: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// How the pod is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Host routes, link-local gateway.
    Routed,
    /// Host veth on a Linux bridge.
    Bridge,
}

/// One attachment record (see the module docs for the JSON layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Layout version, [`STATE_VERSION`] when written by this code.
    pub version: u32,
    /// Network name (`name` of the config).
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` at ADD.
    pub netns: String,
    /// [`endpoint_id`] as 16 hex digits.
    #[serde(with = "hex_u64")]
    pub endpoint_id: u64,
    /// Host-side veth name.
    pub host_veth: String,
    /// Host-side veth ifindex in the node's namespace.
    pub host_ifindex: u32,
    /// MAC of the container interface.
    pub container_mac: String,
    /// Routed or bridge.
    pub mode: AttachMode,
    /// Bridge name in bridge mode.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The pod's addresses.
    pub addresses: Vec<IpNet>,
    /// Whether masquerade rules were added for the addresses.
    #[serde(default)]
    pub ip_masq: bool,
    /// `hostRouting` of the network (`ebpf` or `legacy`), so the agent can
    /// rewrite the endpoint's `ENDPOINTS` entries after a map migration.
    /// Absent in records written before it existed: legacy.
    #[serde(default)]
    pub host_routing: Option<String>,
    /// `tcAttach` of the network (`tc` or `tcx`): how the programs are
    /// attached, so the agent can move them to new programs after an
    /// upgrade. Absent in records written before it existed: `tcx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tc_attach: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// `K8S_POD_UID`.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// The bpffs directory the programs and maps were taken from.
    pub bpffs_dir: String,
    /// Seconds since the epoch when first written.
    pub created_at: u64,
    /// Seconds since the epoch when last written.
    pub updated_at: u64,
}

impl Attachment {
    /// How its programs were attached: the record's `tcAttach`, `tcx` in
    /// records written before it existed.
    pub fn attach_kind(&self) -> crate::attach::TcAttach {
        self.tc_attach
            .as_deref()
            .and_then(crate::attach::TcAttach::parse)
            .unwrap_or(crate::attach::TcAttach::Tcx)
    }
}

mod hex_u64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16)
            .map_err(|_| D::Error::custom(format!("invalid endpointId {s:?}")))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_container_id(container_id: &str) -> CniResult<()> {
    let ok = !container_id.is_empty()
        && container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && container_id != "."
        && container_id != "..";
    if ok {
        Ok(())
    } else {
        Err(CniError::env(
            "CNI_CONTAINERID",
            format!("{container_id:?} is not a valid container id"),
        ))
    }
}

fn check_ifname(ifname: &str) -> CniResult<()> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(CniError::env(
            "CNI_IFNAME",
            format!("{ifname:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

/// Path of the record of `container_id` + `ifname` under `state_dir`.
pub fn record_path(state_dir: &Path, container_id: &str, ifname: &str) -> CniResult<PathBuf> {
    check_container_id(container_id)?;
    check_ifname(ifname)?;
    Ok(state_dir.join(format!("{container_id}@{ifname}{SUFFIX}")))
}

/// Writes `record` (tmp + fsync + rename). Sets `version` and `updatedAt`;
/// keeps `createdAt` of an existing record for the same attachment.
pub fn write(state_dir: &Path, record: &Attachment) -> CniResult<PathBuf> {
    let path = record_path(state_dir, &record.container_id, &record.ifname)?;
    fs::create_dir_all(state_dir)
        .map_err(|e| CniError::io(format!("creating state dir {}: {e}", state_dir.display())))?;
    let mut record = record.clone();
    record.version = STATE_VERSION;
    record.updated_at = now();
    if let Ok(Some(old)) = read_path(&path) {
        record.created_at = old.created_at;
    }
    if record.created_at == 0 {
        record.created_at = record.updated_at;
    }
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| CniError::io(format!("encoding state: {e}")))?;
    let tmp = state_dir.join(format!(
        ".{}@{}.{}.tmp",
        record.container_id,
        record.ifname,
        std::process::id()
    ));
    let io_err = |what: &str, p: &Path, e: std::io::Error| {
        CniError::io(format!("{what} {}: {e}", p.display()))
    };
    {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
        f.write_all(&json)
            .and_then(|()| f.write_all(b"\n"))
            .map_err(|e| io_err("writing", &tmp, e))?;
        f.sync_all().map_err(|e| io_err("syncing", &tmp, e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("renaming into", &path, e)
    })?;
    Ok(path)
}

fn read_path(path: &Path) -> CniResult<Option<Attachment>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CniError::io(format!("reading {}: {e}", path.display()))),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| CniError::decode(format!("state file {} is not JSON: {e}", path.display())))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if version == 0 || version > u64::from(STATE_VERSION) {
        return Err(CniError::kernel(format!(
            "state file {} has version {version}; this plugin reads versions 1..={STATE_VERSION}",
            path.display()
        )));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| CniError::decode(format!("state file {}: {e}", path.display())))
}

/// The record of `container_id` + `ifname`, `None` when there is none.
pub fn read(state_dir: &Path, container_id: &str, ifname: &str) -> CniResult<Option<Attachment>> {
    read_path(&record_path(state_dir, container_id, ifname)?)
}

/// Every record under `state_dir` (none when the directory is missing),
/// sorted by container id and ifname. Unreadable records are returned as
/// errors beside the good ones, so one bad file never hides the rest.
pub fn list(state_dir: &Path) -> CniResult<(Vec<Attachment>, Vec<CniError>)> {
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => {
            return Err(CniError::io(format!(
                "listing {}: {e}",
                state_dir.display()
            )))
        }
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| CniError::io(format!("listing {}: {e}", state_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(SUFFIX) || !name.contains('@') {
            continue;
        }
        match read_path(&entry.path()) {
            Ok(Some(rec)) => good.push(rec),
            Ok(None) => {}
            Err(e) => bad.push(e),
        }
    }
    good.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    Ok((good, bad))
}

/// Removes the record; a missing record is success. Returns whether one
/// was removed.
pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> CniResult<bool> {
    let path = record_path(state_dir, container_id, ifname)?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CniError::io(format!("removing {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attachment {
        Attachment {
            version: STATE_VERSION,
            network: "net1".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p1".into(),
            endpoint_id: endpoint_id("c1", "eth0"),
            host_veth: "slc0123456789a".into(),
            host_ifindex: 12,
            container_mac: "0a:58:0a:16:00:05".into(),
            mode: AttachMode::Routed,
            bridge: None,
            addresses: vec![
                "10.199.0.5/24".parse().unwrap(),
                "fd00:199::5/64".parse().unwrap(),
            ],
            ip_masq: false,
            host_routing: None,
            tc_attach: None,
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            pod_uid: None,
            bpffs_dir: "/sys/fs/bpf/sluice".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn endpoint_ids_are_stable() {
        // Pinned: changing the hash breaks every node's maps and veth names.
        assert_eq!(endpoint_id("", ""), 0xaf63_bd4c_8601_b7df);
        assert_eq!(endpoint_id("c1", "eth0"), endpoint_id("c1", "eth0"));
        assert_ne!(endpoint_id("c1", "eth0"), endpoint_id("c1e", "th0"));
    }

    #[test]
    fn write_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let rec = sample();
        let path = write(dir.path(), &rec).unwrap();
        assert!(path.ends_with("c1@eth0.json"));
        let text = fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["endpointId"], format!("{:016x}", rec.endpoint_id));
        assert_eq!(json["mode"], "routed");
        assert_eq!(json["podName"], "web-0");
        let back = read(dir.path(), "c1", "eth0").unwrap().unwrap();
        assert_eq!(back.addresses, rec.addresses);
        assert!(back.created_at > 0 && back.updated_at >= back.created_at);
        // Rewrite keeps createdAt.
        let mut again = back.clone();
        again.created_at = 0;
        write(dir.path(), &again).unwrap();
        assert_eq!(
            read(dir.path(), "c1", "eth0").unwrap().unwrap().created_at,
            back.created_at
        );
        let mut other = rec.clone();
        other.container_id = "a0".into();
        write(dir.path(), &other).unwrap();
        fs::write(dir.path().join(".junk.tmp"), "x").unwrap();
        let (all, bad) = list(dir.path()).unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            all.iter()
                .map(|a| a.container_id.as_str())
                .collect::<Vec<_>>(),
            ["a0", "c1"]
        );
        assert!(remove(dir.path(), "c1", "eth0").unwrap());
        assert!(!remove(dir.path(), "c1", "eth0").unwrap());
        assert!(read(dir.path(), "c1", "eth0").unwrap().is_none());
    }

    #[test]
    fn newer_versions_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(sample()).unwrap();
        json["version"] = 2.into();
        fs::write(dir.path().join("c1@eth0.json"), json.to_string()).unwrap();
        assert!(read(dir.path(), "c1", "eth0")
            .unwrap_err()
            .msg
            .contains("version 2"));
        let (good, bad) = list(dir.path()).unwrap();
        assert!(good.is_empty());
        assert_eq!(bad.len(), 1);
        assert!(record_path(dir.path(), "../x", "eth0").is_err());
        assert!(record_path(dir.path(), "c@1", "eth0").is_err());
        assert!(record_path(dir.path(), "c1", "a/b").is_err());
        assert!(list(&dir.path().join("missing")).unwrap().0.is_empty());
    }
}
