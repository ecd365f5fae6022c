//! A DHCP world for the `dhcp` IPAM: [`Dnsmasq`], a DHCP server (dnsmasq,
//! DNS off) inside a namespace the test made, and [`DhcpDaemon`], the
//! reference `dhcp` plugin's daemon (`/usr/lib/cni/dhcp daemon`) with a
//! socket path of its own (`-socketpath`), which the IPAM config names as
//! `daemonSocketPath`. Both are the test's own processes, killed (only
//! they, by pid) when dropped, with their logs shown when a test panics.
//! Nothing is written outside their temp dirs: dnsmasq's lease and pid
//! files are there, and it runs as root (`--user=root`) so it can write
//! them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{
    runtime::{in_netns, which, REFERENCE_PLUGIN_DIR},
    Netns,
};

/// How long either daemon may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A process the test started, its log, killed on drop.
struct Process {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        what: &'static str,
        mut cmd: Command,
        ns: &Netns,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        in_netns(&mut cmd, ns);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what}: {}", crate::runtime::display(&cmd)))?;
        Ok(Self { what, child, log })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready` holds; fails, with the log, when the process
    /// exits first or [`READY_TIMEOUT`] passes.
    fn wait(&mut self, mut ready: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready(&self.log()) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.what,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ----\n{}---- end of {} log ----",
                self.what,
                self.log(),
                self.what
            );
        }
    }
}

/// dnsmasq serving DHCP (and nothing else) on `ifname` of a namespace.
pub struct Dnsmasq {
    process: Process,
    leases: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on `ifname`, leasing `range_start` to
    /// `range_end` (netmask `netmask`, lease time `lease`, e.g. `10m`),
    /// announcing `router` as the default gateway; files under `dir`.
    pub fn start(
        ns: &Netns,
        ifname: &str,
        range: (&str, &str, &str),
        router: &str,
        lease: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let binary = which("dnsmasq", "dnsmasq-base")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let leases = dir.join("dnsmasq.leases");
        let (start, end, netmask) = range;
        let mut cmd = Command::new(binary);
        cmd.args([
            // No config file, no DNS, no /etc/hosts or resolv.conf.
            "--conf-file=/dev/null",
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-dhcp",
            "--user=root",
            "--group=root",
            "--bind-interfaces",
            "--dhcp-authoritative",
        ])
        .arg(format!("--interface={ifname}"))
        .arg(format!("--dhcp-range={start},{end},{netmask},{lease}"))
        .arg(format!("--dhcp-option=option:router,{router}"))
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
        let mut process = Process::spawn("dnsmasq", cmd, ns, dir.join("dnsmasq.log"))?;
        process.wait(|log| log.contains("DHCP, IP range"))?;
        Ok(Self { process, leases })
    }

    /// The lease file's lines (`<expiry> <mac> <ip> <hostname> <client id>`).
    pub fn leases(&self) -> Vec<String> {
        fs::read_to_string(&self.leases)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The reference plugin's DHCP daemon, `dhcp daemon -socketpath SOCKET`.
pub struct DhcpDaemon {
    process: Process,
    socket: PathBuf,
}

impl DhcpDaemon {
    /// Starts it in `ns` with its socket (and log) under `dir`, and waits
    /// until the socket exists.
    pub fn start(ns: &Netns, dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("dhcp.sock");
        let mut cmd = Command::new(Path::new(REFERENCE_PLUGIN_DIR).join("dhcp"));
        cmd.arg("daemon")
            .arg("-socketpath")
            .arg(&socket)
            .arg("-pidfile")
            .arg(dir.join("dhcp.pid"));
        let mut process = Process::spawn("dhcp daemon", cmd, ns, dir.join("dhcp.log"))?;
        let probe = socket.clone();
        process.wait(move |_| probe.exists())?;
        Ok(Self { process, socket })
    }

    /// Its socket (`ipam.daemonSocketPath`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
