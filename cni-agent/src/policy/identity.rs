//! Identities: numbers for equivalence classes of addresses, stable across
//! compiles; and the longest-prefix-match reasoning behind them.
//!
//! # Equivalence classes
//!
//! Two addresses get the same identity exactly when no policy can tell them
//! apart. A policy looks at an address through:
//! - pod selectors and namespace selectors: the pod's namespace, its labels
//!   and its namespace's labels;
//! - ipBlocks: whether the address is in each `cidr` and each `except`.
//!   Every ipBlock matches *any* address in it, pod addresses included.
//! - named ports in egress rules: the number a port name resolves to on the
//!   destination pod.
//!
//! For ipBlocks, let `P` be the set of every `cidr` and `except` prefix of
//! every policy. The prefixes of `P` that contain an address form a chain,
//! so they are all determined by the most specific one: an address's
//! *position* is its longest match in `P` (or none). Hence the keys:
//!
//! - [`IdentityKey::Pod`]: (namespace, pod labels, namespace labels,
//!   position of the address, named-port resolutions). A dual-stack pod can
//!   have two identities when its addresses sit in different positions.
//! - [`IdentityKey::Cidr`]`(p)` for each `p` in `P`: the addresses whose
//!   longest match in `P` is `p` and that are no pod's — "`p` minus the more
//!   specific prefixes of `P`", i.e. in exactly the ipBlocks and excepts that
//!   contain `p`.
//! - [`IDENTITY_WORLD`](cni_ebpf_common::policy::IDENTITY_WORLD): addresses
//!   in no prefix of `P` and no pod's. When `0.0.0.0/0` or `::/0` is itself
//!   in `P`, that default route is a CIDR class like any other (so that
//!   `cidr: 0.0.0.0/0` does not also allow the IPv6 world).
//! - [`IDENTITY_HOST`](cni_ebpf_common::policy::IDENTITY_HOST): the node
//!   addresses given to the compiler.
//!
//! The kernel's LPM trie yields the right class when the ipcache holds every
//! prefix of `P` with its CIDR identity, every pod address as /32 (/128)
//! with its pod identity, the node addresses as host, and `0.0.0.0/0`,
//! `::/0` as WORLD (unless in `P`): an address that is a pod's hits its /32;
//! any other hits its longest match in `P`, or the default route.
//!
//! # Named ports
//!
//! An egress rule's named port resolves on the *peer* pod, and pods with the
//! same labels may declare different numbers for the same name. The
//! `POLICY` key has no room for a pod, only an identity, so the resolution
//! is part of the identity key: for every (name, protocol) that some egress
//! rule uses, the numbers the pod declares. Pods that agree (the usual case:
//! one Deployment) still share an identity; names no egress rule uses do not
//! split anything. Ingress named ports resolve on the local pod and need no
//! such split.
//!
//! # Stability
//!
//! [`IdentityTable::allocate`] keeps the number of every key the previous
//! table had and gives new keys numbers from a counter that only moves
//! forward (wrapping past `u32::MAX` to the first allocatable number and
//! skipping numbers in use), so a number is not reused soon after its class
//! went away: a packet classified under the old table is never taken for
//! another class. Identities are node-local.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use cni_ebpf_common::policy::IDENTITY_FIRST_ALLOCATED;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{model::Protocol, selector::Labels};

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum IdentityKey {
    /// Pod addresses that no policy can tell apart.
    #[serde(rename_all = "camelCase")]
    Pod {
        /// The pods' namespace.
        namespace: String,
        /// The pods' labels.
        labels: Labels,
        /// The namespace's labels.
        namespace_labels: Labels,
        /// The addresses' longest match among the ipBlock prefixes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<IpNet>,
        /// Resolutions of the named ports egress rules use.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        named_ports: Vec<NamedPort>,
    },
    /// The addresses whose longest ipBlock-prefix match is `prefix` and
    /// that belong to no pod.
    Cidr {
        /// The prefix.
        prefix: IpNet,
    },
}

/// A container port name and what it resolves to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The number.
    pub port: u16,
}

/// Identity numbers by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityTable {
    // Keys are shared between the two maps: a pod key holds label maps.
    by_key: BTreeMap<Arc<IdentityKey>, u32>,
    by_id: BTreeMap<u32, Arc<IdentityKey>>,
    next: u32,
}

