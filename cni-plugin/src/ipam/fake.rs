//! An in-memory [`Store`] for unit tests of the allocator and the commands,
//! with switches to make it fail the way a disk can.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::store::{Reservation, Store};
use crate::error::{CniError, CniResult};

/// In-memory store. Every method but `lock` fails when the lock is not held,
/// so tests catch an operation that forgets to take it.
#[derive(Clone, Debug, Default)]
pub struct FakeStore {
    /// Reservations: address -> (container id, ifname).
    pub reserved: BTreeMap<IpAddr, (String, String)>,
    /// Last reserved address per range set.
    pub last: BTreeMap<usize, IpAddr>,
    /// Recorded boot id.
    pub boot: Option<String>,
    /// Addresses whose release fails (to test that GC keeps going).
    pub fail_release: BTreeSet<IpAddr>,
    /// When set, every write fails.
    pub read_only: bool,
    /// Whether the lock is held.
    pub locked: bool,
    /// How many times the lock was taken.
    pub lock_count: usize,
}

impl FakeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `reservations` (ip, container id, ifname).
    pub fn with(reservations: &[(&str, &str, &str)]) -> Self {
        let mut store = Self::new();
        for (ip, id, ifname) in reservations {
            let ip: IpAddr = ip.parse().expect("test address");
            store
                .reserved
                .insert(ip, (id.to_string(), ifname.to_string()));
        }
        store
    }

    fn held(&self) -> CniResult<()> {
        if self.locked {
            Ok(())
        } else {
            Err(CniError::ipam("FakeStore used without holding the lock"))
        }
    }

    fn writable(&self) -> CniResult<()> {
        self.held()?;
        if self.read_only {
            Err(CniError::ipam("FakeStore is read-only"))
        } else {
            Ok(())
        }
    }
}

impl Store for FakeStore {
    fn lock(&mut self) -> CniResult<()> {
        if self.locked {
            return Err(CniError::ipam("FakeStore locked twice"));
        }
        self.locked = true;
        self.lock_count += 1;
        Ok(())
    }

    fn unlock(&mut self) -> CniResult<()> {
        self.held()?;
        self.locked = false;
        Ok(())
    }

    fn reserve(
        &mut self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        range_id: usize,
    ) -> CniResult<bool> {
        self.writable()?;
        if self.reserved.contains_key(&ip) {
            return Ok(false);
        }
        self.reserved
            .insert(ip, (container_id.trim().to_string(), ifname.to_string()));
        self.last.insert(range_id, ip);
        Ok(true)
    }

    fn last_reserved_ip(&self, range_id: usize) -> CniResult<Option<IpAddr>> {
        self.held()?;
        Ok(self.last.get(&range_id).copied())
    }

    fn release_by_id(&mut self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        self.writable()?;
        let mut released = Vec::new();
        for wanted in [ifname, ""] {
            let ips: Vec<IpAddr> = self
                .reserved
                .iter()
                .filter(|(_, (id, ifn))| id == container_id && ifn == wanted)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in ips {
                self.reserved.remove(&ip);
                released.push(ip);
            }
            if !released.is_empty() {
                break;
            }
        }
        Ok(released)
    }

    fn release(&mut self, r: &Reservation) -> CniResult<bool> {
        self.writable()?;
        if self.fail_release.contains(&r.ip) {
            return Err(CniError::ipam(format!(
                "cannot release {}: injected failure",
                r.ip
            )));
        }
        match self.reserved.get(&r.ip) {
            Some((id, ifname)) if *id == r.container_id && *ifname == r.ifname => {
                self.reserved.remove(&r.ip);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn get_by_id(&self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        self.held()?;
        Ok(self
            .reserved
            .iter()
            .filter(|(_, (id, ifn))| id == container_id && (ifn == ifname || ifn.is_empty()))
            .map(|(ip, _)| *ip)
            .collect())
    }

    fn list(&self) -> CniResult<Vec<Reservation>> {
        self.held()?;
        Ok(self
            .reserved
            .iter()
            .map(|(ip, (id, ifname))| Reservation {
                ip: *ip,
                container_id: id.clone(),
                ifname: ifname.clone(),
            })
            .collect())
    }

    fn boot_id(&self) -> CniResult<Option<String>> {
        self.held()?;
        Ok(self.boot.clone())
    }

    fn set_boot_id(&mut self, boot_id: &str) -> CniResult<()> {
        self.writable()?;
        self.boot = Some(boot_id.to_string());
        Ok(())
    }

    fn check_writable(&mut self) -> CniResult<()> {
        self.writable()
    }
}
