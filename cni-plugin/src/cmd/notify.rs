//! The client side of the agent's notify socket (`agentSocket`, default
//! `/var/run/sluice/agent.sock`): ADD tells the agent about a new endpoint
//! and, with `waitForPolicy`, waits until the agent has programmed its
//! policy; DEL tells it the endpoint is gone; STATUS checks that something
//! listens.
//!
//! # Protocol (version 1)
//!
//! A `SOCK_STREAM` unix socket. The plugin connects, writes one request as
//! a single line of JSON (UTF-8, ended by `\n`) and either closes its
//! sending side or waits for one answer line. One request per connection.
//!
//! ```json
//! {"v":1,"op":"add","network":"sluice","containerId":"c1","ifname":"eth0",
//!  "endpointId":"00f3a2c19b7d4e51","podNamespace":"default","podName":"web-0",
//!  "addresses":["10.22.0.5/24","fd00::5/64"],"wait":true}
//! {"v":1,"op":"del","network":"sluice","containerId":"c1","ifname":"eth0",
//!  "endpointId":"00f3a2c19b7d4e51","podNamespace":null,"podName":null,
//!  "addresses":[],"wait":false}
//! ```
//!
//! - `endpointId`: the 16-hex-digit id of the state record and of the
//!   `ENDPOINTS` entries ([`crate::state::endpoint_id`]).
//! - `podNamespace`/`podName`: from `CNI_ARGS`, `null` when absent.
//! - `addresses`: the pod's addresses with IPAM's prefix length (empty on
//!   `del`).
//! - `wait`: whether the plugin waits for an answer. Only then does the
//!   agent answer, with one line once the endpoint's policy is in the maps:
//!   `{"ok":true}`, or `{"ok":false,"error":"why"}`.
//!
//! A connection closed without a request line is a readiness probe
//! (STATUS) and needs no answer. Unknown keys must be ignored by the agent;
//! `v` changes only for an incompatible change.
//!
//! Everything but a waited-for `add` is best effort: when no socket exists
//! or nobody listens the plugin logs at debug level and goes on, because
//! the agent also learns endpoints from the state dir. A waited-for `add`
//! must be connected, written and answered `ok` within `policyTimeoutMs`;
//! otherwise ADD is undone and fails with code 11 (try again later).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use serde::{Deserialize, Serialize};

/// Protocol version written in `v`.
pub const PROTOCOL_VERSION: u32 = 1;
/// How long a best-effort notification may take in all.
pub const BEST_EFFORT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest answer line read.
const MAX_ANSWER: u64 = 64 * 1024;

/// `add` or `del`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new endpoint.
    Add,
    /// An endpoint removed.
    Del,
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// What happened.
    pub op: Op,
    /// Network name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The endpoint id, 16 lowercase hex digits.
    pub endpoint_id: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// The pod's addresses (empty on `del`).
    pub addresses: Vec<IpNet>,
    /// Whether an answer is awaited.
    pub wait: bool,
}

impl Request {
    /// A request for an endpoint; `wait` false.
    pub fn new(op: Op, network: &str, container_id: &str, ifname: &str, endpoint_id: u64) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            op,
            network: network.to_owned(),
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            endpoint_id: format!("{endpoint_id:016x}"),
            pod_namespace: None,
            pod_name: None,
            addresses: Vec::new(),
            wait: false,
        }
    }
}

/// The answer line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the endpoint's policy is programmed.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a notification did not get through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// No socket at the path, or nobody listening on it.
    #[error("the agent is not listening on {path}: {why}")]
    NotListening {
        /// The socket path.
        path: String,
        /// The errno text.
        why: String,
    },
    /// The deadline passed (connecting, writing or waiting for the answer).
    #[error("no answer from the agent on {path} within {timeout:?} ({during})")]
    Timeout {
        /// The socket path.
        path: String,
        /// The whole budget.
        timeout: Duration,
        /// The step that ran out of time.
        during: &'static str,
    },
    /// The agent answered that it could not program the policy.
    #[error("the agent refused endpoint {endpoint}: {why}")]
    Refused {
        /// The endpoint id.
        endpoint: String,
        /// Its reason.
        why: String,
    },
    /// Anything else: a broken connection, an unreadable answer.
    #[error("talking to the agent on {path}: {why}")]
    Io {
        /// The socket path.
        path: String,
        /// What went wrong.
        why: String,
    },
}

impl NotifyError {
    /// Whether the agent simply is not there (the case best-effort callers
    /// log at debug level).
    pub fn is_not_listening(&self) -> bool {
        matches!(self, Self::NotListening { .. })
    }
}

