//! The per-reason verdict counters (`REASON_COUNTERS`).

use aya::maps::{MapData, PerCpuArray};
use cni_ebpf_common::{maps::REASON_COUNTERS, Counter, Reason};
use serde::Serialize;

use crate::bpffs::PinLayout;

/// One reason's totals over all CPUs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReasonCount {
    /// Stable code.
    pub code: u32,
    /// Stable name.
    pub reason: &'static str,
    /// Whether the verdict drops.
    pub drop: bool,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Sums per-CPU slots.
pub fn sum(values: &aya::maps::PerCpuValues<Counter>) -> Counter {
    let mut total = Counter::default();
    for v in values.iter() {
        total.add(v);
    }
    total
}

/// Reads every known reason's counter from the pinned map.
pub fn read_reasons(layout: &PinLayout) -> anyhow::Result<Vec<ReasonCount>> {
    let map: PerCpuArray<MapData, Counter> = super::open_pinned(layout, REASON_COUNTERS)?;
    let mut out = Vec::new();
    for (reason, name) in Reason::ALL {
        let total = sum(&map.get(&reason.0, 0)?);
        out.push(ReasonCount {
            code: reason.0,
            reason: name,
            drop: reason.is_drop(),
            packets: total.packets,
            bytes: total.bytes,
        });
    }
    Ok(out)
}
