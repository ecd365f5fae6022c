//! Processes inside the bench's namespaces, pinned to one CPU: the iperf3
//! and `sluice-rr` servers (killed when their guard drops) and one-shot
//! clients (killed when they overrun a deadline, so a broken path fails the
//! run instead of hanging it).

use std::{
    io::{Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use tests::Netns;

/// CPU of every client (iperf3 -c, sluice-rr client).
pub const CLIENT_CPU: usize = 0;
/// CPU of every server (iperf3 -s, sluice-rr server).
pub const SERVER_CPU: usize = 1;

/// `cmd` will run inside `ns`, pinned to `cpu` (`None`: unpinned), in a
/// process group of its own, with no signal blocked, and killed should the
/// spawning thread die first.
pub fn prepare(cmd: &mut Command, ns: &Netns, cpu: Option<usize>) {
    let fd = ns.fd().as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls run
    // (setns, sched_setaffinity, sigprocmask, prctl) on an fd the parent
    // keeps open (the Netns outlives every process started in it).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // sluice-bench blocks SIGINT/SIGTERM in all threads (its signal
            // thread turns them into a flag); children inherit the mask.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::other("pthread_sigmask"));
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // A Ctrl-C on the terminal reaches sluice-bench only, whose guards then
    // stop these processes in order.
    cmd.process_group(0);
}

/// A long-running process (a server), killed and reaped on drop.
pub struct Server {
    what: String,
    child: Child,
}

impl Server {
    /// Starts `program args` in `ns` on `cpu`, output discarded.
    pub fn start(ns: &Netns, cpu: usize, program: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prepare(&mut cmd, ns, Some(cpu));
        let what = format!("{} {}", program.display(), args.join(" "));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what} in {}", ns.name()))?;
        Ok(Self { what, child })
    }

    /// Fails when the server already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.what);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` (already [`prepare`]d or not), feeding `input` on stdin;
/// returns its stdout. Fails with its output when it fails, and kills it
/// when it runs longer than `timeout`.
pub fn output(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("stdin was not piped")?;
    // Inputs are small configs, far below the pipe buffer; a program that
    // exits without reading them is judged by its exit status.
    if let Some(input) = input {
        let _ = stdin.write_all(input);
    }
    drop(stdin);
    // Drained on threads, so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().context("stdout was not piped")?;
    let mut err = child.stderr.take().context("stderr was not piped")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still running after {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    ensure!(
        status.success(),
        "{cmd:?} failed ({status}): {stdout}\n{stderr}"
    );
    Ok(stdout)
}

/// Runs `program args` inside `ns` (unpinned: setup commands), returns stdout.
pub fn run_in(ns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    prepare(&mut cmd, ns, None);
    output(&mut cmd, None, Duration::from_secs(20))
}

/// The `sluice-rr` binary next to this one (cargo puts every binary of the
/// tests crate in the same directory). `cargo run --bin sluice-bench` builds
/// only sluice-bench, so it is built here first, with the same profile, to
/// be sure it is there and current; `$SLUICE_RR` overrides all that.
pub fn sluice_rr(workspace: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_RR") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("locating sluice-bench")?;
    let dir = exe
        .parent()
        .context("sluice-bench has no directory")?
        .to_owned();
    let path = dir.join("sluice-rr");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-q", "-p", "tests", "--bin", "sluice-rr"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let built = output(&mut cmd, None, Duration::from_secs(600));
    match built {
        Ok(_) => {}
        // A stale binary beats none; say so.
        Err(e) if path.is_file() => {
            eprintln!("[net] warning: building sluice-rr failed, using the existing one: {e:#}")
        }
        Err(e) => {
            return Err(e.context("building sluice-rr (cargo build -p tests --bin sluice-rr)"))
        }
    }
    ensure!(
        path.is_file(),
        "{} not found after building it",
        path.display()
    );
    Ok(path)
}
