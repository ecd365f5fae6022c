//! The Sluice binaries under test: `sluice-agent` run inside a test
//! namespace ([`Agent`]), `sluicectl` ([`Sluicectl`]), and the pin
//! directory they share ([`BpffsDir`]), which is always cleaned up.
//!
//! Binaries come from `$SLUICE_BIN_DIR`, by default `<workspace>/target/debug`
//! (`cargo build -p cni-agent` puts them there).

use std::{
    io::{Read as _, Seek as _},
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

use crate::{random_hex, Netns};

/// Where the Sluice binaries are: `$SLUICE_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/debug`, else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("debug");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// The path of binary `name`, which must exist.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p cni-agent` or point SLUICE_BIN_DIR at it",
            path.display()
        );
    }
    Ok(path)
}

/// Prefix of every pin directory the tests use: `sluice-test-<8 hex>`.
pub const BPFFS_PREFIX: &str = "sluice-test-";

/// A pin directory of its own, `/sys/fs/bpf/sluice-test-<8 hex>` (created
/// by the agent). Dropping it runs `sluice-agent --cleanup` on it (which
/// unpins links, so the XDP programs detach) and removes whatever is left.
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    /// A fresh, unused path; nothing is created yet.
    pub fn new() -> Self {
        Self {
            path: Path::new(cni_agent::bpffs::BPFFS_MOUNT)
                .join(format!("{BPFFS_PREFIX}{}", random_hex(8))),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its layout, for reading pinned maps with the agent library.
    pub fn layout(&self) -> cni_agent::bpffs::PinLayout {
        cni_agent::bpffs::PinLayout::new(&self.path)
    }

    /// Runs `sluice-agent --cleanup --bpffs-dir DIR`; fails with its stderr
    /// when it fails.
    pub fn cleanup(&self) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bin("sluice-agent")?);
        cmd.arg("--cleanup").arg("--bpffs-dir").arg(&self.path);
        let output = cmd.output().context("running sluice-agent --cleanup")?;
        if !output.status.success() {
            bail!(
                "sluice-agent --cleanup --bpffs-dir {} failed ({}): {}",
                self.path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }
}

impl Default for BpffsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(err) = self.cleanup() {
            eprintln!("warning: {err:#}");
        }
        if self.path.exists() {
            // Pins are files to unlink; remove_dir_all handles the tree.
            if let Err(err) = std::fs::remove_dir_all(&self.path) {
                eprintln!("warning: removing {}: {err}", self.path.display());
            }
        }
    }
}

/// How long [`Agent::start`] waits for the ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `sluice-agent`, in a test namespace, logging to a file of its
/// own. Dropping it kills it (SIGKILL); its log is printed when that drop
/// happens during a panic, to show why a test failed.
///
/// Unless the arguments name them, `--state-dir` and `--api-socket` point
/// into a temporary directory of the agent's own, so no test touches the
/// machine's `/var/run/sluice`.
pub struct Agent {
    child: Child,
    log: tempfile::NamedTempFile,
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `sluice-agent --bpffs-dir DIR ARGS...` inside `ns` and waits
    /// until it logs that it is ready (at most 20 s).
    pub fn start(ns: &Netns, bpffs: &BpffsDir, args: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self::spawn(ns, bpffs, args)?;
        agent.wait_ready(READY_TIMEOUT)?;
        Ok(agent)
    }

