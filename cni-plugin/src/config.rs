//! The network configuration of `"type": "sluice"`, as the runtime passes it
//! on stdin: parsed from the JSON object once, with defaults applied and
//! every value checked, so the command handlers never see a bad value.
//!
//! Rules (decisions are explained in the report of the commit that added
//! this file and summarised here):
//! - Unknown top-level keys are ignored, as the reference plugins do (Go's
//!   `encoding/json` drops them), so a conflist written for `bridge` works
//!   with `"type": "sluice"` unchanged. They are listed in
//!   [`NetConf::ignored_keys`] and logged at debug level.
//! - A known key with the wrong JSON type, or an invalid value, is code 7
//!   naming the key (with its path) and the value. `null` counts as absent,
//!   as it does for Go's decoder.
//! - Options of the reference bridge plugin that Sluice does not implement
//!   (`vlan`, `vlanTrunk`, `macspoofchk`, `enabledad`, `portIsolation`,
//!   `disableContainerInterface`, `ipMasqBackend`) are code 2 ("unsupported
//!   field", which the spec says must carry key and value) when set to
//!   anything but their default, instead of being silently ignored.
//! - `mode` defaults to `routed`, except that a config without `mode` that
//!   uses one of the bridge-only options (`bridge`, `isGateway`,
//!   `isDefaultGateway`, `forceAddress`, `hairpinMode`, `promiscMode`) is in
//!   bridge mode: that is what a conflist written for the bridge plugin
//!   means. An explicit `"mode": "routed"` together with one of those options
//!   is code 7: silently ignoring e.g. `isGateway` would surprise.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::args::CniArgs;
use crate::attach::TcAttach;
use crate::error::{CniError, CniResult, Code};
use crate::log::LogLevel;
use crate::types::Dns;

/// Default bridge name in bridge mode (same as the reference bridge plugin).
pub const DEFAULT_BRIDGE: &str = "cni0";
/// Default pin directory on bpffs.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/sluice";
/// Default state directory (one JSON file per attachment).
pub const DEFAULT_STATE_DIR: &str = "/var/run/sluice";
/// Default agent notify socket.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/sluice/agent.sock";
/// Default wait for the agent to confirm an endpoint's policy.
pub const DEFAULT_POLICY_TIMEOUT_MS: u64 = 5000;
/// Longest accepted `policyTimeoutMs` (10 minutes): beyond any runtime's own
/// timeout for a CNI call, so a larger value can only be a mistake.
pub const MAX_POLICY_TIMEOUT_MS: u64 = 600_000;
/// Smallest MTU: the kernel's `ETH_MIN_MTU` (include/uapi/linux/if_ether.h),
/// the `min_mtu` of veth and bridge devices.
pub const MIN_MTU: u32 = 68;
/// Largest MTU: the kernel's `ETH_MAX_MTU`, the `max_mtu` of veth.
pub const MAX_MTU: u32 = 65535;
/// Longest interface name in bytes: `IFNAMSIZ - 1`.
pub const MAX_IFNAME_LEN: usize = 15;

/// Bridge-only options: presence selects bridge mode when `mode` is absent.
const BRIDGE_ONLY_KEYS: [&str; 6] = [
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "hairpinMode",
    "promiscMode",
];

/// Every top-level key this module reads or knowingly skips; anything else
/// ends up in [`NetConf::ignored_keys`].
const KNOWN_KEYS: [&str; 41] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "mode",
    "hostRouting",
    "tcAttach",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasq",
    "ipMasqBackend",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "vlanTrunk",
    // Only has meaning together with `vlan`, which is refused when set.
    "preserveDefaultVlan",
    "macspoofchk",
    "enabledad",
    "disableContainerInterface",
    "portIsolation",
    "bpffsDir",
    "stateDir",
    "agentSocket",
    "waitForPolicy",
    "policyTimeoutMs",
    "logLevel",
    "logFile",
    "mac",
    "ipam",
    "dns",
    "runtimeConfig",
    "args",
    "prevResult",
    "capabilities",
    // Network-level keys a runtime may leave in (the spec says plugins never
    // act on them).
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
    "plugins",
];

/// The GC input key with the still-valid attachments (spec, section 2, GC).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// An older spelling of [`VALID_ATTACHMENTS_KEY`], read when that is absent
/// (as `ipam::gc` does).
pub const ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// How pods are connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// /32 (/128) host routes, link-local gateway, forwarding in eBPF.
    Routed,
    /// Host veth enslaved to a Linux bridge, the reference bridge plugin's
    /// model and options.
    Bridge(BridgeConf),
}

impl Mode {
    /// `"routed"` or `"bridge"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Bridge(_) => "bridge",
        }
    }
}

/// `hostRouting`: how routed mode forwards pod traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRouting {
    /// `"ebpf"` (routed mode's default): `from_pod` forwards what policy
    /// passed itself, `bpf_redirect_peer` into local pods and a FIB lookup
    /// plus `bpf_redirect(_neigh)` to everything else, and `from_uplink`
    /// sends traffic for local pods to their veth. netfilter does not see
    /// that traffic: a node whose pods need netfilter NAT (kube-proxy in
    /// iptables/ipvs mode, portmap hostPorts) sets `"legacy"`.
    Ebpf,
    /// `"legacy"` (and always in bridge mode): the host stack routes.
    Legacy,
}

