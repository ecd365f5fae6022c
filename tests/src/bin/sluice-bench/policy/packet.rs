//! Per-packet cost of `from_pod` under BPF_PROG_TEST_RUN with 0, 1k, 10k
//! and 64k POLICY entries, against a real empty tc program (`r0 = -1`,
//! TC_ACT_UNSPEC; `exit`) loaded with a raw BPF_PROG_LOAD and timed with a
//! raw BPF_PROG_TEST_RUN in the same run, on the same frames, with the same
//! repeat counts.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{bail, Context as _};
use cni_ebpf_common::{
    maps::PROG_FROM_POD,
    policy::{
        PolicyKey, PolicyValue, DIRECTION_EGRESS, DIRECTION_INGRESS, POLICY_CONFIG_F_ENFORCE,
        POLICY_F_EGRESS_ISOLATED, POLICY_F_PROGRAMMED,
    },
};
use ipnet::IpNet;
use serde_json::{json, Value};
use tests::{
    datapath::Datapath,
    frames::{tcp, Ipv4, IPPROTO_TCP},
};

use crate::bpfrun::{self, EmptyProg, BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC};

const EP_A: u64 = 0xa11ce;
const ID_A: u32 = 256;
const ID_REMOTE: u32 = 300;
pub const ENTRIES: [u32; 4] = [0, 1_000, 10_000, 65_536];

fn v4(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, d)
}

fn frame(sport: u16, dport: u16) -> Vec<u8> {
    Ipv4::new(v4(5), Ipv4Addr::new(10, 244, 1, 7), IPPROTO_TCP).frame(&tcp(sport, dport))
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// One row: entries and ns over the empty program.
pub struct Row {
    pub entries: u32,
    pub established: f64,
    pub new_flow: f64,
    pub established_20k: f64,
    pub denied: f64,
}

pub struct Result {
    pub repeat: u32,
    pub flows: u16,
    pub empty_hot: f64,
    pub empty_single: f64,
    pub rows: Vec<Row>,
}

/// Medians over `reps` measurements of each figure.
pub fn run(repeat: u32, flows: u16, reps: usize) -> anyhow::Result<Result> {
    let empty = EmptyProg::load(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC)?;
    let empty_run = |frame: &[u8], repeat: u32| -> anyhow::Result<(Duration, u32)> {
        let r = bpfrun::test_run(empty.fd(), frame, repeat)?;
        Ok((r.per_run, r.retval))
    };
    let dp = Datapath::load();
    let a = IpAddr::V4(v4(5));
    let remote = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7));
    dp.add_endpoint(a, EP_A);
    dp.set_identity(IpNet::new(a, 32)?, ID_A);
    dp.set_identity(IpNet::new(remote, 32)?, ID_REMOTE);
    dp.set_policy_config(POLICY_CONFIG_F_ENFORCE, 1);
    dp.set_policy_state(EP_A, POLICY_F_PROGRAMMED | POLICY_F_EGRESS_ISOLATED);
    let allow = PolicyKey {
        endpoint_id: EP_A,
        identity: ID_REMOTE,
        direction: DIRECTION_EGRESS,
        protocol: IPPROTO_TCP,
        port: 8080,
    };
    dp.allow(allow);
    let filler = |i: u32| PolicyKey {
        endpoint_id: 0x1_0000_0000 + u64::from(i % 4096),
        direction: if i.is_multiple_of(2) {
            DIRECTION_EGRESS
        } else {
            DIRECTION_INGRESS
        },
        identity: 1000 + i / 4096,
        protocol: IPPROTO_TCP,
        port: (i % 60_000) as u16 + 1,
    };
    let fp = |frame: &[u8], r: u32| -> anyhow::Result<Duration> {
        Ok(dp
            .try_run(PROG_FROM_POD, frame, r)
            .map_err(|e| anyhow::anyhow!("from_pod test_run: {e:?}"))?
            .duration)
    };
    let single = |frames: &[Vec<u8>],
                  f: &dyn Fn(&[u8]) -> anyhow::Result<Duration>|
     -> anyhow::Result<f64> {
        let mut total = Duration::ZERO;
        for fr in frames {
            total += f(fr)?;
        }
        Ok(ns(total) / frames.len() as f64)
    };
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut next_sport = 1u16;
    let mut flows_of = |dport: u16| -> Vec<Vec<u8>> {
        (0..flows)
            .map(|_| {
                next_sport = next_sport.wrapping_add(1).max(1);
                frame(next_sport, dport)
            })
            .collect()
    };
    let denied = frame(40_000, 9999);
    let mut policy = dp.policy_map();
    let mut filled = 0u32;
    let (mut empty_hot, mut empty_single, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut empty_retval = 0;
    for entries in ENTRIES {
        crate::check_interrupted()?;
        while filled < entries {
            policy
                .insert(
                    filler(filled),
                    PolicyValue {
                        rule_index: filled,
                        _reserved: 0,
                    },
                    0,
                )
                .context("filling POLICY")?;
            filled += 1;
        }
        let (mut est, mut new, mut est20, mut den) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            // The baseline interleaved with every measurement.
            let established = frame(30_000, 8080);
            fp(&established, 1)?;
            let (e, rv) = empty_run(&established, repeat)?;
            empty_retval = rv;
            let eh = ns(e);
            empty_hot.push(eh);
            est.push(ns(fp(&established, repeat)?) - eh);
            den.push(ns(fp(&denied, repeat)?) - eh);
            let _ = dp.drain_events();
            let allowed = flows_of(8080);
            let es = single(&allowed, &|f| Ok(empty_run(f, 1)?.0))?;
            empty_single.push(es);
            new.push(single(&allowed, &|f| fp(f, 1))? - es);
            est20.push(single(&allowed, &|f| fp(f, 1))? - es);
            dp.ct_clear();
        }
        rows.push(Row {
            entries,
            established: median(est),
            new_flow: median(new),
            established_20k: median(est20),
            denied: median(den),
        });
    }
    if empty_retval != TC_ACT_UNSPEC {
        bail!("the empty program returned {empty_retval}, not TC_ACT_UNSPEC");
    }
    Ok(Result {
        repeat,
        flows,
        empty_hot: median(empty_hot),
        empty_single: median(empty_single),
        rows,
    })
}

impl Result {
    pub fn json(&self) -> Value {
        json!({
            "repeat": self.repeat,
            "flows": self.flows,
            "empty_program_ns": {"hot": self.empty_hot, "single_runs": self.empty_single},
            "rows": self.rows.iter().map(|r| json!({
                "entries": r.entries,
                "established_ns_over_empty": r.established,
                "new_flow_ns_over_empty": r.new_flow,
                "established_distinct_flows_ns_over_empty": r.established_20k,
                "denied_ns_over_empty": r.denied,
            })).collect::<Vec<_>>(),
        })
    }
}
