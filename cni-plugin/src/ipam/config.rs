//! The IPAM configuration: the `ipam` object of a network config, read the
//! way host-local reads it (`ranges`, the legacy single range, `routes`,
//! `dataDir`, `resolvConf`) plus the requested addresses that arrive through
//! `runtimeConfig.ips`, `args.cni.ips` and `CNI_ARGS` `IP=`.
//!
//! Every validation failure is code 7 and names the key and the value.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::{CniError, CniResult};
use crate::types::{Dns, Route};

/// Where host-local (and so sluice-ipam) keeps its reservations by default.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One range: a subnet and the inclusive stretch of it to allocate from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The subnet; addresses are returned with its prefix length.
    pub subnet: IpNet,
    /// First address to hand out (default: network address + 1).
    pub range_start: IpAddr,
    /// Last address to hand out (default: last address, less the broadcast
    /// address for IPv4).
    pub range_end: IpAddr,
    /// Gateway returned with each address and never allocated (default:
    /// network address + 1, as host-local does).
    pub gateway: IpAddr,
}

impl Range {
    /// Whether `ip` lies between `range_start` and `range_end` (inclusive).
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.range_start)
            && to_u128(ip) >= to_u128(self.range_start)
            && to_u128(ip) <= to_u128(self.range_end)
    }

    /// Whether `ip` may be handed out: inside the range and not the gateway,
    /// the network address or (IPv4) the broadcast address.
    pub fn allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !self.reserved_addresses().contains(&ip)
    }

    /// Addresses of the subnet never handed out: gateway, network address
    /// and, for IPv4, broadcast address.
    pub fn reserved_addresses(&self) -> Vec<IpAddr> {
        let mut out = vec![self.gateway, self.subnet.network()];
        if self.subnet.addr().is_ipv4() {
            out.push(self.subnet.broadcast());
        }
        out
    }

    /// How many addresses of the range can be handed out.
    pub fn capacity(&self) -> u128 {
        let span = to_u128(self.range_end)
            .saturating_sub(to_u128(self.range_start))
            .saturating_add(1);
        let mut skipped: Vec<IpAddr> = self
            .reserved_addresses()
            .into_iter()
            .filter(|ip| self.contains(*ip))
            .collect();
        skipped.sort();
        skipped.dedup();
        span.saturating_sub(skipped.len() as u128)
    }

    /// The subnet with `ip` as address, as results carry it.
    pub fn address(&self, ip: IpAddr) -> IpNet {
        // The prefix length comes from a valid IpNet of the same family.
        IpNet::new(ip, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }
}

impl fmt::Display for Range {
    /// `start-end`, the form host-local prints in its messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

/// A range set: one address per set is allocated to each attachment (a set
/// per family gives dual stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// The range holding `ip` (between its start and end), if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Whether any range of the set holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// Whether `ip` may be handed out from this set.
    pub fn allocatable(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.allocatable(ip))
    }

    /// How many addresses the set can hand out in total.
    pub fn capacity(&self) -> u128 {
        self.0
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.capacity()))
    }

    /// Whether the set is IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|r| r.subnet.addr().is_ipv4())
    }

    fn overlaps<'a>(&'a self, other: &'a RangeSet) -> Option<(&'a Range, &'a Range)> {
        self.0
            .iter()
            .flat_map(|a| other.0.iter().map(move |b| (a, b)))
            .find(|(a, b)| ranges_overlap(a, b))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The parsed IPAM configuration of one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    /// `cniVersion` of the network config (empty when absent).
    pub cni_version: String,
    /// The network's `name`: the store lives in `data_dir/name`.
    pub network: String,
    /// `ipam.type`.
    pub ipam_type: String,
    /// Range sets, in order; `runtimeConfig.ipRanges` replaces `ranges`.
    pub range_sets: Vec<RangeSet>,
    /// Routes returned with every result.
    pub routes: Vec<Route>,
    /// `ipam.dataDir`, default [`DEFAULT_DATA_DIR`].
    pub data_dir: PathBuf,
    /// `ipam.resolvConf`, read at ADD time into the result's DNS.
    pub resolv_conf: Option<PathBuf>,
    /// Specific addresses asked for (CNI_ARGS `IP=`, `args.cni.ips`,
    /// `runtimeConfig.ips`), without duplicates, in that order.
    pub requested_ips: Vec<IpAddr>,
}

impl IpamConfig {
    /// Parses a network config (the whole object, as delegated IPAM gets it).
    pub fn parse(netconf: &Value) -> CniResult<Self> {
        Self::parse_with_args(netconf, "")
    }

