//! Shared pieces of the privileged plumbing tests: named network namespaces
//! the test creates and always removes, running code inside one on a
//! thread of its own, the agent's pins in a bpffs directory of the test's
//! own, and TCP traffic between namespaces.
//!
//! Every namespace is `/run/netns/sluice-t-plumb-<hex>`, every pin directory
//! `/sys/fs/bpf/sluice-test-<hex>`; nothing is created in the machine's own
//! network namespace. Addresses: 10.199.0.0/16 and fd00:199::/64 only.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use cni_ebpf_common::{maps::REASON_COUNTERS, Counter, Reason};
use cni_plugin::{netlink::Netlink, netns::NetnsHandle};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

/// Random lowercase hex.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    // SAFETY: valid buffer of that length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n as usize, bytes.len(), "getrandom");
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(len);
    s
}

/// Must run as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the plumbing tests need root"
    );
}

/// A network namespace bind-mounted at `/run/netns/sluice-t-plumb-<hex>`,
/// unmounted and removed on drop (also during a panic).
pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

impl TestNetns {
    /// Creates it: a thread unshares its network namespace and bind-mounts
    /// `/proc/thread-self/ns/net`; loopback is brought up inside.
    pub fn new() -> Self {
        let name = format!("sluice-t-plumb-{}", random_hex(8));
        let path = Path::new("/run/netns").join(&name);
        std::fs::create_dir_all("/run/netns").unwrap();
        File::create(&path).unwrap();
        let p = path.clone();
        std::thread::spawn(move || -> nix::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .join()
        .unwrap()
        .unwrap_or_else(|e| {
            let _ = std::fs::remove_file(&path);
            panic!("creating netns {name}: {e}")
        });
        let ns = Self { name, path };
        ns.block_on(async |nl| {
            let lo = nl.require_link("lo").await.unwrap();
            nl.set_up(lo.index, "lo").await.unwrap();
        });
        ns
    }

    /// Opens it.
    pub fn handle(&self) -> NetnsHandle {
        NetnsHandle::open(&self.path).unwrap()
    }

    /// Runs `f` on a thread inside this namespace (panics propagate).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = File::open(&self.path).unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Runs async netlink work inside this namespace.
    pub fn block_on<T: Send>(&self, f: impl AsyncFnOnce(Netlink) -> T + Send) -> T {
        let h = self.handle();
        cni_plugin::netns::run_in(&h, async move |nl| Ok(f(nl).await)).unwrap()
    }

    /// Names of the links in it.
    pub fn link_names(&self) -> Vec<String> {
        self.block_on(async |nl| {
            nl.links()
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect()
        })
    }

    /// Removes the bind mount; the namespace dies with its last user.
    pub fn remove(&mut self) {
        if self.path.exists() {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The built `sluice-agent`.
pub fn agent_bin() -> PathBuf {
    let dir = std::env::var_os("SLUICE_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let bin = dir.join("sluice-agent");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p cni-agent` first",
        bin.display()
    );
    bin
}

/// A pin directory of the test's own, `/sys/fs/bpf/sluice-test-<hex>`.
/// [`Pins::loaded`] runs the agent once (inside `ns`) so the programs and
/// maps are pinned, then stops it; the pins stay. Drop runs
/// `sluice-agent --cleanup` on it and removes what is left.
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    /// A fresh path with nothing pinned (for the "not pinned yet" cases).
    pub fn empty() -> Self {
        Self {
            dir: Path::new("/sys/fs/bpf").join(format!("sluice-test-{}", random_hex(8))),
        }
    }

    /// Pins the datapath by running the agent in `ns` until its pins appear.
    pub fn loaded(ns: &TestNetns) -> Self {
        let pins = Self::empty();
        let fd = File::open(&ns.path).unwrap();
        let raw = fd.as_raw_fd();
        let log = std::env::temp_dir().join(format!("sluice-pt-agent-{}.log", random_hex(6)));
        // Private state dir and API socket: no test touches /var/run/sluice.
        let private = std::env::temp_dir().join(format!("sluice-pt-agent-{}", random_hex(6)));
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--bpffs-dir")
            .arg(&pins.dir)
            .arg("--state-dir")
            .arg(private.join("state"))
            .arg("--api-socket")
            .arg(private.join("agent.sock"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap())
            .process_group(0);
        // SAFETY: only setns between fork and exec, on an fd open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting sluice-agent");
        let wanted = [
            pins.dir.join("progs/from_pod"),
            pins.dir.join("progs/to_pod"),
            pins.dir.join("maps/ENDPOINTS"),
            pins.dir.join("maps").join(REASON_COUNTERS),
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !wanted.iter().all(|p| p.exists()) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sluice-agent exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice-agent did not pin in time: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let it finish pinning (the ready line comes after the pins).
        std::thread::sleep(Duration::from_millis(200));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_dir_all(&private);
        pins
    }

    /// The pinned TCX link files.
    pub fn link_pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("links"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Packets counted under `reason`, summed over CPUs.
    pub fn reason_packets(&self, reason: Reason) -> u64 {
        use aya::maps::{Map, MapData, PerCpuArray};
        let data = MapData::from_pin(self.dir.join("maps").join(REASON_COUNTERS)).unwrap();
        let map: PerCpuArray<MapData, Counter> =
            PerCpuArray::try_from(Map::from_map_data(data).unwrap()).unwrap();
        map.get(&reason.0, 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = Command::new(agent_bin())
                .arg("--cleanup")
                .arg("--bpffs-dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if self.dir.exists() {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// A TCP exchange: a server in `server_ns` on `server_addr`, a client in
/// `client_ns` sending `len` bytes that the server echoes back. Returns the
/// peer address the server saw.
pub fn tcp_echo(
    server_ns: &TestNetns,
    server_addr: IpAddr,
    client_ns: &TestNetns,
    len: usize,
) -> SocketAddr {
    let (tx, rx) = mpsc::channel::<u16>();
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            server_ns.run(move || {
                let listener = TcpListener::bind(SocketAddr::new(server_addr, 0)).expect("bind");
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                listener.set_nonblocking(false).unwrap();
                let (mut conn, peer) = accept_with_timeout(&listener, Duration::from_secs(10));
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buf = Vec::new();
                conn.read_to_end(&mut buf).expect("server read");
                conn.write_all(&buf).expect("server write");
                peer
            })
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        let got = client_ns.run(|| {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::new(server_addr, port),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("connect to {server_addr}:{port}: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(&payload).expect("client write");
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).expect("client read");
            back
        });
        assert_eq!(got.len(), payload.len(), "echo length to {server_addr}");
        assert!(got == payload, "echo content to {server_addr}");
        server.join().unwrap()
    })
}

fn accept_with_timeout(listener: &TcpListener, timeout: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((c, p)) => {
                c.set_nonblocking(false).unwrap();
                return (c, p);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A TCP connect from `client_ns` to `addr:port` that must fail quickly
/// (nothing listens or nothing routes there).
pub fn tcp_unreachable(client_ns: &TestNetns, addr: IpAddr) -> bool {
    client_ns.run(|| {
        TcpStream::connect_timeout(&SocketAddr::new(addr, 9), Duration::from_millis(500)).is_err()
    })
}
