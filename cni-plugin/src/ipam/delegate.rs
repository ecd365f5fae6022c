//! IPAM delegation (CNI spec, section 4): run the IPAM binary named by
//! `ipam.type`, found in `CNI_PATH`, with the same environment and the same
//! config on stdin; its stderr goes to ours, its stdout is its result (any
//! supported version) or its error, which is passed on as a [`CniError`].

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::IpamEnv;
use crate::error::{CniError, CniResult, Code};
use crate::types::{parse_version, CniOutput};

/// Finds the executable `plugin` in the `:`-separated `cni_path`, first
/// match wins. Not found is code 7 naming the type and the path.
pub fn find_plugin(plugin: &str, cni_path: &str) -> CniResult<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(CniError::config(format!(
            "ipam.type {plugin:?} is not a plugin name"
        )));
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    for dir in &dirs {
        let candidate = Path::new(dir).join(plugin);
        let executable = candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
    }
    Err(
        CniError::config(format!("failed to find plugin {plugin:?} in path {dirs:?}"))
            .with_details(format!(
                "ipam.type {plugin:?} is not an executable in CNI_PATH={cni_path:?}"
            )),
    )
}

/// ADD through `plugin`. When it fails, runs DEL with the same input before
/// returning the error, as the spec asks of delegating plugins.
pub fn delegate_add(plugin: &str, config: &[u8], env: &IpamEnv) -> CniResult<CniOutput> {
    let path = find_plugin(plugin, &env.path)?;
    let parsed = exec(&path, plugin, "ADD", config, env).and_then(|stdout| {
        let value: Value = serde_json::from_slice(&stdout).map_err(|e| {
            CniError::decode(format!(
                "delegated IPAM plugin {plugin} printed a result that is not JSON"
            ))
            .with_details(format!("{e}: {:?}", String::from_utf8_lossy(&stdout)))
        })?;
        CniOutput::from_json(&value).map_err(|e| CniError {
            msg: format!("delegated IPAM plugin {plugin}: {}", e.msg),
            ..e
        })
    });
    if parsed.is_err() {
        if let Err(undo) = exec(&path, plugin, "DEL", config, env) {
            eprintln!("sluice: DEL after failed ADD of IPAM plugin {plugin}: {undo}");
        }
    }
    parsed
}

/// DEL through `plugin`.
pub fn delegate_del(plugin: &str, config: &[u8], env: &IpamEnv) -> CniResult<()> {
    let path = find_plugin(plugin, &env.path)?;
    exec(&path, plugin, "DEL", config, env).map(drop)
}

/// CHECK through `plugin` (the config carries the prevResult).
pub fn delegate_check(plugin: &str, config: &[u8], env: &IpamEnv) -> CniResult<()> {
    let path = find_plugin(plugin, &env.path)?;
    exec(&path, plugin, "CHECK", config, env).map(drop)
}

/// GC through `plugin`. GC exists from CNI 1.1.0: for an older config
/// version there is nothing to forward, and this succeeds without running it.
pub fn delegate_gc(plugin: &str, config: &[u8], env: &IpamEnv) -> CniResult<()> {
    if !at_least_1_1(config)? {
        return Ok(());
    }
    let path = find_plugin(plugin, &env.path)?;
    exec(&path, plugin, "GC", config, env).map(drop)
}

/// STATUS through `plugin`; like GC, a no-op below CNI 1.1.0.
pub fn delegate_status(plugin: &str, config: &[u8], env: &IpamEnv) -> CniResult<()> {
    if !at_least_1_1(config)? {
        return Ok(());
    }
    let path = find_plugin(plugin, &env.path)?;
    exec(&path, plugin, "STATUS", config, env).map(drop)
}

fn at_least_1_1(config: &[u8]) -> CniResult<bool> {
    let value: Value = serde_json::from_slice(config)
        .map_err(|e| CniError::decode(format!("invalid network config: {e}")))?;
    match value.get("cniVersion").and_then(Value::as_str) {
        Some(v) => Ok(parse_version(v)? >= (1, 1, 0)),
        None => Ok(false),
    }
}

