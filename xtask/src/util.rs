//! Running commands with visible progress: every command is printed as
//! `$ program args` before it starts; long ones inherit stdio so cargo's and
//! apt's own progress shows.
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// What every command needs to know about where it runs.
pub struct Ctx {
    /// The workspace root (parent of the xtask crate).
    pub root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
    pub target_dir: PathBuf,
    /// Print probe commands too, not only the ones that do work.
    pub verbose: bool,
    /// The cargo that runs us (`$CARGO`), so nested builds use the same one.
    cargo: PathBuf,
}

impl Ctx {
    pub fn new(verbose: bool) -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the xtask crate has no parent directory")?
            .to_path_buf();
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
        Ok(Self {
            root,
            target_dir,
            verbose,
            cargo,
        })
    }

    /// A `cargo` command run from the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    /// Where cargo puts binaries of the given profile.
    pub fn bin_dir(&self, release: bool) -> PathBuf {
        self.target_dir
            .join(if release { "release" } else { "debug" })
    }
}

/// `cmd` as a shell would show it, with the environment variables we set.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    let program = Path::new(cmd.get_program());
    // `$CARGO` is an absolute path into rustup's toolchain; show what a
    // person would type.
    let program = match program.file_name() {
        Some(name) if name == "cargo" => OsStr::new("cargo"),
        _ => program.as_os_str(),
    };
    parts.push(quote(program));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn announce(cmd: &Command) {
    println!("$ {}", display(cmd));
    // Child output is interleaved with ours; keep the order readable.
    let _ = std::io::stdout().flush();
}

/// Runs `cmd` with inherited stdio and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    announce(cmd);
    cmd.status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Runs `cmd`, echoing its stdout line by line as it arrives and returning
/// it too (stderr is inherited). Used for `cargo test`, whose summary lines
/// we count.
pub fn run_tee(cmd: &mut Command) -> anyhow::Result<(ExitStatus, String)> {
    announce(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    let stdout = child.stdout.take().context("child stdout was not piped")?;
    let mut captured = String::new();
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of `{}`", display(cmd)))?;
        // A closed stdout (e.g. `| head`) must not hide the test result.
        let _ = writeln!(out, "{line}");
        captured.push_str(&line);
        captured.push('\n');
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", display(cmd)))?;
    Ok((status, captured))
}

/// A cheap, quiet check: runs `cmd` capturing its output. Returns `None`
/// when the program does not exist. Printed only with `--verbose`.
pub fn probe(ctx: &Ctx, cmd: &mut Command) -> anyhow::Result<Option<Output>> {
    if ctx.verbose {
        println!("  $ {}", display(cmd));
    }
    match cmd.stdin(Stdio::null()).output() {
        Ok(output) => Ok(Some(output)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot start `{}`", display(cmd))),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a message naming the command when we are not root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (it creates network namespaces and loads eBPF programs); \
             run it as root, e.g. `sudo -E env PATH=$PATH cargo xtask ...`"
        );
    }
    Ok(())
}

pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_shows_env() {
        let mut cmd = Command::new("cargo");
        cmd.env("RUST_BACKTRACE", "1")
            .args(["test", "--", "a b", "it's"]);
        assert_eq!(
            display(&cmd),
            r"RUST_BACKTRACE=1 cargo test -- 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }
}