    /// Starts it without waiting for the ready line.
    pub fn spawn(ns: &Netns, bpffs: &BpffsDir, args: &[&str]) -> anyhow::Result<Self> {
        let log = tempfile::Builder::new()
            .prefix("sluice-agent-")
            .suffix(".log")
            .tempfile()
            .context("creating the agent log file")?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-agent-")
            .tempdir()
            .context("creating the agent's state dir")?;
        let mut cmd = Command::new(bin("sluice-agent")?);
        cmd.arg("--bpffs-dir").arg(bpffs.path());
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.path().join("state"));
        }
        if !args.contains(&"--api-socket") {
            cmd.arg("--api-socket").arg(dir.path().join("agent.sock"));
        }
        cmd.args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            // Its own process group: a Ctrl-C on the terminal reaches the
            // test or demo, whose guards then stop the agent and clean up.
            .process_group(0);
        let netns_fd = ns.fd().as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe syscalls run
        // (setns, prctl), on an fd that stays open in the parent meanwhile.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // std passes the signal mask on to children; the demo blocks
                // SIGINT/SIGTERM in all its threads, and an agent started with
                // them blocked would never see its SIGTERM.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::other("pthread_sigmask"));
                }
                // Die with the thread that started us, should the test
                // process be killed before its guards run.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Self {
            child,
            log,
            status: None,
            dir,
        })
    }

    /// Its `--state-dir` when the arguments did not name one.
    pub fn default_state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Its `--api-socket` when the arguments did not name one.
    pub fn default_api_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = self.log.reopen() {
            let _ = file.rewind();
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Waits until the log has the ready line; fails, with the log, when the
    /// agent exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.log().contains(cni_agent::agent::READY_MESSAGE) {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                self.status = Some(status);
                bail!(
                    "sluice-agent exited ({status}) before it was ready; its log:\n{}",
                    self.log()
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "sluice-agent not ready after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.status.is_none() && self.child.try_wait()?.is_none() {
            kill(Pid::from_raw(self.child.id() as i32), signal)
                .with_context(|| format!("sending {signal} to sluice-agent"))?;
        }
        Ok(())
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().context("waiting for sluice-agent")?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits at most `timeout` for it to exit; `None` when it is still up.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status {
                return Ok(Some(status));
            }
            if let Some(status) = self.child.try_wait()? {
                self.status = Some(status);
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then wait.
    pub fn sigkill(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }

    /// SIGTERM, then wait up to 10 s for a clean exit; fails (and kills it)
    /// if it does not exit, or exits with an error.
    pub fn sigterm(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        match self.wait_timeout(Duration::from_secs(10))? {
            Some(status) if status.success() => Ok(status),
            Some(status) => bail!(
                "sluice-agent exited with {status} on SIGTERM; its log:\n{}",
                self.log()
            ),
            None => {
                let _ = self.sigkill();
                bail!(
                    "sluice-agent ignored SIGTERM for 10 s; its log:\n{}",
                    self.log()
                )
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let was_running = self.status.is_none();
        let _ = self.sigkill();
        if std::thread::panicking() {
            eprintln!(
                "---- sluice-agent (pid {}) log{} ----\n{}---- end of sluice-agent log ----",
                self.child.id(),
                if was_running {
                    ", killed by the test guard"
                } else {
                    ""
                },
                self.log()
            );
        }
    }
}

/// Runs `sluicectl --bpffs-dir DIR ...`.
#[derive(Clone, Debug)]
pub struct Sluicectl {
    bpffs_dir: PathBuf,
}

impl Sluicectl {
    /// For the pins under `bpffs`.
    pub fn new(bpffs: &BpffsDir) -> Self {
        Self {
            bpffs_dir: bpffs.path().to_owned(),
        }
    }

    /// The command line `args` would run, as a person would type it.
    pub fn command_line(&self, args: &[&str]) -> String {
        let mut line = format!("sluicectl --bpffs-dir {}", self.bpffs_dir.display());
        for arg in args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// Runs it and returns stdout; fails with stderr on a non-zero exit.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(bin("sluicectl")?)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running sluicectl")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let how = match output.status.signal() {
                Some(signal) => format!("killed by signal {signal}"),
                None => format!("exit {}", output.status.code().unwrap_or(-1)),
            };
            bail!(
                "`{}` failed ({how}):\n{}{}",
                self.command_line(args),
                String::from_utf8_lossy(&output.stderr),
                stdout
            );
        }
        Ok(stdout)
    }

    /// Runs it with `-o json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let stdout = self.run(&full)?;
        serde_json::from_str(&stdout)
            .with_context(|| format!("`{}` printed no JSON:\n{stdout}", self.command_line(&full)))
    }

    /// `filter list -o json`: the installed rules.
    pub fn filter_list(&self) -> anyhow::Result<Vec<Value>> {
        match self.json(&["filter", "list"])? {
            Value::Array(rules) => Ok(rules),
            other => bail!("`filter list -o json` printed {other}, not an array"),
        }
    }

    /// `filter add ARGS -o json`: the added rule.
    pub fn filter_add(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["filter", "add"];
        full.extend_from_slice(args);
        self.json(&full)
    }

    /// `filter del ARGS` (an id, or the match flags of `filter add`).
    pub fn filter_del(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["filter", "del"];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// `counters -o json`: `{"reasons": [...], "rules": [...]}`.
    pub fn counters(&self) -> anyhow::Result<Value> {
        self.json(&["counters"])
    }

    /// Packets counted for the drop/pass reason named `reason` (e.g.
    /// `prefilter-drop-proto`).
    pub fn reason_packets(&self, reason: &str) -> anyhow::Result<u64> {
        let counters = self.counters()?;
        counters["reasons"]
            .as_array()
            .context("`counters -o json` has no reasons array")?
            .iter()
            .find(|r| r["reason"] == reason)
            .and_then(|r| r["packets"].as_u64())
            .with_context(|| format!("no reason {reason} in `counters -o json`: {counters}"))
    }

    /// Packets matched by rule `id`.
    pub fn rule_packets(&self, id: u64) -> anyhow::Result<u64> {
        self.filter_list()?
            .iter()
            .find(|r| r["id"].as_u64() == Some(id))
            .and_then(|r| r["packets"].as_u64())
            .with_context(|| format!("no rule {id} in `filter list -o json`"))
    }
}
