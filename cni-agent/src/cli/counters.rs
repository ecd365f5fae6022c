//! `sluicectl counters`: verdicts by reason, and per prefilter rule.

use serde::Serialize;

use super::{
    filter,
    output::{json, table, Format},
};
use crate::{
    bpffs::PinLayout,
    maps::{
        counters::{read_reasons, ReasonCount},
        prefilter::{InstalledRule, PrefilterMaps},
    },
};

#[derive(Serialize)]
struct Counters {
    reasons: Vec<ReasonCount>,
    rules: Vec<InstalledRule>,
}

/// Runs the verb.
pub fn run(layout: &PinLayout, format: Format) -> anyhow::Result<String> {
    let counters = Counters {
        reasons: read_reasons(layout)?,
        rules: PrefilterMaps::open(layout)?.list()?,
    };
    match format {
        Format::Json => json(&counters),
        Format::Table => {
            let rows: Vec<Vec<String>> = counters
                .reasons
                .iter()
                .map(|r| {
                    vec![
                        r.code.to_string(),
                        r.reason.to_owned(),
                        if r.drop { "drop".into() } else { "pass".into() },
                        r.packets.to_string(),
                        r.bytes.to_string(),
                    ]
                })
                .collect();
            let mut out = table(&["CODE", "REASON", "VERDICT", "PACKETS", "BYTES"], &rows);
            out.push('\n');
            out.push_str(&filter::render(&counters.rules, Format::Table)?);
            Ok(out)
        }
    }
}
