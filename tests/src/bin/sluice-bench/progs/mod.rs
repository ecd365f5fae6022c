//! `progs`: what each eBPF program costs per packet, for each of its main
//! verdicts, by BPF_PROG_TEST_RUN, minus an empty program of the same type
//! measured in the same run on the same frames with the same repeat counts
//! (`r0 = XDP_PASS` for XDP, `r0 = TC_ACT_UNSPEC` for tc). Every timed run
//! is checked: the return value, exactly the expected reason counted once
//! per packet and nothing else, the matching prefilter rule's counter, one
//! drop event per denied packet.
//!
//! The programs are the object built into this binary (`cni-agent`'s
//! loader), loaded into a pin directory of the bench's own.

mod cases;
mod report;

use std::{os::fd::BorrowedFd, path::Path, time::Instant};

use anyhow::Context as _;
use aya::programs::Program;
use cni_agent::maps::prefilter::PrefilterMaps;
use cni_ebpf_common::{maps::POLICY_EVENTS_BYTES, policy::DropEvent};
use tests::datapath::{delta, Datapath, Reasons};

use crate::{
    bpfrun::{
        self, EmptyProg, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, TC_ACT_UNSPEC, XDP_PASS,
    },
    machine::Machine,
    ratio::{Better, Ratio},
};
use cases::{Case, Mode};

pub struct Params {
    pub quick: bool,
    /// Repetitions per BPF_PROG_TEST_RUN (Hot, Batched).
    pub repeat: u32,
    /// Distinct flows per measurement (Single).
    pub flows: u16,
    /// Interleaved measurements per case; medians.
    pub reps: usize,
}

impl Params {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                repeat: 1_000_000,
                flows: 5_000,
                reps: 5,
            }
        } else {
            Self {
                quick,
                repeat: 2_000_000,
                flows: 20_000,
                reps: 9,
            }
        }
    }
}

/// One measured case.
pub struct Row {
    pub prog: &'static str,
    pub verdict: &'static str,
    pub mode: Mode,
    /// ns per packet of the program, of the empty program, and their
    /// difference, per measurement.
    pub prog_ns: Vec<f64>,
    pub empty_ns: Vec<f64>,
    pub over_ns: Vec<f64>,
    /// Packets the checks covered.
    pub packets: u64,
    /// What the program returned, and what was expected.
    pub retval: u32,
    pub expected_retval: u32,
    pub reason: String,
    /// `Err` names the mismatch (the row's numbers are then for another
    /// verdict than its name says).
    pub check: Result<(), String>,
}

impl Row {
    pub fn over(&self) -> f64 {
        bpfrun::median(&self.over_ns)
    }
    pub fn prog(&self) -> f64 {
        bpfrun::median(&self.prog_ns)
    }
    pub fn empty(&self) -> f64 {
        bpfrun::median(&self.empty_ns)
    }
}

