//! `xdp`: capacity of the XDP prefilter, in packets per second dropped,
//! against two baselines measured in the same run on the same frames:
//!
//! - an empty XDP program returning XDP_DROP (the ceiling: what XDP itself
//!   costs on this machine);
//! - nftables dropping the same deny set (one rule, an interval set of the
//!   same CIDRs) in a netdev ingress chain, the frames handed to the stack
//!   by an XDP_PASS program (the usual way to do this without Sluice).
//!
//! The generator is BPF_PROG_TEST_RUN in XDP live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel runs the program on N real
//! frames received on a veth of the bench's namespace (`ingress_ifindex`),
//! and does what the verdict says: XDP_DROP frees the frame, XDP_PASS turns
//! it into an skb on that veth and gives it to the stack (where nftables
//! sees it). pps = N / wall time of the syscall, on one pinned CPU. The
//! prefilter is the one `sluice-agent --uplink xdp0 --prefilter FILE`
//! loaded, pinned and attached; its rule counter and reason counter must
//! count exactly N drops per run, and the nftables rule's counter exactly N,
//! or the run fails: a number for the wrong verdict is worthless.
//!
//! Two deny sets: 1000 CIDRs of mixed prefix lengths, and the 10 IPv4
//! bogons. Targets: prefilter ≥ 0.8x the empty XDP_DROP, ≥ 3x nftables.

mod report;
pub mod rules;
mod world;

use std::{path::Path, time::Instant};

use anyhow::ensure;

use crate::{
    bpfrun::{self, EmptyProg, BPF_PROG_TYPE_XDP, XDP_DROP, XDP_PASS},
    machine::Machine,
    ratio::{Better, Ratio},
};
use rules::DenySet;
use world::{World, NFT_IF, XDP_IF};

/// Target: prefilter pps / empty XDP_DROP pps.
pub const TARGET_VS_EMPTY: f64 = 0.8;
/// Target: prefilter pps / nftables pps.
pub const TARGET_VS_NFT: f64 = 3.0;
/// The CPU the generator thread runs on (the whole path, stack included,
/// runs in that syscall on that CPU).
pub const CPU: usize = 1;

pub struct Params {
    pub quick: bool,
    /// Frames per live-frames run.
    pub frames: u32,
    /// Interleaved repeats of every measurement.
    pub reps: usize,
}

impl Params {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                frames: 2_000_000,
                reps: 5,
            }
        } else {
            Self {
                quick,
                frames: 10_000_000,
                reps: 9,
            }
        }
    }
}

/// What is measured, in the order of a round (rotated every round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Prefilter,
    EmptyDrop,
    Nft,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Prefilter, Variant::EmptyDrop, Variant::Nft];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Prefilter => "sluice xdp_prefilter (XDP_DROP by CIDR)",
            Variant::EmptyDrop => "empty XDP program returning XDP_DROP",
            Variant::Nft => "XDP_PASS + nftables netdev ingress set drop",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Variant::Prefilter => "prefilter",
            Variant::EmptyDrop => "empty_xdp_drop",
            Variant::Nft => "nftables_set_drop",
        }
    }
}

/// One live-frames run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub pps: f64,
    /// The kernel's own mean per frame (program and, in live mode, the
    /// frame's fate), ns.
    pub kernel_ns: f64,
}

/// Everything measured for one deny set.
pub struct SetResult {
    pub name: &'static str,
    pub what: &'static str,
    pub cidrs: usize,
    pub covering: String,
    pub source: String,
    /// Samples per variant, in [`Variant::ALL`] order.
    pub samples: [Vec<Sample>; 3],
    /// Drops counted (rule counter, reason counter, nftables counter) over
    /// the measured runs.
    pub counted: [u64; 3],
}

impl SetResult {
    pub fn median_pps(&self, v: Variant) -> f64 {
        let i = Variant::ALL.iter().position(|x| *x == v).unwrap_or(0);
        bpfrun::median(&self.samples[i].iter().map(|s| s.pps).collect::<Vec<_>>())
    }

    pub fn median_kernel_ns(&self, v: Variant) -> f64 {
        let i = Variant::ALL.iter().position(|x| *x == v).unwrap_or(0);
        bpfrun::median(
            &self.samples[i]
                .iter()
                .map(|s| s.kernel_ns)
                .collect::<Vec<_>>(),
        )
    }
}

