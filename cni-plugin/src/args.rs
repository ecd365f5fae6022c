//! `CNI_ARGS`: `K=V;K=V` pairs from the runtime.
//!
//! Parsed the way libcni's `types.LoadArgs` does, which every reference
//! plugin uses (bridge `loadNetConf`, host-local `LoadIPAMConfig`):
//! - the string is split on `;` and each pair on `=`; a pair that does not
//!   split into exactly two parts (`A`, `A=B=C`, and the empty pair a
//!   trailing `;` leaves) is an error ("ARGS: invalid pair");
//! - keys are case-sensitive;
//! - `IgnoreUnknown` takes `1`/`true`/`0`/`false` (any case) and may appear
//!   anywhere in the string;
//! - an unknown key is an error unless `IgnoreUnknown` is true;
//! - a later duplicate overrides an earlier one;
//! - an empty value leaves the field unset (host-local's `IP=`).
//!
//! libcni returns these as plain Go errors, which `skel` reports with its
//! catch-all code 999 (`ErrInternal`). Sluice reports them as code 4,
//! "invalid necessary environment variables", whose message the spec says
//! must name the variable: the fault is in `CNI_ARGS`, not in the network
//! config (code 7 would send the operator to the conflist), and 999 is not
//! a spec code.

use crate::config::{MacAddr, RequestedIp};
use crate::error::{CniError, CniResult};

/// The environment variable.
pub const ENV: &str = "CNI_ARGS";

/// Parsed `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown`.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE`: with `K8S_POD_NAME`, how the agent finds the
    /// pod's policy.
    pub k8s_pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub k8s_pod_name: Option<String>,
    /// `K8S_POD_UID`.
    pub k8s_pod_uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub k8s_pod_infra_container_id: Option<String>,
    /// `IP`: requested address, `<ip>[/<prefix>]` (host-local, static).
    pub ip: Option<RequestedIp>,
    /// `MAC`: requested MAC of the container interface (bridge, tuning).
    pub mac: Option<MacAddr>,
    /// Unknown pairs kept when `IgnoreUnknown` is set, in order.
    pub unknown: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`; empty means no arguments. Errors are code 4 naming
    /// `CNI_ARGS`, with the offending pair in the details.
    pub fn parse(s: &str) -> CniResult<Self> {
        let mut out = Self::default();
        if s.is_empty() {
            return Ok(out);
        }
        for pair in s.split(';') {
            let mut kv = pair.split('=');
            let (Some(key), Some(value), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(bad(format!("invalid pair {pair:?}: expected KEY=VALUE")));
            };
            let text = || (!value.is_empty()).then(|| value.to_string());
            match key {
                "IgnoreUnknown" => {
                    out.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(bad(format!(
                                "invalid pair {pair:?}: IgnoreUnknown must be 1, true, 0 or false"
                            )))
                        }
                    }
                }
                "K8S_POD_NAMESPACE" => out.k8s_pod_namespace = text(),
                "K8S_POD_NAME" => out.k8s_pod_name = text(),
                "K8S_POD_UID" => out.k8s_pod_uid = text(),
                "K8S_POD_INFRA_CONTAINER_ID" => out.k8s_pod_infra_container_id = text(),
                "IP" if value.is_empty() => out.ip = None,
                "IP" => {
                    out.ip = Some(
                        value
                            .parse()
                            .map_err(|why| bad(format!("invalid pair {pair:?}: {why}")))?,
                    )
                }
                "MAC" if value.is_empty() => out.mac = None,
                "MAC" => {
                    out.mac = Some(
                        value
                            .parse()
                            .map_err(|why| bad(format!("invalid pair {pair:?}: {why}")))?,
                    )
                }
                _ => out.unknown.push((key.to_string(), value.to_string())),
            }
        }
        if !out.ignore_unknown && !out.unknown.is_empty() {
            let keys: Vec<&str> = out.unknown.iter().map(|(k, _)| k.as_str()).collect();
            return Err(bad(format!(
                "unknown args {keys:?}; the runtime must pass IgnoreUnknown=1 with arguments meant for other plugins"
            )));
        }
        Ok(out)
    }
}

fn bad(why: String) -> CniError {
    CniError::env(ENV, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn kubernetes_style() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=1-2-3;K8S_POD_NETWORK=x",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.k8s_pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.k8s_pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.k8s_pod_uid.as_deref(), Some("1-2-3"));
        assert_eq!(a.k8s_pod_infra_container_id.as_deref(), Some("abc123"));
        assert_eq!(
            a.unknown,
            vec![("K8S_POD_NETWORK".to_string(), "x".to_string())]
        );
    }

    #[test]
    fn ignore_unknown_may_come_last_and_in_any_case() {
        let a = CniArgs::parse("FOO=bar;IgnoreUnknown=TRUE").unwrap();
        assert!(a.ignore_unknown);
        let e = CniArgs::parse("FOO=bar;IgnoreUnknown=0").unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("CNI_ARGS"));
        assert!(e.details.contains("FOO"));
    }

    #[test]
    fn ip_and_mac() {
        let a = CniArgs::parse("IP=10.1.2.3/24;MAC=0a:58:0a:01:02:03").unwrap();
        assert_eq!(a.ip.unwrap().to_string(), "10.1.2.3/24");
        assert_eq!(a.mac.unwrap().to_string(), "0a:58:0a:01:02:03");
        assert_eq!(CniArgs::parse("IP=").unwrap().ip, None);
    }

    #[test]
    fn malformed_is_code_4() {
        for s in [
            "FOO",
            "A=B=C",
            "IgnoreUnknown=1;",
            ";",
            "=",
            "IgnoreUnknown=yes",
            "IP=10.0.0.256",
            "MAC=nope",
            "ignoreunknown=1;X=1",
        ] {
            let e = CniArgs::parse(s).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment, "{s}");
            assert!(e.msg.contains(ENV), "{s}");
        }
    }
}