pub fn run(quick: bool, out: &Path, workspace: &Path) -> anyhow::Result<Vec<Ratio>> {
    let params = Params::new(quick);
    let started = Instant::now();
    let machine = Machine::describe(workspace);
    let date = crate::machine::utc_now();
    let dp = Datapath::load();
    let names: Vec<String> = dp
        .loaded
        .ebpf
        .programs()
        .map(|(n, _)| n.to_owned())
        .collect();
    let uplink = names.iter().any(|n| n == cases::PROG_FROM_UPLINK);
    let ids = cases::install(&dp, uplink)?;
    let empty_xdp = EmptyProg::load(BPF_PROG_TYPE_XDP, XDP_PASS)?;
    let empty_tc = EmptyProg::load(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC)?;
    let mut rows = Vec::new();
    let mut phase = None;
    for case in cases::all(ids, uplink) {
        crate::check_interrupted()?;
        if phase != Some(case.phase) {
            cases::enter(&dp, case.phase);
            phase = Some(case.phase);
        }
        let program = dp
            .loaded
            .ebpf
            .program(case.prog)
            .with_context(|| format!("{} not in the object", case.prog))?;
        let empty = match program {
            Program::Xdp(_) => &empty_xdp,
            _ => &empty_tc,
        };
        let fd = program.fd().context("program fd")?;
        use std::os::fd::AsFd as _;
        let row = measure(&params, &dp, fd.as_fd(), empty, &case)?;
        println!(
            "{:<14} {:<44} {:>7.1} ns over empty ({:.1} - {:.1}){}",
            row.prog,
            row.verdict,
            row.over(),
            row.prog(),
            row.empty(),
            match &row.check {
                Ok(()) => String::new(),
                Err(e) => format!("  CHECK FAILED: {e}"),
            }
        );
        rows.push(row);
    }
    drop(dp);
    let ratios: Vec<Ratio> = rows
        .iter()
        .filter(|r| r.check.is_ok())
        .map(|r| Ratio {
            group: "progs",
            name: format!("{} {}, ns per packet", r.prog, r.verdict),
            baseline: if r.prog == cni_ebpf_common::maps::PROG_XDP_PREFILTER {
                "empty XDP program (XDP_PASS)".into()
            } else {
                "empty tc program (TC_ACT_UNSPEC)".into()
            },
            value: r.prog() / r.empty(),
            better: Better::Lower,
            target: None,
        })
        .collect();
    report::Report {
        params: &params,
        machine: &machine,
        date,
        seconds: started.elapsed().as_secs_f64(),
        programs: &names,
        rows: &rows,
    }
    .write(out)?;
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.check
                .as_ref()
                .err()
                .map(|e| format!("{} {}: {e}", r.prog, r.verdict))
        })
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "verdict checks failed (results written, those rows flagged):\n{}",
        failed.join("\n")
    );
    Ok(ratios)
}

/// Reads the prefilter rule `id`'s packet counter.
fn rule_packets(dp: &Datapath, id: u32) -> anyhow::Result<u64> {
    PrefilterMaps::open(dp.layout())?
        .list()?
        .into_iter()
        .find(|r| r.id == id)
        .map(|r| r.packets)
        .with_context(|| format!("rule {id} not installed"))
}

/// Drop events the ring holds for one chunk: half its capacity, so a chunk
/// never fills it (each record is the event plus an 8-byte header, rounded
/// up to 8).
fn events_per_chunk() -> u32 {
    let record = (std::mem::size_of::<DropEvent>() + 8).div_ceil(8) * 8;
    (POLICY_EVENTS_BYTES as usize / record / 2) as u32
}

