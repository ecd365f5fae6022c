//! The prefilter rule store: rules live only in the pinned maps, one rule
//! id per rule (a protocol rule on both families is two entries sharing an
//! id), so the agent and `sluicectl` see the same rules and a restart loses
//! none.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context as _};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, MapData, PerCpuArray, PerCpuValues,
};
use cni_ebpf_common::{
    maps::{
        PREFILTER_CIDR4, PREFILTER_CIDR6, PREFILTER_PROTO, PREFILTER_RULES_MAX,
        PREFILTER_RULE_COUNTERS,
    },
    prefilter::{
        Cidr4Addr, Cidr6Addr, ACTION_ALLOW, ACTION_DROP, FAMILY_IPV4, FAMILY_IPV6, ORIGIN_CONFIG,
        ORIGIN_RUNTIME,
    },
    Counter, ProtoKey, RuleValue,
};
use ipnet::IpNet;
use serde::Serialize;

use super::{counters::sum, open_pinned};
use crate::{
    bpffs::PinLayout,
    rules::{Action, Family, Match, Rule},
};

/// Who added a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The agent's `--prefilter` file.
    Config,
    /// `sluicectl filter add`.
    Runtime,
}

impl Origin {
    fn code(self) -> u8 {
        match self {
            Origin::Config => ORIGIN_CONFIG,
            Origin::Runtime => ORIGIN_RUNTIME,
        }
    }

    fn from_code(code: u8) -> Self {
        if code == ORIGIN_CONFIG {
            Origin::Config
        } else {
            Origin::Runtime
        }
    }
}

/// A rule as installed: its id, origin and counters.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InstalledRule {
    /// Stable id for the rule's life (`sluicectl filter del ID`).
    pub id: u32,
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Who added it.
    pub origin: Origin,
    /// Packets matched (all CPUs).
    pub packets: u64,
    /// Bytes matched (all CPUs).
    pub bytes: u64,
}

/// One map entry of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Proto(ProtoKey),
    Cidr4(u32, Cidr4Addr),
    Cidr6(u32, Cidr6Addr),
}

fn entries(rule: &Rule) -> Vec<Entry> {
    match &rule.matcher {
        Match::Cidr(IpNet::V4(net)) => vec![Entry::Cidr4(
            net.prefix_len().into(),
            net.network().octets(),
        )],
        Match::Cidr(IpNet::V6(net)) => vec![Entry::Cidr6(
            net.prefix_len().into(),
            net.network().octets(),
        )],
        Match::Proto {
            protocol,
            families,
            selector,
        } => families
            .iter()
            .map(|family| {
                Entry::Proto(ProtoKey {
                    family: if *family == Family::Ipv4 {
                        FAMILY_IPV4
                    } else {
                        FAMILY_IPV6
                    },
                    protocol: *protocol,
                    has_selector: u8::from(selector.is_some()),
                    _pad: 0,
                    selector: selector.unwrap_or(0),
                    _pad2: 0,
                })
            })
            .collect(),
    }
}

fn action_code(action: Action) -> u8 {
    match action {
        Action::Drop => ACTION_DROP,
        Action::Allow => ACTION_ALLOW,
    }
}

fn action_from_code(code: u8) -> Action {
    if code == ACTION_ALLOW {
        Action::Allow
    } else {
        Action::Drop
    }
}

/// Result of [`PrefilterMaps::sync_config`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Rules added.
    pub added: Vec<InstalledRule>,
    /// Rules whose action changed in place (id and counters kept).
    pub changed: Vec<InstalledRule>,
    /// Config rules that left the file and were removed.
    pub removed: Vec<InstalledRule>,
    /// Rules already installed as the file says.
    pub unchanged: usize,
}

/// The pinned prefilter maps.
pub struct PrefilterMaps {
    proto: HashMap<MapData, ProtoKey, RuleValue>,
    cidr4: LpmTrie<MapData, Cidr4Addr, RuleValue>,
    cidr6: LpmTrie<MapData, Cidr6Addr, RuleValue>,
    counters: PerCpuArray<MapData, Counter>,
}

/// Rule entries grouped by rule id, as read from the maps.
struct Grouped {
    value: RuleValue,
    entries: Vec<Entry>,
}

