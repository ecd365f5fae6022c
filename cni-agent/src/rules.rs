//! Prefilter rules as people write them (config file, `sluicectl filter
//! add`) and their validation. Turning a rule into map entries is in
//! `maps::prefilter`.

use std::{collections::BTreeSet, fmt, path::Path};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why a rule or a rules file was refused. Each message names the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// The CIDR did not parse.
    #[error("invalid CIDR {0:?}: expected an address and a prefix length, e.g. 192.0.2.0/24 or 2001:db8::/32")]
    BadCidr(String),
    /// The CIDR has bits set past its prefix.
    #[error("CIDR {given} has host bits set; did you mean {network}?")]
    HostBits {
        /// As written.
        given: String,
        /// The network it probably meant.
        network: String,
    },
    /// Unknown protocol name or number.
    #[error("unknown protocol {0:?}: expected icmp, icmpv6, tcp, udp, sctp or a number 0-255")]
    UnknownProtocol(String),
    /// Unknown ICMP type name.
    #[error("unknown ICMP type {0:?}: expected echo-request, echo-reply, dest-unreachable, time-exceeded or a number 0-255")]
    UnknownIcmpType(String),
    /// Unknown action.
    #[error("unknown action {0:?}: expected drop or allow")]
    UnknownAction(String),
    /// Unknown family.
    #[error("unknown family {0:?}: expected ipv4, ipv6 or both")]
    UnknownFamily(String),
    /// A rule needs exactly one of `proto` and `cidr`.
    #[error("a rule needs exactly one of proto or cidr (got {0})")]
    NeedsOneMatch(&'static str),
    /// An option that does not fit the protocol.
    #[error("{option} does not apply to protocol {protocol}")]
    OptionNotApplicable {
        /// The option given.
        option: &'static str,
        /// The protocol it was given with.
        protocol: String,
    },
    /// Port 0 cannot be matched.
    #[error("port 0 is not a valid destination port")]
    PortZero,
    /// The same rule twice.
    #[error("duplicate rule: {0}")]
    Duplicate(String),
    /// The rules file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// What a matching packet gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Dropped in XDP.
    Drop,
    /// Passed: an exception carved out of a wider CIDR deny, or of a
    /// protocol-wide drop.
    Allow,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Drop => "drop",
            Action::Allow => "allow",
        })
    }
}

/// Which IP versions a protocol rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    /// Source address in this network (longest prefix wins).
    Cidr(IpNet),
    /// An IP protocol on some families, optionally one ICMP type or one
    /// destination port.
    Proto {
        /// IP protocol number.
        protocol: u8,
        /// The families covered (one or both).
        families: Vec<Family>,
        /// ICMP type or destination port.
        #[serde(skip_serializing_if = "Option::is_none")]
        selector: Option<u16>,
    },
}

/// One prefilter rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// What it matches.
    #[serde(rename = "match")]
    pub matcher: Match,
    /// What happens to a match.
    pub action: Action,
}

/// IP protocol numbers by name.
pub const PROTOCOLS: [(&str, u8); 5] = [
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("icmpv6", 58),
    ("sctp", 132),
];

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Whether `protocol` carries ports the datapath reads.
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

/// The name of a protocol number, or the number.
pub fn protocol_name(protocol: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|(_, n)| *n == protocol)
        .map(|(name, _)| (*name).to_owned())
        .unwrap_or_else(|| protocol.to_string())
}

fn parse_protocol(s: &str) -> Result<u8, RuleError> {
    let lower = s.trim().to_ascii_lowercase();
    if let Some((_, n)) = PROTOCOLS.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    lower
        .parse::<u8>()
        .map_err(|_| RuleError::UnknownProtocol(s.to_owned()))
}

/// ICMP type names: (name, ICMPv4 type, ICMPv6 type).
const ICMP_TYPES: [(&str, u16, u16); 4] = [
    ("echo-request", 8, 128),
    ("echo-reply", 0, 129),
    ("dest-unreachable", 3, 1),
    ("time-exceeded", 11, 3),
];

