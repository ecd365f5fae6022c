//! `policy`: NetworkPolicy costs against baselines of the same run.
//!
//! 1. Per-packet cost of `from_pod` (BPF_PROG_TEST_RUN) with 0, 1k, 10k
//!    and 64k POLICY entries, in ns over a real empty tc program
//!    ([`packet`]). Targets: at most 40 ns, at most 10% growth 1k → 64k.
//! 2. TCP throughput (iperf3) and connections/s between two pods made by
//!    the real plugin, the agent enforcing: (a) only the allow, (b) plus
//!    10k rules. The netfilter baselines need the node's forward hook, which
//!    pod-to-pod traffic with eBPF host routing (the default) never
//!    reaches; they run on a second pod pair with `hostRouting: legacy` and
//!    no sluice policy: (l) no rules, (c) 10k linear iptables rules, (d)
//!    0/1k/10k/64k rules as one nftables rule with a set lookup ([`nft`]).
//!    Interleaved rounds, medians. Target b/a ≥ 0.95x.
//! 3. Sync time of 10k rules (the agent's own timings) and time from one
//!    change to enforcement. Targets 25 ms and 1 ms.

pub(crate) mod nft;
mod packet;
mod world;

use std::{path::Path, time::Instant};

use crate::ratio::{Better, Ratio};

use serde_json::{json, Value};

use crate::machine::Machine;

pub struct Params {
    pub quick: bool,
    repeat: u32,
    flows: u16,
    packet_reps: usize,
    rounds: usize,
    iperf_secs: u32,
    cps_secs: f64,
    changes: usize,
}

impl Params {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                repeat: 20_000,
                flows: 2_000,
                packet_reps: 3,
                // Three rounds even here: a median needs them.
                rounds: 3,
                iperf_secs: 2,
                cps_secs: 1.0,
                changes: 3,
            }
        } else {
            Self {
                quick,
                repeat: 100_000,
                flows: 20_000,
                packet_reps: 5,
                rounds: 3,
                iperf_secs: 4,
                cps_secs: 3.0,
                changes: 10,
            }
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// Sizes of the nftables-set baseline (the per-packet sizes of
/// [`packet::ENTRIES`]).
const NFT_RULES: [u32; 4] = packet::ENTRIES;

/// A pod-traffic scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    AllowOnly,
    Many,
    LegacyNone,
    Iptables,
    NftSet(u32),
}

impl Scenario {
    fn all() -> Vec<Scenario> {
        let mut v = vec![
            Scenario::AllowOnly,
            Scenario::Many,
            Scenario::LegacyNone,
            Scenario::Iptables,
        ];
        v.extend(NFT_RULES.map(Scenario::NftSet));
        v
    }

    fn name(self) -> String {
        match self {
            Scenario::AllowOnly => "a: allow only".into(),
            Scenario::Many => "b: allow + 10k rules".into(),
            Scenario::LegacyNone => "l: legacy routing, no rules".into(),
            Scenario::Iptables => "c: legacy routing, 10k linear iptables rules".into(),
            Scenario::NftSet(n) => {
                format!("d: legacy routing, {n} rules as an nftables set (one rule)")
            }
        }
    }

    fn pair(self) -> world::Pair {
        match self {
            Scenario::AllowOnly | Scenario::Many => world::Pair::HostRouting,
            _ => world::Pair::Legacy,
        }
    }
}

/// Index of `s` in [`Scenario::all`].
fn idx(s: Scenario) -> usize {
    Scenario::all().iter().position(|x| *x == s).unwrap_or(0)
}

