//! The `net` group's report: medians per path and metric, ratios of medians
//! to the baselines, the targets with their verdicts; JSON,
//! Markdown and the shared [`Ratio`]s.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{
    measure::{IPERF_PORT, RR_PORT},
    plugins::REFERENCE_DIR,
    spawn::{CLIENT_CPU, SERVER_CPU},
    Metric, Params, PathId, Samples,
};
use crate::{
    machine::Machine,
    ratio::{Better, Ratio},
    stats::{round, Summary},
};

/// The targets: (path, baseline, metric, floor or ceiling).
const TARGETS: [(PathId, PathId, Metric, f64); 7] = [
    (PathId::SluiceRouted, PathId::Veth, Metric::Stream1, 0.95),
    (PathId::SluiceRouted, PathId::Veth, Metric::Stream2, 0.95),
    (
        PathId::SluiceRouted,
        PathId::BridgeRef,
        Metric::Stream1,
        1.15,
    ),
    (
        PathId::SluiceRouted,
        PathId::BridgeRef,
        Metric::Stream2,
        1.15,
    ),
    (PathId::SluiceRouted, PathId::HostRouted, Metric::Rr, 0.97),
    (PathId::SluiceRouted, PathId::HostRouted, Metric::Crr, 0.95),
    (
        PathId::SluiceRouted,
        PathId::HostRouted,
        Metric::CpuPerGbit,
        1.05,
    ),
];

const SLUICE: [PathId; 4] = [
    PathId::SluiceRouted,
    PathId::SluiceRoutedTcx,
    PathId::SluiceLegacy,
    PathId::SluiceBridge,
];

/// One ratio of medians.
struct Comparison {
    path: PathId,
    baseline: PathId,
    metric: Metric,
    value: f64,
    target: Option<f64>,
}

impl Comparison {
    fn met(&self) -> Option<bool> {
        self.target.map(|t| {
            if self.metric.lower_is_better() {
                self.value <= t
            } else {
                self.value >= t
            }
        })
    }

    fn rule(&self) -> String {
        let op = if self.metric.lower_is_better() {
            "≤"
        } else {
            "≥"
        };
        format!(
            "{} {} {op} {:.2}x {}",
            self.path.name(),
            self.metric.label(),
            self.target.unwrap_or(f64::NAN),
            self.baseline.name()
        )
    }
}

pub(super) struct Report {
    pub(super) params: Params,
    pub(super) machine: Machine,
    pub(super) date: String,
    pub(super) samples: Samples,
    /// The plugin logged `hostRouting` as an unknown key.
    pub(super) host_routing_ignored: bool,
    /// bridge-ref, sluice-routed, sluice-routed-legacy, sluice-bridge.
    pub(super) confs: [Value; 5],
    /// Load averages before and after the run.
    pub(super) load: [String; 2],
    /// Cargo profile sluice-rr was built with (that of sluice-bench).
    pub(super) rr_profile: String,
    pub(super) seconds: f64,
}

impl Report {
    fn summary(&self, id: PathId, m: Metric) -> Option<Summary> {
        self.samples.get(&(id, m)).and_then(|v| Summary::of(v))
    }

    fn median(&self, id: PathId, m: Metric) -> Option<f64> {
        self.summary(id, m).map(|s| s.p50)
    }

    fn comparisons(&self) -> Vec<Comparison> {
        let mut pairs = Vec::new();
        for baseline in [PathId::Veth, PathId::HostRouted] {
            for path in PathId::ALL.into_iter().filter(|p| *p != baseline) {
                pairs.extend(Metric::RATIOS.map(|m| (path, baseline, m)));
            }
        }
        for path in SLUICE {
            pairs.extend(Metric::RATIOS.map(|m| (path, PathId::BridgeRef, m)));
        }
        pairs.extend(Metric::RATIOS.map(|m| (PathId::SluiceRoutedXdp, PathId::SluiceRouted, m)));
        pairs.extend(Metric::RATIOS.map(|m| (PathId::SluiceRoutedTcx, PathId::SluiceRouted, m)));
        pairs
            .into_iter()
            .filter_map(|(path, baseline, metric)| {
                let (v, b) = (self.median(path, metric)?, self.median(baseline, metric)?);
                (b > 0.0).then(|| Comparison {
                    path,
                    baseline,
                    metric,
                    value: v / b,
                    target: TARGETS
                        .iter()
                        .find(|t| (t.0, t.1, t.2) == (path, baseline, metric))
                        .map(|t| t.3),
                })
            })
            .collect()
    }

