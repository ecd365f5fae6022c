//! `sluicectl sync`: asks the agent to re-read its policy source and sync
//! the maps; returns once they are written. Fails (non-zero exit) with the
//! agent's reason, naming the bad object, when the manifests are invalid:
//! the datapath is then unchanged.

use std::{path::Path, time::Duration};

use anyhow::bail;
use serde_json::json;

use super::output::{json, Format};
use crate::api;

/// Runs the verb.
pub fn run(socket: &Path, timeout: Duration, format: Format) -> anyhow::Result<String> {
    let answer = api::call(socket, &json!({"op": "sync"}), timeout)?;
    if answer["ok"] != true {
        bail!(
            "sync refused: {} (the policy in force is unchanged, revision {})",
            answer["error"].as_str().unwrap_or("no reason given"),
            answer["revision"]
        );
    }
    match format {
        Format::Json => json(&answer),
        Format::Table => {
            let micros = answer["syncMicros"].as_u64();
            Ok(format!(
                "synced: revision {}{}{}\n",
                answer["revision"],
                if answer["changed"] == true {
                    " (maps changed)"
                } else {
                    " (nothing to change)"
                },
                micros.map_or_else(String::new, |m| format!(" in {:.3} ms", m as f64 / 1000.0))
            ))
        }
    }
}