impl HostRouting {
    /// `"ebpf"` or `"legacy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Legacy => "legacy",
        }
    }
}

/// The reference bridge plugin's options, with its defaults and meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConf {
    /// `bridge`: bridge name (default `cni0`).
    pub name: String,
    /// `isGateway`: give the bridge the gateway address (and turn on
    /// forwarding). True when `isDefaultGateway` is.
    pub is_gateway: bool,
    /// `isDefaultGateway`: also install a default route via the bridge.
    pub is_default_gateway: bool,
    /// `forceAddress`: replace a different address already on the bridge.
    pub force_address: bool,
    /// `hairpinMode`: hairpin on the bridge port.
    pub hairpin_mode: bool,
    /// `promiscMode`: bridge in promiscuous mode.
    pub promisc_mode: bool,
}

impl Default for BridgeConf {
    fn default() -> Self {
        Self {
            name: DEFAULT_BRIDGE.to_string(),
            is_gateway: false,
            is_default_gateway: false,
            force_address: false,
            hairpin_mode: false,
            promisc_mode: false,
        }
    }
}

/// A 48-bit unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case. Multicast
    /// (including broadcast) and all-zero addresses are refused: the kernel
    /// refuses them on an Ethernet device (`eth_validate_addr`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{s:?} is not a MAC address"));
            }
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a 48-bit MAC address"));
        }
        if out[0] & 1 == 1 {
            return Err(format!("{s:?} is a multicast address"));
        }
        if out == [0; 6] {
            return Err(format!("{s:?} is the all-zero address"));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A requested address, `<ip>[/<prefix>]` (CONVENTIONS.md, `ips`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestedIp {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length, when one was given (static IPAM needs it,
    /// host-local ignores it).
    pub prefix_len: Option<u8>,
}

impl FromStr for RequestedIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            let net: IpNet = s
                .parse()
                .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
            Ok(Self {
                addr: net.addr(),
                prefix_len: Some(net.prefix_len()),
            })
        } else {
            let addr: IpAddr = s
                .parse()
                .map_err(|_| format!("{s:?} is not an IP address"))?;
            Ok(Self {
                addr,
                prefix_len: None,
            })
        }
    }
}

impl fmt::Display for RequestedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// The `ipam` section.
#[derive(Clone, Debug, PartialEq)]
pub struct IpamConf {
    /// `ipam.type`: `sluice-ipam` (in process) or a binary in `CNI_PATH`.
    pub plugin_type: String,
    /// The whole `ipam` object, for the IPAM implementation to read.
    pub raw: Map<String, Value>,
}

/// `runtimeConfig`: capability arguments from the runtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeConfig {
    /// `ips` capability: requested addresses.
    pub ips: Vec<RequestedIp>,
    /// `mac` capability: requested MAC of the container interface.
    pub mac: Option<MacAddr>,
    /// `ipRanges` capability: host-local `ranges` layout (a list of range
    /// sets, each a non-empty list of ranges with a `subnet`), checked for
    /// shape here and interpreted by IPAM.
    pub ip_ranges: Option<Value>,
    /// Every other capability (portMappings, bandwidth, …), unchanged.
    pub other: Map<String, Value>,
}

/// `args`: the runtime's structured arguments (CONVENTIONS.md, "args").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfArgs {
    /// `args.cni.ips`.
    pub ips: Vec<RequestedIp>,
    /// `args.cni.mac`.
    pub mac: Option<MacAddr>,
    /// The whole `args` object, unchanged (labels and anything else).
    pub raw: Map<String, Value>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// The Sluice network configuration, validated, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// The negotiated CNI version (see `skel.rs`): the one results and errors
    /// are written in.
    pub cni_version: String,
    /// `name`: network name (libcni ValidateNetworkName rules).
    pub name: String,
    /// `type`: the plugin binary's name (normally `sluice`).
    pub plugin_type: String,
    /// `mode`, with the bridge options in bridge mode.
    pub mode: Mode,
    /// `hostRouting` (always `Legacy` in bridge mode).
    pub host_routing: HostRouting,
    /// `tcAttach`: how the programs are attached to the host veth.
    pub tc_attach: TcAttach,
    /// `ipMasq`: masquerade traffic leaving the node from pod addresses.
    pub ip_masq: bool,
    /// `mtu`: absent means derived from the uplink at ADD.
    pub mtu: Option<u32>,
    /// `bpffsDir`.
    pub bpffs_dir: PathBuf,
    /// `stateDir`.
    pub state_dir: PathBuf,
    /// `agentSocket`.
    pub agent_socket: PathBuf,
    /// `waitForPolicy`: ADD waits for the agent's confirmation.
    pub wait_for_policy: bool,
    /// `policyTimeoutMs`.
    pub policy_timeout: Duration,
    /// `logLevel`.
    pub log_level: LogLevel,
    /// `logFile`.
    pub log_file: Option<PathBuf>,
    /// `mac`: fixed MAC for the container interface (lowest precedence, see
    /// [`NetConf::requested_mac`]).
    pub mac: Option<MacAddr>,
    /// `ipam`.
    pub ipam: Option<IpamConf>,
    /// `dns`: passed through to the result.
    pub dns: Dns,
    /// `runtimeConfig`.
    pub runtime_config: RuntimeConfig,
    /// `args`.
    pub args: ConfArgs,
    /// `capabilities` (a runtime should not pass it; kept for completeness).
    pub capabilities: Map<String, Value>,
    /// `cni.dev/valid-attachments` (GC input); `None` when absent.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Top-level keys that were ignored (logged at debug level).
    pub ignored_keys: Vec<String>,
}

