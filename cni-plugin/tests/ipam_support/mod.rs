//! Helpers shared by the `ipam_*` integration tests: temporary data dirs,
//! network configs, and running a CNI IPAM binary the way a runtime does.

#![allow(dead_code, reason = "each test target uses a different subset")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// The binary under test.
pub const SLUICE_IPAM: &str = env!("CARGO_BIN_EXE_sluice-ipam");
/// Debian's reference plugins.
pub const CNI_DIR: &str = "/usr/lib/cni";

/// The reference host-local, or a panic saying how to get it.
pub fn host_local() -> String {
    let path = format!("{CNI_DIR}/host-local");
    assert!(
        Path::new(&path).exists(),
        "{path} missing: apt-get install -y containernetworking-plugins (cargo xtask setup does)"
    );
    path
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "sluice-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network config named `name` with `ipam` (its `type` and `dataDir` set).
pub fn netconf(
    version: &str,
    name: &str,
    ipam_type: &str,
    data_dir: &Path,
    mut ipam: Value,
) -> Value {
    ipam["type"] = json!(ipam_type);
    ipam["dataDir"] = json!(data_dir);
    json!({ "cniVersion": version, "name": name, "type": "bridge", "ipam": ipam })
}

/// What a plugin run produced.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The error code of a failed run.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure: {self:?}");
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code: {self:?}"))
    }

    /// The addresses of a successful ADD.
    pub fn addresses(&self) -> Vec<String> {
        assert!(self.ok, "expected success: {self:?}");
        addresses(&self.json())
    }
}

/// The `ips[].address` of a result.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|i| i["address"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `binary` with `CNI_COMMAND=command` for container `cid`, `eth0`,
/// and `conf` on stdin, in a clean environment plus `extra`.
pub fn run(
    binary: &str,
    command: &str,
    cid: &str,
    conf: &Value,
    extra: &[(&str, &str)],
) -> Outcome {
    run_raw(
        binary,
        command,
        cid,
        "eth0",
        conf.to_string().as_bytes(),
        extra,
    )
}

/// As [`run`], with the interface name and raw stdin.
pub fn run_raw(
    binary: &str,
    command: &str,
    cid: &str,
    ifname: &str,
    stdin: &[u8],
    extra: &[(&str, &str)],
) -> Outcome {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !cid.is_empty() {
        cmd.env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", format!("/var/run/netns/{cid}"));
    }
    if !ifname.is_empty() {
        cmd.env("CNI_IFNAME", ifname);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// File names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Names in `dir` that are reserved addresses.
pub fn reserved(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}
