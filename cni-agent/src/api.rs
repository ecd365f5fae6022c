//! The agent's unix socket (`--api-socket`, default
//! `/var/run/sluice/agent.sock`): one JSON request line per connection, at
//! most one JSON answer line.
//!
//! | request | from | answer |
//! |---|---|---|
//! | `{"op":"add","endpointId":"…","wait":true,…}` | the plugin's ADD | once the endpoint's `POLICY_STATE` is `PROGRAMMED`: `{"ok":true,"revision":N}`, else `{"ok":false,"error":"…"}`; nothing when `wait` is false |
//! | `{"op":"del","endpointId":"…",…}` | the plugin's DEL | `{"ok":true}` after the prune, when `wait` |
//! | `{"op":"sync"}` | `sluicectl sync` | after the source is re-read and the maps written: `{"ok":true,"revision":N,…}`, or `{"ok":false,"error":"<file>: NetworkPolicy ns/name: field: why"}` (nothing changed) |
//! | `{"op":"status"}` | `sluicectl status` | `{"ok":true,"revision":N,"enforcing":…,…}` |
//!
//! The plugin's side is `cni-plugin/src/cmd/notify.rs` (protocol version 1;
//! unknown keys are ignored). A connection closed without a line is a
//! readiness probe. Every request goes to the policy engine, which batches
//! what arrives together into one sync.
//!
//! The socket file is created with mode 0600 in a directory created when
//! missing; a stale file from an earlier agent is replaced.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::policy::sync::{Envelope, Request};

/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request line (fields of every op; unknown keys ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    op: String,
    #[serde(default)]
    endpoint_id: Option<String>,
    /// Absent: answer (sluicectl); the plugin says explicitly.
    #[serde(default)]
    wait: Option<bool>,
}

/// Parses one request line; the answer to send when it is not understood.
fn parse(line: &str) -> Result<(Request, bool), Value> {
    let req: Line = serde_json::from_str(line)
        .map_err(|e| json!({"ok": false, "error": format!("unreadable request: {e}")}))?;
    let id = req
        .endpoint_id
        .as_deref()
        .and_then(|s| u64::from_str_radix(s, 16).ok());
    let request = match req.op.as_str() {
        "add" => Request::Add { endpoint_id: id },
        "del" => Request::Del { endpoint_id: id },
        "sync" => Request::Sync,
        "status" => Request::Status,
        other => {
            return Err(json!({"ok": false, "error": format!(
                "unknown op {other:?} (expected add, del, sync or status)"
            )}))
        }
    };
    Ok((request, req.wait.unwrap_or(true)))
}

/// Binds the socket at `path`: parent directory created (0700 when new),
/// stale socket replaced, file mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                anyhow::bail!(
                    "--api-socket {} exists and is not a socket; not replacing it",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                tracing::warn!(
                    path = %path.display(),
                    "another process answers on the API socket; taking the path over"
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    // Bind under a umask that leaves the file 0600 from the start, not
    // only after a chmod.
    // SAFETY: umask only changes this process's file mode creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Which file the socket is, to remove it on exit only if no later agent
/// has replaced it since.
#[derive(Clone, Debug)]
pub struct SocketFile {
    path: PathBuf,
    ino: Option<u64>,
}

impl SocketFile {
    /// The socket file at `path` now.
    pub fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            path: path.to_owned(),
            ino: std::fs::symlink_metadata(path).ok().map(|m| m.ino()),
        }
    }

    /// Removes the file if it is still the one bound.
    pub fn remove_if_ours(&self) {
        if self.ino.is_some() && Self::of(&self.path).ino == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `listener`, passing requests to the engine on `engine`.
pub async fn serve(listener: UnixListener, engine: mpsc::Sender<Envelope>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%err, "API socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(err) = connection(stream, engine).await {
                tracing::debug!("API connection: {err:#}");
            }
        });
    }
}

async fn connection(stream: UnixStream, engine: mpsc::Sender<Envelope>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let n = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("no request line in time")??;
    if n == 0 || line.trim().is_empty() {
        // A probe (the plugin's STATUS).
        return Ok(());
    }
    let answer = match parse(line.trim()) {
        Err(answer) => Some(answer),
        Ok((request, wait)) => {
            tracing::debug!(?request, wait, "API request");
            if wait {
                let (tx, rx) = tokio::sync::oneshot::channel();
                engine
                    .send(Envelope {
                        request,
                        reply: Some(tx),
                    })
                    .context("the policy engine stopped")?;
                Some(rx.await.context("the policy engine dropped the request")?)
            } else {
                engine
                    .send(Envelope {
                        request,
                        reply: None,
                    })
                    .context("the policy engine stopped")?;
                None
            }
        }
    };
    if let Some(answer) = answer {
        let mut bytes = serde_json::to_vec(&answer)?;
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
        write.shutdown().await?;
    }
    Ok(())
}

/// Client side (sluicectl): sends `request` on `path` and reads the answer
/// within `timeout`.
pub fn call(path: &Path, request: &Value, timeout: Duration) -> anyhow::Result<Value> {
    use std::io::{BufRead as _, Write as _};
    let stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the agent on {} (is sluice-agent running, and --api-socket right?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line).context("sending the request")?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("no answer from the agent within {timeout:?}"))?;
    if answer.trim().is_empty() {
        anyhow::bail!("the agent closed the connection without answering");
    }
    serde_json::from_str(answer.trim()).with_context(|| format!("unreadable answer {answer:?}"))
}

/// The default socket path.
pub fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_API_SOCKET)
}

/// Default `--api-socket`.
pub const DEFAULT_API_SOCKET: &str = "/var/run/sluice/agent.sock";
/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/run/sluice";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plugin_and_cli_requests() {
        let (r, wait) = parse(
            r#"{"v":1,"op":"add","network":"n","containerId":"c","ifname":"eth0","endpointId":"00000000000000ab","podNamespace":null,"podName":"p","addresses":["10.0.0.1/24"],"wait":true,"future":1}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Add {
                endpoint_id: Some(0xab)
            }
        );
        assert!(wait);
        let (r, wait) = parse(r#"{"v":1,"op":"del","endpointId":"ff","wait":false}"#).unwrap();
        assert_eq!(
            r,
            Request::Del {
                endpoint_id: Some(0xff)
            }
        );
        assert!(!wait);
        assert_eq!(parse(r#"{"op":"sync"}"#).unwrap(), (Request::Sync, true));
        assert!(parse(r#"{"op":"nope"}"#).unwrap_err()["error"]
            .as_str()
            .unwrap()
            .contains("unknown op"));
        assert!(parse("not json").is_err());
    }

    #[test]
    fn bind_replaces_stale_sockets_and_sets_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            drop(bind(&path).unwrap());
            // The file stays behind: stale.
            assert!(path.exists());
            let _l = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        });
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        rt.block_on(async { assert!(bind(&file).is_err()) });
    }
}
