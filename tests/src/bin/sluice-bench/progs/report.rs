//! The `progs` group's report: JSON and Markdown in `bench/results/` (the
//! `-quick` variants for `--quick`): machine, date, commit, one row per
//! program and verdict, and whether its checks held.

use std::{fmt::Write as _, path::Path};

use serde_json::{json, Value};

use super::{Params, Row};
use crate::machine::Machine;

pub struct Report<'a> {
    pub params: &'a Params,
    pub machine: &'a Machine,
    pub date: String,
    pub seconds: f64,
    /// Programs in the object.
    pub programs: &'a [String],
    pub rows: &'a [Row],
}

const METHOD: &str = "BPF_PROG_TEST_RUN (raw bpf syscall) of the program and of an empty program of the same type, interleaved, same frames and repeat counts; the kernel's mean ns per run; median of the measurements; cost = program - empty";

impl Report<'_> {
    fn json(&self) -> Value {
        let p = self.params;
        json!({
            "group": "progs",
            "title": "Per-program cost per verdict via BPF_PROG_TEST_RUN, minus an empty program",
            "date": self.date,
            "quick": p.quick,
            "seconds": self.seconds.round(),
            "machine": self.machine.json(),
            "method": METHOD,
            "repeat": p.repeat,
            "flows": p.flows,
            "measurements": p.reps,
            "programs_in_object": self.programs,
            "rows": self.rows.iter().map(|r| json!({
                "program": r.prog,
                "verdict": r.verdict,
                "mode": r.mode.name(),
                "reason": r.reason,
                "expected_return": r.expected_retval,
                "returned": r.retval,
                "packets_checked": r.packets,
                "checked": r.check.is_ok(),
                "check_failure": r.check.as_ref().err(),
                "ns_over_empty_median": r.over(),
                "ns_program_median": r.prog(),
                "ns_empty_median": r.empty(),
                "ns_over_empty": r.over_ns,
                "ns_program": r.prog_ns,
                "ns_empty": r.empty_ns,
            })).collect::<Vec<_>>(),
        })
    }

    fn markdown(&self) -> String {
        let p = self.params;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# progs: per-program cost per verdict{}\n",
            if p.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(md, "- Date: {}", self.date);
        let _ = writeln!(md, "- Machine: {}", self.machine.line());
        let _ = writeln!(md, "- Sluice commit: {}", self.machine.commit);
        let _ = writeln!(
            md,
            "- Method: {METHOD}. Hot: one frame repeated {} times; distinct flows: {} frames run once each (a new flow's first packet cannot be repeated); chunks: denials repeated {} times in chunks whose drop events fit the ring buffer, drained between chunks. {} measurements; run took {:.0} s",
            p.repeat, p.flows, p.repeat, p.reps, self.seconds
        );
        let _ = writeln!(
            md,
            "- Object: the datapath built into sluice-bench (programs: {})",
            self.programs.join(", ")
        );
        let _ = writeln!(
            md,
            "- Checked per row: return value, exactly the named reason counted once per packet (nothing else), the matching prefilter rule's counter, one drop event per denied packet\n"
        );
        let _ = writeln!(
            md,
            "| program | verdict | timing | ns over empty | program ns | empty ns | return | reason | checked |\n|---|---|---|---:|---:|---:|---:|---|---|"
        );
        for r in self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
                r.prog,
                r.verdict,
                r.mode.name(),
                r.over(),
                r.prog(),
                r.empty(),
                r.retval as i32,
                r.reason,
                match &r.check {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("FAILED: {e}"),
                }
            );
        }
        md
    }

    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        crate::results::write_group_results(
            out,
            "progs",
            self.params.quick,
            &self.json(),
            &self.markdown(),
        )
    }
}