impl Default for IdentityTable {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
            next: IDENTITY_FIRST_ALLOCATED,
        }
    }
}

/// The identity space (`IDENTITY_FIRST_ALLOCATED..=u32::MAX`) is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no identity numbers left")]
pub struct IdentitiesExhausted;

impl IdentityTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table for exactly `keys`: numbers of `previous` kept, new ones
    /// allocated (see the module documentation).
    pub fn allocate(
        previous: &IdentityTable,
        keys: impl IntoIterator<Item = IdentityKey>,
    ) -> Result<IdentityTable, IdentitiesExhausted> {
        let mut table = IdentityTable {
            next: previous.next.max(IDENTITY_FIRST_ALLOCATED),
            ..IdentityTable::default()
        };
        let mut fresh = Vec::new();
        for key in keys {
            if table.by_key.contains_key(&key) {
                continue;
            }
            match previous.by_key.get_key_value(&key) {
                Some((shared, &id)) => table.insert(id, Arc::clone(shared)),
                None => fresh.push(key),
            }
        }
        fresh.sort();
        fresh.dedup();
        let space = u64::from(u32::MAX - IDENTITY_FIRST_ALLOCATED) + 1;
        for key in fresh {
            let mut tries = 0u64;
            let id = loop {
                let candidate = table.next;
                table.next = match table.next.checked_add(1) {
                    Some(n) => n,
                    None => IDENTITY_FIRST_ALLOCATED,
                };
                // Also skip numbers the previous table still used: a key
                // that went away keeps its number out of circulation for
                // one more compile.
                if !table.by_id.contains_key(&candidate) && !previous.by_id.contains_key(&candidate)
                {
                    break candidate;
                }
                tries += 1;
                if tries > space {
                    return Err(IdentitiesExhausted);
                }
            };
            table.insert(id, Arc::new(key));
        }
        Ok(table)
    }

    fn insert(&mut self, id: u32, key: Arc<IdentityKey>) {
        self.by_id.insert(id, Arc::clone(&key));
        self.by_key.insert(key, id);
    }

    /// The number of a key.
    pub fn get(&self, key: &IdentityKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The key of a number.
    pub fn key(&self, id: u32) -> Option<&IdentityKey> {
        self.by_id.get(&id).map(|k| &**k)
    }

    /// (number, key), by number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &IdentityKey)> {
        self.by_id.iter().map(|(id, k)| (*id, &**k))
    }

    /// How many identities.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// `IdentityTable` as JSON: the counter and the entries, so that an agent
/// can persist it across restarts.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableWire {
    next: u32,
    identities: Vec<TableEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableEntry {
    id: u32,
    key: IdentityKey,
}

impl Serialize for IdentityTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TableWire {
            next: self.next,
            identities: self
                .iter()
                .map(|(id, key)| TableEntry {
                    id,
                    key: key.clone(),
                })
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdentityTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = TableWire::deserialize(d)?;
        let mut t = IdentityTable {
            next: wire.next.max(IDENTITY_FIRST_ALLOCATED),
            ..IdentityTable::default()
        };
        for TableEntry { id, key } in wire.identities {
            if id < IDENTITY_FIRST_ALLOCATED {
                return Err(D::Error::custom(format!("identity {id} is reserved")));
            }
            if t.by_id.contains_key(&id) || t.by_key.contains_key(&key) {
                return Err(D::Error::custom(format!("identity {id} or its key twice")));
            }
            t.insert(id, Arc::new(key));
        }
        Ok(t)
    }
}

/// Longest-prefix match over a set of prefixes, the way the kernel's LPM
/// trie answers: a hash set per prefix length, probed from the longest
/// length present down.
#[derive(Clone, Debug, Default)]
pub struct PrefixMap<V> {
    entries: HashMap<IpNet, V>,
    lengths_v4: Vec<u8>,
    lengths_v6: Vec<u8>,
}