    fn ratio(&self, path: PathId, baseline: PathId, metric: Metric) -> Option<f64> {
        Some(self.median(path, metric)? / self.median(baseline, metric)?)
    }

    fn verdict(&self, comparisons: &[Comparison]) -> String {
        let targets: Vec<&Comparison> = comparisons.iter().filter(|c| c.target.is_some()).collect();
        let missed: Vec<String> = targets
            .iter()
            .filter(|c| c.met() == Some(false))
            .map(|c| {
                format!(
                    "{} vs {} {:.2}x",
                    c.metric.label(),
                    c.baseline.name(),
                    c.value
                )
            })
            .collect();
        if targets.len() < TARGETS.len() {
            format!(
                "only {} of {} targets measured",
                targets.len(),
                TARGETS.len()
            )
        } else if missed.is_empty() {
            format!("all {} met", targets.len())
        } else {
            format!(
                "{} of {} met; missed: {}",
                targets.len() - missed.len(),
                targets.len(),
                missed.join(", ")
            )
        }
    }

    fn host_routing_note(&self) -> &'static str {
        if self.host_routing_ignored {
            "the sluice plugin ignored `hostRouting` as an unknown key (not implemented in this build): sluice-routed and sluice-routed-legacy ran the same datapath"
        } else {
            "the sluice plugin accepted `hostRouting` (it did not log it as an unknown key)"
        }
    }

    /// The group's ratios for the suite summary.
    pub(super) fn ratios(&self) -> Vec<Ratio> {
        self.comparisons()
            .into_iter()
            .map(|c| Ratio {
                group: "net",
                name: format!("{}, {}", c.metric.label(), c.path.name()),
                baseline: c.baseline.name().to_owned(),
                value: c.value,
                better: if c.metric.lower_is_better() {
                    Better::Lower
                } else {
                    Better::Higher
                },
                target: c.target,
            })
            .collect()
    }

    pub(super) fn json(&self) -> Value {
        let comparisons = self.comparisons();
        let p = &self.params;
        let all: Vec<Metric> = self
            .samples
            .keys()
            .map(|(_, m)| *m)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        json!({
            "group": "net",
            "title": "Pod-to-pod TCP on every path: Sluice vs veth, host routing and the reference bridge",
            "date": self.date,
            "quick": p.quick,
            "seconds": round(self.seconds),
            "machine": self.machine.json(),
            "load_average": {"before": self.load[0], "after": self.load[1]},
            "placement": {
                "client_cpu": CLIENT_CPU,
                "server_cpu": SERVER_CPU,
                "clients": "iperf3 -c and sluice-rr client, in pod a's netns",
                "servers": "iperf3 -s and sluice-rr server, in pod b's netns",
                "how": "sched_setaffinity before exec; softirq work runs wherever the kernel runs it",
            },
            "setup": {
                "rounds": p.rounds,
                "order": "every path once per round, order rotated by one path each round",
                "warm_up": "0.3 s TCP_RR and a 1 s iperf3 per path before the first round, not recorded",
                "tcp_stream": format!("iperf3 3.x -t {} (-P 1 and -P 2), port {IPERF_PORT}, Gbit/s of end.sum_received", p.stream_secs),
                "sluice_rr_profile": self.rr_profile,
                "tcp_rr": format!("sluice-rr --mode rr --seconds {}: one connection, TCP_NODELAY, 1-byte request, 1-byte response; port {RR_PORT}", p.rr_secs),
                "tcp_crr": format!("sluice-rr --mode crr --seconds {}: connect, 1-byte request, 1-byte response, close (server closes first, TIME_WAIT on the server; client ports 1024-65535)", p.rr_secs),
                "cpu": "(system + softirq) jiffies of the cpu line of /proc/stat (all CPUs, machine-wide) around the 1-flow iperf3 run, per second of iperf3's own test duration, divided by its Gbit/s",
                "statistic": "median over rounds (nearest rank) with min and max; ratios are ratios of medians",
                "host_routing": self.host_routing_note(),
                "host_routing_ignored": self.host_routing_ignored,
                "paths": PathId::ALL.iter().map(|id| json!({"name": id.name(), "what": id.describe()})).collect::<Vec<_>>(),
                "reference": format!("{REFERENCE_DIR}/bridge + host-local, containernetworking-plugins {}", self.machine.reference_version),
                "config": {
                    "bridge-ref": self.confs[0],
                    "sluice-routed": self.confs[1],
                    "sluice-routed-legacy": self.confs[2],
                    "sluice-bridge": self.confs[3],
                    "sluice-routed-tcx": self.confs[4],
                },
            },
            "targets": {
                "met": comparisons.iter().filter_map(Comparison::met).all(|m| m)
                    && comparisons.iter().filter(|c| c.target.is_some()).count() == TARGETS.len(),
                "verdict": self.verdict(&comparisons),
                "rows": comparisons.iter().filter(|c| c.target.is_some()).map(|c| json!({
                    "rule": c.rule(),
                    "path": c.path.name(),
                    "baseline": c.baseline.name(),
                    "metric": c.metric.key(),
                    "ratio": round(c.value),
                    "target": c.target,
                    "met": c.met(),
                })).collect::<Vec<_>>(),
            },
            "results": PathId::ALL.iter().map(|id| {
                let mut metrics = serde_json::Map::new();
                for m in &all {
                    if let (Some(s), Some(v)) = (self.summary(*id, *m), self.samples.get(&(*id, *m))) {
                        metrics.insert(m.key().into(), json!({
                            "median": round(s.p50),
                            "min": round(s.min),
                            "max": round(s.max),
                            "rounds": v.iter().map(|x| round(*x)).collect::<Vec<_>>(),
                        }));
                    }
                }
                json!({"path": id.name(), "metrics": metrics})
            }).collect::<Vec<_>>(),
            "ratios": comparisons.iter().map(|c| json!({
                "path": c.path.name(),
                "baseline": c.baseline.name(),
                "metric": c.metric.key(),
                "ratio": round(c.value),
                "better": if c.metric.lower_is_better() { "lower" } else { "higher" },
                "target": c.target,
                "met": c.met(),
            })).collect::<Vec<_>>(),
        })
    }

    /// `median [min–max]` of one cell.
    fn cell(&self, id: PathId, m: Metric, digits: usize) -> String {
        match self.summary(id, m) {
            Some(s) => format!("{:.d$} [{:.d$}–{:.d$}]", s.p50, s.min, s.max, d = digits),
            None => "–".into(),
        }
    }

    fn ratio_cell(&self, path: PathId, baseline: PathId, m: Metric) -> String {
        if path == baseline {
            return "1".into();
        }
        self.ratio(path, baseline, m)
            .map_or_else(|| "–".into(), |r| format!("{r:.2}"))
    }

    pub(super) fn markdown(&self) -> String {
        let comparisons = self.comparisons();
        let p = &self.params;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "### Pod-to-pod TCP: Sluice's paths vs a bare veth, host routing and the reference bridge\n"
        );
        let _ = writeln!(md, "- Machine: {}", self.machine.line());
        let _ = writeln!(
            md,
            "- Run: {}, {} run ({:.0} s); sluice {}{} (release build); containernetworking-plugins {}",
            self.date,
            if p.quick { "quick (`--quick`)" } else { "full" },
            self.seconds,
            self.machine.commit,
            if self.machine.dirty.is_empty() {
                String::new()
            } else {
                format!(" (uncommitted: {})", self.machine.dirty.join(", "))
            },
            self.machine.reference_version
        );
        let _ = writeln!(
            md,
            "- Load average (1/5/15 min) before the run: {}, after: {} (other work on the machine shows up as noise here)",
            self.load[0], self.load[1]
        );
        let _ = writeln!(
            md,
            "- Placement: clients (`iperf3 -c`, `sluice-rr client`) pinned to CPU {CLIENT_CPU} in pod a's netns, servers (`iperf3 -s`, `sluice-rr server`) pinned to CPU {SERVER_CPU} in pod b's netns; softirq work runs where the kernel runs it"
        );
        let _ = writeln!(
            md,
            "- Method: {} rounds, every path once per round (order rotated each round), after an unrecorded warm-up; TCP stream: `iperf3 -t {}`, 1 flow and `-P 2`, Gbit/s received; TCP_RR / TCP_CRR: `sluice-rr`, {} s each, 1-byte request and response (CRR: a new connection per transaction, the server closes first; sluice-rr built in the `{}` profile). Cells: median [min–max] over rounds; ratios are ratios of medians",
            p.rounds, p.stream_secs, p.rr_secs, self.rr_profile
        );
        let _ = writeln!(
            md,
            "- CPU: system + softirq time of all CPUs from `/proc/stat` during the 1-flow run, CPU-seconds per second divided by Gbit/s (machine-wide: anything else running on the machine counts too)"
        );
        let _ = writeln!(md, "- hostRouting: {}", self.host_routing_note());
        let _ = writeln!(md, "- Targets: **{}**\n", self.verdict(&comparisons));
        let _ = writeln!(
            md,
            "| path | 1 flow Gbit/s | 2 flows Gbit/s | CPU-s/s per Gbit/s | TCP_RR /s | RR p50 µs | RR p99 µs | TCP_CRR /s | CRR p50 µs | CRR p99 µs |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for id in PathId::ALL {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                id.name(),
                self.cell(id, Metric::Stream1, 1),
                self.cell(id, Metric::Stream2, 1),
                self.cell(id, Metric::CpuPerGbit, 3),
                self.cell(id, Metric::Rr, 0),
                self.cell(id, Metric::RrP50, 1),
                self.cell(id, Metric::RrP99, 1),
                self.cell(id, Metric::Crr, 0),
                self.cell(id, Metric::CrrP50, 1),
                self.cell(id, Metric::CrrP99, 1),
            );
        }
        let failed: Vec<String> = PathId::ALL
            .iter()
            .filter_map(|id| {
                let n: f64 = self.samples.get(&(*id, Metric::CrrFailed))?.iter().sum();
                (n > 0.0).then(|| format!("{} {n:.0}", id.name()))
            })
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(
                md,
                "\nFailed TCP_CRR transactions (all rounds): {}",
                failed.join(", ")
            );
        }
        let _ = writeln!(
            md,
            "\nRatios of medians (CPU: lower is better; everything else: higher is better):\n"
        );
        let _ = writeln!(
            md,
            "| path | baseline | 1 flow | 2 flows | CPU per Gbit/s | TCP_RR | TCP_CRR |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
        let mut rows: Vec<(PathId, PathId)> = Vec::new();
        for baseline in [PathId::Veth, PathId::HostRouted] {
            rows.extend(
                PathId::ALL
                    .into_iter()
                    .filter(|p| *p != baseline)
                    .map(|p| (p, baseline)),
            );
        }
        rows.extend(SLUICE.map(|p| (p, PathId::BridgeRef)));
        rows.push((PathId::SluiceRoutedXdp, PathId::SluiceRouted));
        for (path, baseline) in rows {
            let cells: Vec<String> = Metric::RATIOS
                .iter()
                .map(|m| self.ratio_cell(path, baseline, *m))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                path.name(),
                baseline.name(),
                cells.join(" | ")
            );
        }
        let _ = writeln!(md, "\nTargets (same run):\n");
        let _ = writeln!(md, "| target | measured | verdict |");
        let _ = writeln!(md, "|---|---:|---|");
        for c in comparisons.iter().filter(|c| c.target.is_some()) {
            let _ = writeln!(
                md,
                "| {} | {:.2}x | {} |",
                c.rule(),
                c.value,
                if c.met() == Some(true) {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        let _ = writeln!(
            md,
            "\nAttach-point guard: native XDP_PASS on both host-side veths of sluice-routed gives {} of sluice-routed's 1-flow stream ({} with 2 flows, TCP_RR {}, TCP_CRR {}); around 0.25x is expected: XDP on veth puts every frame through veth's NAPI/XDP receive path, which is why pod programs use TCX.",
            self.ratio(PathId::SluiceRoutedXdp, PathId::SluiceRouted, Metric::Stream1)
                .map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
            self.ratio(PathId::SluiceRoutedXdp, PathId::SluiceRouted, Metric::Stream2)
                .map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
            self.ratio(PathId::SluiceRoutedXdp, PathId::SluiceRouted, Metric::Rr)
                .map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
            self.ratio(PathId::SluiceRoutedXdp, PathId::SluiceRouted, Metric::Crr)
                .map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
        );
        md
    }
}
