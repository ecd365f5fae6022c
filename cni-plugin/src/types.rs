//! The CNI result types, held in their 1.1.0 form and written out in the
//! layout of whichever version the runtime asked for. Shared by the plugin,
//! the in-process IPAM and IPAM delegation (whose results arrive in any
//! supported version).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{CniError, CniResult, Code};

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Whether `version` is one of [`SUPPORTED_VERSIONS`].
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Parses "a.b.c" into a comparable tuple.
pub fn parse_version(version: &str) -> CniResult<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => Ok((a, b, c)),
        _ => Err(CniError::new(
            Code::IncompatibleVersion,
            format!("invalid CNI version {version:?}"),
        )),
    }
}

/// An interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, lowercase colon form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for container-side interfaces; absent for host-side ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Socket path (1.1.0+), unused by Sluice but carried through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI id (1.1.0+), carried through.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. 10.22.0.5/24.
    pub address: IpNet,
    /// Default gateway for this subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means the interface's default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0+).
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    /// Route priority (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route with only destination and gateway.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set (the key is then left out of the result).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result in its 1.1.0 form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniOutput {
    /// Interfaces created or used (left out when empty, as in IPAM results).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniOutput {
    /// Parses a result (a prevResult, or a delegated IPAM's output) of any
    /// supported version. 0.3.x/0.4.0's per-address `version` is dropped;
    /// unknown keys are ignored, as the spec asks of readers.
    pub fn from_json(value: &Value) -> CniResult<Self> {
        let mut value = value.clone();
        if let Some(ips) = value.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                if let Some(obj) = ip.as_object_mut() {
                    obj.remove("version");
                }
            }
        }
        serde_json::from_value(value).map_err(|e| CniError::decode(format!("invalid result: {e}")))
    }

    /// The result in the layout of `version` (which must be supported):
    /// 0.3.x and 0.4.0 carry `version` on each address and no 1.1 fields.
    pub fn to_json(&self, version: &str) -> CniResult<Value> {
        let v = parse_version(version)?;
        if !is_supported(version) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cannot write a result for CNI version {version}"),
            ));
        }
        let mut out = serde_json::to_value(self).map_err(|e| CniError::io(e.to_string()))?;
        let obj = out
            .as_object_mut()
            .ok_or_else(|| CniError::io("result is not an object"))?;
        obj.insert("cniVersion".into(), json!(version));
        if v < (1, 1, 0) {
            strip(obj, "interfaces", &["mtu", "socketPath", "pciID"]);
            strip(
                obj,
                "routes",
                &["mtu", "advmss", "priority", "table", "scope"],
            );
        }
        if v < (1, 0, 0) {
            for (ip, cfg) in obj
                .get_mut("ips")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .zip(&self.ips)
            {
                if let Some(ip) = ip.as_object_mut() {
                    let family = if cfg.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    ip.insert("version".into(), json!(family));
                }
            }
        }
        Ok(out)
    }
}

fn strip(obj: &mut Map<String, Value>, list: &str, keys: &[&str]) {
    for item in obj
        .get_mut(list)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(item) = item.as_object_mut() {
            for key in keys {
                item.remove(*key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniOutput {
        CniOutput {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:16:00:05".into()),
                mtu: Some(1500),
                sandbox: Some("/var/run/netns/p1".into()),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.22.0.5/24".parse().unwrap(),
                gateway: Some("10.22.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v1_1_keeps_new_fields_and_older_versions_drop_them() {
        let r = sample();
        let v11 = r.to_json("1.1.0").unwrap();
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert_eq!(v11["routes"][0]["mtu"], 1400);
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = r.to_json("1.0.0").unwrap();
        assert!(v10["interfaces"][0].get("mtu").is_none());
        assert!(v10["routes"][0].get("mtu").is_none());
        let v04 = r.to_json("0.4.0").unwrap();
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert!(v04.get("dns").is_none());
    }

    #[test]
    fn old_results_parse_back() {
        let r = sample();
        for version in SUPPORTED_VERSIONS {
            let parsed = CniOutput::from_json(&r.to_json(version).unwrap()).unwrap();
            assert_eq!(parsed.ips, r.ips, "{version}");
        }
    }

    #[test]
    fn unsupported_versions_are_code_1() {
        assert_eq!(
            sample().to_json("0.2.0").unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            parse_version("1.x").unwrap_err().code,
            Code::IncompatibleVersion
        );
    }
}