impl NetConf {
    /// Parses and checks the network config object. `cni_version` is the
    /// version `skel.rs` negotiated (it has already checked `cniVersion` and
    /// `cniVersions`).
    pub fn from_json(obj: &Map<String, Value>, cni_version: &str) -> CniResult<Self> {
        let top = Obj::root(obj);

        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            // libcni's skel decodes `name` as a string before anything else;
            // another type is a decoding failure there (code 6).
            Some(other) => {
                return Err(CniError::decode(format!(
                    "error decoding network config: \"name\" must be a string, got {}",
                    kind(other)
                )))
            }
        };
        let name = validate_network_name(name.unwrap_or(""))?;

        let plugin_type = match top.string("type")? {
            None | Some("") => return Err(CniError::config("missing \"type\"")),
            Some(t) if t.contains(['/', '\\']) => {
                return Err(invalid(
                    "type",
                    &obj["type"],
                    "a binary name without / or \\",
                ))
            }
            Some(t) => t.to_string(),
        };

        let mode = parse_mode(&top)?;
        refuse_unimplemented_bridge_options(&top)?;
        let host_routing = parse_host_routing(&top, &mode)?;
        let tc_attach = match top.string("tcAttach")? {
            None => TcAttach::default(),
            Some(text) => TcAttach::parse(text).ok_or_else(|| {
                invalid(
                    "tcAttach",
                    top.get("tcAttach").unwrap_or(&Value::Null),
                    "\"tc\" or \"tcx\"",
                )
            })?,
        };

        let mtu = match top.uint("mtu", MTU_EXPECTED)? {
            None => None,
            Some(m) if (u64::from(MIN_MTU)..=u64::from(MAX_MTU)).contains(&m) => Some(m as u32),
            Some(_) => return Err(invalid("mtu", &obj["mtu"], MTU_EXPECTED)),
        };

        let policy_timeout_ms = match top.uint("policyTimeoutMs", POLICY_TIMEOUT_EXPECTED)? {
            None => DEFAULT_POLICY_TIMEOUT_MS,
            Some(t) if (1..=MAX_POLICY_TIMEOUT_MS).contains(&t) => t,
            Some(_) => {
                return Err(invalid(
                    "policyTimeoutMs",
                    &obj["policyTimeoutMs"],
                    POLICY_TIMEOUT_EXPECTED,
                ))
            }
        };

        let log_level = match top.string("logLevel")? {
            None => LogLevel::default(),
            Some(s) => s.parse().map_err(|_| {
                invalid(
                    "logLevel",
                    &obj["logLevel"],
                    "one of \"error\", \"warn\", \"info\", \"debug\"",
                )
            })?,
        };

        let mac = match top.string("mac")? {
            None => None,
            Some(s) => Some(s.parse().map_err(|why: String| {
                invalid("mac", &obj["mac"], format!("a unicast MAC address ({why})"))
            })?),
        };

        let ipam = parse_ipam(&top)?;
        let dns = match top.object("dns")? {
            None => Dns::default(),
            Some(d) => parse_dns(&d)?,
        };
        let runtime_config = match top.object("runtimeConfig")? {
            None => RuntimeConfig::default(),
            Some(rc) => parse_runtime_config(&rc)?,
        };
        let args = match top.object("args")? {
            None => ConfArgs::default(),
            Some(a) => parse_conf_args(&a)?,
        };
        let capabilities = top
            .object("capabilities")?
            .map(|c| c.map.clone())
            .unwrap_or_default();
        let valid_attachments = parse_valid_attachments(obj)?;

