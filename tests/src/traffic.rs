//! Real traffic between test namespaces: ICMP/ICMPv6 echo over raw sockets
//! (no `ping` binary needed) and TCP echo transfers. Sockets are created
//! inside a namespace with [`Netns::run`] and then used from any thread.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{
        recvfrom, sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
        SockaddrIn, SockaddrIn6, SockaddrStorage,
    },
};

use crate::Netns;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const PAYLOAD: &[u8] = b"sluice-e2e-echo-payload!";

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from_be_bytes([*hi, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw ICMP or ICMPv6 socket in one namespace, sending echo requests to
/// one destination with one identifier and counting the matching replies.
struct Pinger {
    fd: OwnedFd,
    dst: IpAddr,
    id: u16,
}

impl Pinger {
    fn open(ns: &Netns, dst: IpAddr) -> anyhow::Result<Self> {
        let fd = ns.run(move || {
            let (family, protocol) = match dst {
                IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
                IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
            };
            socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)
                .context("opening a raw ICMP socket")
        })?;
        Ok(Self {
            fd,
            dst,
            id: rand::random(),
        })
    }

    fn send(&self, seq: u16) -> anyhow::Result<()> {
        let mut packet = Vec::with_capacity(8 + PAYLOAD.len());
        let kind = if self.dst.is_ipv4() {
            ICMP_ECHO_REQUEST
        } else {
            ICMPV6_ECHO_REQUEST
        };
        packet.extend_from_slice(&[kind, 0, 0, 0]);
        packet.extend_from_slice(&self.id.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(PAYLOAD);
        let fd = self.fd.as_raw_fd();
        let sent = match self.dst {
            IpAddr::V4(ip) => {
                let sum = checksum(&packet);
                packet[2..4].copy_from_slice(&sum.to_be_bytes());
                sendto(
                    fd,
                    &packet,
                    &SockaddrIn::from(SocketAddrV4::new(ip, 0)),
                    MsgFlags::empty(),
                )
            }
            // The kernel fills in the ICMPv6 checksum (it covers a pseudo
            // header only it knows the source of).
            IpAddr::V6(ip) => sendto(
                fd,
                &packet,
                &SockaddrIn6::from(SocketAddrV6::new(ip, 0, 0, 0)),
                MsgFlags::empty(),
            ),
        }
        .with_context(|| format!("sending an echo request to {}", self.dst))?;
        ensure!(sent == packet.len(), "short send to {}", self.dst);
        Ok(())
    }

    /// The sequence number of an echo reply to us in `buf`, if it is one.
    fn reply_seq(&self, buf: &[u8], from: Option<SockaddrStorage>) -> Option<u16> {
        let from_ip = from.and_then(|addr| match self.dst {
            IpAddr::V4(_) => addr.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())),
            IpAddr::V6(_) => addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())),
        });
        if from_ip != Some(self.dst) {
            return None;
        }
        // IPv4 raw sockets deliver the IP header too; ICMPv6 ones do not.
        let (icmp, reply) = match self.dst {
            IpAddr::V4(_) => {
                let ihl = usize::from(buf.first()? & 0x0f) * 4;
                (buf.get(ihl..)?, ICMP_ECHO_REPLY)
            }
            IpAddr::V6(_) => (buf, ICMPV6_ECHO_REPLY),
        };
        let header = icmp.get(..8)?;
        if header[0] != reply
            || header[1] != 0
            || u16::from_be_bytes([header[4], header[5]]) != self.id
        {
            return None;
        }
        Some(u16::from_be_bytes([header[6], header[7]]))
    }

    /// Reads replies into `seqs` until `deadline`, or until `want` replies
    /// are in when `want` is given.
    fn receive(
        &self,
        deadline: Instant,
        seqs: &mut BTreeSet<u16>,
        want: Option<usize>,
    ) -> anyhow::Result<()> {
        let mut buf = [0u8; 2048];
        loop {
            if want.is_some_and(|want| seqs.len() >= want) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(err) => return Err(err).context("poll on the ICMP socket"),
            }
            let (n, from) = recvfrom::<SockaddrStorage>(self.fd.as_raw_fd(), &mut buf)
                .context("receiving on the ICMP socket")?;
            if let Some(seq) = self.reply_seq(&buf[..n], from) {
                seqs.insert(seq);
            }
        }
    }
}

