//! Named network namespaces, made and entered the way iproute2 does it but
//! without `ip netns exec` (which remounts `/sys` and hides bpffs): a
//! thread `unshare`s, its namespace is bind-mounted on `/run/netns/<name>`,
//! and work inside runs on fresh threads that `setns` into it. The calling
//! thread (a test thread, `main`, a tokio worker) never changes namespace.
//!
//! Sockets keep the namespace they were created in, so the usual pattern is
//! to create a socket with [`Netns::run`] and use it from anywhere.

use std::{
    fs::File,
    future::Future,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use anyhow::{anyhow, Context as _};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

use crate::random_hex;

/// Where named namespaces live (as `ip netns` expects them).
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace the tests create: `sluice-t-<8 hex>`.
pub const NETNS_PREFIX: &str = "sluice-t-";

/// A network namespace the test created. Dropping it unmounts and removes
/// its name; the kernel frees it (and the interfaces in it) once no fd,
/// socket or process holds it any more.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    fd: OwnedFd,
}

impl Netns {
    /// Creates a namespace named `sluice-t-<8 hex>` with `lo` up.
    pub fn new() -> anyhow::Result<Self> {
        std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
        let (name, path) = loop {
            let name = format!("{NETNS_PREFIX}{}", random_hex(8));
            let path = Path::new(NETNS_DIR).join(&name);
            // create_new: never take over a name someone else holds.
            match File::options().write(true).create_new(true).open(&path) {
                Ok(_) => break (name, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        };
        let target = path.clone();
        let made = std::thread::Builder::new()
            .name(format!("unshare-{name}"))
            .spawn(move || -> anyhow::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("bind-mounting the new netns on {}", target.display()))
            })
            .context("spawning a thread")?
            .join()
            .map_err(|_| anyhow!("the unshare thread panicked"))
            .and_then(|r| r);
        if let Err(err) = made {
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        let fd = match File::open(&path) {
            Ok(file) => OwnedFd::from(file),
            Err(err) => {
                let _ = umount2(&path, MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&path);
                return Err(err).with_context(|| format!("opening {}", path.display()));
            }
        };
        let ns = Self { name, path, fd };
        crate::link::set_up(&ns, "lo").with_context(|| format!("bringing lo up in {}", ns.name))?;
        Ok(ns)
    }

    /// Its name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An fd of the namespace (for `setns`, `IFLA_NET_NS_FD`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` on a fresh thread inside the namespace and returns what it
    /// returns (a panic in `f` is re-raised here).
    pub fn run<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> anyhow::Result<R> + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(scope, || {
                    setns(&self.fd, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into {}", self.name))?;
                    f()
                })
                .context("spawning a thread")?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `f` on a new background thread inside the namespace.
    pub fn spawn<R, F>(&self, f: F) -> anyhow::Result<JoinHandle<anyhow::Result<R>>>
    where
        F: FnOnce() -> anyhow::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let fd = self.fd.try_clone().context("dup of the netns fd")?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {name}"))?;
                drop(fd);
                f()
            })
            .context("spawning a thread")
    }

    /// Runs `f` with an rtnetlink handle whose socket was opened inside the
    /// namespace, on a dedicated thread with a current-thread runtime.
    pub fn netlink<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(rtnetlink::Handle) -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>>,
        T: Send,
    {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?;
            runtime.block_on(async {
                let (connection, handle, _) =
                    rtnetlink::new_connection().context("opening an rtnetlink socket")?;
                let connection = tokio::spawn(connection);
                let result = f(handle).await;
                connection.abort();
                result
            })
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("warning: umount {}: {err}", self.path.display());
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            eprintln!("warning: removing {}: {err}", self.path.display());
        }
    }
}
