//! `cargo xtask install`: build, then copy the binaries under a prefix.
//!
//! Each file is replaced atomically (temp file in the destination directory,
//! mode 0755, fsync, rename), so a runtime calling `sluice` mid-install runs
//! either the old binary or the new one, never half a file, and a running
//! agent's executable is not overwritten in place (ETXTBSY).
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::build::{self, AGENT_BINARIES, PLUGIN_BINARIES};
use crate::util::Ctx;

pub fn run(ctx: &Ctx, prefix: &Path, release: bool) -> anyhow::Result<()> {
    let bin_dir = build::run(ctx, release)?;
    let plugin_dir = prefix.join("opt/cni/bin");
    let agent_dir = prefix.join("usr/local/bin");
    for (names, dest_dir) in [(PLUGIN_BINARIES, &plugin_dir), (AGENT_BINARIES, &agent_dir)] {
        for &name in names {
            let src = bin_dir.join(name);
            if !src.exists() {
                // sluice-ipam does not exist yet; everything else must.
                if name == "sluice-ipam" {
                    println!("[install] skip {name} (not built yet)");
                    continue;
                }
                bail!("{} was not built", src.display());
            }
            fs::create_dir_all(dest_dir)
                .with_context(|| format!("creating {}", dest_dir.display()))?;
            let dest = dest_dir.join(name);
            replace_atomically(&src, &dest)
                .with_context(|| format!("installing {} to {}", src.display(), dest.display()))?;
            println!("[install] {}", dest.display());
        }
    }
    Ok(())
}

fn replace_atomically(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let dir = dest
        .parent()
        .context("destination has no parent directory")?;
    let name = dest
        .file_name()
        .context("destination has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.xtask-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut input = File::open(src)?;
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        io::copy(&mut input, &mut output)?;
        // The umask may have narrowed the mode given to open.
        output.set_permissions(fs::Permissions::from_mode(0o755))?;
        output.sync_all()?;
        fs::rename(&tmp, dest)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("via {}", tmp.display()))
}