    /// Parses a network config and the `CNI_ARGS` of the request (for `IP=`).
    pub fn parse_with_args(netconf: &Value, cni_args: &str) -> CniResult<Self> {
        let location = StoreLocation::parse(netconf)?;
        let root = netconf
            .as_object()
            .ok_or_else(|| CniError::config("network config is not a JSON object"))?;
        let ipam = ipam_object(netconf)?;
        let ipam_type = match ipam.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(other) => {
                return Err(CniError::config(format!(
                    "ipam.type: expected a plugin name, got {other}"
                )))
            }
            None => return Err(CniError::config("ipam.type is missing")),
        };
        let cni_version = match root.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            None => String::new(),
            Some(other) => {
                return Err(CniError::config(format!(
                    "cniVersion: expected a string, got {other}"
                )))
            }
        };

        let runtime = match root.get("runtimeConfig") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(CniError::config(format!(
                    "runtimeConfig: expected an object, got {other}"
                )))
            }
        };

        // Ranges: runtimeConfig.ipRanges when given, else ipam.ranges with the
        // legacy single range (subnet/rangeStart/rangeEnd/gateway) first.
        let runtime_ranges = runtime
            .and_then(|r| r.get("ipRanges"))
            .filter(|v| !is_empty_list(v));
        let mut range_sets = Vec::new();
        if let Some(list) = runtime_ranges {
            range_sets = parse_range_sets(list, "runtimeConfig.ipRanges")?;
        } else {
            // Without `subnet`, host-local ignores the other legacy keys; so
            // does this, to accept every config it accepts.
            if ipam.get("subnet").is_some_and(|s| !s.is_null()) {
                range_sets.push(RangeSet(vec![parse_range(ipam, "ipam")?]));
            }
            if let Some(list) = ipam.get("ranges").filter(|v| !v.is_null()) {
                range_sets.extend(parse_range_sets(list, "ipam.ranges")?);
            }
        }
        if range_sets.is_empty() {
            return Err(CniError::config(
                "no IP ranges specified (ipam.ranges, ipam.subnet or runtimeConfig.ipRanges)",
            ));
        }
        for i in 0..range_sets.len() {
            for j in i + 1..range_sets.len() {
                if let Some((a, b)) = range_sets[i].overlaps(&range_sets[j]) {
                    return Err(CniError::config(format!(
                        "range set {i} overlaps with range set {j}: {a} ({}) and {b} ({})",
                        a.subnet, b.subnet
                    )));
                }
            }
        }

        let routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_route(item, i))
                .collect::<CniResult<_>>()?,
            Some(other) => {
                return Err(CniError::config(format!(
                    "ipam.routes: expected a list, got {other}"
                )))
            }
        };

        let resolv_conf = match ipam.get("resolvConf") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(other) => {
                return Err(CniError::config(format!(
                    "ipam.resolvConf: expected a path, got {other}"
                )))
            }
        };

        let mut requested_ips = parse_cni_args_ips(cni_args)?;
        if let Some(ips) = root
            .get("args")
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
        {
            requested_ips.extend(parse_ip_list(ips, "args.cni.ips")?);
        }
        if let Some(ips) = runtime.and_then(|r| r.get("ips")) {
            requested_ips.extend(parse_ip_list(ips, "runtimeConfig.ips")?);
        }
        let mut seen = Vec::new();
        requested_ips.retain(|ip| {
            let new = !seen.contains(ip);
            seen.push(*ip);
            new
        });

        Ok(Self {
            cni_version,
            network: location.network,
            ipam_type,
            range_sets,
            routes,
            data_dir: location.data_dir,
            resolv_conf,
            requested_ips,
        })
    }

    /// DNS settings from `resolvConf` (empty when unset).
    pub fn dns(&self) -> CniResult<Dns> {
        match &self.resolv_conf {
            None => Ok(Dns::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CniError::config(format!("ipam.resolvConf: cannot read {}", path.display()))
                        .with_details(e.to_string())
                })?;
                Ok(parse_resolv_conf(&text))
            }
        }
    }

    /// The directory of this network's store.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }
}

/// Only what locates the store (network name and data directory): what DEL
/// and GC need, so they work even when the ranges no longer parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLocation {
    /// Network name.
    pub network: String,
    /// `ipam.dataDir` or the default.
    pub data_dir: PathBuf,
}

