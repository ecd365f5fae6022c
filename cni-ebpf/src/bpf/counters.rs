//! Counting verdicts. Per-CPU slots, so plain adds are race-free.

use cni_ebpf_common::{Counter, Reason};

use super::maps::{PREFILTER_RULE_COUNTERS, REASON_COUNTERS};

#[inline(always)]
fn bump(slot: Option<*mut Counter>, bytes: u64) {
    if let Some(counter) = slot {
        // SAFETY: the pointer comes from a per-CPU array lookup, valid for
        // this program run and touched by no other CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

/// Counts one packet of `bytes` under `reason`.
#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    bump(REASON_COUNTERS.get_ptr_mut(reason.0), bytes);
}

/// Counts one packet of `bytes` against prefilter rule `rule_id`.
#[inline(always)]
pub fn count_rule(rule_id: u32, bytes: u64) {
    bump(PREFILTER_RULE_COUNTERS.get_ptr_mut(rule_id), bytes);
}
