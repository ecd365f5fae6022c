//! Choosing an address in one range set, in host-local's order: round robin
//! from the address after the set's last reservation, through each range
//! of the set in turn, wrapping around, so a crash-looping pod does not get
//! the same address back until the set has been walked once. Gateway,
//! network and IPv4 broadcast addresses are skipped.

use std::net::IpAddr;

use super::config::{from_u128, to_u128, RangeSet};
use super::store::{Attachment, Store};
use crate::error::{CniError, CniResult};
use crate::types::IpConfig;

/// Allocates from one range set; `range_id` is the set's index in the
/// config, which names its `last_reserved_ip.<range_id>` file.
#[derive(Clone, Copy, Debug)]
pub struct Allocator<'a> {
    set: &'a RangeSet,
    range_id: usize,
}

impl<'a> Allocator<'a> {
    /// An allocator for `set`, the `range_id`-th set of the config.
    pub fn new(set: &'a RangeSet, range_id: usize) -> Self {
        Self { set, range_id }
    }

    /// Reserves the next free address for `att`. Exhaustion is code 101
    /// with host-local's message.
    pub fn allocate(&self, store: &mut dyn Store, att: &Attachment) -> CniResult<IpConfig> {
        let last = store.last_reserved_ip(self.range_id)?;
        for ip in candidates(self.set, last) {
            if store.reserve(ip, &att.container_id, &att.ifname, self.range_id)? {
                return Ok(self.ip_config(ip));
            }
        }
        Err(CniError::ipam(format!(
            "no IP addresses available in range set: {}",
            self.set
        )))
    }

    /// Reserves the specific address `ip` for `att`: code 101 when it is
    /// outside the set, is the gateway (or network/broadcast), or is taken.
    pub fn allocate_requested(
        &self,
        store: &mut dyn Store,
        att: &Attachment,
        ip: IpAddr,
    ) -> CniResult<IpConfig> {
        let range = self.set.range_for(ip).ok_or_else(|| {
            CniError::ipam(format!(
                "requested IP address {ip} is not in range set {}",
                self.set
            ))
        })?;
        if ip == range.gateway {
            return Err(CniError::ipam(format!(
                "requested IP address {ip} is the gateway of {}",
                range.subnet
            )));
        }
        if !range.allocatable(ip) {
            return Err(CniError::ipam(format!(
                "requested IP address {ip} is the network or broadcast address of {}",
                range.subnet
            )));
        }
        if !store.reserve(ip, &att.container_id, &att.ifname, self.range_id)? {
            return Err(CniError::ipam(format!(
                "requested IP address {ip} is not available in range set {}",
                self.set
            )));
        }
        Ok(self.ip_config(ip))
    }

    /// The result entry for `ip`: address with the subnet's prefix length and
    /// the range's gateway.
    pub fn ip_config(&self, ip: IpAddr) -> IpConfig {
        match self.set.range_for(ip) {
            Some(r) => IpConfig {
                address: r.address(ip),
                gateway: Some(r.gateway),
                interface: None,
            },
            // Only addresses of the set reach here; keep a host prefix otherwise.
            None => IpConfig {
                address: ipnet::IpNet::from(ip),
                gateway: None,
                interface: None,
            },
        }
    }
}

/// The addresses to try, in order, when `last` was reserved last: every
/// allocatable address of the set exactly once, starting after `last` when
/// the set holds it and at the first range's start otherwise.
pub fn candidates(set: &RangeSet, last: Option<IpAddr>) -> Candidates<'_> {
    let total = set.0.iter().fold(0u128, |acc, r| {
        acc.saturating_add(
            to_u128(r.range_end)
                .saturating_sub(to_u128(r.range_start))
                .saturating_add(1),
        )
    });
    // The walk starts *after* its cursor: the last reservation, or the end
    // of the last range so that the first step lands on the first start.
    let start = last.and_then(|ip| {
        set.0
            .iter()
            .position(|r| r.contains(ip))
            .map(|i| (i, to_u128(ip)))
    });
    let (range, cursor) = match start {
        Some(pos) => pos,
        None => {
            let i = set.0.len().saturating_sub(1);
            (
                i,
                set.0
                    .get(i)
                    .map(|r| to_u128(r.range_end))
                    .unwrap_or_default(),
            )
        }
    };
    Candidates {
        set,
        range,
        cursor,
        left: if set.0.is_empty() { 0 } else { total },
    }
}

/// Iterator returned by [`candidates`].
#[derive(Clone, Debug)]
pub struct Candidates<'a> {
    set: &'a RangeSet,
    range: usize,
    cursor: u128,
    left: u128,
}

impl Iterator for Candidates<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        while self.left > 0 {
            self.left -= 1;
            let current = &self.set.0[self.range];
            if self.cursor >= to_u128(current.range_end) {
                self.range = (self.range + 1) % self.set.0.len();
                self.cursor = to_u128(self.set.0[self.range].range_start);
            } else {
                self.cursor += 1;
            }
            let r = &self.set.0[self.range];
            let ip = from_u128(self.cursor, r.range_start.is_ipv4());
            if r.allocatable(ip) {
                return Some(ip);
            }
        }
        None
    }
}
