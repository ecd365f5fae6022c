//! Network namespaces: opening one by path, and running netlink work inside
//! it on a dedicated thread.
//!
//! `setns(2)` changes the namespace of the calling *thread* only. Doing it on
//! a tokio worker would move every task scheduled there afterwards, so
//! namespace work always runs on a fresh `std::thread` that enters the
//! namespace, opens its rtnetlink socket there (a socket stays bound to the
//! namespace it was created in), drives a current-thread runtime, and ends.
//! A thread created by another inherits its namespace, which is what
//! [`run_here`] relies on: the node-side work of a plugin runs in whatever
//! namespace the calling thread is in (the host's in production, a test's
//! "node" namespace in tests).
//!
//! `/proc/sys/net` is resolved against the namespace of the task that looks
//! it up, so sysctls written from inside the closure (see
//! [`crate::sysctl`]) land in that namespace (verified by the plumbing
//! tests).

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

use crate::{
    error::{CniError, CniResult, Code},
    netlink::Netlink,
};

/// `NS_GET_NSTYPE` from `linux/nsfs.h` (`_IO(0xb7, 0x3)`): the
/// `CLONE_NEW*` type of a namespace fd, `ENOTTY` for any other file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why namespace work did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    /// The namespace path does not exist (the container is gone). DEL
    /// treats this as success; ADD and CHECK report it as code 3.
    #[error("network namespace {} does not exist", .0.display())]
    Gone(PathBuf),
    /// Anything else: opening, entering, or the work itself failed.
    #[error(transparent)]
    Failed(#[from] CniError),
}

impl NsError {
    /// Whether this is [`NsError::Gone`].
    pub fn is_gone(&self) -> bool {
        matches!(self, NsError::Gone(_))
    }
}

impl From<NsError> for CniError {
    fn from(err: NsError) -> Self {
        match err {
            NsError::Gone(path) => {
                CniError::new(Code::UnknownContainer, "network namespace does not exist")
                    .with_details(path.display().to_string())
            }
            NsError::Failed(e) => e,
        }
    }
}

/// An open network namespace: the fd keeps it alive while held, even when
/// its bind mount is removed meanwhile.
#[derive(Debug)]
pub struct NetnsHandle {
    path: PathBuf,
    file: File,
}

impl NetnsHandle {
    /// Opens the namespace at `path` (a bind mount such as
    /// `/var/run/netns/x`, or `/proc/<pid>/ns/net`). A missing path is
    /// [`NsError::Gone`]; a path that is not a network namespace is code 4
    /// (the runtime passed a bad `CNI_NETNS`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NsError> {
        let path = path.as_ref();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NsError::Gone(path.to_owned()))
            }
            Err(e) => {
                return Err(CniError::env(
                    "CNI_NETNS",
                    format!("cannot open {}: {e}", path.display()),
                )
                .into());
            }
        };
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype != libc::CLONE_NEWNET {
            return Err(CniError::env(
                "CNI_NETNS",
                format!("{} is not a network namespace", path.display()),
            )
            .into());
        }
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The namespace of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> CniResult<Self> {
        let path = Path::new("/proc/thread-self/ns/net");
        let file = File::open(path)
            .map_err(|e| CniError::io(format!("opening {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `(dev, inode)` identity of the namespace, equal for two handles
    /// of the same namespace.
    pub fn id(&self) -> CniResult<(u64, u64)> {
        let st = nix::sys::stat::fstat(self.file.as_raw_fd())
            .map_err(|e| CniError::io(format!("fstat {}: {e}", self.path.display())))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// The raw fd, e.g. for `IFLA_NET_NS_FD`.
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Enters the namespace on the calling thread. Only for threads this
    /// module (or a test) created for the purpose.
    fn enter(&self) -> CniResult<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            CniError::kernel(format!(
                "setns into network namespace {}: {e}",
                self.path.display()
            ))
        })
    }
}

impl AsFd for NetnsHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Runs `f` on a dedicated thread inside `netns`, with an rtnetlink
/// connection opened in that namespace, and returns its result. The closure
/// may also write sysctls ([`crate::sysctl`]) and make other per-namespace
/// calls: they apply to `netns`.
pub fn run_in<T, F>(netns: &NetnsHandle, f: F) -> Result<T, NsError>
where
    T: Send,
    F: AsyncFnOnce(Netlink) -> CniResult<T> + Send,
{
    on_thread(Some(netns), f).map_err(NsError::from)
}

/// Opens `path` and runs `f` inside it ([`NetnsHandle::open`] + [`run_in`]).
pub fn run_in_path<T, F>(path: impl AsRef<Path>, f: F) -> Result<T, NsError>
where
    T: Send,
    F: AsyncFnOnce(Netlink) -> CniResult<T> + Send,
{
    let ns = NetnsHandle::open(path)?;
    run_in(&ns, f)
}

/// Runs `f` on a dedicated thread in the calling thread's namespace (the
/// node's), with an rtnetlink connection opened there. Safe to call from
/// inside a tokio runtime: the work never runs on a runtime worker.
pub fn run_here<T, F>(f: F) -> CniResult<T>
where
    T: Send,
    F: AsyncFnOnce(Netlink) -> CniResult<T> + Send,
{
    on_thread(None, f)
}

fn on_thread<T, F>(netns: Option<&NetnsHandle>, f: F) -> CniResult<T>
where
    T: Send,
    F: AsyncFnOnce(Netlink) -> CniResult<T> + Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("sluice-netns".into())
            .spawn_scoped(scope, move || -> CniResult<T> {
                if let Some(ns) = netns {
                    ns.enter()?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .map_err(|e| CniError::io(format!("starting a tokio runtime: {e}")))?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| {
                        CniError::kernel(format!("opening an rtnetlink socket: {e}"))
                    })?;
                    let conn = tokio::spawn(conn);
                    let out = f(Netlink::new(handle)).await;
                    conn.abort();
                    out
                })
            })
            .map_err(|e| CniError::io(format!("spawning a namespace thread: {e}")))?;
        // A panic on the worker is a bug: pass it on to the caller's thread
        // (skel turns it into one error object) instead of hiding it.
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_gone() {
        let err = NetnsHandle::open("/nonexistent/sluice-netns").unwrap_err();
        assert!(err.is_gone());
        assert_eq!(CniError::from(err).code, Code::UnknownContainer);
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        let err = NetnsHandle::open("/proc/self/status").unwrap_err();
        assert!(!err.is_gone());
        assert_eq!(CniError::from(err).code, Code::InvalidEnvironment);
    }
}