        let ignored_keys = obj
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()) && !k.starts_with("cni.dev/"))
            .cloned()
            .collect();

        Ok(Self {
            cni_version: cni_version.to_string(),
            name,
            plugin_type,
            mode,
            host_routing,
            tc_attach,
            ip_masq: top.boolean("ipMasq")?.unwrap_or(false),
            mtu,
            bpffs_dir: top
                .abs_path("bpffsDir")?
                .unwrap_or_else(|| DEFAULT_BPFFS_DIR.into()),
            state_dir: top
                .abs_path("stateDir")?
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            agent_socket: top
                .abs_path("agentSocket")?
                .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into()),
            // On by default (DESIGN: policy before the pod's first packet);
            // a node without sluice-agent's policy engine turns it off.
            wait_for_policy: top.boolean("waitForPolicy")?.unwrap_or(true),
            policy_timeout: Duration::from_millis(policy_timeout_ms),
            log_level,
            log_file: top.abs_path("logFile")?,
            mac,
            ipam,
            dns,
            runtime_config,
            args,
            capabilities,
            valid_attachments,
            ignored_keys,
        })
    }

    /// The `ENDPOINT_F_*` flags of this network's endpoints (what the
    /// datapath needs to know of the mode).
    pub fn endpoint_flags(&self) -> u32 {
        use cni_ebpf_common::endpoint::{ENDPOINT_F_HOST_ROUTING, ENDPOINT_F_MASQUERADE};
        let mut flags = 0;
        if self.host_routing == HostRouting::Ebpf {
            flags |= ENDPOINT_F_HOST_ROUTING;
            if self.ip_masq {
                flags |= ENDPOINT_F_MASQUERADE;
            }
        }
        flags
    }

    /// The MAC to give the container interface, if any was asked for.
    /// Precedence, highest first: `runtimeConfig.mac`, `args.cni.mac`,
    /// `CNI_ARGS` `MAC`, the config's own `mac` — the reference bridge
    /// plugin's order (`loadNetConf`) with Sluice's static `mac` below it.
    pub fn requested_mac(&self, cni_args: &CniArgs) -> Option<MacAddr> {
        self.runtime_config
            .mac
            .or(self.args.mac)
            .or(cni_args.mac)
            .or(self.mac)
    }

    /// Every requested address, in host-local's order (`LoadIPAMConfig`):
    /// `CNI_ARGS` `IP`, then `args.cni.ips`, then `runtimeConfig.ips`.
    /// host-local uses them all; `sluice-ipam` is its drop-in.
    pub fn requested_ips(&self, cni_args: &CniArgs) -> Vec<RequestedIp> {
        cni_args
            .ip
            .iter()
            .chain(&self.args.ips)
            .chain(&self.runtime_config.ips)
            .copied()
            .collect()
    }
}

const MTU_EXPECTED: &str =
    "an integer from 68 to 65535 (ETH_MIN_MTU..ETH_MAX_MTU; leave mtu out to derive it from the uplink)";
const POLICY_TIMEOUT_EXPECTED: &str = "an integer number of milliseconds from 1 to 600000";

/// libcni `ValidateNetworkName`: non-empty, `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_network_name(name: &str) -> CniResult<String> {
    if name.is_empty() {
        return Err(CniError::config("missing network name"));
    }
    if !is_cni_name(name) {
        return Err(CniError::config("invalid characters found in network name").with_details(
            format!("{name:?}: must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"),
        ));
    }
    Ok(name.to_string())
}

