//! The deny sets the `xdp` and `progs` groups install, identically, in the
//! prefilter (a rules file for `sluice-agent --prefilter`) and in nftables
//! (an interval set): the same CIDRs, and a source address that one of
//! them covers.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A deny set and a source it covers.
pub struct DenySet {
    /// Short name for tables and JSON (`1k`, `small`).
    pub name: &'static str,
    /// What it is, for people.
    pub what: &'static str,
    pub cidrs: Vec<Ipv4Net>,
    /// An address inside exactly one of `cidrs`.
    pub covered: Ipv4Addr,
}

/// `n` disjoint CIDRs of mixed prefix lengths (/24, /26, /28, /32 in turn),
/// each in a /24 of its own under 10.100.0.0/14, so the LPM trie has real
/// depth and nftables gets no overlapping intervals to merge. The covered
/// source lies in the one before last (neither the first nor the last
/// element of a sorted set).
pub fn many(n: u32) -> DenySet {
    assert!((2..=1024).contains(&n), "10.100.0.0/14 has 1024 /24s");
    let cidrs: Vec<Ipv4Net> = (0..n)
        .map(|i| {
            let base = Ipv4Addr::new(10, 100 + (i / 256) as u8, (i % 256) as u8, 0);
            let prefix = [24, 26, 28, 32][(i % 4) as usize];
            Ipv4Net::new(base, prefix).expect("valid prefix")
        })
        .collect();
    let target = cidrs[cidrs.len() - 2];
    DenySet {
        name: "1k",
        what: "1000 source CIDRs (/24, /26, /28, /32 mixed)",
        // .0 is inside a /32 too; a host further in for the wider ones.
        covered: if target.prefix_len() == 32 {
            target.addr()
        } else {
            Ipv4Addr::from(u32::from(target.addr()) + 1)
        },
        cidrs,
    }
}

/// What an uplink deny list often is: the IPv4 bogons (special-purpose and
/// reserved networks that never source legitimate internet traffic). The
/// covered source is in TEST-NET-3.
pub fn small() -> DenySet {
    let cidrs = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ]
    .iter()
    .map(|c| c.parse().expect("valid CIDR"))
    .collect();
    DenySet {
        name: "small",
        what: "10 bogon source CIDRs",
        cidrs,
        covered: Ipv4Addr::new(203, 0, 113, 7),
    }
}

impl DenySet {
    /// The rules file of `sluice-agent --prefilter` (YAML).
    pub fn rules_yaml(&self) -> String {
        let mut s = String::from("rules:\n");
        for c in &self.cidrs {
            s.push_str(&format!("  - cidr: {c}\n"));
        }
        s
    }

    /// The nftables set elements, comma separated.
    pub fn nft_elements(&self) -> String {
        self.cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The CIDR that covers `covered` (exactly one does).
    pub fn covering(&self) -> Ipv4Net {
        let hits: Vec<&Ipv4Net> = self
            .cidrs
            .iter()
            .filter(|c| c.contains(&self.covered))
            .collect();
        assert_eq!(hits.len(), 1, "{} covers its source once", self.name);
        *hits[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_cover_their_source_once() {
        for set in [many(1000), small()] {
            assert!(set.covering().contains(&set.covered));
        }
        let m = many(1000);
        assert_eq!(m.cidrs.len(), 1000);
        let mut sorted = m.cidrs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000, "disjoint");
    }
}
