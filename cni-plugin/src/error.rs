//! CNI errors: the spec's codes, with the offending value in every message.
//! `skel.rs` turns a [`CniError`] into the error JSON on stdout; nothing else
//! does.

use serde::Serialize;

/// Well-known error codes (CNI spec, "Error codes") and Sluice's own (100+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    IoFailure = 5,
    /// 6: failed to decode content.
    DecodingFailure = 6,
    /// 7: invalid network config.
    InvalidNetworkConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (STATUS).
    PluginNotAvailable = 50,
    /// 51: the plugin is not available due to a missing dependency (STATUS).
    PluginNotAvailableLimitedConnectivity = 51,
    /// 100: a kernel (netlink/BPF) operation failed.
    Kernel = 100,
    /// 101: IPAM failed (exhausted range, store error, delegate failure).
    Ipam = 101,
    /// 102: CHECK found the attachment differs from prevResult.
    CheckMismatch = 102,
    /// 103: the agent did not confirm the endpoint's policy in time.
    PolicyTimeout = 103,
}

/// A CNI error: code, message, details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// Spec or Sluice code.
    pub code: Code,
    /// Short message.
    pub msg: String,
    /// Longer explanation (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_default()
    }
}

/// Shorthand constructors, so call sites read as the spec does.
impl CniError {
    /// Code 4 naming the variable.
    pub fn env(var: &str, why: impl Into<String>) -> Self {
        Self::new(Code::InvalidEnvironment, format!("invalid {var}")).with_details(why)
    }
    /// Code 7.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidNetworkConfig, msg)
    }
    /// Code 6.
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(Code::DecodingFailure, msg)
    }
    /// Code 5.
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(Code::IoFailure, msg)
    }
    /// Code 100.
    pub fn kernel(msg: impl Into<String>) -> Self {
        Self::new(Code::Kernel, msg)
    }
    /// Code 101.
    pub fn ipam(msg: impl Into<String>) -> Self {
        Self::new(Code::Ipam, msg)
    }
}

/// Result alias for plugin code.
pub type CniResult<T> = Result<T, CniError>;
