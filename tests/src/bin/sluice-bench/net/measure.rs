//! One measurement on one path: an iperf3 TCP stream (1 or 2 flows) with
//! the kernel CPU time it cost, and a `sluice-rr` TCP_RR or TCP_CRR run.
//! Clients run in pod a's namespace on [`CLIENT_CPU`], servers in pod b's
//! on [`SERVER_CPU`].

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::{
    spawn::{output, prepare, run_in, Server, CLIENT_CPU, SERVER_CPU},
    Topology,
};

pub const IPERF_PORT: u16 = 5201;
pub const RR_PORT: u16 = 7100;

/// The servers of one path; killed on drop (before the path's namespaces).
pub struct Servers {
    iperf: Server,
    rr: Server,
    rr_bin: PathBuf,
}

impl Servers {
    /// Starts iperf3 and sluice-rr servers on pod b, loosens pod a's port
    /// range (TCP_CRR opens tens of thousands of connections per run) and
    /// waits until pod a reaches the rr server: the path works end to end.
    pub fn start(path: &dyn Topology, rr_bin: &Path) -> anyhow::Result<Self> {
        let iperf = Server::start(
            path.server(),
            SERVER_CPU,
            Path::new("iperf3"),
            &["-s", "-p", &IPERF_PORT.to_string()],
        )?;
        let listen = format!("0.0.0.0:{RR_PORT}");
        let rr = Server::start(
            path.server(),
            SERVER_CPU,
            rr_bin,
            &["server", "--listen", &listen],
        )?;
        run_in(
            path.client(),
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
        )?;
        let mut servers = Self {
            iperf,
            rr,
            rr_bin: rr_bin.to_owned(),
        };
        let addr = SocketAddr::new(path.server_ip().into(), RR_PORT);
        let started = Instant::now();
        let reached = path.client().run(move || loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(true),
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return Ok(false),
            }
        })?;
        servers.check()?;
        if !reached {
            bail!("pod a cannot reach {addr} within 10 s");
        }
        Ok(servers)
    }

    /// Fails when a server died.
    pub fn check(&mut self) -> anyhow::Result<()> {
        self.iperf.check_alive()?;
        self.rr.check_alive()
    }

    pub fn rr_bin(&self) -> &Path {
        &self.rr_bin
    }
}

/// Kernel time of all CPUs so far: (system + softirq) jiffies of the `cpu`
/// line of `/proc/stat`.
fn kernel_jiffies() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    // cpu user nice system idle iowait irq softirq steal ...
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let (system, softirq) = (fields.get(2), fields.get(6));
    match (system, softirq) {
        (Some(s), Some(i)) => Ok(s + i),
        _ => bail!("short cpu line in /proc/stat: {line}"),
    }
}

/// One iperf3 run.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// Received, Gbit/s.
    pub gbps: f64,
    /// Kernel CPU-seconds per second (sys + softirq, all CPUs) during the
    /// run, divided by `gbps`.
    pub cpu_per_gbps: f64,
}

/// iperf3 from pod a to pod b for `secs` seconds with `flows` parallel
/// streams (`-J`: Gbit/s received). /proc/stat is read right before the
/// client starts and right after it exits; the CPU time is spread over
/// the test's own duration as iperf3 reports it (the few milliseconds of
/// setup around it carry next to no kernel work).
pub fn stream(path: &dyn Topology, secs: u32, flows: u32) -> anyhow::Result<Stream> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &path.server_ip().to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-P",
        &flows.to_string(),
        "--connect-timeout",
        "3000",
        "-J",
    ]);
    prepare(&mut cmd, path.client(), Some(CLIENT_CPU));
    let before = kernel_jiffies()?;
    let out = output(&mut cmd, None, Duration::from_secs(u64::from(secs) + 30))?;
    let after = kernel_jiffies()?;
    let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let received = &v["end"]["sum_received"];
    let (Some(bps), Some(seconds)) = (
        received["bits_per_second"].as_f64(),
        received["seconds"].as_f64(),
    ) else {
        bail!("no end.sum_received in iperf3's output: {}", v["error"]);
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (after.saturating_sub(before)) as f64 / hz / seconds;
    let gbps = bps / 1e9;
    Ok(Stream {
        gbps,
        cpu_per_gbps: cpu / gbps,
    })
}

/// One sluice-rr run.
#[derive(Clone, Copy, Debug)]
pub struct Rr {
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CRR transactions that failed (connect or reset); 0 for RR.
    pub failed: u64,
}

/// `sluice-rr client --mode rr|crr` from pod a to pod b for `secs`.
pub fn rr(path: &dyn Topology, rr_bin: &Path, crr: bool, secs: f64) -> anyhow::Result<Rr> {
    let mut cmd = Command::new(rr_bin);
    cmd.args([
        "client",
        "--connect",
        &SocketAddr::new(path.server_ip().into(), RR_PORT).to_string(),
        "--mode",
        if crr { "crr" } else { "rr" },
        "--seconds",
        &secs.to_string(),
    ]);
    prepare(&mut cmd, path.client(), Some(CLIENT_CPU));
    let out = output(&mut cmd, None, Duration::from_secs_f64(secs + 30.0))?;
    let v: Value = serde_json::from_str(out.trim()).context("sluice-rr output")?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("no {k} in sluice-rr's output: {v}"))
    };
    Ok(Rr {
        tps: num("transactions_per_second")?,
        p50_us: num("p50_us")?,
        p99_us: num("p99_us")?,
        failed: v["failed"].as_u64().unwrap_or(0),
    })
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): how busy the
/// machine was with other work, for the report.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
