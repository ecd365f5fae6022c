//! The agent's life: validate input, load and pin the datapath, apply the
//! prefilter rules, attach uplinks, forward eBPF logs, serve metrics, and on
//! SIGTERM exit leaving every pin in place so filtering goes on.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use aya::programs::XdpMode;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    attach::{ifindex, sync_uplinks},
    bpffs::{ensure_bpffs, PinLayout},
    loader,
    maps::{prefilter::PrefilterMaps, PinLock},
    metrics,
    rules::{load_rules_file, Rule},
};

/// Everything `sluice-agent` is told on its command line.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Root of the pins.
    pub bpffs_dir: PathBuf,
    /// Interfaces that get the XDP prefilter.
    pub uplinks: Vec<String>,
    /// Rules file; `None` means no config rules (runtime rules stay).
    pub prefilter: Option<PathBuf>,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// aya-log level in the kernel (0 off .. 5 trace).
    pub ebpf_log_level: u8,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// Line logged once the datapath is in place (tests and scripts wait for it).
pub const READY_MESSAGE: &str = "sluice-agent ready";

/// Sets the datapath up as configured. Input is checked first: a bad rules
/// file or a missing uplink fails before anything is loaded or changed.
pub fn setup(config: &AgentConfig) -> anyhow::Result<(PinLayout, aya::Ebpf)> {
    let rules: Vec<Rule> = match &config.prefilter {
        Some(path) => load_rules_file(path)?,
        None => Vec::new(),
    };
    for uplink in &config.uplinks {
        ifindex(uplink).with_context(|| format!("--uplink {uplink}"))?;
    }

    ensure_bpffs(&config.bpffs_dir)?;
    let layout = PinLayout::new(&config.bpffs_dir);
    let _lock = PinLock::acquire(&layout)?;
    let loaded = loader::load(&layout, config.ebpf_log_level)?;
    for (map, check) in &loaded.maps {
        tracing::debug!(map, ?check, "map pin");
    }
    for (prog, pin) in &loaded.progs {
        tracing::info!(prog, ?pin, "program pin");
    }

    let report = PrefilterMaps::open(&layout)?.sync_config(&rules)?;
    for rule in &report.added {
        tracing::info!(id = rule.id, rule = %rule.rule, "prefilter rule added from config");
    }
    for rule in &report.changed {
        tracing::info!(id = rule.id, rule = %rule.rule, "prefilter rule updated from config");
    }
    for rule in &report.removed {
        tracing::info!(id = rule.id, rule = %rule.rule, "prefilter rule removed (left the config)");
    }

    sync_uplinks(&layout, &config.uplinks, config.xdp_mode)?;
    Ok((layout, loaded.ebpf))
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let (layout, mut ebpf) = setup(&config)?;

    // eBPF log records (aya-log) go into this process's log. The ring
    // buffer is pinned, so records from programs an earlier agent loaded
    // arrive here too.
    let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(tokio::spawn(forward_ebpf_logs(logger))),
        Err(err) => {
            tracing::warn!(%err, "eBPF log forwarding unavailable");
            None
        }
    };
    let metrics = match config.metrics_addr {
        Some(addr) => Some(tokio::spawn(metrics::serve(addr, layout.clone()).await?)),
        None => None,
    };

    tracing::info!(bpffs = %layout.root().display(), uplinks = ?config.uplinks, "{READY_MESSAGE}");

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting; pins and links stay, filtering continues"),
        _ = int.recv() => tracing::info!("SIGINT: exiting; pins and links stay, filtering continues"),
    }
    for task in [logs, metrics].into_iter().flatten() {
        task.abort();
    }
    // Dropping `ebpf` closes our fds only: maps, programs and links live on
    // through their pins.
    drop(ebpf);
    Ok(())
}

async fn forward_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and keeps it open for as
    // long as the AsyncFd that wraps it exists.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(err) => {
            let (_, err) = err.into_parts();
            tracing::warn!(%err, "eBPF log forwarding unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