impl PrefilterMaps {
    /// Opens the pinned maps under `layout`.
    pub fn open(layout: &PinLayout) -> anyhow::Result<Self> {
        Ok(Self {
            proto: open_pinned(layout, PREFILTER_PROTO)?,
            cidr4: open_pinned(layout, PREFILTER_CIDR4)?,
            cidr6: open_pinned(layout, PREFILTER_CIDR6)?,
            counters: open_pinned(layout, PREFILTER_RULE_COUNTERS)?,
        })
    }

    fn grouped(&self) -> anyhow::Result<BTreeMap<u32, Grouped>> {
        let mut groups: BTreeMap<u32, Grouped> = BTreeMap::new();
        let mut push = |value: RuleValue, entry: Entry| {
            groups
                .entry(value.rule_id)
                .or_insert_with(|| Grouped {
                    value,
                    entries: Vec::new(),
                })
                .entries
                .push(entry);
        };
        for item in self.proto.iter() {
            let (key, value) = item.context("reading PREFILTER_PROTO")?;
            push(value, Entry::Proto(key));
        }
        for item in self.cidr4.iter() {
            let (key, value) = item.context("reading PREFILTER_CIDR4")?;
            push(value, Entry::Cidr4(key.prefix_len(), key.data()));
        }
        for item in self.cidr6.iter() {
            let (key, value) = item.context("reading PREFILTER_CIDR6")?;
            push(value, Entry::Cidr6(key.prefix_len(), key.data()));
        }
        Ok(groups)
    }

    fn rule_of(group: &Grouped) -> anyhow::Result<Rule> {
        let action = action_from_code(group.value.action);
        let matcher = match group.entries.as_slice() {
            [Entry::Cidr4(len, addr)] => {
                Match::Cidr(IpNet::new(IpAddr::V4(Ipv4Addr::from(*addr)), *len as u8)?)
            }
            [Entry::Cidr6(len, addr)] => {
                Match::Cidr(IpNet::new(IpAddr::V6(Ipv6Addr::from(*addr)), *len as u8)?)
            }
            protos => {
                let mut families = Vec::new();
                let mut first: Option<ProtoKey> = None;
                for entry in protos {
                    let Entry::Proto(key) = entry else {
                        bail!(
                            "rule {} mixes CIDR and protocol entries",
                            group.value.rule_id
                        );
                    };
                    families.push(if key.family == FAMILY_IPV4 {
                        Family::Ipv4
                    } else {
                        Family::Ipv6
                    });
                    first.get_or_insert(*key);
                }
                let key = first.context("rule without entries")?;
                families.sort();
                Match::Proto {
                    protocol: key.protocol,
                    families,
                    selector: (key.has_selector != 0).then_some(key.selector),
                }
            }
        };
        Ok(Rule { matcher, action })
    }

    fn counter(&self, id: u32) -> anyhow::Result<Counter> {
        Ok(sum(&self.counters.get(&id, 0)?))
    }

    /// Every installed rule, by id.
    pub fn list(&self) -> anyhow::Result<Vec<InstalledRule>> {
        let mut out = Vec::new();
        for (id, group) in self.grouped()? {
            let counter = self.counter(id)?;
            out.push(InstalledRule {
                id,
                rule: Self::rule_of(&group)?,
                origin: Origin::from_code(group.value.origin),
                packets: counter.packets,
                bytes: counter.bytes,
            });
        }
        Ok(out)
    }

