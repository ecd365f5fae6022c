//! `sluicectl filter list|add|del`: the XDP prefilter rules.

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::output::{json, table, Format};
use crate::{
    bpffs::PinLayout,
    maps::{
        prefilter::{InstalledRule, Origin, PrefilterMaps},
        PinLock,
    },
    rules::RuleSpec,
};

/// Prefilter verbs.
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// List the installed rules with their counters.
    List,
    /// Add a rule (kept across agent restarts until deleted).
    Add(RuleArgs),
    /// Delete a rule by id, or by the same match it was added with.
    Del(DelArgs),
}

/// A rule on the command line (the same fields as the rules file).
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Protocol: icmp, icmpv6, tcp, udp, sctp or a number.
    #[arg(long, conflicts_with = "cidr")]
    pub proto: Option<String>,
    /// ICMP type: echo-request, echo-reply, dest-unreachable, time-exceeded or a number.
    #[arg(long, requires = "proto")]
    pub icmp_type: Option<String>,
    /// Destination port (tcp, udp, sctp).
    #[arg(long, requires = "proto")]
    pub port: Option<u16>,
    /// ipv4, ipv6 or both (protocols other than icmp/icmpv6; default both).
    #[arg(long, requires = "proto")]
    pub family: Option<String>,
    /// Source network, e.g. 198.51.100.0/24 (longest prefix wins).
    #[arg(long)]
    pub cidr: Option<String>,
    /// drop (default) or allow.
    #[arg(long)]
    pub action: Option<String>,
}

impl RuleArgs {
    fn spec(&self) -> RuleSpec {
        RuleSpec {
            proto: self.proto.clone(),
            cidr: self.cidr.clone(),
            icmp_type: self.icmp_type.clone(),
            port: self.port,
            family: self.family.clone(),
            action: self.action.clone(),
        }
    }
}

/// What to delete.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// The rule id shown by `filter list`.
    #[arg(conflicts_with_all = ["proto", "cidr"], required_unless_present_any = ["proto", "cidr"])]
    pub id: Option<u32>,
    /// Or the rule's match, as given to `filter add`.
    #[command(flatten)]
    pub rule: RuleArgs,
}

fn rows(rules: &[InstalledRule]) -> Vec<Vec<String>> {
    rules
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.rule.to_string(),
                match r.origin {
                    Origin::Config => "config".into(),
                    Origin::Runtime => "runtime".into(),
                },
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect()
}

/// Renders rules for `format`.
pub fn render(rules: &[InstalledRule], format: Format) -> anyhow::Result<String> {
    match format {
        Format::Json => json(rules),
        Format::Table => Ok(table(
            &["ID", "RULE", "ORIGIN", "PACKETS", "BYTES"],
            &rows(rules),
        )),
    }
}

/// Runs a filter verb.
pub fn run(layout: &PinLayout, cmd: &FilterCommand, format: Format) -> anyhow::Result<String> {
    match cmd {
        FilterCommand::List => render(&PrefilterMaps::open(layout)?.list()?, format),
        FilterCommand::Add(args) => {
            let rule = args.spec().to_rule()?;
            let _lock = PinLock::acquire(layout)?;
            let added = PrefilterMaps::open(layout)?.add(&rule, Origin::Runtime)?;
            match format {
                Format::Json => json(&added),
                Format::Table => Ok(format!("added rule {}: {}\n", added.id, added.rule)),
            }
        }
        FilterCommand::Del(args) => {
            let _lock = PinLock::acquire(layout)?;
            let mut maps = PrefilterMaps::open(layout)?;
            let id = match args.id {
                Some(id) => id,
                None => {
                    let rule = args.rule.spec().to_rule()?;
                    maps.find(&rule.matcher)?
                        .with_context(|| format!("no installed rule matches {rule}"))?
                        .id
                }
            };
            let removed = maps.delete(id)?;
            match format {
                Format::Json => json(&removed),
                Format::Table => Ok(format!(
                    "deleted rule {}: {} (matched {} packets)\n",
                    removed.id, removed.rule, removed.packets
                )),
            }
        }
    }
}
