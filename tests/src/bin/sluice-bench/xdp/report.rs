//! The `xdp` group's report: JSON and Markdown in `bench/results/` (the
//! `-quick` variants for `--quick`), with the machine, date, commit, the
//! table and the target verdicts.

use std::{fmt::Write as _, path::Path};

use serde_json::{json, Value};

use super::{Params, SetResult, Variant, CPU, TARGET_VS_EMPTY, TARGET_VS_NFT};
use crate::{machine::Machine, policy::nft, ratio::Ratio};

pub struct Report<'a> {
    pub params: &'a Params,
    pub machine: &'a Machine,
    pub date: String,
    pub seconds: f64,
    pub results: &'a [SetResult],
    pub ratios: &'a [Ratio],
}

const METHOD: &str = "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, ctx xdp_md.ingress_ifindex = a veth in the bench's namespace, default batch (64); pps = frames / wall time of the syscall; the generator thread pinned to one CPU, where the whole path (program, drop or skb + stack + nftables) runs";

impl Report<'_> {
    fn json(&self) -> Value {
        let p = self.params;
        json!({
            "group": "xdp",
            "title": "XDP prefilter capacity: live frames dropped per second vs an empty XDP_DROP program and nftables",
            "date": self.date,
            "quick": p.quick,
            "seconds": self.seconds.round(),
            "machine": self.machine.json(),
            "method": METHOD,
            "cpu": CPU,
            "frames_per_run": p.frames,
            "rounds": p.reps,
            "frame": "Ethernet + IPv4 + TCP SYN, 54 bytes, unicast to the veth's MAC and address, source covered by the deny set",
            "setup": {
                "prefilter": "sluice-agent --uplink xdp0 --prefilter FILE (the deny set as CIDR rules) in the bench's namespace; the pinned xdp_prefilter program it attached, run on xdp0",
                "empty_xdp_drop": "r0 = XDP_DROP; exit (raw BPF_PROG_LOAD), run on xdp0",
                "nftables": format!("r0 = XDP_PASS; exit, run on nft0 (no XDP attached), frames become skbs on nft0; table netdev sluice_bench: interval set of the same CIDRs, one rule `ip saddr @deny4 counter drop` in an ingress chain on nft0; {}", nft::version()),
                "verification": "every measured run: the covering prefilter rule's counter and the prefilter-drop-cidr reason counter, or the nftables rule's counter, grew by exactly the frames sent",
            },
            "sets": self.results.iter().map(|r| json!({
                "name": r.name,
                "what": r.what,
                "cidrs": r.cidrs,
                "source": r.source,
                "covering_cidr": r.covering,
                "counted_drops": {"prefilter_rule": r.counted[0], "prefilter_reason": r.counted[1], "nftables_rule": r.counted[2]},
                "variants": Variant::ALL.iter().enumerate().map(|(i, v)| json!({
                    "variant": v.key(),
                    "what": v.name(),
                    "pps": r.samples[i].iter().map(|s| s.pps.round()).collect::<Vec<_>>(),
                    "kernel_ns_per_frame": r.samples[i].iter().map(|s| s.kernel_ns).collect::<Vec<_>>(),
                    "pps_median": r.median_pps(*v).round(),
                    "kernel_ns_per_frame_median": r.median_kernel_ns(*v),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "ratios": self.ratios.iter().map(Ratio::json).collect::<Vec<_>>(),
        })
    }

    fn markdown(&self) -> String {
        let p = self.params;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# xdp: prefilter capacity{}\n",
            if p.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(md, "- Date: {}", self.date);
        let _ = writeln!(md, "- Machine: {}", self.machine.line());
        let _ = writeln!(md, "- Sluice commit: {}", self.machine.commit);
        let _ = writeln!(
            md,
            "- Method: {METHOD} (CPU {CPU}); {} frames per run, median of {} interleaved rounds; run took {:.0} s",
            p.frames, p.reps, self.seconds
        );
        let _ = writeln!(
            md,
            "- Frame: Ethernet/IPv4/TCP SYN, 54 bytes, source inside the deny set\n- nftables: {} (netdev ingress chain, one rule with an interval-set lookup, frames handed to the stack by an XDP_PASS live-frames program)\n- Verified: each measured run's drops counted exactly by the covering prefilter rule and `prefilter-drop-cidr`, or by the nftables rule's counter\n",
            nft::version()
        );
        for r in self.results {
            let _ = writeln!(
                md,
                "## {} deny set: {}\n\nSource {} (covered by {}).\n\n| variant | Mpps (median) | kernel ns/frame | rounds (Mpps) |\n|---|---:|---:|---|",
                r.name, r.what, r.source, r.covering
            );
            for (i, v) in Variant::ALL.iter().enumerate() {
                let rounds: Vec<String> = r.samples[i]
                    .iter()
                    .map(|s| format!("{:.2}", s.pps / 1e6))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {:.1} | {} |",
                    v.name(),
                    r.median_pps(*v) / 1e6,
                    r.median_kernel_ns(*v),
                    rounds.join(", ")
                );
            }
            let _ = writeln!(
                md,
                "\nDrops counted over the measured runs: prefilter rule {}, prefilter-drop-cidr {}, nftables rule {}.\n",
                r.counted[0], r.counted[1], r.counted[2]
            );
        }
        let _ = writeln!(
            md,
            "## Targets\n\n| ratio | baseline | measured | target | |\n|---|---|---:|---:|---|"
        );
        for r in self.ratios {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3}x | ≥ {:.1}x | {} |",
                r.name,
                r.baseline,
                r.value,
                r.target.unwrap_or(f64::NAN),
                match r.met() {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "",
                }
            );
        }
        let _ = writeln!(
            md,
            "\nTargets from the issue: prefilter ≥ {TARGET_VS_EMPTY}x the empty XDP_DROP program, ≥ {TARGET_VS_NFT}x the nftables drop."
        );
        md
    }

    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        crate::results::write_group_results(
            out,
            "xdp",
            self.params.quick,
            &self.json(),
            &self.markdown(),
        )
    }
}
