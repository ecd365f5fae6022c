//! `sluice-ipam`: the IPAM plugin binary, a drop-in for host-local. A thin
//! shell over `cni_plugin::ipam`: reads `CNI_*` and the config on stdin,
//! prints the result or the spec's error JSON on stdout; logs go to stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

use cni_plugin::error::{CniError, Code};
use cni_plugin::ipam::{self, IpamEnv};
use cni_plugin::types::{is_supported, parse_version, SUPPORTED_VERSIONS};
use serde_json::{json, Value};

/// Version written in errors when the request's is unknown or unusable.
const FALLBACK_VERSION: &str = "1.1.0";

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    let (version, outcome) = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&command, &stdin, &IpamEnv::from_process_env()),
        Err(e) => (
            FALLBACK_VERSION.to_string(),
            Err(CniError::io("cannot read the network config from stdin")
                .with_details(e.to_string())),
        ),
    };
    let (output, code) = match outcome {
        Ok(Some(value)) => (Some(value), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("sluice-ipam: {command}: {e}");
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(value) = output {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{value}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    code
}

/// Runs one command; returns the version to write errors in and the JSON
/// to print on success (none for DEL, CHECK, GC, STATUS).
fn run(command: &str, stdin: &[u8], env: &IpamEnv) -> (String, Result<Option<Value>, CniError>) {
    let netconf: Value = match serde_json::from_slice(stdin) {
        Ok(v) => v,
        Err(e) => {
            let err =
                CniError::decode("invalid network config on stdin").with_details(e.to_string());
            return (FALLBACK_VERSION.into(), Err(err));
        }
    };
    let version = netconf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if command == "VERSION" {
        let shown = if version.is_empty() {
            FALLBACK_VERSION
        } else {
            &version
        };
        return (
            shown.into(),
            Ok(Some(
                json!({ "cniVersion": shown, "supportedVersions": SUPPORTED_VERSIONS }),
            )),
        );
    }
    if !is_supported(&version) {
        let err = CniError::new(
            Code::IncompatibleVersion,
            format!(
                "incompatible CNI version {version:?}; sluice-ipam supports {SUPPORTED_VERSIONS:?}"
            ),
        );
        return (FALLBACK_VERSION.into(), Err(err));
    }
    let outcome = version_allows(command, &version).and_then(|()| match command {
        "ADD" => ipam::local_add(&netconf, env)
            .and_then(|r| ipam::result_json(&r, &version))
            .map(Some),
        "DEL" => ipam::local_del(&netconf, env).map(|()| None),
        "CHECK" => ipam::local_check(&netconf, env).map(|()| None),
        "GC" => ipam::local_gc(&netconf).map(|_| None),
        "STATUS" => ipam::local_status(&netconf).map(|()| None),
        "" => Err(CniError::env("CNI_COMMAND", "not set")),
        other => Err(CniError::env(
            "CNI_COMMAND",
            format!("unknown command {other:?}"),
        )),
    });
    (version, outcome)
}

/// CHECK exists from 0.4.0, GC and STATUS from 1.1.0 (code 1 before).
fn version_allows(command: &str, version: &str) -> Result<(), CniError> {
    let since = match command {
        "CHECK" => (0, 4, 0),
        "GC" | "STATUS" => (1, 1, 0),
        _ => return Ok(()),
    };
    if parse_version(version)? < since {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("config version {version} does not allow {command}"),
        ));
    }
    Ok(())
}