/// Connects to `path` within `deadline`. A listener whose backlog is full
/// makes a non-blocking `connect` fail with `EAGAIN`: retried until the
/// deadline.
pub fn connect_by(
    path: &Path,
    timeout: Duration,
    deadline: Instant,
) -> Result<UnixStream, NotifyError> {
    let shown = path.display().to_string();
    let addr = UnixAddr::new(path).map_err(|e| NotifyError::Io {
        path: shown.clone(),
        why: format!("not a usable socket path: {e}"),
    })?;
    loop {
        let fd: OwnedFd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| NotifyError::Io {
            path: shown.clone(),
            why: format!("socket: {e}"),
        })?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false).map_err(|e| NotifyError::Io {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(Errno::EAGAIN) => {
                return Err(NotifyError::Timeout {
                    path: shown,
                    timeout,
                    during: "connecting",
                })
            }
            Err(e @ (Errno::ENOENT | Errno::ECONNREFUSED | Errno::ENOTDIR)) => {
                return Err(NotifyError::NotListening {
                    path: shown,
                    why: e.desc().to_string(),
                })
            }
            Err(e) => {
                return Err(NotifyError::Io {
                    path: shown,
                    why: format!("connect: {}", e.desc()),
                })
            }
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Sends `req` on `path` within `timeout`; when `req.wait`, also reads the
/// answer within the same budget and fails unless it is `ok`.
pub fn send(path: &Path, req: &Request, timeout: Duration) -> Result<(), NotifyError> {
    let shown = path.display().to_string();
    let deadline = Instant::now() + timeout;
    let timed_out = |during| NotifyError::Timeout {
        path: shown.clone(),
        timeout,
        during,
    };
    let io = |why: String| NotifyError::Io {
        path: shown.clone(),
        why,
    };
    let mut stream = connect_by(path, timeout, deadline)?;
    let left = remaining(deadline).ok_or_else(|| timed_out("connecting"))?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| io(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out("writing"),
        _ => io(format!("writing the request: {e}")),
    })?;
    if !req.wait {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let left = remaining(deadline).ok_or_else(|| timed_out("waiting for the answer"))?;
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| io(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                timed_out("waiting for the answer")
            }
            _ => io(format!("reading the answer: {e}")),
        })?;
    if answer.trim().is_empty() {
        return Err(io(
            "the agent closed the connection without answering".into()
        ));
    }
    let answer: Answer = serde_json::from_str(answer.trim())
        .map_err(|e| io(format!("unreadable answer {:?}: {e}", answer.trim())))?;
    if answer.ok {
        Ok(())
    } else {
        Err(NotifyError::Refused {
            endpoint: req.endpoint_id.clone(),
            why: answer.error.unwrap_or_else(|| "no reason given".into()),
        })
    }
}

/// Best effort: sends `req` (with `wait` off) and logs what happened; never
/// fails.
pub fn send_best_effort(path: &Path, req: &Request) {
    let mut req = req.clone();
    req.wait = false;
    match send(path, &req, BEST_EFFORT_TIMEOUT) {
        Ok(()) => tracing::debug!(
            "told the agent on {}: {:?} {}",
            path.display(),
            req.op,
            req.endpoint_id
        ),
        Err(e) if e.is_not_listening() => tracing::debug!("not notifying the agent: {e}"),
        Err(e) => {
            tracing::info!("could not notify the agent (it will learn from the state dir): {e}")
        }
    }
}

/// STATUS: something accepts connections on `path` (the connection is then
/// closed without a request: a probe).
pub fn probe(path: &Path, timeout: Duration) -> Result<(), NotifyError> {
    let stream = connect_by(path, timeout, Instant::now() + timeout)?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn request(wait: bool) -> Request {
        let mut r = Request::new(Op::Add, "net1", "c1", "eth0", 0xab);
        r.pod_name = Some("web-0".into());
        r.addresses = vec!["10.199.0.5/24".parse().unwrap()];
        r.wait = wait;
        r
    }

    #[test]
    fn wire_format() {
        let v = serde_json::to_value(request(true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v": 1, "op": "add", "network": "net1", "containerId": "c1",
                "ifname": "eth0", "endpointId": "00000000000000ab", "podNamespace": null,
                "podName": "web-0", "addresses": ["10.199.0.5/24"], "wait": true})
        );
    }

    #[test]
    fn no_socket_is_not_listening() {
        let dir = tempfile::tempdir().unwrap();
        let e = send(
            &dir.path().join("none.sock"),
            &request(true),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(e.is_not_listening(), "{e}");
        // A socket file nobody listens on any more.
        let path = dir.path().join("dead.sock");
        drop(UnixListener::bind(&path).unwrap());
        let e = probe(&path, Duration::from_millis(100)).unwrap_err();
        assert!(e.is_not_listening(), "{e}");
    }

    fn serve_once(
        listener: UnixListener,
        answer: Option<&'static str>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            if let Some(a) = answer {
                (&conn).write_all(a.as_bytes()).unwrap();
            } else {
                std::thread::sleep(Duration::from_millis(300));
            }
            line
        })
    }

    #[test]
    fn waiting_needs_an_ok_answer_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let t = serve_once(UnixListener::bind(&path).unwrap(), Some("{\"ok\":true}\n"));
        send(&path, &request(true), Duration::from_secs(5)).unwrap();
        let line = t.join().unwrap();
        let got: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(got, request(true));

        let _ = std::fs::remove_file(&path);
        let t = serve_once(
            UnixListener::bind(&path).unwrap(),
            Some("{\"ok\":false,\"error\":\"policy compile failed\"}\n"),
        );
        let e = send(&path, &request(true), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, NotifyError::Refused { .. }), "{e}");
        t.join().unwrap();

        let _ = std::fs::remove_file(&path);
        let t = serve_once(UnixListener::bind(&path).unwrap(), None);
        let e = send(&path, &request(true), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, NotifyError::Timeout { .. }), "{e}");
        t.join().unwrap();
    }
}