impl<V> PrefixMap<V> {
    /// The map of these (already truncated) prefixes.
    pub fn new(entries: impl IntoIterator<Item = (IpNet, V)>) -> Self {
        let entries: HashMap<IpNet, V> = entries.into_iter().map(|(n, v)| (n.trunc(), v)).collect();
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        for net in entries.keys() {
            match net {
                IpNet::V4(_) => v4.insert(net.prefix_len()),
                IpNet::V6(_) => v6.insert(net.prefix_len()),
            };
        }
        Self {
            entries,
            lengths_v4: v4.into_iter().rev().collect(),
            lengths_v6: v6.into_iter().rev().collect(),
        }
    }

    /// The most specific prefix containing `ip`, and its value.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpNet, &V)> {
        let lengths = match ip {
            IpAddr::V4(_) => &self.lengths_v4,
            IpAddr::V6(_) => &self.lengths_v6,
        };
        lengths.iter().find_map(|&len| {
            let net = IpNet::new(ip, len).ok()?.trunc();
            self.entries.get(&net).map(|v| (net, v))
        })
    }

    /// The most specific prefix containing `net` (itself included).
    pub fn lookup_net(&self, net: IpNet) -> Option<(IpNet, &V)> {
        let lengths = match net {
            IpNet::V4(_) => &self.lengths_v4,
            IpNet::V6(_) => &self.lengths_v6,
        };
        lengths
            .iter()
            .filter(|&&len| len <= net.prefix_len())
            .find_map(|&len| {
                let p = IpNet::new(net.addr(), len).ok()?.trunc();
                self.entries.get(&p).map(|v| (p, v))
            })
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The set of prefixes `P`, as a [`PrefixMap`] without values.
pub type PrefixSet = PrefixMap<()>;

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(p: &str) -> IdentityKey {
        IdentityKey::Cidr {
            prefix: p.parse().unwrap(),
        }
    }

    #[test]
    fn numbers_are_kept_and_not_reused_at_once() {
        let t1 = IdentityTable::allocate(
            &IdentityTable::new(),
            [cidr("10.0.0.0/8"), cidr("10.1.0.0/16")],
        )
        .unwrap();
        let a = t1.get(&cidr("10.0.0.0/8")).unwrap();
        let b = t1.get(&cidr("10.1.0.0/16")).unwrap();
        assert!(a >= IDENTITY_FIRST_ALLOCATED && b >= IDENTITY_FIRST_ALLOCATED && a != b);
        let t2 = IdentityTable::allocate(&t1, [cidr("10.2.0.0/16"), cidr("10.0.0.0/8")]).unwrap();
        assert_eq!(t2.get(&cidr("10.0.0.0/8")), Some(a));
        let c = t2.get(&cidr("10.2.0.0/16")).unwrap();
        assert!(c != a && c != b, "a freed number is not handed out at once");
        assert_eq!(t2.len(), 2);
        let json = serde_json::to_string(&t2).unwrap();
        let back: IdentityTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t2);
    }

    #[test]
    fn the_counter_wraps_and_skips_numbers_in_use() {
        let mut t = IdentityTable::allocate(&IdentityTable::new(), [cidr("10.0.0.0/8")]).unwrap();
        t.next = u32::MAX;
        let t2 = IdentityTable::allocate(
            &t,
            [cidr("10.0.0.0/8"), cidr("10.1.0.0/16"), cidr("10.2.0.0/16")],
        )
        .unwrap();
        assert_eq!(t2.get(&cidr("10.1.0.0/16")), Some(u32::MAX));
        assert_eq!(
            t2.get(&cidr("10.2.0.0/16")),
            Some(IDENTITY_FIRST_ALLOCATED + 1),
            "256 is in use"
        );
    }

    #[test]
    fn lpm_finds_the_most_specific_prefix() {
        let m = PrefixSet::new(
            ["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0", "fd00::/8"]
                .map(|p| (p.parse().unwrap(), ())),
        );
        let get = |ip: &str| m.lookup(ip.parse().unwrap()).map(|(n, _)| n.to_string());
        assert_eq!(get("10.1.2.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(get("10.2.2.3").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(get("192.0.2.1").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(get("fd00::1").as_deref(), Some("fd00::/8"));
        assert_eq!(get("2001:db8::1"), None);
        let n = m
            .lookup_net("10.1.0.0/16".parse().unwrap())
            .map(|(n, _)| n.to_string());
        assert_eq!(n.as_deref(), Some("10.1.0.0/16"));
    }
}
