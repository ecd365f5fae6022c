//! What the policy verbs read: the maps the datapath uses (`ENDPOINTS`,
//! `POLICY_STATE`, `POLICY`, `POLICY_PORT_RANGES`, `IPCACHE4/6`,
//! `POLICY_CONFIG`), the plugin's attachment records, and the agent's
//! snapshot for names (rule table, identities, which policies select an
//! endpoint). Verdicts come from the maps; the snapshot only names things,
//! so everything works with the agent down.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use anyhow::{bail, Context as _};
use cni_ebpf_common::{
    policy::{PolicyConfig, PolicyState, POLICY_CONFIG_F_ENFORCE},
    EndpointInfo,
};

use crate::{
    bpffs::PinLayout,
    endpoints::{read_state_dir, StateDir},
    maps::policy::{ranges_from_kernel, read_endpoints, PolicyContent, PolicyMaps},
    policy::{
        sync::Snapshot, Compiled, Direction, EndpointPolicy, EndpointStatus, EntryKey,
        IdentityTable, ObjectKey, Party,
    },
};

/// One local endpoint as the maps and records show it.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    /// The id.
    pub id: u64,
    /// Its addresses in `ENDPOINTS`.
    pub ips: Vec<IpAddr>,
    /// Its `ENDPOINTS` value (of the first address).
    pub info: Option<EndpointInfo>,
    /// Its `POLICY_STATE`.
    pub state: Option<PolicyState>,
    /// Its pod (record, else snapshot).
    pub pod: Option<ObjectKey>,
    /// Host veth (record).
    pub veth: Option<String>,
    /// Container id (record).
    pub container_id: Option<String>,
    /// Whether a state record exists.
    pub has_record: bool,
}

impl Endpoint {
    /// The pod as text, or `-`.
    pub fn pod_name(&self) -> String {
        self.pod
            .as_ref()
            .map_or_else(|| "-".into(), ToString::to_string)
    }

    /// `ns/pod`, else `endpoint <hex>`.
    pub fn who(&self) -> String {
        match &self.pod {
            Some(p) => p.to_string(),
            None => format!("endpoint {:016x}", self.id),
        }
    }
}

/// Everything the verbs read, read once.
pub struct View {
    /// `POLICY_CONFIG`.
    pub config: PolicyConfig,
    /// The policy maps.
    pub content: PolicyContent,
    /// Local endpoints by id.
    pub endpoints: BTreeMap<u64, Endpoint>,
    /// The agent's snapshot, if there is one.
    pub snapshot: Option<Snapshot>,
    /// The attachment records.
    pub records: StateDir,
}

impl View {
    /// Reads the maps under `layout` and the files under `state_dir`.
    pub fn load(layout: &PinLayout, state_dir: &Path) -> anyhow::Result<View> {
        let maps = PolicyMaps::open(layout)?;
        let config = maps.config()?;
        let content = maps.read()?;
        let records = read_state_dir(state_dir, None)
            .with_context(|| format!("reading {}", state_dir.display()))?;
        let snapshot = Snapshot::load(state_dir, layout.root()).ok();
        let mut endpoints: BTreeMap<u64, Endpoint> = BTreeMap::new();
        for (ip, info) in read_endpoints(layout)? {
            let e = endpoints
                .entry(info.endpoint_id)
                .or_insert_with(|| Endpoint {
                    id: info.endpoint_id,
                    ..Default::default()
                });
            e.ips.push(ip);
            e.info.get_or_insert(info);
        }
        for (id, state) in &content.state {
            endpoints
                .entry(*id)
                .or_insert_with(|| Endpoint {
                    id: *id,
                    ..Default::default()
                })
                .state = Some(*state);
        }
        for (id, rec) in &records.records {
            let e = endpoints.entry(*id).or_insert_with(|| Endpoint {
                id: *id,
                ..Default::default()
            });
            e.has_record = true;
            e.pod = rec.pod();
            e.veth = Some(rec.host_veth.clone()).filter(|v| !v.is_empty());
            e.container_id = Some(rec.container_id.clone());
        }
        if let Some(s) = &snapshot {
            for se in &s.endpoints {
                if let Some(e) = se.id().and_then(|id| endpoints.get_mut(&id)) {
                    if e.pod.is_none() {
                        e.pod = se.pod.clone();
                    }
                    if e.veth.is_none() && !se.host_veth.is_empty() {
                        e.veth = Some(se.host_veth.clone());
                    }
                }
            }
        }
        Ok(View {
            config,
            content,
            endpoints,
            snapshot,
            records,
        })
    }

    /// Whether the datapath enforces policy.
    pub fn enforcing(&self) -> bool {
        self.config.flags & POLICY_CONFIG_F_ENFORCE != 0
    }

    /// Policies isolating endpoint `id` in `direction` (from the snapshot).
    pub fn policies(&self, id: u64, direction: Direction) -> Vec<ObjectKey> {
        let Some(e) = self.snapshot.as_ref().and_then(|s| s.endpoint(id)) else {
            return Vec::new();
        };
        match direction {
            Direction::Ingress => e.ingress_policies.clone(),
            Direction::Egress => e.egress_policies.clone(),
        }
    }

    /// An identity for people.
    pub fn identity_name(&self, id: u32) -> String {
        match &self.snapshot {
            Some(s) => s.identity_name(id),
            None => match id {
                0 => "any".into(),
                1 => "host".into(),
                2 => "world".into(),
                _ => format!("identity {id}"),
            },
        }
    }