/// The character rule libcni applies to container ids and network names:
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn is_cni_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// libcni `ValidateInterfaceName`: the reason `name` is not a valid Linux
/// interface name (non-empty, at most 15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace), or `None`.
pub fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("interface name is empty".into())
    } else if name.len() > MAX_IFNAME_LEN {
        Some(format!(
            "interface name {name:?} is too long: {} bytes, at most {MAX_IFNAME_LEN}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some(format!("interface name {name:?} is . or .."))
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some(format!(
            "interface name {name:?} contains / or : or whitespace"
        ))
    } else {
        None
    }
}

fn parse_host_routing(top: &Obj<'_>, mode: &Mode) -> CniResult<HostRouting> {
    let routing = match top.string("hostRouting")? {
        None => None,
        Some("ebpf") => Some(HostRouting::Ebpf),
        Some("legacy") => Some(HostRouting::Legacy),
        Some(_) => {
            return Err(invalid(
                "hostRouting",
                top.get("hostRouting").unwrap_or(&Value::Null),
                "\"ebpf\" or \"legacy\"",
            ))
        }
    };
    match (mode, routing) {
        (Mode::Routed, r) => Ok(r.unwrap_or(HostRouting::Ebpf)),
        (Mode::Bridge(_), Some(HostRouting::Ebpf)) => Err(CniError::config(
            "\"hostRouting\": \"ebpf\" needs routed mode",
        )
        .with_details(
            "in bridge mode the bridge forwards; remove hostRouting or set \"mode\": \"routed\"",
        )),
        (Mode::Bridge(_), _) => Ok(HostRouting::Legacy),
    }
}

fn parse_mode(top: &Obj<'_>) -> CniResult<Mode> {
    let explicit = top.string("mode")?;
    let bridge_keys: Vec<&str> = BRIDGE_ONLY_KEYS
        .iter()
        .copied()
        .filter(|k| top.get(k).is_some())
        .collect();
    let bridge = match explicit {
        Some("bridge") => true,
        None => !bridge_keys.is_empty(),
        Some("routed") => {
            if !bridge_keys.is_empty() {
                return Err(CniError::config(format!(
                    "bridge-mode option(s) {} given with \"mode\": \"routed\"",
                    bridge_keys.join(", ")
                ))
                .with_details(
                    "routed mode has no bridge; remove these options or set \"mode\": \"bridge\"",
                ));
            }
            false
        }
        Some(_) => {
            return Err(invalid(
                "mode",
                top.get("mode").unwrap_or(&Value::Null),
                "\"routed\" or \"bridge\"",
            ))
        }
    };
    if !bridge {
        return Ok(Mode::Routed);
    }
    let name = match top.string("bridge")? {
        None => DEFAULT_BRIDGE.to_string(),
        Some(n) => match interface_name_problem(n) {
            None => n.to_string(),
            Some(why) => {
                return Err(invalid(
                    "bridge",
                    &Value::from(n),
                    format!("a valid interface name ({why})"),
                ))
            }
        },
    };
    let is_default_gateway = top.boolean("isDefaultGateway")?.unwrap_or(false);
    let conf = BridgeConf {
        name,
        // The bridge plugin: "isDefaultGateway ... implies isGateway".
        is_gateway: top.boolean("isGateway")?.unwrap_or(false) || is_default_gateway,
        is_default_gateway,
        force_address: top.boolean("forceAddress")?.unwrap_or(false),
        hairpin_mode: top.boolean("hairpinMode")?.unwrap_or(false),
        promisc_mode: top.boolean("promiscMode")?.unwrap_or(false),
    };
    if conf.hairpin_mode && conf.promisc_mode {
        // Same refusal as the bridge plugin's cmdAdd.
        return Err(CniError::config(
            "cannot set \"hairpinMode\" and \"promiscMode\" at the same time",
        ));
    }
    Ok(Mode::Bridge(conf))
}

/// Bridge-plugin options Sluice does not implement: code 2 when set to
/// anything but the value that means "off" (which is accepted, so copied
/// conflists that spell out the default still work).
fn refuse_unimplemented_bridge_options(top: &Obj<'_>) -> CniResult<()> {
    if let Some(v) = top.int("vlan", "an integer VLAN id")? {
        if v != 0 {
            return Err(unsupported("vlan", &top.map["vlan"]));
        }
    }
    if let Some(trunk) = top.array("vlanTrunk")? {
        if !trunk.is_empty() {
            return Err(unsupported("vlanTrunk", &top.map["vlanTrunk"]));
        }
    }
    for key in [
        "macspoofchk",
        "enabledad",
        "portIsolation",
        "disableContainerInterface",
    ] {
        if top.boolean(key)? == Some(true) {
            return Err(unsupported(key, &top.map[key]));
        }
    }
    if top.string("ipMasqBackend")?.is_some() {
        return Err(unsupported("ipMasqBackend", &top.map["ipMasqBackend"]));
    }
    Ok(())
}

fn parse_ipam(top: &Obj<'_>) -> CniResult<Option<IpamConf>> {
    let Some(ipam) = top.object("ipam")? else {
        return Ok(None);
    };
    let plugin_type = match ipam.string("type")? {
        None | Some("") => return Err(CniError::config("missing \"ipam.type\"")),
        Some(t) if t.contains(['/', '\\']) => {
            return Err(invalid(
                "ipam.type",
                &ipam.map["type"],
                "a binary name without / or \\",
            ))
        }
        Some(t) => t.to_string(),
    };
    Ok(Some(IpamConf {
        plugin_type,
        raw: ipam.map.clone(),
    }))
}

fn parse_dns(d: &Obj<'_>) -> CniResult<Dns> {
    let nameservers = d.strings("nameservers")?;
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<IpAddr>().is_err() {
            return Err(invalid(
                &format!("dns.nameservers[{i}]"),
                &Value::from(ns.as_str()),
                "an IPv4 or IPv6 address",
            ));
        }
    }
    Ok(Dns {
        nameservers,
        domain: d.string("domain")?.map(str::to_string),
        search: d.strings("search")?,
        options: d.strings("options")?,
    })
}

fn parse_runtime_config(rc: &Obj<'_>) -> CniResult<RuntimeConfig> {
    let ips = rc.requested_ips("ips")?;
    let mac = rc.mac("mac")?;
    let ip_ranges = match rc.array("ipRanges")? {
        None => None,
        Some(sets) => {
            check_ip_ranges(sets)?;
            Some(rc.map["ipRanges"].clone())
        }
    };
    let other = rc
        .map
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ips" | "mac" | "ipRanges"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(RuntimeConfig {
        ips,
        mac,
        ip_ranges,
        other,
    })
}