fn parse_icmp_type(s: &str, protocol: u8) -> Result<u16, RuleError> {
    let lower = s.trim().to_ascii_lowercase();
    if let Some((_, v4, v6)) = ICMP_TYPES.iter().find(|(name, _, _)| *name == lower) {
        return Ok(if protocol == ICMPV6 { *v6 } else { *v4 });
    }
    lower
        .parse::<u8>()
        .map(u16::from)
        .map_err(|_| RuleError::UnknownIcmpType(s.to_owned()))
}

/// The name of an ICMP type, if it has one here.
pub fn icmp_type_name(protocol: u8, icmp_type: u16) -> Option<&'static str> {
    ICMP_TYPES
        .iter()
        .find(|(_, v4, v6)| {
            if protocol == ICMPV6 {
                *v6 == icmp_type
            } else {
                *v4 == icmp_type
            }
        })
        .map(|(name, _, _)| *name)
}

fn parse_action(s: Option<&str>) -> Result<Action, RuleError> {
    match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("drop") | Some("deny") => Ok(Action::Drop),
        Some("allow") | Some("pass") => Ok(Action::Allow),
        Some(_) => Err(RuleError::UnknownAction(s.unwrap_or_default().to_owned())),
    }
}

/// A rule as written in a file or on the command line, before validation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Protocol name or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Source CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// ICMP type name or number (icmp, icmpv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<String>,
    /// Destination port (tcp, udp, sctp only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// ipv4, ipv6 or both (tcp/udp/sctp and numeric protocols; default both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// drop (default) or allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl RuleSpec {
    /// Validates the spec into a rule.
    pub fn to_rule(&self) -> Result<Rule, RuleError> {
        let action = parse_action(self.action.as_deref())?;
        match (&self.proto, &self.cidr) {
            (Some(_), Some(_)) => Err(RuleError::NeedsOneMatch("both")),
            (None, None) => Err(RuleError::NeedsOneMatch("neither")),
            (None, Some(cidr)) => {
                for (option, given) in [
                    ("icmpType", self.icmp_type.is_some()),
                    ("port", self.port.is_some()),
                    ("family", self.family.is_some()),
                ] {
                    if given {
                        return Err(RuleError::OptionNotApplicable {
                            option,
                            protocol: "cidr".into(),
                        });
                    }
                }
                Ok(Rule {
                    matcher: Match::Cidr(parse_cidr(cidr)?),
                    action,
                })
            }
            (Some(proto), None) => {
                let protocol = parse_protocol(proto)?;
                let name = protocol_name(protocol);
                let selector = match (self.icmp_type.as_deref(), self.port) {
                    (Some(_), Some(_)) => {
                        return Err(RuleError::OptionNotApplicable {
                            option: "port",
                            protocol: name,
                        })
                    }
                    (Some(t), None) if protocol == ICMP || protocol == ICMPV6 => {
                        Some(parse_icmp_type(t, protocol)?)
                    }
                    (Some(_), None) => {
                        return Err(RuleError::OptionNotApplicable {
                            option: "icmpType",
                            protocol: name,
                        })
                    }
                    (None, Some(0)) if has_ports(protocol) => return Err(RuleError::PortZero),
                    (None, Some(port)) if has_ports(protocol) => Some(port),
                    (None, Some(_)) => {
                        return Err(RuleError::OptionNotApplicable {
                            option: "port",
                            protocol: name,
                        })
                    }
                    (None, None) => None,
                };
                let families = match (
                    protocol,
                    self.family.as_deref().map(str::to_ascii_lowercase),
                ) {
                    // ICMP and ICMPv6 each belong to one family.
                    (ICMP, None) => vec![Family::Ipv4],
                    (ICMPV6, None) => vec![Family::Ipv6],
                    (ICMP | ICMPV6, Some(_)) => {
                        return Err(RuleError::OptionNotApplicable {
                            option: "family",
                            protocol: name,
                        })
                    }
                    (_, None) => vec![Family::Ipv4, Family::Ipv6],
                    (_, Some(f)) => match f.as_str() {
                        "both" => vec![Family::Ipv4, Family::Ipv6],
                        "ipv4" | "4" => vec![Family::Ipv4],
                        "ipv6" | "6" => vec![Family::Ipv6],
                        _ => return Err(RuleError::UnknownFamily(f)),
                    },
                };
                Ok(Rule {
                    matcher: Match::Proto {
                        protocol,
                        families,
                        selector,
                    },
                    action,
                })
            }
        }
    }
}