impl StoreLocation {
    /// Reads `name` and `ipam.dataDir`.
    pub fn parse(netconf: &Value) -> CniResult<Self> {
        let root = netconf
            .as_object()
            .ok_or_else(|| CniError::config("network config is not a JSON object"))?;
        let network = match root.get("name") {
            Some(Value::String(n)) => n.clone(),
            Some(other) => {
                return Err(CniError::config(format!(
                    "name: expected a string, got {other}"
                )))
            }
            None => return Err(CniError::config("network config has no name")),
        };
        if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0'])
        {
            return Err(CniError::config(format!(
                "network name {network:?} cannot name a directory under the data dir"
            )));
        }
        let ipam = ipam_object(netconf)?;
        let data_dir = match ipam.get("dataDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_DATA_DIR),
            Some(Value::String(s)) if s.is_empty() => PathBuf::from(DEFAULT_DATA_DIR),
            Some(Value::String(s)) if s.contains('\0') => {
                return Err(CniError::config(format!(
                    "ipam.dataDir: invalid path {s:?}"
                )))
            }
            Some(Value::String(s)) => PathBuf::from(s),
            Some(other) => {
                return Err(CniError::config(format!(
                    "ipam.dataDir: expected a path, got {other}"
                )))
            }
        };
        Ok(Self { network, data_dir })
    }

    /// `data_dir/network`.
    pub fn dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }
}

/// Parses resolv.conf text as host-local does: `nameserver` (each), `domain`
/// (last wins), `search` and `options` (accumulated); `#`/`;` comments.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with(['#', ';']) {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), rest) = (fields.next(), fields.collect::<Vec<_>>()) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        match key {
            "nameserver" => dns.nameservers.push(rest[0].to_string()),
            "domain" => dns.domain = Some(rest[0].to_string()),
            "search" => dns.search.extend(rest.iter().map(|s| s.to_string())),
            "options" => dns.options.extend(rest.iter().map(|s| s.to_string())),
            _ => {}
        }
    }
    dns
}

/// The `ipam.type` of a network config.
pub fn ipam_type(netconf: &Value) -> CniResult<&str> {
    match ipam_object(netconf)?.get("type") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t),
        Some(other) => Err(CniError::config(format!(
            "ipam.type: expected a plugin name, got {other}"
        ))),
        None => Err(CniError::config("ipam.type is missing")),
    }
}

fn ipam_object(netconf: &Value) -> CniResult<&Map<String, Value>> {
    match netconf.get("ipam") {
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(CniError::config(format!(
            "ipam: expected an object, got {other}"
        ))),
        None => Err(CniError::config("network config has no ipam object")),
    }
}

fn is_empty_list(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

fn parse_range_sets(list: &Value, key: &str) -> CniResult<Vec<RangeSet>> {
    let sets = list.as_array().ok_or_else(|| {
        CniError::config(format!("{key}: expected a list of range sets, got {list}"))
    })?;
    sets.iter()
        .enumerate()
        .map(|(i, set)| parse_range_set(set, &format!("{key}[{i}]")))
        .collect()
}

fn parse_range_set(set: &Value, key: &str) -> CniResult<RangeSet> {
    let items = set
        .as_array()
        .ok_or_else(|| CniError::config(format!("{key}: expected a list of ranges, got {set}")))?;
    if items.is_empty() {
        return Err(CniError::config(format!("{key}: empty range set")));
    }
    let mut ranges = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let rkey = format!("{key}[{j}]");
        let obj = item.as_object().ok_or_else(|| {
            CniError::config(format!("{rkey}: expected a range object, got {item}"))
        })?;
        ranges.push(parse_range(obj, &rkey)?);
    }
    let first = &ranges[0];
    for r in &ranges[1..] {
        if !same_family(r.subnet.addr(), first.subnet.addr()) {
            return Err(CniError::config(format!(
                "{key}: mixed address families ({} and {})",
                first.subnet, r.subnet
            )));
        }
    }
    for a in 0..ranges.len() {
        for b in a + 1..ranges.len() {
            if ranges_overlap(&ranges[a], &ranges[b]) {
                return Err(CniError::config(format!(
                    "{key}: ranges {} ({}) and {} ({}) overlap",
                    ranges[a], ranges[a].subnet, ranges[b], ranges[b].subnet
                )));
            }
        }
    }
    Ok(RangeSet(ranges))
}