pub fn run(quick: bool, out: &Path, workspace: &Path) -> anyhow::Result<Vec<Ratio>> {
    let params = Params::new(quick);
    let started = Instant::now();
    let machine = Machine::describe(workspace);
    let date = crate::machine::utc_now();
    let mut world = World::new()?;
    let empty_drop = EmptyProg::load(BPF_PROG_TYPE_XDP, XDP_DROP)?;
    let empty_pass = EmptyProg::load(BPF_PROG_TYPE_XDP, XDP_PASS)?;
    let mut results = Vec::new();
    for set in [rules::many(1000), rules::small()] {
        crate::check_interrupted()?;
        println!("-- deny set {}: {}", set.name, set.what);
        results.push(measure(
            &params,
            &mut world,
            &set,
            &empty_drop,
            &empty_pass,
        )?);
    }
    drop(world);

    let mut ratios = Vec::new();
    for r in &results {
        let pf = r.median_pps(Variant::Prefilter);
        ratios.push(Ratio {
            group: "xdp",
            name: format!("prefilter drop pps, {} deny set", r.name),
            baseline: Variant::EmptyDrop.name().into(),
            value: pf / r.median_pps(Variant::EmptyDrop),
            better: Better::Higher,
            target: Some(TARGET_VS_EMPTY),
        });
        ratios.push(Ratio {
            group: "xdp",
            name: format!("prefilter drop pps, {} deny set", r.name),
            baseline: Variant::Nft.name().into(),
            value: pf / r.median_pps(Variant::Nft),
            better: Better::Higher,
            target: Some(TARGET_VS_NFT),
        });
    }
    let report = report::Report {
        params: &params,
        machine: &machine,
        date,
        seconds: started.elapsed().as_secs_f64(),
        results: &results,
        ratios: &ratios,
    };
    report.write(out)?;
    Ok(ratios)
}

/// All variants on one deny set, `params.reps` interleaved rounds.
fn measure(
    params: &Params,
    world: &mut World,
    set: &DenySet,
    empty_drop: &EmptyProg,
    empty_pass: &EmptyProg,
) -> anyhow::Result<SetResult> {
    let prefilter = world.prefilter(set)?;
    world.nft_load(set)?;
    let xdp_frame = world.frame(set.covered, XDP_IF);
    let nft_frame = world.frame(set.covered, NFT_IF);
    let n = params.frames;
    let mut samples: [Vec<Sample>; 3] = Default::default();
    let mut counted = [0u64; 3];
    // One run of a variant: the generator in the namespace on CPU, and the
    // drop counted by the expected rule exactly `frames` times. Returns the
    // sample and the drops counted (prefilter rule, its reason, nftables).
    let one = |v: Variant, frames: u32| -> anyhow::Result<(Sample, [u64; 3])> {
        let (prog, frame, ifindex) = match v {
            Variant::Prefilter => (prefilter.prog(), &xdp_frame, world.xdp_ifindex),
            Variant::EmptyDrop => (empty_drop.fd(), &xdp_frame, world.xdp_ifindex),
            Variant::Nft => (empty_pass.fd(), &nft_frame, world.nft_ifindex),
        };
        let (rule0, reason0) = prefilter.counted()?;
        let nft0 = world.nft_dropped()?;
        let run = world.node.run(|| {
            bpfrun::pin_thread(CPU);
            bpfrun::live_frames(prog, frame, frames, ifindex, 0)
        })?;
        let (rule1, reason1) = prefilter.counted()?;
        let nft1 = world.nft_dropped()?;
        let counts = [rule1 - rule0, reason1 - reason0, nft1 - nft0];
        // Exactly the variant's own counters moved, by exactly `frames`.
        let expected = match v {
            Variant::Prefilter => [frames, frames, 0],
            Variant::EmptyDrop => [0, 0, 0],
            Variant::Nft => [0, 0, frames],
        }
        .map(u64::from);
        ensure!(
            counts == expected,
            "{} on the {} set: {frames} frames; counted [covering prefilter rule, prefilter-drop-cidr, nftables rule] = {counts:?}, expected {expected:?}; agent log:\n{}",
            v.name(),
            set.name,
            prefilter.agent_log()
        );
        let sample = Sample {
            pps: f64::from(frames) / run.wall.as_secs_f64(),
            kernel_ns: run.ns(),
        };
        Ok((sample, counts))
    };
    // Warm-up (caches, page pools, the set's first lookups), also checked.
    for v in Variant::ALL {
        one(v, n / 10)?;
    }
    for round in 0..params.reps {
        for k in 0..Variant::ALL.len() {
            crate::check_interrupted()?;
            let i = (round + k) % Variant::ALL.len();
            let (sample, counts) = one(Variant::ALL[i], n)?;
            samples[i].push(sample);
            for (c, d) in counted.iter_mut().zip(counts) {
                *c += d;
            }
        }
        println!(
            "round {round}: prefilter {:.2} Mpps, empty XDP_DROP {:.2} Mpps, nftables {:.2} Mpps",
            samples[0].last().map_or(f64::NAN, |s| s.pps / 1e6),
            samples[1].last().map_or(f64::NAN, |s| s.pps / 1e6),
            samples[2].last().map_or(f64::NAN, |s| s.pps / 1e6),
        );
    }
    Ok(SetResult {
        name: set.name,
        what: set.what,
        cidrs: set.cidrs.len(),
        covering: set.covering().to_string(),
        source: set.covered.to_string(),
        samples,
        counted,
    })
}
