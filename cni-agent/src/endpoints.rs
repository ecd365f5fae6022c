//! Local endpoints: the CNI plugin's attachment records in the state dir
//! (one `<containerId>@<ifname>.json` per attachment, format version 1, see
//! `cni-plugin/src/state.rs`), read at start, on every notify and on a
//! timer. The records are the agent's account of which pods live on this
//! node; an endpoint whose record is gone has its policy entries pruned at
//! the next sync.
//!
//! The reader is deliberately lenient where the plugin's is strict: unknown
//! fields are ignored, and a record it cannot read is reported beside the
//! good ones instead of hiding them. A record of a newer version is refused
//! (its meaning is unknown), as the plugin does.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::{LocalEndpoint, ObjectKey};

/// The record layout version this reader understands.
pub const STATE_VERSION: u64 = 1;

/// The part of an attachment record the agent uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRecord {
    /// Layout version.
    pub version: u64,
    /// Network name.
    #[serde(default)]
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` at ADD.
    #[serde(default)]
    pub netns: String,
    /// The endpoint id (16 hex digits in the file).
    #[serde(with = "hex_u64")]
    pub endpoint_id: u64,
    /// Host-side veth.
    #[serde(default)]
    pub host_veth: String,
    /// Host-side veth ifindex.
    #[serde(default)]
    pub host_ifindex: u32,
    /// `routed` or `bridge`.
    #[serde(default)]
    pub mode: String,
    /// MAC of the pod's interface (`aa:bb:...`).
    #[serde(default)]
    pub container_mac: String,
    /// Whether the plugin added masquerade rules.
    #[serde(default)]
    pub ip_masq: bool,
    /// `ebpf` or `legacy`; absent in records of older plugins (legacy).
    #[serde(default)]
    pub host_routing: Option<String>,
    /// `tc` (cls_bpf filters) or `tcx` (pinned TCX links); absent in
    /// records of older plugins (`tcx`).
    #[serde(default)]
    pub tc_attach: Option<String>,
    /// The pod's addresses with their prefix length.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// `K8S_POD_NAMESPACE`.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// The bpffs directory the plugin attached from.
    #[serde(default)]
    pub bpffs_dir: String,
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

impl StateRecord {
    /// The pod it names: `K8S_POD_NAMESPACE`/`K8S_POD_NAME` (namespace
    /// `default` when only the name is given), `None` without a name.
    pub fn pod(&self) -> Option<ObjectKey> {
        let name = self.pod_name.as_deref().filter(|n| !n.is_empty())?;
        let ns = self
            .pod_namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        Some(ObjectKey::new(ns, name))
    }

    /// The addresses without prefix lengths.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(IpNet::addr).collect()
    }

    /// As the compiler's input.
    pub fn local_endpoint(&self) -> LocalEndpoint {
        LocalEndpoint {
            endpoint_id: self.endpoint_id,
            pod: self.pod(),
            ips: self.ips(),
        }
    }
}

/// A record that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: String,
}

/// What the state dir holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDir {
    /// Readable records, by endpoint id (the first by file name wins should
    /// two share an id).
    pub records: BTreeMap<u64, StateRecord>,
    /// Unreadable ones.
    pub bad: Vec<BadRecord>,
    /// Records skipped because they belong to another pin directory.
    pub foreign: usize,
}

impl StateDir {
    /// The endpoints, as the compiler wants them.
    pub fn local_endpoints(&self) -> Vec<LocalEndpoint> {
        self.records
            .values()
            .map(StateRecord::local_endpoint)
            .collect()
    }

    /// The record of a pod.
    pub fn by_pod(&self, pod: &ObjectKey) -> Option<&StateRecord> {
        self.records
            .values()
            .find(|r| r.pod().as_ref() == Some(pod))
    }
}

/// Whether `name` is the file name of a record (not a temporary, not the
/// agent's own files).
fn is_record_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".json") && name.contains('@')
}

/// Reads one record file.
pub fn read_record(path: &Path) -> Result<StateRecord, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if version == 0 || version > STATE_VERSION {
        return Err(format!(
            "record version {version}; this agent reads versions 1..={STATE_VERSION}"
        ));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Reads every record of `dir` (nothing when it does not exist). Records
/// whose `bpffsDir` is another pin directory than `bpffs_dir` belong to
/// another datapath and are skipped (counted in `foreign`); `None` keeps
/// them all.
pub fn read_state_dir(dir: &Path, bpffs_dir: Option<&Path>) -> std::io::Result<StateDir> {
    let mut out = StateDir::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if is_record_name(&name.to_string_lossy()) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    for path in paths {
        match read_record(&path) {
            Ok(rec) => {
                let mine = bpffs_dir
                    .is_none_or(|b| rec.bpffs_dir.is_empty() || Path::new(&rec.bpffs_dir) == b);
                if !mine {
                    out.foreign += 1;
                    continue;
                }
                out.records.entry(rec.endpoint_id).or_insert(rec);
            }
            // Removed between listing and reading: a DEL in progress.
            Err(_) if !path.exists() => {}
            Err(error) => out.bad.push(BadRecord { path, error }),
        }
    }
    Ok(out)
}

/// A cheap fingerprint of the records in `dir` (names, sizes, mtimes), to
/// notice changes without parsing.
pub fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64, Option<SystemTime>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_record_name(&name) {
                return None;
            }
            let meta = e.metadata().ok()?;
            Some((name, meta.len(), meta.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cid: &str, id: u64, pod: Option<(&str, &str)>) -> serde_json::Value {
        serde_json::json!({
            "version": 1, "network": "n", "containerId": cid, "ifname": "eth0",
            "netns": "/run/netns/x", "endpointId": format!("{id:016x}"),
            "hostVeth": "slc0", "hostIfindex": 5, "containerMac": "0a:00:00:00:00:01",
            "mode": "routed", "bridge": null, "addresses": ["10.199.60.2/24"],
            "ipMasq": false, "podNamespace": pod.map(|p| p.0), "podName": pod.map(|p| p.1),
            "podUid": null, "bpffsDir": "/sys/fs/bpf/x", "createdAt": 1, "updatedAt": 1,
            "someFutureField": true
        })
    }

    #[test]
    fn reads_records_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: &serde_json::Value| {
            fs::write(dir.path().join(name), v.to_string()).unwrap()
        };
        write("c1@eth0.json", &record("c1", 0xab, Some(("ns1", "a"))));
        write("c2@eth0.json", &record("c2", 0xcd, None));
        let mut newer = record("c3", 0xef, None);
        newer["version"] = 2.into();
        write("c3@eth0.json", &newer);
        fs::write(dir.path().join(".c4@eth0.json.tmp"), "x").unwrap();
        fs::create_dir(dir.path().join("agent")).unwrap();
        let mut other = record("c5", 0x11, None);
        other["bpffsDir"] = "/sys/fs/bpf/other".into();
        write("c5@eth0.json", &other);

        let s = read_state_dir(dir.path(), Some(Path::new("/sys/fs/bpf/x/"))).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.foreign, 1);
        assert_eq!(s.bad.len(), 1);
        assert!(s.bad[0].error.contains("version 2"), "{:?}", s.bad);
        let a = &s.records[&0xab];
        assert_eq!(a.pod(), Some(ObjectKey::new("ns1", "a")));
        assert_eq!(a.ips(), vec!["10.199.60.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.records[&0xcd].pod(), None);
        assert_eq!(
            s.by_pod(&ObjectKey::new("ns1", "a")).unwrap().endpoint_id,
            0xab
        );
        assert_eq!(fingerprint(dir.path()).len(), 4);
        assert!(read_state_dir(&dir.path().join("missing"), None)
            .unwrap()
            .records
            .is_empty());
    }
}