fn parse_range(obj: &Map<String, Value>, key: &str) -> CniResult<Range> {
    let subnet_text = match obj.get("subnet") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(CniError::config(format!(
                "{key}.subnet: expected a CIDR, got {other}"
            )))
        }
        None => return Err(CniError::config(format!("{key}.subnet is missing"))),
    };
    let subnet: IpNet = subnet_text
        .parse()
        .map_err(|_| CniError::config(format!("{key}.subnet: invalid CIDR {subnet_text:?}")))?;
    if subnet.addr() != subnet.network() {
        return Err(CniError::config(format!(
            "{key}.subnet: {subnet_text} has host bits set; the network address for /{} is {}",
            subnet.prefix_len(),
            subnet.network()
        )));
    }
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(CniError::config(format!(
            "{key}.subnet: network {subnet} is too small to allocate from"
        )));
    }
    let ip_field = |name: &str| -> CniResult<Option<IpAddr>> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                let ip: IpAddr = s.parse().map_err(|_| {
                    CniError::config(format!("{key}.{name}: invalid IP address {s:?}"))
                })?;
                if !same_family(ip, subnet.addr()) {
                    return Err(CniError::config(format!(
                        "{key}.{name}: {ip} is not the same address family as subnet {subnet}"
                    )));
                }
                if !subnet.contains(&ip) {
                    return Err(CniError::config(format!(
                        "{key}.{name}: {ip} is not in subnet {subnet}"
                    )));
                }
                Ok(Some(ip))
            }
            Some(other) => Err(CniError::config(format!(
                "{key}.{name}: expected an IP address, got {other}"
            ))),
        }
    };
    let first_host = from_u128(to_u128(subnet.network()) + 1, subnet.addr().is_ipv4());
    let last_host = if subnet.addr().is_ipv4() {
        from_u128(to_u128(subnet.broadcast()) - 1, true)
    } else {
        subnet.broadcast()
    };
    let gateway = ip_field("gateway")?.unwrap_or(first_host);
    let range_start = ip_field("rangeStart")?.unwrap_or(first_host);
    let range_end = ip_field("rangeEnd")?.unwrap_or(last_host);
    if to_u128(range_start) > to_u128(range_end) {
        return Err(CniError::config(format!(
            "{key}: rangeStart {range_start} is after rangeEnd {range_end}"
        )));
    }
    Ok(Range {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

fn parse_route(item: &Value, i: usize) -> CniResult<Route> {
    let key = format!("ipam.routes[{i}]");
    let obj = item
        .as_object()
        .ok_or_else(|| CniError::config(format!("{key}: expected a route object, got {item}")))?;
    match obj.get("dst") {
        Some(Value::String(s)) => {
            s.parse::<IpNet>()
                .map_err(|_| CniError::config(format!("{key}.dst: invalid CIDR {s:?}")))?;
        }
        Some(other) => {
            return Err(CniError::config(format!(
                "{key}.dst: expected a CIDR, got {other}"
            )))
        }
        None => return Err(CniError::config(format!("{key}.dst is missing"))),
    }
    if let Some(gw) = obj.get("gw").filter(|v| !v.is_null()) {
        let ok = gw.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok());
        if !ok {
            return Err(CniError::config(format!(
                "{key}.gw: invalid IP address {gw}"
            )));
        }
    }
    serde_json::from_value(item.clone())
        .map_err(|e| CniError::config(format!("{key}: invalid route {item}: {e}")))
}

/// An address, alone or with a prefix length (which is ignored), as
/// `runtimeConfig.ips`, `args.cni.ips` and `IP=` carry them.
fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
}

fn parse_ip_list(v: &Value, key: &str) -> CniResult<Vec<IpAddr>> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let items = v.as_array().ok_or_else(|| {
        CniError::config(format!("{key}: expected a list of IP addresses, got {v}"))
    })?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(parse_ip_or_cidr)
                .ok_or_else(|| CniError::config(format!("{key}: invalid IP address {item}")))
        })
        .collect()
}

/// `IP=` of `CNI_ARGS` (`K=V;K=V`), one address or a comma-separated list.
/// Other keys are ignored: they belong to the runtime or other plugins.
fn parse_cni_args_ips(cni_args: &str) -> CniResult<Vec<IpAddr>> {
    let mut out = Vec::new();
    for pair in cni_args.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key.trim() != "IP" {
            continue;
        }
        for part in value.split(',').filter(|p| !p.trim().is_empty()) {
            let ip = parse_ip_or_cidr(part).ok_or_else(|| {
                CniError::env(
                    "CNI_ARGS",
                    format!("IP={value}: invalid IP address {part:?}"),
                )
            })?;
            out.push(ip);
        }
    }
    Ok(out)
}

fn ranges_overlap(a: &Range, b: &Range) -> bool {
    same_family(a.range_start, b.range_start)
        && to_u128(a.range_start) <= to_u128(b.range_end)
        && to_u128(b.range_start) <= to_u128(a.range_end)
}

/// Whether two addresses are of one family.
pub fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_u128`].
pub fn from_u128(n: u128, ipv4: bool) -> IpAddr {
    if ipv4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}