pub fn run(params: &Params, out: &Path, workspace: &Path) -> anyhow::Result<Vec<Ratio>> {
    let started = Instant::now();
    let machine = Machine::describe(workspace);
    println!("-- per-packet cost of from_pod (BPF_PROG_TEST_RUN)");
    let pk = packet::run(params.repeat, params.flows, params.packet_reps)?;
    for r in &pk.rows {
        println!(
            "{:>6} entries: established {:.1} ns, new flow {:.1} ns, established (distinct flows) {:.1} ns, denied {:.1} ns over empty",
            r.entries, r.established, r.new_flow, r.established_20k, r.denied
        );
    }

    println!("-- two pods: throughput and connections/s");
    let mut w = world::World::new()?;
    w.sync()?;
    let scenarios = Scenario::all();
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    let mut cps: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    // Packets that reached the nftables baseline's last rule, per size
    // (the proof that the traffic walked the set lookup).
    let mut nft_hits: Vec<u64> = vec![0; NFT_RULES.len()];
    let mut nft_load_ms: Vec<Vec<f64>> = vec![Vec::new(); NFT_RULES.len()];
    let mut sync10k: Vec<Value> = Vec::new();
    let mut sync10k_wall = Vec::new();
    for round in 0..params.rounds {
        for (i, scenario) in scenarios.iter().enumerate() {
            crate::check_interrupted()?;
            match scenario {
                Scenario::AllowOnly => {
                    w.iptables(false)?;
                    w.nftables(None)?;
                    w.write("10-allow.yaml", &world::allow(true))?;
                    w.remove("50-many.yaml")?;
                    w.sync()?;
                }
                Scenario::Many => {
                    w.iptables(false)?;
                    w.nftables(None)?;
                    w.write("10-allow.yaml", &world::allow(true))?;
                    w.write("50-many.yaml", &world::many())?;
                    let t = Instant::now();
                    let v = w.sync()?;
                    sync10k_wall.push(t.elapsed().as_secs_f64() * 1e3);
                    sync10k.push(v);
                }
                Scenario::LegacyNone => {
                    w.iptables(false)?;
                    w.nftables(None)?;
                    w.remove("50-many.yaml")?;
                    w.remove("10-allow.yaml")?;
                    w.sync()?;
                }
                Scenario::Iptables => {
                    w.nftables(None)?;
                    w.remove("50-many.yaml")?;
                    w.remove("10-allow.yaml")?;
                    w.sync()?;
                    w.iptables(true)?;
                }
                Scenario::NftSet(n) => {
                    w.iptables(false)?;
                    w.remove("50-many.yaml")?;
                    w.remove("10-allow.yaml")?;
                    w.sync()?;
                    let t = Instant::now();
                    w.nftables(Some(*n))?;
                    let k = NFT_RULES.iter().position(|x| x == n).unwrap_or(0);
                    nft_load_ms[k].push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let g = w.iperf(scenario.pair(), params.iperf_secs)?;
            let c = w.cps(scenario.pair(), params.cps_secs)?;
            if let Scenario::NftSet(n) = scenario {
                let k = NFT_RULES.iter().position(|x| x == n).unwrap_or(0);
                // The table is reloaded (counter zeroed) every round.
                nft_hits[k] += w.nftables_last_rule_packets()?;
            }
            println!(
                "round {round} {}: {g:.2} Gbit/s, {c:.0} conn/s",
                scenario.name()
            );
            gbps[i].push(g);
            cps[i].push(c);
        }
        // Reloaded next round, so each round's counter starts at zero.
        w.nftables(None)?;
    }
    let ipt_hits = w.iptables_last_rule_packets().unwrap_or(0);
    let nft10k_k = NFT_RULES.iter().position(|n| *n == 10_000).unwrap_or(0);
    w.iptables(false)?;
    w.nftables(None)?;

    println!("-- change to enforcement (10k rules loaded)");
    w.write("10-allow.yaml", &world::allow(true))?;
    w.write("50-many.yaml", &world::many())?;
    w.sync()?;
    let (mut e2e, mut sync_wall, mut apply_us, mut sync_us, mut after_sync) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..params.changes {
        crate::check_interrupted()?;
        anyhow::ensure!(
            w.probe(std::time::Duration::from_secs(1)),
            "probe port not reachable before the change"
        );
        w.write("10-allow.yaml", &world::allow(false))?;
        let t = Instant::now();
        let v = w.sync()?;
        let synced = t.elapsed();
        while w.probe(std::time::Duration::from_millis(20)) {
            anyhow::ensure!(
                t.elapsed().as_secs() < 10,
                "the port stayed open 10 s after the change"
            );
        }
        let denied = t.elapsed();
        e2e.push(denied.as_secs_f64() * 1e3);
        sync_wall.push(synced.as_secs_f64() * 1e3);
        after_sync.push((denied - synced).as_secs_f64() * 1e3);
        apply_us.push(
            v["report"]["apply"]["duration"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        sync_us.push(v["syncMicros"].as_f64().unwrap_or(f64::NAN));
        w.write("10-allow.yaml", &world::allow(true))?;
        w.sync()?;
    }
    drop(w);

    // Summaries.
    let field = |v: &Value, path: &[&str]| -> f64 {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64().unwrap_or(f64::NAN)
    };
    let s10_sync = median(
        &sync10k
            .iter()
            .map(|v| field(v, &["syncMicros"]) / 1e3)
            .collect::<Vec<_>>(),
    );
    let s10_compile = median(
        &sync10k
            .iter()
            .map(|v| field(v, &["report", "compileMicros"]) / 1e3)
            .collect::<Vec<_>>(),
    );
    let s10_apply = median(
        &sync10k
            .iter()
            .map(|v| field(v, &["report", "apply", "duration"]) / 1e3)
            .collect::<Vec<_>>(),
    );
    let s10_written = median(
        &sync10k
            .iter()
            .map(|v| field(v, &["report", "apply", "written"]))
            .collect::<Vec<_>>(),
    );
    let g: Vec<f64> = gbps.iter().map(|v| median(v)).collect();
    let c: Vec<f64> = cps.iter().map(|v| median(v)).collect();
    let row = |e: u32| pk.rows.iter().find(|r| r.entries == e).expect("row");
    let growth_est = row(65_536).established / row(1_000).established - 1.0;
    let growth_new = row(65_536).new_flow / row(1_000).new_flow - 1.0;
    let ch_apply = median(&apply_us) / 1e3;
    let ch_e2e = median(&e2e);

    let json = json!({
        "group": "policy",
        "quick": params.quick,
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "duration_s": started.elapsed().as_secs_f64().round(),
        "machine": machine.json(),
        "per_packet": pk.json(),
        "per_packet_growth_1k_to_64k": {"established": growth_est, "new_flow": growth_new},
        "pods": {
            "placement": {"client_cpu": world::CLIENT_CPU, "server_cpu": world::SERVER_CPU, "tool": "taskset (iperf3), sched_setaffinity (connect loop and accept thread)"},
            "iperf_secs": params.iperf_secs, "cps_secs": params.cps_secs, "rounds": params.rounds,
            "scenarios": scenarios.iter().enumerate().map(|(i, s)| json!({"name": s.name(), "gbps": gbps[i], "gbps_median": g[i], "cps": cps[i], "cps_median": c[i]})).collect::<Vec<_>>(),
            "ratio_b_over_a": {"throughput": g[1] / g[0], "cps": c[1] / c[0]},
            "ratio_c_over_l": {"throughput": g[idx(Scenario::Iptables)] / g[idx(Scenario::LegacyNone)], "cps": c[idx(Scenario::Iptables)] / c[idx(Scenario::LegacyNone)]},
            "iptables": {"variant": iptables_version(), "rules": 10_000, "last_rule_packets": ipt_hits},
            "nftables_set": {
                "version": nft::version(),
                "ruleset": "table inet sluice_bench, forward hook: `ip saddr . ip daddr . tcp dport @rules accept` (concatenated interval set, the iptables rules' matches), then `ip saddr POD_SUBNET ip daddr POD_SUBNET counter accept`",
                "sizes": NFT_RULES.iter().enumerate().map(|(k, n)| json!({
                    "rules": n,
                    "load_ms": nft_load_ms[k],
                    "last_rule_packets": nft_hits[k],
                    "gbps_median": g[idx(Scenario::NftSet(*n))], "cps_median": c[idx(Scenario::NftSet(*n))],
                })).collect::<Vec<_>>(),
            },
        },
        "sync_10k": {"samples": sync10k.iter().map(|v| json!({"syncMicros": v["syncMicros"], "compileMicros": v["report"]["compileMicros"], "apply": v["report"]["apply"], "rules": v["report"]["rules"], "counts": v["report"]["counts"]})).collect::<Vec<_>>(),
            "sync_ms_median": s10_sync, "compile_ms_median": s10_compile, "apply_ms_median": s10_apply, "written_median": s10_written,
            "sluicectl_wall_ms": sync10k_wall},
        "change_to_enforcement": {"changes": params.changes, "apply_us": apply_us, "sync_us": sync_us, "sluicectl_wall_ms": sync_wall, "edit_to_denied_ms": e2e, "after_sync_return_ms": after_sync,
            "apply_ms_median": ch_apply, "sync_ms_median": median(&sync_us) / 1e3, "edit_to_denied_ms_median": ch_e2e},
    });

    let mut md = String::new();
    md.push_str(&format!(
        "# policy benchmarks{}\n\n- Date: {}\n- Sluice commit: {}\n- Machine: {}\n- Run: {:.0} s; per-packet: {} repeats (hot), {} distinct flows (single runs), median of {} interleaved measurements\n- Pods: client on CPU {}, server on CPU {}; iperf3 {} s × {} rounds, connect/close loop {} s × {} rounds, scenarios interleaved per round, medians\n- Netfilter baselines (l, c, d) run on a second pod pair (la -> lb) with `hostRouting: legacy` and no sluice policy: with eBPF host routing (a, b) pod-to-pod traffic never crosses the node's forward hook, so rules there would see nothing\n- iptables: {} ({} packets reached the last rule)\n- nftables set baseline: {}; one rule `ip saddr . ip daddr . tcp dport @rules accept` (concatenated interval set of the same matches as the iptables rules) in an inet forward chain, then the pod-subnet accept with a counter; packets that reached it per size: {}\n\n",
        if params.quick { " (--quick)" } else { "" },
        crate::machine::utc_now(),
        machine.commit,
        machine.line(),
        started.elapsed().as_secs_f64(),
        params.repeat, params.flows, params.packet_reps,
        world::CLIENT_CPU, world::SERVER_CPU, params.iperf_secs, params.rounds, params.cps_secs, params.rounds,
        iptables_version(), ipt_hits,
        nft::version(),
        NFT_RULES.iter().zip(&nft_hits).map(|(n, h)| format!("{n}: {h}")).collect::<Vec<_>>().join(", "),
    ));
    md.push_str(&format!(
        "## from_pod per packet, ns over an empty tc program (empty: {:.0} ns hot, {:.0} ns single runs)\n\n| POLICY entries | established | new flow | established, distinct flows | denied |\n|---:|---:|---:|---:|---:|\n",
        pk.empty_hot, pk.empty_single
    ));
    for r in &pk.rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r.entries, r.established, r.new_flow, r.established_20k, r.denied
        ));
    }
    md.push_str("\n## Pods (median)\n\n| scenario | Gbit/s | conn/s |\n|---|---:|---:|\n");
    for (i, s) in scenarios.iter().enumerate() {
        md.push_str(&format!("| {} | {:.2} | {:.0} |\n", s.name(), g[i], c[i]));
    }
    md.push_str(&format!(
        "\n## Sync and change\n\n- 10k rules sync (agent): {:.1} ms (compile {:.1} ms, map apply {:.1} ms, {:.0} entries written); `sluicectl sync` wall {:.1} ms\n- One change (deny an allowed port, 10k rules loaded): agent map apply {:.3} ms, agent sync {:.1} ms, edit + `sluicectl sync` + first refused connect {:.1} ms (first probe after sync returned: {:.2} ms)\n",
        s10_sync, s10_compile, s10_apply, s10_written, median(&sync10k_wall), ch_apply, median(&sync_us) / 1e3, ch_e2e, median(&after_sync)
    ));
    let worst_est = pk
        .rows
        .iter()
        .map(|r| r.established)
        .fold(f64::MIN, f64::max);
    let worst_new = pk.rows.iter().map(|r| r.new_flow).fold(f64::MIN, f64::max);
    let targets: Vec<(String, String, String, bool, String)> = vec![
        ("per packet, established, worst of 0–64k".into(), "≤ 40 ns".into(), format!("{worst_est:.1} ns"), worst_est <= 40.0, "parse + conntrack lookup + policy state; hot cache".into()),
        ("per packet, new flow, worst of 0–64k".into(), "≤ 40 ns".into(), format!("{worst_new:.1} ns"), worst_new <= 40.0, "a new flow does the policy lookups and creates a conntrack entry (map update), single runs with cold caches".into()),
        ("growth 1k → 64k, established".into(), "≤ 10%".into(), format!("{:+.1}%", growth_est * 100.0), growth_est <= 0.10, "hash lookups: independent of the entry count but for cache misses".into()),
        ("growth 1k → 64k, new flow".into(), "≤ 10%".into(), format!("{:+.1}%", growth_new * 100.0), growth_new <= 0.10, "same".into()),
        ("throughput, 10k rules / none".into(), "≥ 0.95x".into(), format!("{:.3}x", g[1] / g[0]), g[1] / g[0] >= 0.95, format!("legacy routing: iptables 10k linear / no rules {:.3}x, nftables set 10k / no rules {:.3}x", g[idx(Scenario::Iptables)] / g[idx(Scenario::LegacyNone)], g[idx(Scenario::NftSet(10_000))] / g[idx(Scenario::LegacyNone)])),
        ("conn/s, 10k rules / none".into(), "≥ 0.95x".into(), format!("{:.3}x", c[1] / c[0]), c[1] / c[0] >= 0.95, format!("legacy routing: iptables 10k linear / no rules {:.3}x, nftables set 10k / no rules {:.3}x", c[idx(Scenario::Iptables)] / c[idx(Scenario::LegacyNone)], c[idx(Scenario::NftSet(10_000))] / c[idx(Scenario::LegacyNone)])),
        ("sync 10k rules (agent syncMicros)".into(), "≤ 25 ms".into(), format!("{s10_sync:.1} ms"), s10_sync <= 25.0, format!("compile {s10_compile:.1} ms + apply {s10_apply:.1} ms")),
        ("one change to enforcement (agent map apply)".into(), "≤ 1 ms".into(), format!("{ch_apply:.3} ms"), ch_apply <= 1.0, format!("whole agent sync {:.1} ms; end to end incl. sluicectl process and probe {ch_e2e:.1} ms", median(&sync_us) / 1e3)),
    ];
    md.push_str("\n## Targets\n\n| what | target | measured | | note |\n|---|---|---:|---|---|\n");
    for (what, target, measured, ok, note) in &targets {
        md.push_str(&format!(
            "| {what} | {target} | {measured} | {} | {note} |\n",
            met(*ok)
        ));
    }
    let mut json = json;
    json["targets"] = targets
        .iter()
        .map(
            |(w, t, m, ok, n)| json!({"what": w, "target": t, "measured": m, "met": ok, "note": n}),
        )
        .collect();
    crate::results::write_group_results(out, "policy", params.quick, &json, &md)?;
    Ok(ratios(&pk, &g, &c, ipt_hits > 0, nft_hits[nft10k_k] > 0))
}

/// The group's ratios against same-run baselines. The absolute targets
/// (ns per packet, sync and change times) have no baseline and stay in the
/// Markdown's target table.
/// A netfilter baseline whose last rule saw no packet measured a path
/// without its rules: no ratio against it.
fn ratios(
    pk: &packet::Result,
    g: &[f64],
    c: &[f64],
    ipt_valid: bool,
    nft_valid: bool,
) -> Vec<Ratio> {
    let row = |e: u32| pk.rows.iter().find(|r| r.entries == e).expect("row");
    let (ipt, nft10k) = (idx(Scenario::Iptables), idx(Scenario::NftSet(10_000)));
    let r = |name: &str, baseline: &str, value: f64, better, target| Ratio {
        group: "policy",
        name: name.into(),
        baseline: baseline.into(),
        value,
        better,
        target,
    };
    let mut v = vec![
        r(
            "from_pod established, ns over empty, 64k POLICY entries",
            "the same with 1k entries",
            row(65_536).established / row(1_000).established,
            Better::Lower,
            Some(1.10),
        ),
        r(
            "from_pod new flow, ns over empty, 64k POLICY entries",
            "the same with 1k entries",
            row(65_536).new_flow / row(1_000).new_flow,
            Better::Lower,
            Some(1.10),
        ),
        r(
            "pod TCP throughput, sluice 10k rules",
            "sluice, allow only",
            g[1] / g[0],
            Better::Higher,
            Some(0.95),
        ),
        r(
            "pod conn/s, sluice 10k rules",
            "sluice, allow only",
            c[1] / c[0],
            Better::Higher,
            Some(0.95),
        ),
    ];
    if ipt_valid {
        v.extend([
            r(
                "pod TCP throughput, sluice 10k rules",
                "10k linear iptables rules (legacy routing)",
                g[1] / g[ipt],
                Better::Higher,
                None,
            ),
            r(
                "pod conn/s, sluice 10k rules",
                "10k linear iptables rules (legacy routing)",
                c[1] / c[ipt],
                Better::Higher,
                None,
            ),
        ]);
    }
    if nft_valid {
        v.extend([
            r(
                "pod TCP throughput, sluice 10k rules",
                "10k rules as an nftables set (legacy routing)",
                g[1] / g[nft10k],
                Better::Higher,
                None,
            ),
            r(
                "pod conn/s, sluice 10k rules",
                "10k rules as an nftables set (legacy routing)",
                c[1] / c[nft10k],
                Better::Higher,
                None,
            ),
        ]);
    }
    v
}

fn iptables_version() -> String {
    std::process::Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
