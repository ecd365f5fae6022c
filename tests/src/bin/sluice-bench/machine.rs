//! What the numbers were measured on, read from `/proc`, and which code.

use std::{path::Path, process::Command};

use serde_json::{json, Value};

/// The machine and the code under test.
#[derive(Clone, Debug)]
pub struct Machine {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs listed in `/proc/cpuinfo`.
    pub cores: usize,
    /// Whether `/proc/cpuinfo` has the `hypervisor` flag (a VM).
    pub virtualized: bool,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `MemTotal` of `/proc/meminfo`, in MiB.
    pub memory_mib: u64,
    /// `HEAD` of the workspace, with `-dirty` when the sources of what
    /// runs (plugin, agent, datapath) differ from it.
    pub commit: String,
    /// Those sources that differ from `HEAD` (`git status --porcelain`).
    pub dirty: Vec<String>,
    /// Version of Debian's containernetworking-plugins.
    pub reference_version: String,
}

impl Machine {
    pub fn describe(workspace: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, name: &str| -> Option<String> {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        };
        let cpu = cpuinfo
            .lines()
            .find_map(|l| field(l, "model name"))
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        let virtualized = cpuinfo
            .lines()
            .filter_map(|l| field(l, "flags"))
            .any(|flags| flags.split_whitespace().any(|f| f == "hypervisor"));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| field(l, "MemTotal"))
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let (commit, dirty) = commit(workspace);
        Self {
            cpu,
            cores,
            virtualized,
            kernel,
            memory_mib,
            commit,
            dirty,
            reference_version: output(Command::new("dpkg-query").args([
                "-W",
                "-f",
                "${Version}",
                "containernetworking-plugins",
            ]))
            .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        format!(
            "{}, {} CPUs{}, {} MiB, Linux {}",
            self.cpu,
            self.cores,
            if self.virtualized { " (VM)" } else { "" },
            self.memory_mib,
            self.kernel
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "cpu": self.cpu,
            "cores": self.cores,
            "virtualized": self.virtualized,
            "kernel": self.kernel,
            "memory_mib": self.memory_mib,
            "sluice_commit": self.commit,
            "sluice_dirty_paths": self.dirty,
            "containernetworking_plugins": self.reference_version,
        })
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    // trim_end only: `git status --porcelain` lines start with a space.
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn commit(workspace: &Path) -> (String, Vec<String>) {
    let Some(head) = output(Command::new("git").arg("-C").arg(workspace).args([
        "rev-parse",
        "--short=12",
        "HEAD",
    ])) else {
        return ("unknown".into(), Vec::new());
    };
    // Only the code that runs in the measurement counts.
    let dirty: Vec<String> = output(Command::new("git").arg("-C").arg(workspace).args([
        "status",
        "--porcelain",
        "--",
        "cni-plugin/src",
        "cni-agent/src",
        "cni-ebpf/src",
        "cni-ebpf-common/src",
    ]))
    .map(|text| {
        text.lines()
            .filter_map(|l| l.get(3..))
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default();
    if dirty.is_empty() {
        (head, dirty)
    } else {
        (format!("{head}-dirty"), dirty)
    }
}

/// Now as `2026-11-29T07:40:00Z`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
