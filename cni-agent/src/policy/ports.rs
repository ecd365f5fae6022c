//! Ports: what a rule's `ports` list means for the `POLICY` and
//! `POLICY_PORT_RANGES` maps, and fitting `endPort` ranges into the
//! fixed-size [`PortRanges`] value.

use cni_ebpf_common::policy::{PortRanges, PORT_RANGES_PER_KEY};

/// One inclusive port range and the rule it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
    /// The rule (index in the rule table).
    pub rule_index: u32,
}

/// Most ports of ranges turned into exact entries for one key when there
/// are more than [`PORT_RANGES_PER_KEY`] ranges.
pub const MAX_EXPANDED_PORTS: usize = 1024;

/// Ranges that fit no [`PortRanges`] value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooManyRanges {
    /// Disjoint ranges after merging.
    pub ranges: usize,
}

/// Packed ranges and the exact (port, rule) entries that replace the rest.
pub type Packed = (Vec<PortRange>, Vec<(u16, u32)>);

/// Packs ranges for one (endpoint, direction, identity, protocol):
/// overlapping and adjacent ranges merge (keeping the first one's rule);
/// while more than [`PORT_RANGES_PER_KEY`] remain, the smallest become exact
/// port entries, up to [`MAX_EXPANDED_PORTS`] ports in all. Returns the
/// ranges to install and the exact (port, rule) entries to add.
pub fn pack(mut ranges: Vec<PortRange>) -> Result<Packed, TooManyRanges> {
    ranges.sort_unstable();
    // Merge in place: `dedup_by` hands (next, kept) pairs in order.
    ranges.dedup_by(|next, kept| {
        if u32::from(next.first) <= u32::from(kept.last) + 1 {
            kept.last = kept.last.max(next.last);
            true
        } else {
            false
        }
    });
    let mut merged = ranges;
    let mut exact = Vec::new();
    // Single ports are exact entries anyway; they never need a range slot.
    merged.retain(|r| {
        if r.first == r.last {
            exact.push((r.first, r.rule_index));
            false
        } else {
            true
        }
    });
    if merged.len() > PORT_RANGES_PER_KEY {
        let mut by_size: Vec<usize> = (0..merged.len()).collect();
        by_size.sort_by_key(|&i| (merged[i].last - merged[i].first, i));
        let surplus = merged.len() - PORT_RANGES_PER_KEY;
        let expand: Vec<usize> = by_size[..surplus].to_vec();
        let ports: usize = expand
            .iter()
            .map(|&i| usize::from(merged[i].last - merged[i].first) + 1)
            .sum();
        if ports > MAX_EXPANDED_PORTS {
            return Err(TooManyRanges {
                ranges: merged.len(),
            });
        }
        for &i in &expand {
            let r = merged[i];
            exact.extend((r.first..=r.last).map(|p| (p, r.rule_index)));
        }
        let mut i = 0;
        merged.retain(|_| {
            let keep = !expand.contains(&i);
            i += 1;
            keep
        });
    }
    Ok((merged, exact))
}

/// The kernel value for packed ranges (at most [`PORT_RANGES_PER_KEY`]).
pub fn to_kernel(ranges: &[PortRange]) -> PortRanges {
    let mut v = PortRanges::default();
    for (i, r) in ranges.iter().take(PORT_RANGES_PER_KEY).enumerate() {
        v.ranges[i] = [r.first, r.last];
        v.rule_index[i] = r.rule_index;
        v.count += 1;
    }
    v
}

/// The rule of the first range holding `port` (the datapath's scan).
pub fn find(ranges: &[PortRange], port: u16) -> Option<u32> {
    ranges
        .iter()
        .find(|r| r.first <= port && port <= r.last)
        .map(|r| r.rule_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u16, last: u16, rule_index: u32) -> PortRange {
        PortRange {
            first,
            last,
            rule_index,
        }
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let (ranges, exact) = pack(vec![
            r(100, 200, 2),
            r(150, 300, 3),
            r(301, 310, 4),
            r(5, 5, 1),
        ])
        .unwrap();
        assert_eq!(ranges, vec![r(100, 310, 2)]);
        assert_eq!(exact, vec![(5, 1)]);
    }

    #[test]
    fn surplus_ranges_become_exact_ports_smallest_first() {
        let mut input: Vec<PortRange> = (0..PORT_RANGES_PER_KEY as u16)
            .map(|i| r(1000 + i * 100, 1050 + i * 100, 1))
            .collect();
        input.push(r(10, 12, 7));
        let (ranges, exact) = pack(input).unwrap();
        assert_eq!(ranges.len(), PORT_RANGES_PER_KEY);
        assert_eq!(exact, vec![(10, 7), (11, 7), (12, 7)]);
        let k = to_kernel(&ranges);
        assert_eq!(k.count as usize, PORT_RANGES_PER_KEY);
        assert_eq!(find(&ranges, 1025), Some(1));
        assert_eq!(find(&ranges, 1075), None);
    }

    #[test]
    fn too_many_wide_ranges_are_refused() {
        let input: Vec<PortRange> = (0..=PORT_RANGES_PER_KEY as u16)
            .map(|i| r(1000 + i * 2000, 1000 + i * 2000 + 1500, 1))
            .collect();
        assert_eq!(
            pack(input),
            Err(TooManyRanges {
                ranges: PORT_RANGES_PER_KEY + 1
            })
        );
    }
}