    /// The pod owning `ip` (local endpoints first, then the snapshot's pod
    /// table).
    pub fn pod_of(&self, ip: IpAddr) -> Option<String> {
        self.endpoints
            .values()
            .find(|e| e.ips.contains(&ip))
            .and_then(|e| e.pod.as_ref().map(ToString::to_string))
            .or_else(|| self.snapshot.as_ref().and_then(|s| s.pod_of(ip)))
    }

    /// The endpoint of a pod `ns/name`.
    pub fn endpoint_of_pod(&self, pod: &str) -> Option<&Endpoint> {
        self.endpoints
            .values()
            .find(|e| e.pod.as_ref().is_some_and(|p| p.to_string() == pod))
    }

    /// `NS/POD` or an address, as an explain party.
    pub fn party(&self, what: &str) -> anyhow::Result<Party> {
        if let Ok(ip) = what.parse::<IpAddr>() {
            return Ok(Party::Address(ip));
        }
        if !what.contains('/') {
            bail!("{what:?}: expected NAMESPACE/POD or an IP address");
        }
        if let Some(e) = self.endpoint_of_pod(what) {
            if e.ips.is_empty() {
                bail!(
                    "pod {what} (endpoint {:016x}) has no address in ENDPOINTS",
                    e.id
                );
            }
            return Ok(Party::Endpoint(e.id));
        }
        if let Some(ip) = self
            .snapshot
            .as_ref()
            .and_then(|s| s.pods.get(what))
            .and_then(|ips| ips.first())
        {
            return Ok(Party::Address(*ip));
        }
        bail!("no pod {what} on this node or with a known address");
    }

    /// The maps as the compiler's [`Compiled`], so that `explain` walks the
    /// datapath's own lookups over the installed entries.
    pub fn compiled(&self) -> Compiled {
        let identities: IdentityTable = self
            .snapshot
            .as_ref()
            .map(|s| s.identities.clone())
            .unwrap_or_default();
        let rules = self
            .snapshot
            .as_ref()
            .map(|s| s.rules.iter().map(|r| r.to_rule_info()).collect())
            .unwrap_or_default();
        let mut endpoints: BTreeMap<u64, EndpointPolicy> = BTreeMap::new();
        for e in self.endpoints.values() {
            if e.ips.is_empty() {
                // Not in ENDPOINTS: the datapath does not see it as local.
                continue;
            }
            endpoints.insert(
                e.id,
                EndpointPolicy {
                    endpoint_id: e.id,
                    pod: e.pod.clone(),
                    ips: e.ips.clone(),
                    status: if e.pod.is_some() {
                        EndpointStatus::Pod
                    } else {
                        EndpointStatus::NoPod
                    },
                    flags: e.state.map_or(0, |s| s.flags),
                    ingress_policies: self.policies(e.id, Direction::Ingress),
                    egress_policies: self.policies(e.id, Direction::Egress),
                    entries: BTreeMap::new(),
                    port_ranges: BTreeMap::new(),
                },
            );
        }
        for (k, v) in &self.content.policy {
            let (Some(ep), Some(direction)) = (
                endpoints.get_mut(&k.endpoint_id),
                Direction::from_kernel(k.direction),
            ) else {
                continue;
            };
            ep.entries.insert(
                EntryKey {
                    direction,
                    identity: k.identity,
                    protocol: k.protocol,
                    port: k.port,
                },
                v.rule_index,
            );
        }
        for (k, v) in &self.content.ranges {
            let (Some(ep), Some(direction)) = (
                endpoints.get_mut(&k.endpoint_id),
                Direction::from_kernel(k.direction),
            ) else {
                continue;
            };
            ep.port_ranges.insert(
                EntryKey {
                    direction,
                    identity: k.identity,
                    protocol: k.protocol,
                    port: k.port,
                },
                ranges_from_kernel(v),
            );
        }
        Compiled {
            revision: self.config.revision,
            identities,
            ipcache: self.content.ipcache.clone(),
            endpoints,
            rules,
            warnings: Vec::new(),
        }
    }

    /// Endpoints whose pod (or id in hex) matches `filter`, all without.
    pub fn select(&self, filter: Option<&str>) -> anyhow::Result<Vec<&Endpoint>> {
        let all: Vec<&Endpoint> = self.endpoints.values().collect();
        let Some(f) = filter else { return Ok(all) };
        let picked: Vec<&Endpoint> = all
            .into_iter()
            .filter(|e| {
                e.pod.as_ref().is_some_and(|p| p.to_string() == f) || format!("{:016x}", e.id) == f
            })
            .collect();
        if picked.is_empty() {
            let known: BTreeSet<String> = self
                .endpoints
                .values()
                .filter_map(|e| e.pod.as_ref().map(ToString::to_string))
                .collect();
            bail!(
                "no endpoint for {f} on this node (pods here: {})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(picked)
    }
}

/// A protocol name or number.
pub fn parse_protocol(s: &str) -> anyhow::Result<u8> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        other => other.parse().with_context(|| {
            format!("unknown protocol {s:?} (tcp, udp, sctp, icmp or a number)")
        })?,
    })
}

/// A protocol number for people.
pub fn protocol_name(p: u8) -> String {
    match p {
        0 => "any".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}