/// Parses a CIDR, refusing host bits (a typo that would silently match a
/// different network than the operator read).
pub fn parse_cidr(s: &str) -> Result<IpNet, RuleError> {
    let net: IpNet = s
        .trim()
        .parse()
        .map_err(|_| RuleError::BadCidr(s.to_owned()))?;
    if net.trunc() != net {
        return Err(RuleError::HostBits {
            given: s.to_owned(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.matcher {
            Match::Cidr(net) => write!(f, "{} from {net}", self.action),
            Match::Proto {
                protocol,
                families,
                selector,
            } => {
                write!(f, "{} {}", self.action, protocol_name(*protocol))?;
                match selector {
                    Some(t) if *protocol == ICMP || *protocol == ICMPV6 => {
                        match icmp_type_name(*protocol, *t) {
                            Some(name) => write!(f, " {name}")?,
                            None => write!(f, " type {t}")?,
                        }
                    }
                    Some(port) => write!(f, " port {port}")?,
                    None => {}
                }
                if *protocol != ICMP && *protocol != ICMPV6 && families.len() == 1 {
                    write!(
                        f,
                        " ({})",
                        if families[0] == Family::Ipv4 {
                            "ipv4"
                        } else {
                            "ipv6"
                        }
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// The `--prefilter` file: `{ "rules": [RuleSpec, ...] }` in YAML or JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// Parses rules from YAML or JSON text (JSON is YAML). A rule given twice
/// is an error, not silently merged.
pub fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, RuleError> {
    let file_err = |message: String| RuleError::File {
        path: origin.to_owned(),
        message,
    };
    let file: RulesFile = if text.trim().is_empty() {
        RulesFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| file_err(e.to_string()))?
    };
    let mut seen = BTreeSet::new();
    let mut rules = Vec::new();
    for (i, spec) in file.rules.iter().enumerate() {
        let rule = spec
            .to_rule()
            .map_err(|e| file_err(format!("rule {}: {e}", i + 1)))?;
        if !seen.insert(rule.matcher.clone()) {
            return Err(file_err(format!(
                "rule {}: {}",
                i + 1,
                RuleError::Duplicate(rule.to_string())
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// Reads and parses a `--prefilter` file.
pub fn load_rules_file(path: &Path) -> Result<Vec<Rule>, RuleError> {
    let text = std::fs::read_to_string(path).map_err(|e| RuleError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse_rules(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proto: Option<&str>, cidr: Option<&str>) -> RuleSpec {
        RuleSpec {
            proto: proto.map(Into::into),
            cidr: cidr.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn icmp_drop_defaults_to_ipv4_and_drop() {
        let rule = spec(Some("icmp"), None).to_rule().unwrap();
        assert_eq!(rule.action, Action::Drop);
        assert_eq!(
            rule.matcher,
            Match::Proto {
                protocol: 1,
                families: vec![Family::Ipv4],
                selector: None
            }
        );
        assert_eq!(rule.to_string(), "drop icmp");
    }

    #[test]
    fn icmpv6_echo_request_by_name_is_type_128() {
        let mut s = spec(Some("ICMPv6"), None);
        s.icmp_type = Some("echo-request".into());
        let rule = s.to_rule().unwrap();
        assert_eq!(
            rule.matcher,
            Match::Proto {
                protocol: 58,
                families: vec![Family::Ipv6],
                selector: Some(128)
            }
        );
        assert_eq!(rule.to_string(), "drop icmpv6 echo-request");
    }

    #[test]
    fn tcp_port_covers_both_families_unless_told() {
        let mut s = spec(Some("tcp"), None);
        s.port = Some(22);
        assert_eq!(
            s.to_rule().unwrap().matcher,
            Match::Proto {
                protocol: 6,
                families: vec![Family::Ipv4, Family::Ipv6],
                selector: Some(22)
            }
        );
        s.family = Some("ipv6".into());
        assert_eq!(
            s.to_rule().unwrap().matcher,
            Match::Proto {
                protocol: 6,
                families: vec![Family::Ipv6],
                selector: Some(22)
            }
        );
    }

    #[test]
    fn bad_cidr_names_the_value() {
        let err = spec(None, Some("10.0.0.300/8")).to_rule().unwrap_err();
        assert_eq!(err, RuleError::BadCidr("10.0.0.300/8".into()));
        assert!(err.to_string().contains("10.0.0.300/8"));
        assert!(matches!(
            spec(None, Some("10.0.0.0")).to_rule(),
            Err(RuleError::BadCidr(_))
        ));
        assert!(matches!(
            spec(None, Some("10.0.0.0/33")).to_rule(),
            Err(RuleError::BadCidr(_))
        ));
        assert!(matches!(
            spec(None, Some("2001:db8::/129")).to_rule(),
            Err(RuleError::BadCidr(_))
        ));
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let err = spec(None, Some("10.1.2.3/8")).to_rule().unwrap_err();
        assert_eq!(
            err.to_string(),
            "CIDR 10.1.2.3/8 has host bits set; did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn unknown_protocol_and_options_are_refused() {
        assert_eq!(
            spec(Some("igmpx"), None).to_rule().unwrap_err(),
            RuleError::UnknownProtocol("igmpx".into())
        );
        assert!(matches!(
            spec(Some("256"), None).to_rule(),
            Err(RuleError::UnknownProtocol(_))
        ));
        assert!(matches!(
            spec(Some("icmp"), Some("10.0.0.0/8")).to_rule(),
            Err(RuleError::NeedsOneMatch(_))
        ));
        assert!(matches!(
            spec(None, None).to_rule(),
            Err(RuleError::NeedsOneMatch(_))
        ));
        let mut s = spec(Some("icmp"), None);
        s.port = Some(80);
        assert!(matches!(
            s.to_rule(),
            Err(RuleError::OptionNotApplicable { option: "port", .. })
        ));
        let mut s = spec(Some("tcp"), None);
        s.icmp_type = Some("8".into());
        assert!(matches!(
            s.to_rule(),
            Err(RuleError::OptionNotApplicable {
                option: "icmpType",
                ..
            })
        ));
        let mut s = spec(Some("tcp"), None);
        s.port = Some(0);
        assert_eq!(s.to_rule().unwrap_err(), RuleError::PortZero);
        let mut s = spec(Some("icmp"), None);
        s.action = Some("reject".into());
        assert_eq!(
            s.to_rule().unwrap_err(),
            RuleError::UnknownAction("reject".into())
        );
        let mut s = spec(Some("icmp"), None);
        s.icmp_type = Some("echo-banana".into());
        assert!(matches!(s.to_rule(), Err(RuleError::UnknownIcmpType(_))));
    }

    #[test]
    fn files_parse_as_yaml_and_json() {
        let yaml = "rules:\n  - proto: icmp\n  - cidr: 192.0.2.0/24\n  - cidr: 192.0.2.128/25\n    action: allow\n";
        let rules = parse_rules(yaml, "f.yaml").unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[2].action, Action::Allow);
        let json =
            r#"{"rules":[{"proto":"icmpv6","icmpType":"echo-request"},{"cidr":"2001:db8::/32"}]}"#;
        assert_eq!(parse_rules(json, "f.json").unwrap().len(), 2);
        assert!(parse_rules("", "empty").unwrap().is_empty());
    }

    #[test]
    fn duplicate_rules_in_a_file_are_refused() {
        let yaml = "rules:\n  - proto: icmp\n  - proto: icmp\n    action: allow\n";
        let err = parse_rules(yaml, "f.yaml").unwrap_err().to_string();
        assert!(err.contains("rule 2") && err.contains("duplicate"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_rules_in_a_file_name_the_rule() {
        let err = parse_rules("rules:\n  - proto: icmp\n    colour: red\n", "f.yaml").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = parse_rules("rules:\n  - proto: icmp\n  - cidr: nope\n", "f.yaml").unwrap_err();
        assert!(
            err.to_string().contains("rule 2") && err.to_string().contains("nope"),
            "{err}"
        );
        assert!(parse_rules("rulez: []\n", "f.yaml").is_err());
    }
}
