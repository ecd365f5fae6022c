//! `sluicectl status`: the agent's policy engine (through its socket) and,
//! when the agent does not answer, what the maps say on their own.

use std::{path::Path, time::Duration};

use serde_json::{json, Value};

use super::{
    output::{json, table, Format},
    view::View,
};
use crate::bpffs::PinLayout;

/// Runs the verb.
pub fn run(
    layout: &PinLayout,
    state_dir: &Path,
    socket: &Path,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<String> {
    let agent = crate::api::call(socket, &json!({"op": "status"}), timeout);
    let view = View::load(layout, state_dir)?;
    let programmed = view
        .endpoints
        .values()
        .filter(|e| {
            e.state
                .is_some_and(|s| s.flags & cni_ebpf_common::policy::POLICY_F_PROGRAMMED != 0)
        })
        .count();
    let status = json!({
        "agent": match &agent {
            Ok(v) => v.clone(),
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        },
        "datapath": {
            "enforcing": view.enforcing(),
            "revision": view.config.revision,
            "endpoints": view.endpoints.len(),
            "programmed": programmed,
            "policyEntries": view.content.policy.len(),
            "ipcachePrefixes": view.content.ipcache.len(),
        },
    });
    match format {
        Format::Json => json(&status),
        Format::Table => {
            let d = &status["datapath"];
            let a = &status["agent"];
            let agent_text = if a["ok"] == true {
                format!(
                    "up (source {}, last error {})",
                    a["source"].as_str().unwrap_or("?"),
                    text(&a["lastError"])
                )
            } else {
                format!("not answering: {}", text(&a["error"]))
            };
            let rows = vec![
                vec!["agent".into(), agent_text],
                vec!["enforcing".into(), d["enforcing"].to_string()],
                vec!["revision".into(), d["revision"].to_string()],
                vec![
                    "endpoints".into(),
                    format!("{} ({} programmed)", d["endpoints"], d["programmed"]),
                ],
                vec!["policy entries".into(), d["policyEntries"].to_string()],
                vec!["ipcache prefixes".into(), d["ipcachePrefixes"].to_string()],
            ];
            Ok(table(&["WHAT", "STATE"], &rows))
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