/// Pause between echo requests of [`ping`].
pub const PING_INTERVAL: Duration = Duration::from_millis(10);

/// Sends `count` echo requests from `ns` to `dst` (ICMP or ICMPv6 by the
/// address family), 10 ms apart, and returns how many distinct ones got a
/// reply within `timeout` of the last request.
pub fn ping(ns: &Netns, dst: IpAddr, count: usize, timeout: Duration) -> anyhow::Result<usize> {
    let pinger = Pinger::open(ns, dst)?;
    let count = u16::try_from(count).context("at most 65535 echo requests")?;
    let mut seqs = BTreeSet::new();
    for seq in 0..count {
        pinger.send(seq)?;
        pinger.receive(Instant::now() + PING_INTERVAL, &mut seqs, None)?;
    }
    pinger.receive(
        Instant::now() + timeout,
        &mut seqs,
        Some(usize::from(count)),
    )?;
    Ok(seqs.len())
}

/// What a [`PingLoop`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u64,
    /// Distinct echo requests answered.
    pub received: u64,
}

/// Echo requests sent continuously from a background thread until
/// [`PingLoop::stop`], to watch a window of time (e.g. an agent restart).
pub struct PingLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<PingStats>>>,
}

impl PingLoop {
    /// Starts sending from `ns` to `dst` every `interval`.
    pub fn start(ns: &Netns, dst: IpAddr, interval: Duration) -> anyhow::Result<Self> {
        let pinger = Pinger::open(ns, dst)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ping-loop".into())
            .spawn(move || -> anyhow::Result<PingStats> {
                let mut seqs = BTreeSet::new();
                let mut sent: u64 = 0;
                while !flag.load(Ordering::Relaxed) {
                    // Sequence numbers wrap after 65536 requests; a loop
                    // that long would need a wider reply set, not this.
                    pinger.send(sent as u16)?;
                    sent += 1;
                    pinger.receive(Instant::now() + interval, &mut seqs, None)?;
                }
                // Late replies to the last requests.
                pinger.receive(Instant::now() + Duration::from_millis(200), &mut seqs, None)?;
                Ok(PingStats {
                    sent,
                    received: seqs.len() as u64,
                })
            })
            .context("spawning the ping loop")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sending, waits 200 ms for late replies, and reports.
    pub fn stop(mut self) -> anyhow::Result<PingStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => bail!("ping loop already stopped"),
        }
    }
}

impl Drop for PingLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Byte `i` of what the TCP helpers send, so a corrupted or reordered echo
/// is caught, not only a short one.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Connects from `ns` to `addr` with a timeout. A dropped SYN shows as an
/// error of kind `TimedOut`.
pub fn tcp_connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = ns
        .run(move || Ok(TcpStream::connect_timeout(&addr, timeout)))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Sends `bytes` of a known pattern on `stream` and reads the echo back,
/// checking every byte; returns the bytes echoed. With `half_close`, ends
/// by shutting down the write side and expects EOF after the echo.
fn exchange(stream: &TcpStream, bytes: usize, half_close: bool) -> anyhow::Result<usize> {
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> anyhow::Result<()> {
            let mut out = stream;
            let mut written = 0;
            while written < bytes {
                let n = (bytes - written).min(64 * 1024);
                let block: Vec<u8> = (written..written + n).map(pattern).collect();
                out.write_all(&block).context("sending")?;
                written += n;
            }
            if half_close {
                stream
                    .shutdown(Shutdown::Write)
                    .context("shutdown(SHUT_WR)")?;
            }
            Ok(())
        });
        let mut input = stream;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < bytes {
            let n = input
                .read(&mut buf)
                .with_context(|| format!("reading the echo after {got} bytes"))?;
            if n == 0 {
                break;
            }
            for (offset, byte) in buf[..n].iter().enumerate() {
                ensure!(
                    *byte == pattern(got + offset),
                    "echo corrupted at byte {}",
                    got + offset
                );
            }
            got += n;
        }
        if half_close && got == bytes {
            let n = input.read(&mut buf).context("reading EOF")?;
            ensure!(n == 0, "{n} bytes more than sent came back");
        }
        match writer.join() {
            Ok(result) => result?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
        Ok(got)
    })
}

