//! The reservation store behind the allocator: a disk backend
//! ([`super::disk::DiskStore`], host-local's layout plus an index by
//! container) and an in-memory fake for unit tests
//! ([`super::fake::FakeStore`]).

use std::net::IpAddr;

use crate::error::{CniError, CniResult};

/// One attachment: the container and the interface name it was added with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Attachment {
    /// Checks both values can be stored in host-local's file format
    /// (`containerid\r\nifname`): code 4 naming the variable otherwise.
    pub fn new(container_id: &str, ifname: &str) -> CniResult<Self> {
        // host-local trims the container id before storing it; so does this.
        let container_id = container_id.trim();
        if container_id.is_empty() {
            return Err(CniError::env("CNI_CONTAINERID", "must not be empty"));
        }
        if container_id.chars().any(char::is_control) {
            return Err(CniError::env(
                "CNI_CONTAINERID",
                format!("{container_id:?} contains control characters"),
            ));
        }
        if ifname.is_empty() {
            return Err(CniError::env("CNI_IFNAME", "must not be empty"));
        }
        if ifname.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(CniError::env(
                "CNI_IFNAME",
                format!("{ifname:?} contains whitespace or control characters"),
            ));
        }
        Ok(Self {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }
}

/// A reserved address and its owner. An empty `ifname` marks a file written
/// by host-local before it recorded interface names (owner: the container,
/// any interface).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reservation {
    /// The address.
    pub ip: IpAddr,
    /// Container id of the owner.
    pub container_id: String,
    /// Interface name of the owner (empty for legacy reservations).
    pub ifname: String,
}

impl Reservation {
    /// Whether `att` owns this reservation (legacy ones: by container id).
    pub fn owned_by(&self, att: &Attachment) -> bool {
        self.container_id == att.container_id
            && (self.ifname == att.ifname || self.ifname.is_empty())
    }
}

/// Where reservations live. Every method except `lock` expects the caller
/// to hold the lock: the allocator takes it around each operation.
pub trait Store {
    /// Takes the store's exclusive lock (blocking).
    fn lock(&mut self) -> CniResult<()>;

    /// Releases the lock.
    fn unlock(&mut self) -> CniResult<()>;

    /// Reserves `ip` for the attachment; `Ok(false)` when it is taken.
    /// Records `ip` as the last reserved address of range set `range_id`.
    fn reserve(
        &mut self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        range_id: usize,
    ) -> CniResult<bool>;

    /// The last address reserved in range set `range_id`, if known.
    fn last_reserved_ip(&self, range_id: usize) -> CniResult<Option<IpAddr>>;

    /// Releases every address held by the attachment (legacy reservations of
    /// the container when it holds none under this interface name, as
    /// host-local does), returning them. Nothing held is success.
    fn release_by_id(&mut self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>>;

    /// Releases one reservation if it still has that owner; `Ok(false)` when
    /// it was already gone or has another owner.
    fn release(&mut self, reservation: &Reservation) -> CniResult<bool>;

    /// Addresses held by the attachment (and its container's legacy ones).
    fn get_by_id(&self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>>;

    /// Every reservation of the network.
    fn list(&self) -> CniResult<Vec<Reservation>>;

    /// The boot id recorded by the last operation, if any.
    fn boot_id(&self) -> CniResult<Option<String>>;

    /// Records the boot id.
    fn set_boot_id(&mut self, boot_id: &str) -> CniResult<()>;

    /// Fails when new reservations cannot be written.
    fn check_writable(&mut self) -> CniResult<()>;
}

/// Runs `f` with the store locked, unlocking afterwards whatever happens.
pub fn with_lock<T>(
    store: &mut dyn Store,
    f: impl FnOnce(&mut dyn Store) -> CniResult<T>,
) -> CniResult<T> {
    store.lock()?;
    let result = f(store);
    let unlocked = store.unlock();
    let value = result?;
    unlocked?;
    Ok(value)
}
