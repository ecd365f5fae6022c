//! `sluicectl monitor`: policy drops, live, from the `POLICY_EVENTS` ring
//! buffer: pods, 5-tuple, direction, reason, and the policies that isolate
//! the dropping endpoint.
//!
//! A BPF ring buffer has one consumer position, shared by every reader, so
//! it has one owner: this command (the agent never reads it). Two monitors
//! at once would split the events between them. Events that piled up while
//! nobody watched are skipped unless `--backlog` is given.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::Args;
use cni_ebpf_common::{
    maps::POLICY_EVENTS,
    policy::{DropEvent, DIRECTION_EGRESS},
    prefilter::FAMILY_IPV4,
    Reason,
};
use serde::Serialize;

use super::{
    output::Format,
    view::{protocol_name, View},
};
use crate::{bpffs::PinLayout, maps::open_pinned, policy::Direction};

/// Options of `monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print the events already waiting in the buffer first.
    #[arg(long)]
    pub backlog: bool,
}

/// One drop, for people and scripts.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDrop {
    /// Seconds since the epoch (when read).
    pub time: f64,
    /// Whose policy dropped it: `ingress` of the destination or `egress`
    /// of the source.
    pub direction: Direction,
    /// Reason name.
    pub reason: String,
    /// Reason code.
    pub code: u32,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Protocol.
    pub protocol: String,
    /// The source's pod, if known.
    pub src_pod: Option<String>,
    /// The destination's pod, if known.
    pub dst_pod: Option<String>,
    /// The endpoint whose policy dropped it.
    pub endpoint_id: String,
    /// Its pod.
    pub endpoint_pod: Option<String>,
    /// The peer's identity.
    pub peer_identity: u32,
    /// What that identity is.
    pub peer: String,
    /// The policies isolating the endpoint in that direction.
    pub policies: Vec<String>,
}

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// Decodes one event with the names `view` knows.
pub fn decode(view: &View, e: &DropEvent) -> PolicyDrop {
    let direction = if e.direction == DIRECTION_EGRESS {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let src = addr(e.family, &e.src);
    let dst = addr(e.family, &e.dst);
    PolicyDrop {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        direction,
        reason: Reason(e.reason)
            .name()
            .map_or_else(|| format!("reason-{}", e.reason), str::to_owned),
        code: e.reason,
        src,
        dst,
        sport: e.sport,
        dport: e.dport,
        protocol: protocol_name(e.protocol),
        src_pod: view.pod_of(src),
        dst_pod: view.pod_of(dst),
        endpoint_id: format!("{:016x}", e.endpoint_id),
        endpoint_pod: view
            .endpoints
            .get(&e.endpoint_id)
            .and_then(|x| x.pod.as_ref().map(ToString::to_string)),
        peer_identity: e.peer_identity,
        peer: view.identity_name(e.peer_identity),
        policies: view
            .policies(e.endpoint_id, direction)
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// One line for people.
pub fn line(d: &PolicyDrop) -> String {
    let end = |pod: &Option<String>, ip: IpAddr, port: u16| {
        let hostport = match ip {
            IpAddr::V4(_) => format!("{ip}:{port}"),
            IpAddr::V6(_) => format!("[{ip}]:{port}"),
        };
        match pod {
            Some(p) => format!("{p} {hostport}"),
            None => hostport,
        }
    };
    format!(
        "DROP {} {} {} -> {} {} (endpoint {}, peer {}; policies {})",
        d.direction,
        d.reason,
        end(&d.src_pod, d.src, d.sport),
        end(&d.dst_pod, d.dst, d.dport),
        d.protocol,
        d.endpoint_pod.as_deref().unwrap_or(&d.endpoint_id),
        d.peer,
        if d.policies.is_empty() {
            "unknown".to_owned()
        } else {
            d.policies.join(", ")
        }
    )
}

fn read_event(bytes: &[u8]) -> Option<DropEvent> {
    if bytes.len() < std::mem::size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: DropEvent is plain old data and `bytes` holds at least one;
    // read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DropEvent>()) })
}

/// Runs the verb: prints events as they come (stdout, flushed per event)
/// until `--count` or `--duration`; returns nothing more to print.
pub fn run(
    layout: &PinLayout,
    state_dir: &Path,
    args: &MonitorArgs,
    format: Format,
) -> anyhow::Result<String> {
    let mut ring: RingBuf<MapData> = open_pinned(layout, POLICY_EVENTS)?;
    let mut view = View::load(layout, state_dir)?;
    let mut view_loaded = Instant::now();
    if !args.backlog {
        while ring.next().is_some() {}
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    if format == Format::Table {
        writeln!(
            stdout,
            "watching policy drops on {} (Ctrl-C to stop)",
            layout.map(POLICY_EVENTS).display()
        )?;
        stdout.flush()?;
    }
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => left.min(Duration::from_millis(500)),
                None => break,
            },
            None => Duration::from_millis(500),
        };
        {
            let mut fds = [libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = i32::try_from(wait.as_millis()).unwrap_or(500);
            // SAFETY: one pollfd for an fd the ring buffer keeps open.
            if unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) } < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err).context("poll on POLICY_EVENTS");
                }
            }
        }
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = read_event(&item) {
                events.push(e);
            }
        }
        if events.is_empty() {
            continue;
        }
        if view_loaded.elapsed() > Duration::from_secs(2) {
            if let Ok(v) = View::load(layout, state_dir) {
                view = v;
            }
            view_loaded = Instant::now();
        }
        for e in events {
            let d = decode(&view, &e);
            match format {
                Format::Json => writeln!(stdout, "{}", serde_json::to_string(&d)?)?,
                Format::Table => writeln!(stdout, "{}", line(&d))?,
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
        }
        stdout.flush()?;
    }
    Ok(String::new())
}
