//! The `net` group (being written).

use std::path::Path;

use crate::ratio::Ratio;

pub fn run(_quick: bool, _out: &Path, _workspace: &Path) -> anyhow::Result<Vec<Ratio>> {
    anyhow::bail!("the net group is not written yet")
}