/// A TCP echo server inside a namespace: every connection gets back what it
/// sends until it closes. Stopped on drop.
pub struct TcpEchoServer {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEchoServer {
    /// Listens on `ip` (an address of `ns`), on a free port.
    pub fn start(ns: &Netns, ip: IpAddr) -> anyhow::Result<Self> {
        let listener = Arc::new(ns.run(move || {
            TcpListener::bind(SocketAddr::new(ip, 0)).with_context(|| format!("listening on {ip}"))
        })?);
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, accepting) = (stop.clone(), listener.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tcp-echo-{addr}"))
            .spawn(move || {
                for conn in accepting.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    std::thread::spawn(move || {
                        let Ok(mut output) = conn.try_clone() else {
                            return;
                        };
                        let mut input = conn;
                        let _ = std::io::copy(&mut input, &mut output);
                        let _ = output.shutdown(Shutdown::Write);
                    });
                }
            })
            .context("spawning the echo server")?;
        Ok(Self {
            addr,
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One transfer on a new connection from `client`: connect (within
    /// `timeout`), send `bytes`, read the same bytes back, close. Returns
    /// the bytes echoed, which is `bytes` unless something is wrong.
    pub fn transfer(
        &self,
        client: &Netns,
        bytes: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let stream = tcp_connect(client, self.addr, timeout)
            .with_context(|| format!("connecting to {} from {}", self.addr, client.name()))?;
        let got = exchange(&stream, bytes, true)
            .with_context(|| format!("TCP echo of {bytes} bytes with {}", self.addr))?;
        ensure!(
            got == bytes,
            "sent {bytes} bytes to {} and got {got} back",
            self.addr
        );
        Ok(got)
    }

    /// A connection from `client` kept open for several exchanges (to show
    /// an established flow survives what happens in between).
    pub fn connect(&self, client: &Netns, timeout: Duration) -> anyhow::Result<TcpEchoConn> {
        let stream = tcp_connect(client, self.addr, timeout)
            .with_context(|| format!("connecting to {} from {}", self.addr, client.name()))?;
        Ok(TcpEchoConn { stream })
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown(2) on a listening socket wakes a blocked accept(2) on
        // Linux (it returns EINVAL), so the accept thread sees `stop`.
        // SAFETY: shutdown on an fd the listener owns and keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An open connection to a [`TcpEchoServer`].
pub struct TcpEchoConn {
    stream: TcpStream,
}

impl TcpEchoConn {
    /// Sends `bytes` and reads them back; returns the bytes echoed.
    pub fn exchange(&mut self, bytes: usize) -> anyhow::Result<usize> {
        let got = exchange(&self.stream, bytes, false)?;
        ensure!(got == bytes, "sent {bytes} bytes and got {got} back");
        Ok(got)
    }
}

/// A UDP echo server inside a namespace: every datagram is sent back to
/// its sender. Stopped on drop.
pub struct UdpEchoServer {
    socket: Arc<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Binds `ip`, an ephemeral port, in `ns`.
    pub fn start(ns: &Netns, ip: IpAddr) -> anyhow::Result<Self> {
        let socket = Arc::new(ns.run(move || {
            let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding UDP {ip}"))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag) = (socket.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("udp-echo".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
            .context("spawning the UDP echo thread")?;
        Ok(Self {
            socket,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Sends one datagram of each size in `sizes` from `client` (one at a
    /// time, waiting up to `timeout` for each echo) and returns how many
    /// came back intact. Each payload is distinct, so a corrupted or stale
    /// echo does not count.
    pub fn exchange(
        &self,
        client: &Netns,
        sizes: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let server = self.addr()?;
        let socket = client.run(move || {
            let any: IpAddr = if server.is_ipv4() {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u16; 8])
            };
            let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
            s.set_read_timeout(Some(timeout))?;
            Ok(s)
        })?;
        let mut intact = 0;
        let mut buf = vec![0u8; 65536];
        for (i, &size) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|j| pattern(i * 7 + j)).collect();
            socket
                .send_to(&payload, server)
                .with_context(|| format!("sending {size} bytes to {server}"))?;
            // Drain until this datagram's echo or the timeout.
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                if buf[..n] == payload[..] {
                    intact += 1;
                    break;
                }
            }
        }
        Ok(intact)
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