/// `ipRanges` has host-local's `ranges` layout: `[[{subnet, rangeStart?,
/// rangeEnd?, gateway?}, …], …]`.
fn check_ip_ranges(sets: &[Value]) -> CniResult<()> {
    for (i, set) in sets.iter().enumerate() {
        let path = format!("runtimeConfig.ipRanges[{i}]");
        let ranges = match set {
            Value::Array(r) if !r.is_empty() => r,
            other => return Err(invalid(&path, other, "a non-empty list of ranges")),
        };
        for (j, range) in ranges.iter().enumerate() {
            let path = format!("{path}[{j}]");
            let Value::Object(map) = range else {
                return Err(invalid(&path, range, "an object with a \"subnet\""));
            };
            let r = Obj {
                map,
                prefix: format!("{path}."),
            };
            match r.string("subnet")? {
                None => return Err(invalid(&path, range, "an object with a \"subnet\"")),
                Some(s) if s.parse::<IpNet>().is_err() => {
                    return Err(invalid(
                        &r.path("subnet"),
                        &map["subnet"],
                        "a CIDR such as 10.1.2.0/24",
                    ))
                }
                Some(_) => {}
            }
            for key in ["rangeStart", "rangeEnd", "gateway"] {
                if let Some(s) = r.string(key)? {
                    if s.parse::<IpAddr>().is_err() {
                        return Err(invalid(&r.path(key), &map[key], "an IP address"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn parse_conf_args(a: &Obj<'_>) -> CniResult<ConfArgs> {
    let (ips, mac) = match a.object("cni")? {
        None => (Vec::new(), None),
        Some(cni) => (cni.requested_ips("ips")?, cni.mac("mac")?),
    };
    Ok(ConfArgs {
        ips,
        mac,
        raw: a.map.clone(),
    })
}

fn parse_valid_attachments(obj: &Map<String, Value>) -> CniResult<Option<Vec<Attachment>>> {
    let key = [VALID_ATTACHMENTS_KEY, ATTACHMENTS_KEY]
        .into_iter()
        .find(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
        .unwrap_or(VALID_ATTACHMENTS_KEY);
    let list = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(invalid(
                key,
                other,
                "a list of {\"containerID\", \"ifname\"} objects",
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("{key}[{i}]");
        let Value::Object(map) = item else {
            return Err(invalid(
                &path,
                item,
                "an object with \"containerID\" and \"ifname\"",
            ));
        };
        let o = Obj {
            map,
            prefix: format!("{path}."),
        };
        let container_id = match o.string("containerID")? {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                return Err(invalid(
                    &path,
                    item,
                    "an object with a non-empty \"containerID\"",
                ))
            }
        };
        let ifname = o.string("ifname")?.unwrap_or("").to_string();
        out.push(Attachment {
            container_id,
            ifname,
        });
    }
    Ok(Some(out))
}

/// A JSON object being read, with the path of its keys for messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// "" at the top level, "runtimeConfig." inside it, and so on.
    prefix: String,
}

impl<'a> Obj<'a> {
    fn root(map: &'a Map<String, Value>) -> Self {
        Self {
            map,
            prefix: String::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value, with `null` counted as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> CniResult<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(&self.path(key), other, "a string")),
        }
    }

    fn boolean(&self, key: &str) -> CniResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(invalid(&self.path(key), other, "true or false")),
        }
    }

    /// A non-negative integer (`1500`, not `1500.0` or `"1500"`, as Go's
    /// decoder into an int).
    fn uint(&self, key: &str, expected: &str) -> CniResult<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(&self.path(key), v, expected)),
        }
    }

    fn int(&self, key: &str, expected: &str) -> CniResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(&self.path(key), v, expected)),
        }
    }

    fn object(&self, key: &str) -> CniResult<Option<Obj<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                map,
                prefix: format!("{}.", self.path(key)),
            })),
            Some(other) => Err(invalid(&self.path(key), other, "an object")),
        }
    }

    fn array(&self, key: &str) -> CniResult<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(invalid(&self.path(key), other, "a list")),
        }
    }

    fn strings(&self, key: &str) -> CniResult<Vec<String>> {
        let Some(list) = self.array(key)? else {
            return Ok(Vec::new());
        };
        list.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(
                    &format!("{}[{i}]", self.path(key)),
                    other,
                    "a string",
                )),
            })
            .collect()
    }

    fn requested_ips(&self, key: &str) -> CniResult<Vec<RequestedIp>> {
        let Some(list) = self.array(key)? else {
            return Ok(Vec::new());
        };
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("{}[{i}]", self.path(key));
                match v {
                    Value::String(s) => s.parse().map_err(|why: String| {
                        invalid(&path, v, format!("<ip>[/<prefix>] ({why})"))
                    }),
                    other => Err(invalid(&path, other, "a string <ip>[/<prefix>]")),
                }
            })
            .collect()
    }

    fn mac(&self, key: &str) -> CniResult<Option<MacAddr>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|why: String| {
                invalid(
                    &self.path(key),
                    &self.map[key],
                    format!("a unicast MAC address ({why})"),
                )
            }),
        }
    }

    fn abs_path(&self, key: &str) -> CniResult<Option<PathBuf>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if Path::new(s).is_absolute() => Ok(Some(PathBuf::from(s))),
            Some(_) => Err(invalid(&self.path(key), &self.map[key], "an absolute path")),
        }
    }
}

/// Code 7 naming the key (with its path) and the value.
fn invalid(path: &str, value: &Value, expected: impl fmt::Display) -> CniError {
    CniError::config(format!("invalid {path}: {}", show(value)))
        .with_details(format!("{path} must be {expected}, got {}", kind(value)))
}

/// Code 2: the spec requires key and value in the message.
fn unsupported(key: &str, value: &Value) -> CniError {
    CniError::new(
        Code::UnsupportedField,
        format!("unsupported field {key}: {}", show(value)),
    )
    .with_details(format!(
        "Sluice does not implement the bridge plugin's {key:?}; remove it or use the bridge plugin"
    ))
}