/// Runs `path` with `CNI_COMMAND=command`, the request's `CNI_*` variables
/// (an empty one is removed, as it would be absent for GC and STATUS) and
/// `config` on stdin. Returns stdout on success.
fn exec(
    path: &Path,
    plugin: &str,
    command: &str,
    config: &[u8],
    env: &IpamEnv,
) -> CniResult<Vec<u8>> {
    let mut cmd = Command::new(path);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        if value.is_empty() {
            cmd.env_remove(key);
        } else {
            cmd.env(key, value);
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        CniError::ipam(format!("cannot run IPAM plugin {}", path.display()))
            .with_details(e.to_string())
    })?;
    // Feed stdin from a thread so a plugin that writes before reading all
    // of it cannot deadlock against us.
    let mut stdin = child.stdin.take();
    let input = config.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            // A plugin that exits without reading stdin breaks the pipe;
            // its exit status tells the story.
            let _ = stdin.write_all(&input);
        }
    });
    let output = child.wait_with_output().map_err(|e| {
        CniError::ipam(format!("IPAM plugin {} did not finish", path.display()))
            .with_details(e.to_string())
    })?;
    let _ = writer.join();
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(plugin_error(plugin, command, &output.stdout, output.status))
}

/// The delegate's error JSON as a [`CniError`]: its code when it is one of
/// the spec's (or Sluice's), else 101 with the original code in the details.
fn plugin_error(
    plugin: &str,
    command: &str,
    stdout: &[u8],
    status: std::process::ExitStatus,
) -> CniError {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return CniError::ipam(format!(
            "delegated IPAM plugin {plugin} failed {command} with no error message ({status})"
        ));
    }
    let Ok(value) = serde_json::from_slice::<Value>(stdout) else {
        return CniError::ipam(format!("delegated IPAM plugin {plugin} failed {command}"))
            .with_details(format!(
                "unparseable error output: {:?}",
                String::from_utf8_lossy(stdout)
            ));
    };
    let raw = value.get("code").and_then(Value::as_u64).unwrap_or(0);
    let msg = value
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let details = value
        .get("details")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match code_from(raw) {
        Some(code) => CniError { code, msg, details },
        None => {
            let extra = format!("{plugin} returned code {raw}");
            let details = if details.is_empty() {
                extra
            } else {
                format!("{details} ({extra})")
            };
            CniError {
                code: Code::Ipam,
                msg,
                details,
            }
        }
    }
}

fn code_from(raw: u64) -> Option<Code> {
    Some(match raw {
        1 => Code::IncompatibleVersion,
        2 => Code::UnsupportedField,
        3 => Code::UnknownContainer,
        4 => Code::InvalidEnvironment,
        5 => Code::IoFailure,
        6 => Code::DecodingFailure,
        7 => Code::InvalidNetworkConfig,
        11 => Code::TryAgainLater,
        50 => Code::PluginNotAvailable,
        51 => Code::PluginNotAvailableLimitedConnectivity,
        100 => Code::Kernel,
        101 => Code::Ipam,
        102 => Code::CheckMismatch,
        103 => Code::PolicyTimeout,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_plugin_is_code_7_naming_type_and_path() {
        let e = find_plugin("no-such-ipam", "/nonexistent:/also-not").unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig);
        assert!(
            e.msg.contains("no-such-ipam") && e.msg.contains("/also-not"),
            "{e}"
        );
        assert_eq!(
            find_plugin("../bin/sh", "/usr").unwrap_err().code,
            Code::InvalidNetworkConfig
        );
    }

    #[test]
    fn codes_round_trip() {
        for code in [
            Code::IncompatibleVersion,
            Code::InvalidNetworkConfig,
            Code::TryAgainLater,
            Code::Ipam,
        ] {
            assert_eq!(code_from(code as u64), Some(code));
        }
        assert_eq!(code_from(999), None);
    }
}