/// Times `case` `params.reps` times, each against the empty program, and
/// checks every run.
fn measure(
    params: &Params,
    dp: &Datapath,
    prog: BorrowedFd<'_>,
    empty: &EmptyProg,
    case: &Case,
) -> anyhow::Result<Row> {
    if let Some((prep_prog, frame)) = &case.prep {
        let p = dp.loaded.ebpf.program(prep_prog).context("prep program")?;
        use std::os::fd::AsFd as _;
        bpfrun::test_run(p.fd()?.as_fd(), frame, 1)?;
    }
    let _ = dp.drain_events();
    let mut problems: Vec<String> = Vec::new();
    let mut retval = case.retval;
    let mut note = |r: u32, problems: &mut Vec<String>| {
        if r != case.retval && retval == case.retval {
            retval = r;
            problems.push(format!("returned {r}, expected {}", case.retval));
        }
    };
    // Warm-up, outside the counts.
    let warm = (case.frame)(0);
    if case.mode != Mode::Single {
        bpfrun::test_run(prog, &warm, 1000.min(params.repeat))?;
        bpfrun::test_run(empty.fd(), &warm, 1000.min(params.repeat))?;
    }
    let _ = dp.drain_events();
    let before: Reasons = dp.reasons();
    let rule_before = case.rule.map(|id| rule_packets(dp, id)).transpose()?;
    let (mut prog_ns, mut empty_ns, mut over_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut packets = 0u64;
    let mut events = 0u64;
    let mut wrong_events = 0u64;
    let mut next_flow = 0u16;
    for _ in 0..params.reps {
        crate::check_interrupted()?;
        let (p, e) = match case.mode {
            Mode::Hot => {
                let e = bpfrun::test_run(empty.fd(), &warm, params.repeat)?;
                let r = bpfrun::test_run(prog, &warm, params.repeat)?;
                note(r.retval, &mut problems);
                packets += u64::from(params.repeat);
                (r.ns(), e.ns())
            }
            Mode::Single => {
                let frames: Vec<Vec<u8>> = (0..params.flows)
                    .map(|_| {
                        // Wrapped where `flow_port` wraps, so the flows of
                        // one measurement never share a port.
                        next_flow = (next_flow + 1) % cases::FLOW_PORTS;
                        (case.frame)(next_flow)
                    })
                    .collect();
                // Source ports wrap after FLOW_PORTS flows, and the full
                // run times more than that: without this a "new" flow
                // could meet the conntrack entry of its namesake from an
                // earlier measurement (outside the timing).
                dp.ct_clear();
                let (mut pt, mut et) = (0.0, 0.0);
                for f in &frames {
                    et += bpfrun::test_run(empty.fd(), f, 1)?.ns();
                }
                for f in &frames {
                    let r = bpfrun::test_run(prog, f, 1)?;
                    note(r.retval, &mut problems);
                    pt += r.ns();
                }
                packets += frames.len() as u64;
                let n = frames.len() as f64;
                (pt / n, et / n)
            }
            Mode::Batched => {
                let chunk = events_per_chunk().min(params.repeat).max(1);
                let (mut pt, mut et, mut done) = (0.0, 0.0, 0u32);
                while done < params.repeat {
                    let k = chunk.min(params.repeat - done);
                    et += bpfrun::test_run(empty.fd(), &warm, k)?.ns() * f64::from(k);
                    let r = bpfrun::test_run(prog, &warm, k)?;
                    note(r.retval, &mut problems);
                    pt += r.ns() * f64::from(k);
                    for ev in dp.drain_events() {
                        events += 1;
                        if Some(ev.reason) != case.reason.map(|r| r.0) {
                            wrong_events += 1;
                        }
                    }
                    done += k;
                }
                packets += u64::from(params.repeat);
                let n = f64::from(params.repeat);
                (pt / n, et / n)
            }
        };
        prog_ns.push(p);
        empty_ns.push(e);
        over_ns.push(p - e);
        if case.mode == Mode::Single {
            dp.ct_clear();
        }
    }
    // Checks over all timed runs.
    if case.mode != Mode::Batched {
        events += dp.drain_events().len() as u64;
    }
    let expected_events = if case.events { packets } else { 0 };
    if events != expected_events || wrong_events > 0 {
        problems.push(format!(
            "{events} drop events ({wrong_events} of another reason), expected {expected_events}"
        ));
    }
    let moved = delta(&before, &dp.reasons());
    let expected: Vec<(u32, u64)> = case.reason.map(|r| (r.0, packets)).into_iter().collect();
    let got: Vec<(u32, u64)> = moved.iter().map(|(c, (p, _))| (*c, *p)).collect();
    if got != expected {
        let named = |v: &[(u32, u64)]| -> String {
            v.iter()
                .map(|(c, p)| format!("{} x{p}", cni_ebpf_common::Reason(*c).name().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        problems.push(format!(
            "reasons counted [{}], expected [{}]",
            named(&got),
            named(&expected)
        ));
    }
    if let (Some(id), Some(b)) = (case.rule, rule_before) {
        let matched = rule_packets(dp, id)? - b;
        if matched != packets {
            problems.push(format!("rule {id} counted {matched} of {packets} packets"));
        }
    }
    Ok(Row {
        prog: case.prog,
        verdict: case.verdict,
        mode: case.mode,
        prog_ns,
        empty_ns,
        over_ns,
        packets,
        retval,
        expected_retval: case.retval,
        reason: case
            .reason
            .and_then(|r| r.name())
            .unwrap_or("none")
            .to_owned(),
        check: if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        },
    })
}