/// A value for a message, shortened.
fn show(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> CniResult<NetConf> {
        NetConf::from_json(v.as_object().unwrap(), "1.1.0")
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "net1", "type": "sluice"})
    }

    fn with(patch: Value) -> Value {
        let mut b = base();
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    #[test]
    fn defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.mode, Mode::Routed);
        assert!(!c.ip_masq);
        assert_eq!(c.mtu, None);
        assert_eq!(c.bpffs_dir, Path::new("/sys/fs/bpf/sluice"));
        assert_eq!(c.state_dir, Path::new("/var/run/sluice"));
        assert_eq!(c.agent_socket, Path::new("/var/run/sluice/agent.sock"));
        assert!(c.wait_for_policy);
        assert_eq!(c.policy_timeout, Duration::from_millis(5000));
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.log_file, None);
        assert_eq!(c.ipam, None);
        assert!(c.ignored_keys.is_empty());
    }

    #[test]
    fn tc_attach_defaults_to_tc() {
        assert_eq!(parse(base()).unwrap().tc_attach, TcAttach::Tc);
        let tcx = parse(with(json!({"tcAttach": "tcx"}))).unwrap();
        assert_eq!(tcx.tc_attach, TcAttach::Tcx);
        let bridge = parse(with(json!({"mode": "bridge", "tcAttach": "tc"}))).unwrap();
        assert_eq!(bridge.tc_attach, TcAttach::Tc);
        for bad in [json!({"tcAttach": "xdp"}), json!({"tcAttach": true})] {
            let e = parse(with(bad)).unwrap_err();
            assert_eq!(e.code, Code::InvalidNetworkConfig, "{e:?}");
            assert!(e.msg.contains("tcAttach"), "{e:?}");
        }
    }

    #[test]
    fn host_routing_defaults_to_ebpf_in_routed_mode_only() {
        use cni_ebpf_common::endpoint::{ENDPOINT_F_HOST_ROUTING, ENDPOINT_F_MASQUERADE};
        let routed = parse(base()).unwrap();
        assert_eq!(routed.host_routing, HostRouting::Ebpf);
        assert_eq!(routed.endpoint_flags(), ENDPOINT_F_HOST_ROUTING);
        let masq = parse(with(json!({"ipMasq": true}))).unwrap();
        assert_eq!(
            masq.endpoint_flags(),
            ENDPOINT_F_HOST_ROUTING | ENDPOINT_F_MASQUERADE
        );
        let legacy = parse(with(json!({"hostRouting": "legacy", "ipMasq": true}))).unwrap();
        assert_eq!(legacy.host_routing, HostRouting::Legacy);
        assert_eq!(legacy.endpoint_flags(), 0);
        let bridge = parse(with(json!({"mode": "bridge"}))).unwrap();
        assert_eq!(bridge.host_routing, HostRouting::Legacy);
        assert_eq!(bridge.endpoint_flags(), 0);
        let e = parse(with(json!({"mode": "bridge", "hostRouting": "ebpf"}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig, "{e:?}");
        let e = parse(with(json!({"hostRouting": "fast"}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig, "{e:?}");
        assert!(e.msg.contains("hostRouting"), "{e:?}");
        let e = parse(with(json!({"hostRouting": 1}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig, "{e:?}");
    }

    #[test]
    fn reference_bridge_conflist_works_unchanged() {
        let c = parse(json!({
            "cniVersion": "1.0.0", "name": "mynet", "type": "sluice",
            "bridge": "br-test", "isDefaultGateway": true, "ipMasq": true,
            "hairpinMode": true, "mtu": 1400, "vlan": 0, "preserveDefaultVlan": false,
            "keyA": ["ignored"],
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}
        }))
        .unwrap();
        let Mode::Bridge(b) = &c.mode else {
            panic!("{:?}", c.mode)
        };
        assert_eq!(b.name, "br-test");
        assert!(b.is_gateway && b.is_default_gateway && b.hairpin_mode);
        assert!(c.ip_masq);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam.as_ref().unwrap().plugin_type, "host-local");
        assert_eq!(c.ignored_keys, vec!["keyA".to_string()]);
    }

    #[test]
    fn explicit_bridge_mode_gets_bridge_defaults() {
        let c = parse(with(json!({"mode": "bridge"}))).unwrap();
        assert_eq!(c.mode, Mode::Bridge(BridgeConf::default()));
    }

    #[test]
    fn routed_with_bridge_options_is_refused() {
        let e = parse(with(json!({"mode": "routed", "isGateway": true}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig);
        assert!(e.msg.contains("isGateway"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        for (patch, field) in [
            (json!({"mtu": "1500"}), "mtu"),
            (json!({"mtu": 0}), "mtu"),
            (json!({"mtu": 65536}), "mtu"),
            (json!({"mtu": 1500.5}), "mtu"),
            (json!({"mode": "foo"}), "mode"),
            (json!({"ipMasq": "yes"}), "ipMasq"),
            (json!({"mac": "01:00:5e:00:00:01"}), "mac"),
            (json!({"mac": "zz:00:00:00:00:01"}), "mac"),
            (json!({"policyTimeoutMs": 0}), "policyTimeoutMs"),
            (json!({"logLevel": "trace"}), "logLevel"),
            (json!({"stateDir": "relative/dir"}), "stateDir"),
            (
                json!({"runtimeConfig": {"ips": ["10.0.0.300"]}}),
                "runtimeConfig.ips[0]",
            ),
            (
                json!({"runtimeConfig": {"ipRanges": [[{"subnet": "x"}]]}}),
                "runtimeConfig.ipRanges[0][0].subnet",
            ),
            (json!({"args": {"cni": {"mac": 5}}}), "args.cni.mac"),
            (
                json!({"dns": {"nameservers": ["not-an-ip"]}}),
                "dns.nameservers[0]",
            ),
            (json!({"bridge": "way-too-long-bridge-name"}), "bridge"),
        ] {
            let e = parse(with(patch.clone())).unwrap_err();
            assert_eq!(e.code, Code::InvalidNetworkConfig, "{patch}");
            assert!(e.msg.contains(field), "{patch}: {e}");
        }
    }

    #[test]
    fn unimplemented_bridge_options_are_code_2() {
        for patch in [
            json!({"vlan": 100}),
            json!({"vlanTrunk": [{"id": 5}]}),
            json!({"macspoofchk": true}),
            json!({"ipMasqBackend": "nftables"}),
        ] {
            let e = parse(with(patch.clone())).unwrap_err();
            assert_eq!(e.code, Code::UnsupportedField, "{patch}");
        }
        parse(with(
            json!({"vlan": 0, "macspoofchk": false, "vlanTrunk": []}),
        ))
        .unwrap();
    }

    #[test]
    fn names() {
        assert!(is_cni_name("a"));
        assert!(is_cni_name("net-1_x.y"));
        assert!(!is_cni_name("-net"));
        assert!(!is_cni_name("net/1"));
        assert!(!is_cni_name(""));
        assert_eq!(
            parse(with(json!({"name": ""}))).unwrap_err().code,
            Code::InvalidNetworkConfig
        );
        assert_eq!(
            parse(with(json!({"name": 5}))).unwrap_err().code,
            Code::DecodingFailure
        );
        assert_eq!(
            parse(with(json!({"type": "a/b"}))).unwrap_err().code,
            Code::InvalidNetworkConfig
        );
        assert_eq!(interface_name_problem("eth0"), None);
        assert!(interface_name_problem("0123456789abcdef").is_some());
        assert_eq!(interface_name_problem("0123456789abcde"), None);
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\u{a0}b"] {
            assert!(interface_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn mac_and_ip_parsing() {
        let m: MacAddr = "0A-58-0A-16-00-05".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:16:00:05");
        for bad in [
            "",
            "0a:58:0a:16:00",
            "0a:58:0a:16:00:05:07",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "0a:58:0a:16:00:5",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let ip: RequestedIp = "10.0.0.5/24".parse().unwrap();
        assert_eq!(ip.prefix_len, Some(24));
        assert_eq!(ip.to_string(), "10.0.0.5/24");
        let ip: RequestedIp = "2001:db8::5".parse().unwrap();
        assert_eq!(ip.prefix_len, None);
        assert!("10.0.0.5/33".parse::<RequestedIp>().is_err());
    }

    #[test]
    fn precedence_of_requested_mac_and_ips() {
        let c = parse(with(json!({
            "mac": "0a:00:00:00:00:01",
            "args": {"cni": {"mac": "0a:00:00:00:00:02", "ips": ["10.0.0.2"]}},
            "runtimeConfig": {"mac": "0a:00:00:00:00:03", "ips": ["10.0.0.3/24"], "portMappings": []}
        })))
        .unwrap();
        let env = CniArgs::parse("MAC=0a:00:00:00:00:04;IP=10.0.0.4").unwrap();
        assert_eq!(
            c.requested_mac(&env).unwrap().to_string(),
            "0a:00:00:00:00:03"
        );
        let ips: Vec<String> = c
            .requested_ips(&env)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["10.0.0.4", "10.0.0.2", "10.0.0.3/24"]);
        assert!(c.runtime_config.other.contains_key("portMappings"));
        let c = parse(with(json!({"mac": "0a:00:00:00:00:01"}))).unwrap();
        assert_eq!(
            c.requested_mac(&CniArgs::default()).unwrap().to_string(),
            "0a:00:00:00:00:01"
        );
    }

    #[test]
    fn valid_attachments() {
        let c = parse(with(
            json!({VALID_ATTACHMENTS_KEY: [{"containerID": "c1", "ifname": "eth0"}]}),
        ))
        .unwrap();
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
        let c = parse(with(json!({ATTACHMENTS_KEY: [{"containerID": "c2"}]}))).unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c2");
        let e = parse(with(json!({VALID_ATTACHMENTS_KEY: [{"ifname": "eth0"}]}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig);
    }

    #[test]
    fn null_is_absent() {
        let c = parse(with(json!({"mtu": null, "ipam": null, "mode": null}))).unwrap();
        assert_eq!(c.mtu, None);
        assert_eq!(c.mode, Mode::Routed);
    }
}
