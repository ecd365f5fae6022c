//! Where a group's results go: `<out>/<group>.json` and `<group>.md`, or
//! `<group>-quick.*` for a `--quick` run, so a quick look never overwrites
//! the committed full run's files.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

/// Writes the group's JSON and Markdown, prints the Markdown and where both
/// went.
pub fn write_group_results(
    out: &Path,
    group: &str,
    quick: bool,
    json: &Value,
    markdown: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = if quick {
        format!("{group}-quick")
    } else {
        group.to_owned()
    };
    let json_path = out.join(format!("{stem}.json"));
    let md_path = out.join(format!("{stem}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{markdown}");
    println!(
        "[{group}] wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}
