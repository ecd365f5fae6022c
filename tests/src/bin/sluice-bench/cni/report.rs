//! The `cni` group's report: rows with ratios, the target verdict, JSON and
//! Markdown.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{
    breakdown::Step, Mode, Op, Params, Plugin, Samples, BRIDGE, CNI_VERSION, REFERENCE_DIR, SUBNET,
    TARGET_RATIO,
};
use crate::machine::Machine;
use crate::ratio::{Better, Ratio};
use crate::stats::{ms, round, Summary};

/// A row of the result table.
struct Row {
    masq: bool,
    mode: Mode,
    op: Op,
    bridge: Summary,
    sluice: Summary,
}

impl Row {
    fn ratio(&self, f: impl Fn(&Summary) -> f64) -> f64 {
        f(&self.sluice) / f(&self.bridge)
    }

    fn met(&self) -> bool {
        self.ratio(|s| s.p50) <= TARGET_RATIO
    }
}

pub(super) struct Report {
    pub(super) params: Params,
    pub(super) machine: Machine,
    pub(super) date: String,
    pub(super) samples: Samples,
    pub(super) steps: Vec<Step>,
    pub(super) confs: [Value; 2],
    pub(super) seconds: f64,
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for masq in [false, true] {
            for mode in [Mode::Sequential, Mode::Parallel] {
                for op in [Op::Add, Op::Del] {
                    let get = |p| {
                        self.samples
                            .get(&(masq, mode, op, p))
                            .and_then(|v| Summary::of(v))
                    };
                    if let (Some(bridge), Some(sluice)) = (get(Plugin::Bridge), get(Plugin::Sluice))
                    {
                        rows.push(Row {
                            masq,
                            mode,
                            op,
                            bridge,
                            sluice,
                        });
                    }
                }
            }
        }
        rows
    }

    /// The rows as the suite's summary lines: sluice p50 / bridge p50.
    pub(super) fn ratios(&self) -> Vec<Ratio> {
        self.rows()
            .iter()
            .map(|r| Ratio {
                group: "cni",
                name: format!(
                    "{} p50, {}{}",
                    r.op.name(),
                    r.mode.name(),
                    if r.masq { ", ipMasq" } else { "" }
                ),
                baseline: "reference bridge plugin".into(),
                value: r.ratio(|s| s.p50),
                better: Better::Lower,
                target: Some(TARGET_RATIO),
            })
            .collect()
    }

    fn verdict(&self, rows: &[Row]) -> String {
        let missed: Vec<String> = rows
            .iter()
            .filter(|r| !r.met())
            .map(|r| {
                format!(
                    "{} {}{} {:.2}x",
                    r.op.name(),
                    r.mode.name(),
                    if r.masq { " ipMasq" } else { "" },
                    r.ratio(|s| s.p50)
                )
            })
            .collect();
        if missed.is_empty() {
            format!("met in all {} rows", rows.len())
        } else {
            format!(
                "NOT met in {} of {} rows ({})",
                missed.len(),
                rows.len(),
                missed.join(", ")
            )
        }
    }

    pub(super) fn json(&self) -> Value {
        let rows = self.rows();
        let p = &self.params;
        json!({
            "group": "cni",
            "title": "CNI ADD/DEL latency: sluice vs the reference bridge plugin",
            "date": self.date,
            "quick": p.quick,
            "seconds": round(self.seconds),
            "machine": self.machine.json(),
            "setup": {
                "reference": {
                    "plugin": format!("{REFERENCE_DIR}/bridge"),
                    "ipam": format!("{REFERENCE_DIR}/host-local"),
                    "version": self.machine.reference_version,
                },
                "sluice": {
                    "plugin": "target/release/sluice (cargo build --release)",
                    "ipam": format!("{REFERENCE_DIR}/host-local, exec'd from CNI_PATH as the reference does"),
                    "agent": "sluice-agent in sluice's node netns with --state-dir = stateDir and --api-socket = agentSocket; ADD notifies it without waiting (waitForPolicy off)",
                },
                "config": {
                    "reference": self.confs[0],
                    "sluice": self.confs[1],
                    "ipMasq_variant": "the same with \"ipMasq\": true",
                    "del": "the config with the ADD result as prevResult",
                },
                "sequential": {
                    "samples": p.samples,
                    "batch": p.batch,
                    "warmup_batches": 1,
                    "order": "ADD a batch, then DEL it; plugins alternate batch by batch (A/B, B/A)",
                },
                "parallel": {
                    "concurrency": p.parallel,
                    "rounds": p.rounds(),
                    "samples": p.rounds() * p.parallel,
                    "warmup_rounds": 1,
                    "order": "all ADDs released together, then all DELs; plugins alternate round by round",
                },
                "latency": "spawn to exit of the plugin process, from a thread in the node netns",
            },
            "target": {
                "rule": format!("sluice p50 <= {TARGET_RATIO} x reference p50, for ADD and DEL"),
                "met": rows.iter().all(Row::met),
                "verdict": self.verdict(&rows),
            },
            "results": rows.iter().map(|r| json!({
                "ipMasq": r.masq,
                "mode": r.mode.name(),
                "op": r.op.name(),
                "bridge": r.bridge.json(),
                "sluice": r.sluice.json(),
                "ratio_sluice_to_bridge": {
                    "p50": round(r.ratio(|s| s.p50)),
                    "p99": round(r.ratio(|s| s.p99)),
                    "mean": round(r.ratio(|s| s.mean)),
                },
                "target_met": r.met(),
            })).collect::<Vec<_>>(),
            "breakdown": self.steps.iter().map(|s| json!({
                "step": s.name,
                "note": s.note,
                "latency": s.summary.json(),
            })).collect::<Vec<_>>(),
        })
    }

    pub(super) fn markdown(&self) -> String {
        let rows = self.rows();
        let p = &self.params;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "### CNI ADD/DEL latency: `sluice` vs the reference `bridge`\n"
        );
        let _ = writeln!(md, "- Machine: {}", self.machine.line());
        let _ = writeln!(
            md,
            "- Run: {}, {} run ({:.0} s); sluice {}{} (release build); containernetworking-plugins {} (`{REFERENCE_DIR}/bridge` + `host-local`)",
            self.date,
            p.label(),
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
            "- Samples per plugin, op and row: sequential {} (batches of {}, plugins alternating A/B then B/A, one warm-up batch each discarded); parallel {} at once × {} rounds = {} (alternating, one warm-up round discarded)",
            p.samples,
            p.batch,
            p.parallel,
            p.rounds(),
            p.rounds() * p.parallel
        );
        let _ = writeln!(
            md,
            "- Config: bridge `{BRIDGE}`, `isGateway`, host-local `{SUBNET}`, cniVersion {CNI_VERSION}; sluice gets the same with `\"type\": \"sluice\"` plus `bpffsDir`/`stateDir`/`agentSocket` (and the default `tcAttach`, `tc`: cls_bpf filters); each its own `ipam.dataDir` and node netns, one pod netns per container; DEL carries the ADD result as `prevResult`. `sluice-agent` runs with the same state dir and socket (programs pinned); with `waitForPolicy` off, as here, ADD notifies it without waiting"
        );
        let _ = writeln!(
            md,
            "- Latency: spawn to exit of the plugin process. Ratio: sluice / bridge (lower is better)"
        );
        let _ = writeln!(
            md,
            "- Target: sluice p50 ≤ {TARGET_RATIO:.2} × bridge p50 for ADD and DEL: **{}**\n",
            self.verdict(&rows)
        );
        let _ = writeln!(
            md,
            "| ipMasq | mode | op | bridge p50 | bridge p99 | bridge mean | sluice p50 | sluice p99 | sluice mean | ratio p50 | ratio p99 | ratio mean | target |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in &rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                if r.masq { "on" } else { "off" },
                r.mode.name(),
                r.op.name(),
                ms(r.bridge.p50),
                ms(r.bridge.p99),
                ms(r.bridge.mean),
                ms(r.sluice.p50),
                ms(r.sluice.p99),
                ms(r.sluice.mean),
                r.ratio(|s| s.p50),
                r.ratio(|s| s.p99),
                r.ratio(|s| s.mean),
                if r.met() { "met" } else { "missed" }
            );
        }
        let _ = writeln!(
            md,
            "\nBuilding blocks, each timed alone ({} samples):\n",
            p.breakdown
        );
        let _ = writeln!(md, "| step | p50 | p99 | mean | who |");
        let _ = writeln!(md, "|---|---:|---:|---:|---|");
        for s in &self.steps {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                s.name,
                ms(s.summary.p50),
                ms(s.summary.p99),
                ms(s.summary.mean),
                s.note
            );
        }
        md
    }
}
