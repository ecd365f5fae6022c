//! The agent's life: validate input, load and pin the datapath, apply the
//! prefilter rules, attach uplinks, start the policy engine (first sync
//! before the agent says it is ready), serve the API socket and metrics,
//! forward eBPF logs, and on SIGTERM exit leaving every pin in place so
//! filtering and policy go on.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
};

use anyhow::Context as _;
use aya::programs::XdpMode;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    api,
    attach::{ifindex, sync_uplinks},
    bpffs::{ensure_bpffs, PinLayout},
    loader,
    maps::{prefilter::PrefilterMaps, PinLock},
    metrics,
    policy::{
        kube::{wait_first_lists, KubeOptions, FIRST_LIST_WAIT},
        source::Source,
        sync::{Engine, EngineConfig, PolicyStats},
    },
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
    /// The plugin's state dir (attachment records = local endpoints).
    pub state_dir: PathBuf,
    /// The API socket.
    pub api_socket: PathBuf,
    /// Manifests directory (the policy source), if any.
    pub manifests: Option<PathBuf>,
    /// The Kubernetes API as the policy source, if selected.
    pub kube: Option<KubeOptions>,
    /// The node's addresses; empty: those of the agent's network namespace.
    pub node_addresses: Vec<IpAddr>,
    /// Let the node reach every pod whatever ingress policy says.
    pub allow_host: bool,
    /// Enforce policy; `None`: when a policy source is given.
    pub policy_enforcement: Option<bool>,
}

impl AgentConfig {
    /// The policy source, but for the Kubernetes API (started by [`run`]).
    pub fn source(&self) -> Source {
        match &self.manifests {
            Some(dir) => Source::Manifests(dir.clone()),
            None => Source::None,
        }
    }

    /// Whether policy is enforced.
    pub fn enforce(&self) -> bool {
        self.policy_enforcement
            .unwrap_or_else(|| self.source().is_some() || self.kube.is_some())
    }
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
    let endpoints_migrated = loaded.maps.iter().any(|(map, check)| {
        *map == cni_ebpf_common::maps::ENDPOINTS
            && matches!(check, crate::loader::MapPinCheck::Replaced { .. })
    });
    if endpoints_migrated {
        // The plugin wrote the old map's entries; the new one starts empty.
        let restored = crate::restore::restore_endpoints(&layout, &config.state_dir)?;
        tracing::warn!(
            endpoints = restored,
            "ENDPOINTS changed layout: entries rewritten from the state dir"
        );
    }
    let sources_new = loaded.maps.iter().any(|(map, check)| {
        *map == cni_ebpf_common::maps::SOURCES4
            && !matches!(check, crate::loader::MapPinCheck::Reused)
    });
    if endpoints_migrated || sources_new {
        let written = crate::restore::fill_sources(&layout)?;
        if written > 0 {
            tracing::info!(sources = written, "SOURCES4 filled from ENDPOINTS");
        }
    }
    for (prog, pin) in &loaded.progs {
        tracing::info!(prog, ?pin, "program pin");
    }
    // Before the pod programs move to the new maps, and again after.
    let retired_flows = crate::conntrack::copy_retired_flows(&layout)?;

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
    crate::tcx::sync_uplink_routing(&layout, &config.uplinks)?;
    let updated = crate::tcx::update_pod_links(&layout)?;
    if updated > 0 {
        tracing::info!(links = updated, "pod links moved to the current programs");
    }
    // Filters run the program they were given: when the pins now hold
    // other programs (an upgrade, a migrated map), move them over.
    let pod_progs_changed = loaded.progs.iter().any(|(prog, pin)| {
        (*prog == cni_ebpf_common::maps::PROG_FROM_POD
            || *prog == cni_ebpf_common::maps::PROG_TO_POD)
            && *pin != crate::loader::ProgPin::Adopted
    });
    if pod_progs_changed {
        let updated = crate::tcx::update_pod_filters(&layout, &config.state_dir)?;
        if updated > 0 {
            tracing::info!(
                filters = updated,
                "pod filters moved to the current programs"
            );
        }
    }
    if let Some(before) = retired_flows {
        let after = crate::conntrack::copy_retired_flows(&layout)?.unwrap_or(0);
        crate::conntrack::remove_retired(&layout)?;
        tracing::warn!(
            flows = before + after,
            "conntrack split into CT4/CT6: tracked flows carried over, CT removed"
        );
    }
    Ok((layout, loaded.ebpf))
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    if let Some(dir) = &config.manifests {
        if !dir.is_dir() {
            anyhow::bail!("--manifests {}: not a directory", dir.display());
        }
    }
    // The watches start before the datapath loads: an unusable kubeconfig
    // fails before anything changes, and the lists arrive meanwhile.
    let source = match &config.kube {
        Some(kube) => kube.start_source().await?,
        None => config.source(),
    };
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
    // The policy engine, on a thread of its own (map writes are blocking
    // syscalls). It syncs once before the agent reports ready.
    let stats = Arc::new(Mutex::new(PolicyStats::default()));
    wait_first_lists(&source, FIRST_LIST_WAIT).await;
    let mut engine = Engine::start(
        EngineConfig {
            layout: layout.clone(),
            state_dir: config.state_dir.clone(),
            source: source.clone(),
            enforce: config.enforce(),
            allow_host: config.allow_host,
            node_addresses: config.node_addresses.clone(),
        },
        stats.clone(),
    )?;
    let listener = api::bind(&config.api_socket)?;
    let socket_file = api::SocketFile::of(&config.api_socket);
    let (tx, rx) = mpsc::channel();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("policy-engine".into())
        .spawn(move || {
            if let Err(e) = engine.reload_source() {
                tracing::error!("policy source refused; the policy maps keep what they hold: {e}");
            }
            let first = engine.sync();
            match &first {
                Ok(r) => tracing::info!(
                    revision = r.revision,
                    changed = r.changed,
                    endpoints = r.counts.endpoints,
                    entries = r.counts.policy,
                    rules = r.rules,
                    enforcing = r.enforcing,
                    "initial policy sync in {:.3} ms",
                    r.micros as f64 / 1000.0
                ),
                Err(e) => tracing::error!("initial policy sync failed: {e}"),
            }
            let _ = first_tx.send(());
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(rx)));
            if run.is_err() {
                // Without its engine the agent would accept requests it can
                // never answer: better to exit and be restarted (the maps
                // keep the policy meanwhile).
                tracing::error!("the policy engine panicked; exiting");
                std::process::exit(70);
            }
        })
        .context("starting the policy engine thread")?;
    let _ = first_rx.await;
    let api_task = tokio::spawn(api::serve(listener, tx));
    let metrics = match config.metrics_addr {
        Some(addr) => Some(tokio::spawn(
            metrics::serve(addr, layout.clone(), Some(stats.clone())).await?,
        )),
        None => None,
    };

    tracing::info!(
        bpffs = %layout.root().display(),
        uplinks = ?config.uplinks,
        state_dir = %config.state_dir.display(),
        api_socket = %config.api_socket.display(),
        policy_source = %source.describe(),
        enforcing = config.enforce(),
        "{READY_MESSAGE}"
    );

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting; pins and links stay, filtering continues"),
        _ = int.recv() => tracing::info!("SIGINT: exiting; pins and links stay, filtering continues"),
    }
    for task in [logs, metrics, Some(api_task)].into_iter().flatten() {
        task.abort();
    }
    socket_file.remove_if_ours();
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