    /// The installed rule with this match, if any.
    pub fn find(&self, matcher: &Match) -> anyhow::Result<Option<InstalledRule>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|r| &r.rule.matcher == matcher))
    }

    fn lookup(&self, entry: &Entry) -> Option<RuleValue> {
        // Exact-key lookups: for the tries a get with the rule's own prefix
        // could return a wider rule, so compare the key we read back.
        match entry {
            Entry::Proto(key) => self.proto.get(key, 0).ok(),
            Entry::Cidr4(len, addr) => self
                .cidr4
                .iter()
                .filter_map(Result::ok)
                .find(|(k, _)| k.prefix_len() == *len && k.data() == *addr)
                .map(|(_, v)| v),
            Entry::Cidr6(len, addr) => self
                .cidr6
                .iter()
                .filter_map(Result::ok)
                .find(|(k, _)| k.prefix_len() == *len && k.data() == *addr)
                .map(|(_, v)| v),
        }
    }

    fn insert(&mut self, entry: &Entry, value: RuleValue) -> anyhow::Result<()> {
        match entry {
            Entry::Proto(key) => self.proto.insert(key, value, 0)?,
            Entry::Cidr4(len, addr) => self.cidr4.insert(&Key::new(*len, *addr), value, 0)?,
            Entry::Cidr6(len, addr) => self.cidr6.insert(&Key::new(*len, *addr), value, 0)?,
        }
        Ok(())
    }

    fn remove(&mut self, entry: &Entry) -> anyhow::Result<()> {
        match entry {
            Entry::Proto(key) => self.proto.remove(key)?,
            Entry::Cidr4(len, addr) => self.cidr4.remove(&Key::new(*len, *addr))?,
            Entry::Cidr6(len, addr) => self.cidr6.remove(&Key::new(*len, *addr))?,
        }
        Ok(())
    }

    fn zero_counter(&mut self, id: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
        self.counters.set(id, zeros, 0)?;
        Ok(())
    }

    /// Installs `rule`. A rule whose entries are already taken (the same
    /// match, or a protocol rule overlapping on a family) is refused, naming
    /// the rule in the way. All entries go in or none do.
    pub fn add(&mut self, rule: &Rule, origin: Origin) -> anyhow::Result<InstalledRule> {
        let groups = self.grouped()?;
        let new_entries = entries(rule);
        for entry in &new_entries {
            if let Some(existing) = self.lookup(entry) {
                let other = groups
                    .get(&existing.rule_id)
                    .map(Self::rule_of)
                    .transpose()?
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                bail!(
                    "duplicate rule: {rule} overlaps rule {} ({other})",
                    existing.rule_id
                );
            }
        }
        let id = (1..PREFILTER_RULES_MAX)
            .find(|id| !groups.contains_key(id))
            .context("prefilter rule table is full")?;
        self.zero_counter(id)?;
        let value = RuleValue {
            rule_id: id,
            action: action_code(rule.action),
            origin: origin.code(),
            _pad: [0; 2],
        };
        for (i, entry) in new_entries.iter().enumerate() {
            if let Err(err) = self.insert(entry, value) {
                for done in &new_entries[..i] {
                    let _ = self.remove(done);
                }
                return Err(err.context(format!("installing {rule}")));
            }
        }
        Ok(InstalledRule {
            id,
            rule: rule.clone(),
            origin,
            packets: 0,
            bytes: 0,
        })
    }

    /// Removes the rule with this id and returns it as it was.
    pub fn delete(&mut self, id: u32) -> anyhow::Result<InstalledRule> {
        let rule = self
            .list()?
            .into_iter()
            .find(|r| r.id == id)
            .with_context(|| format!("no prefilter rule with id {id}"))?;
        for entry in entries(&rule.rule) {
            self.remove(&entry)?;
        }
        Ok(rule)
    }

    fn set_action(
        &mut self,
        installed: &InstalledRule,
        action: Action,
        origin: Origin,
    ) -> anyhow::Result<()> {
        let value = RuleValue {
            rule_id: installed.id,
            action: action_code(action),
            origin: origin.code(),
            _pad: [0; 2],
        };
        // Overwriting in place: a packet sees the old or the new verdict.
        for entry in entries(&installed.rule) {
            self.insert(&entry, value)?;
        }
        Ok(())
    }

    /// Makes the config-origin rules equal `rules`: adds the missing ones,
    /// updates actions in place, removes config rules no longer listed.
    /// Runtime rules are left alone unless the file names the same match,
    /// in which case the file takes them over.
    pub fn sync_config(&mut self, rules: &[Rule]) -> anyhow::Result<SyncReport> {
        let mut report = SyncReport::default();
        let installed = self.list()?;
        for installed_rule in installed.iter().filter(|r| r.origin == Origin::Config) {
            if !rules
                .iter()
                .any(|r| r.matcher == installed_rule.rule.matcher)
            {
                report.removed.push(self.delete(installed_rule.id)?);
            }
        }
        for rule in rules {
            match installed.iter().find(|r| r.rule.matcher == rule.matcher) {
                Some(existing)
                    if existing.rule.action == rule.action && existing.origin == Origin::Config =>
                {
                    report.unchanged += 1;
                }
                Some(existing) => {
                    self.set_action(existing, rule.action, Origin::Config)?;
                    let mut changed = existing.clone();
                    changed.rule.action = rule.action;
                    changed.origin = Origin::Config;
                    report.changed.push(changed);
                }
                None => report.added.push(self.add(rule, Origin::Config)?),
            }
        }
        Ok(report)
    }
}
