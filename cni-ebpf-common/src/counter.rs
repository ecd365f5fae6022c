//! Per-CPU packet and byte counters, the value of every counter map.

/// One counter slot. Stored in per-CPU maps; user space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets seen (host byte order).
    pub packets: u64,
    /// Bytes seen, whole frame from the Ethernet header (host byte order).
    pub bytes: u64,
}

impl Counter {
    /// Adds another CPU's slot to this one (user space aggregation).
    pub fn add(&mut self, other: &Counter) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64 fields, no padding, every bit pattern valid.
unsafe impl aya::Pod for Counter {}
