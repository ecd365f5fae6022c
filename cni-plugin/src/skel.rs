//! The CNI protocol (spec 1.1.0, sections 2 and 5): reads the `CNI_*`
//! environment and the config on stdin, checks them, negotiates the version,
//! calls a [`Commands`] handler, and writes the result or the error JSON.
//! This is the only place that writes stdout; during the handler fd 1 points
//! at stderr, so a stray print (ours or a child process's) cannot corrupt
//! the protocol.
//!
//! Order of checks, as libcni's `pkg/skel` (`getCmdArgsFromEnv`, then
//! `validateConfig`, then the version check), with the deviations noted:
//! 1. `CNI_COMMAND`: missing or unknown is code 4. (libcni, when the variable
//!    is missing, only prints its "about" text on stderr and exits 0; that
//!    serves a human at a terminal but tells a runtime "success" with no
//!    result, so Sluice prints the about text *and* the code 4 error.)
//!    `VERSION` needs nothing else and tolerates any stdin.
//! 2. The variables the command requires, in libcni's order: `CNI_COMMAND`,
//!    `CNI_CONTAINERID` (ADD, CHECK, DEL), `CNI_NETNS` (ADD, CHECK),
//!    `CNI_IFNAME` (ADD, CHECK, DEL), `CNI_PATH` (all but VERSION). A present
//!    but invalid value is code 4 at once (libcni `ValidateContainerID`,
//!    `ValidateInterfaceName`); missing ones are collected into one code 4
//!    error naming them all. The spec lists `CNI_PATH` as optional for
//!    ADD/DEL/CHECK, but libcni requires it, and runtimes always pass it.
//! 3. stdin: unreadable is code 5; not JSON, or not an object, is code 6.
//! 4. The version: `cniVersion` (a string, else code 6) must be supported,
//!    else code 1 with the supported versions in the details. With
//!    `cniVersions`, the highest supported version of `cniVersion` and
//!    `cniVersions` together is used, as the spec's "Version considerations"
//!    asks a runtime to choose and libcni's `NetworkConfFromBytes` does;
//!    unsupported entries are skipped, entries that are not version strings
//!    are code 6. Results and errors are then written in that version.
//! 5. The command's minimum version, as libcni's skel: CHECK needs 0.4.0,
//!    GC and STATUS need 1.1.0; older is code 1.
//! 6. The network config ([`NetConf::from_json`]): name (code 7, or 6 when
//!    not a string, as libcni), type, and every Sluice option.
//! 7. GC: `cni.dev/valid-attachments` is required (code 7): without it, GC
//!    would have to treat every attachment as stale.
//! 8. `prevResult` (ADD, CHECK, DEL): not a valid result is code 6, an
//!    `interface` index outside `interfaces` is code 7. CHECK without one is
//!    code 7 (the spec: "A runtime must include a prevResult" for CHECK; the
//!    bridge plugin refuses the same). On DEL a broken prevResult is logged
//!    and dropped instead: DEL is best-effort and must not fail on it (the
//!    bridge plugin's DEL never parses it either).
//! 9. `CNI_ARGS` (ADD, CHECK, DEL only; the spec gives GC and STATUS no
//!    such input): see `args.rs`; code 4.
//! 10. `CNI_LOG_LEVEL`/`CNI_LOG_FILE`: code 4 when invalid.
//!
//! The error JSON carries the negotiated version; when the failure comes
//! before negotiation, the version stdin asks for if it is supported, else
//! 1.1.0. A handler that panics is reported as code 999 (libcni's
//! `ErrInternal`, what its skel returns for an error that is not a CNI
//! error), so even then stdout holds one error object. Exit status is 0 on
//! success and 1 on any error.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::args::{self, CniArgs};
use crate::config::{self, NetConf};
use crate::error::{CniError, CniResult, Code};
use crate::log::{self, LogSettings};
use crate::types::{is_supported, parse_version, CniOutput, SUPPORTED_VERSIONS};

/// The newest version spoken: the default for VERSION and for errors that
/// happen before negotiation.
pub const LATEST_VERSION: &str = "1.1.0";

/// Printed on stderr when `CNI_COMMAND` is missing (as libcni's "about").
pub const ABOUT: &str = concat!("CNI plugin sluice v", env!("CARGO_PKG_VERSION"));

/// libcni's `ErrInternal`, for a handler that panicked.
const CODE_INTERNAL: u32 = 999;

/// A CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `ADD`.
    Add,
    /// `DEL`.
    Del,
    /// `CHECK`.
    Check,
    /// `GC`.
    Gc,
    /// `STATUS`.
    Status,
    /// `VERSION`.
    Version,
}

impl Command {
    /// Parses the exact (uppercase) spelling, as libcni does.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// The spelling in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }

    /// The oldest config version the command exists in (libcni skel).
    fn min_version(self) -> Option<&'static str> {
        match self {
            Self::Check => Some("0.4.0"),
            Self::Gc | Self::Status => Some("1.1.0"),
            _ => None,
        }
    }

    /// Whether the command concerns one attachment (container + ifname).
    fn is_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated invocation, handed to a [`Commands`] handler.
#[derive(Clone, Debug)]
pub struct Request {
    /// ADD, DEL, CHECK, GC or STATUS (never VERSION).
    pub command: Command,
    /// `CNI_CONTAINERID`, valid (libcni rules); empty for GC and STATUS.
    pub container_id: String,
    /// `CNI_NETNS`: always set for ADD and CHECK, optional for DEL, `None`
    /// for GC and STATUS. Not opened or checked here.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`, a valid interface name; empty for GC and STATUS.
    pub ifname: String,
    /// `CNI_PATH` split on `:`, empty entries dropped.
    pub cni_path: Vec<PathBuf>,
    /// Parsed `CNI_ARGS` (default for GC and STATUS).
    pub args: CniArgs,
    /// The validated network config.
    pub config: NetConf,
    /// The config exactly as received, for delegation (IPAM gets the whole
    /// config, spec section 4).
    pub raw_config: Value,
    /// `prevResult`, parsed (ADD, CHECK, DEL; always set for CHECK).
    pub prev_result: Option<CniOutput>,
    /// The negotiated version; results and errors are written in it.
    pub cni_version: String,
    /// stdin, byte for byte (for a delegate's stdin).
    pub stdin: Vec<u8>,
    /// Every `CNI_*` variable received (non-empty ones), so a delegate gets
    /// "the same environment variables" (spec section 4) even when the
    /// request did not come from the process environment.
    pub cni_env: BTreeMap<String, String>,
}

/// The command handlers. Errors become the spec's error JSON; skel adds
/// nothing to them.
pub trait Commands {
    /// ADD: the result, written by skel in the negotiated version's layout.
    fn add(&self, req: &Request) -> CniResult<CniOutput>;
    /// DEL.
    fn del(&self, req: &Request) -> CniResult<()>;
    /// CHECK (`req.prev_result` is always set).
    fn check(&self, req: &Request) -> CniResult<()>;
    /// GC (`req.config.valid_attachments` is always set).
    fn gc(&self, req: &Request) -> CniResult<()>;
    /// STATUS.
    fn status(&self, req: &Request) -> CniResult<()>;
}

/// The plugin's `main`: reads the process environment and stdin, runs the
/// command, writes stdout, returns the exit status.
pub fn run(handlers: &dyn Commands) -> ExitCode {
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .collect();
    let stdin = read_stdin();
    let out = ProtocolOut::take();
    let (text, code) = execute(
        &env,
        stdin.as_deref().map_err(String::as_str),
        handlers,
        &log::install,
    );
    if let Err(e) = out.write(&text) {
        tracing::error!("cannot write the result to stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::from(code)
}

/// [`run`] without the process: `env` as the environment and `stdin` as
/// stdin. Returns what would go to stdout and the exit status. Installs no
/// logger.
pub fn run_with<I, K, V>(env: I, stdin: &[u8], handlers: &dyn Commands) -> (String, u8)
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let env: HashMap<String, String> = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    execute(&env, Ok(stdin), handlers, &|_| {})
}

/// stdin, or why it could not be read. A terminal counts as empty, so a
/// person running the binary by hand gets an answer instead of a hang.
fn read_stdin() -> Result<Vec<u8>, String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut buf = Vec::new();
    stdin
        .read_to_end(&mut buf)
        .map(|_| buf)
        .map_err(|e| e.to_string())
}

/// The real stdout, set aside while handlers run; fd 1 then points at
/// stderr.
struct ProtocolOut(Option<File>);

impl ProtocolOut {
    fn take() -> Self {
        let Ok(saved) = std::io::stdout().as_fd().try_clone_to_owned() else {
            return Self(None);
        };
        // If this fails fd 1 stays stdout; the saved copy is still right.
        let _ = nix::unistd::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
        Self(Some(File::from(saved)))
    }

    fn write(self, text: &str) -> std::io::Result<()> {
        match self.0 {
            Some(mut f) => {
                f.write_all(text.as_bytes())?;
                f.flush()
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()
            }
        }
    }
}

/// A failure before the handler, with the version to write it in when known.
struct Failure {
    err: CniError,
    version: Option<String>,
}

impl From<CniError> for Failure {
    fn from(err: CniError) -> Self {
        Self { err, version: None }
    }
}

enum Prepared {
    Version(String),
    Request {
        req: Box<Request>,
        log: LogSettings,
        warnings: Vec<String>,
    },
}

fn execute(
    env: &HashMap<String, String>,
    stdin: Result<&[u8], &str>,
    handlers: &dyn Commands,
    install_log: &dyn Fn(&LogSettings),
) -> (String, u8) {
    let getenv = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    // Parsed once here for the error version and best-effort log settings;
    // `prepare` reports the decoding error itself.
    let raw: Option<Value> = stdin.ok().and_then(|b| serde_json::from_slice(b).ok());
    let raw_obj = raw.as_ref().and_then(Value::as_object);

    match prepare(&getenv, stdin, raw_obj) {
        Err(failure) => {
            install_log(&LogSettings::best_effort(raw_obj, &getenv));
            if getenv("CNI_COMMAND").is_none() {
                eprintln!(
                    "{ABOUT}\nCNI protocol versions supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                );
            }
            let version = failure.version.unwrap_or_else(|| {
                raw_obj
                    .and_then(|o| negotiate(o).ok())
                    .unwrap_or_else(|| LATEST_VERSION.to_string())
            });
            tracing::error!(
                command = getenv("CNI_COMMAND").unwrap_or_default(),
                container = getenv("CNI_CONTAINERID").unwrap_or_default(),
                "{}",
                failure.err
            );
            (error_text(&failure.err, &version), 1)
        }
        Ok(Prepared::Version(version)) => {
            let body = json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS});
            (format!("{body}\n"), 0)
        }
        Ok(Prepared::Request { req, log, warnings }) => {
            install_log(&log);
            dispatch(&req, &warnings, handlers)
        }
    }
}

fn dispatch(req: &Request, warnings: &[String], handlers: &dyn Commands) -> (String, u8) {
    let span = tracing::info_span!(
        "sluice",
        cmd = %req.command,
        container = %req.container_id,
        ifname = %req.ifname,
        pid = std::process::id(),
    );
    let _entered = span.enter();
    for w in warnings {
        tracing::warn!("{w}");
    }
    if !req.config.ignored_keys.is_empty() {
        tracing::debug!("ignoring unknown config keys {:?}", req.config.ignored_keys);
    }
    let version = req.cni_version.as_str();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| match req.command {
        Command::Add => handlers.add(req).map(Some),
        Command::Del => handlers.del(req).map(|()| None),
        Command::Check => handlers.check(req).map(|()| None),
        Command::Gc => handlers.gc(req).map(|()| None),
        Command::Status => handlers.status(req).map(|()| None),
        Command::Version => Ok(None),
    }));
    let result = match outcome {
        Ok(r) => r,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("handler panicked: {why}");
            let body = json!({
                "cniVersion": version,
                "code": CODE_INTERNAL,
                "msg": "internal error: the plugin panicked",
                "details": why,
            });
            return (format!("{body}\n"), 1);
        }
    };
    match result.and_then(|out| out.map(|o| o.to_json(version)).transpose()) {
        Ok(Some(body)) => {
            tracing::info!("done");
            (format!("{body}\n"), 0)
        }
        Ok(None) => {
            tracing::info!("done");
            (String::new(), 0)
        }
        Err(e) => {
            tracing::error!("{e}");
            (error_text(&e, version), 1)
        }
    }
}

/// The spec's error object, one line. `msg` is required, so an empty one is
/// replaced by the code.
fn error_text(err: &CniError, version: &str) -> String {
    let mut err = err.clone();
    if err.msg.trim().is_empty() {
        err.msg = format!("error code {}", err.code as u32);
    }
    format!("{}\n", err.to_json(version))
}

fn prepare(
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: Result<&[u8], &str>,
    raw_obj: Option<&Map<String, Value>>,
) -> Result<Prepared, Failure> {
    // 1. The command.
    let Some(cmd) = getenv("CNI_COMMAND") else {
        return Err(missing(&["CNI_COMMAND"]).into());
    };
    let command = Command::parse(&cmd).ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            format!("unknown CNI_COMMAND: {cmd:?}"),
        )
        .with_details("CNI_COMMAND must be one of ADD, DEL, CHECK, GC, STATUS, VERSION")
    })?;
    if command == Command::Version {
        let requested = raw_obj
            .and_then(|o| o.get("cniVersion"))
            .and_then(Value::as_str)
            .filter(|v| parse_version(v).is_ok());
        return Ok(Prepared::Version(
            requested.unwrap_or(LATEST_VERSION).to_string(),
        ));
    }

    // 2. The variables the command needs.
    let attachment = command.is_attachment();
    let needs_netns = matches!(command, Command::Add | Command::Check);
    type Check = fn(&str) -> Option<String>;
    let vars: [(&str, bool, Option<Check>); 4] = [
        ("CNI_CONTAINERID", attachment, Some(container_id_problem)),
        ("CNI_NETNS", needs_netns, None),
        (
            "CNI_IFNAME",
            attachment,
            Some(config::interface_name_problem),
        ),
        ("CNI_PATH", true, None),
    ];
    let mut absent = Vec::new();
    for (name, required, check) in vars {
        match getenv(name) {
            None if required => absent.push(name),
            Some(value) if required => {
                if let Some(why) = check.and_then(|f| f(&value)) {
                    return Err(CniError::env(name, why).into());
                }
            }
            _ => {}
        }
    }
    if !absent.is_empty() {
        return Err(missing(&absent).into());
    }

    // 3. stdin.
    let stdin = stdin.map_err(|e| CniError::io(format!("error reading stdin: {e}")))?;
    let raw: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::decode(format!("error decoding network config: {e}")))?;
    let Some(obj) = raw.as_object() else {
        return Err(
            CniError::decode("error decoding network config: not a JSON object")
                .with_details(format!("got {}", json_kind(&raw)))
                .into(),
        );
    };

    // 4. The version.
    let version = negotiate(obj)?;
    let fail = |err: CniError| Failure {
        err,
        version: Some(version.clone()),
    };

    // 5. The command's minimum version.
    if let Some(min) = command.min_version() {
        if parse_version(&version).map_err(fail)? < parse_version(min).map_err(fail)? {
            return Err(fail(
                CniError::new(
                    Code::IncompatibleVersion,
                    format!("config version does not allow {command}"),
                )
                .with_details(format!(
                    "{command} needs cniVersion {min} or later; config is {version}"
                )),
            ));
        }
    }

    // 6. The network config.
    let config = NetConf::from_json(obj, &version).map_err(fail)?;

    // 7. GC input.
    if command == Command::Gc && config.valid_attachments.is_none() {
        return Err(fail(CniError::config(format!(
            "missing \"{}\" (required for GC)",
            config::VALID_ATTACHMENTS_KEY
        ))));
    }

    // 8. prevResult.
    let mut warnings = Vec::new();
    let prev_result = match obj.get("prevResult").filter(|v| !v.is_null()) {
        Some(v) if attachment => match parse_prev_result(v) {
            Ok(p) => Some(p),
            Err(e) if command == Command::Del => {
                warnings.push(format!("ignoring prevResult on DEL: {e}"));
                None
            }
            Err(e) => return Err(fail(e)),
        },
        _ => None,
    };
    if command == Command::Check && prev_result.is_none() {
        return Err(fail(
            CniError::config("required prevResult missing")
                .with_details("the runtime must pass the result of ADD as prevResult for CHECK"),
        ));
    }

    // 9. CNI_ARGS.
    let cni_args = if attachment {
        CniArgs::parse(&getenv(args::ENV).unwrap_or_default()).map_err(fail)?
    } else {
        CniArgs::default()
    };

    // 10. Log overrides.
    let log =
        LogSettings::resolve(config.log_level, config.log_file.as_deref(), getenv).map_err(fail)?;

    let var = |k: &str| {
        if attachment {
            getenv(k).unwrap_or_default()
        } else {
            String::new()
        }
    };
    let cni_path = getenv("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    let cni_env = [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
        log::ENV_LOG_LEVEL,
        log::ENV_LOG_FILE,
    ]
    .iter()
    .filter_map(|k| Some((k.to_string(), getenv(k)?)))
    .collect();
    let req = Request {
        command,
        container_id: var("CNI_CONTAINERID"),
        netns: if attachment {
            getenv("CNI_NETNS").map(PathBuf::from)
        } else {
            None
        },
        ifname: var("CNI_IFNAME"),
        cni_path,
        args: cni_args,
        config,
        raw_config: raw.clone(),
        prev_result,
        cni_version: version.clone(),
        stdin: stdin.to_vec(),
        cni_env,
    };
    Ok(Prepared::Request {
        req: Box::new(req),
        log,
        warnings,
    })
}

/// Code 4 naming every missing variable (libcni's message).
fn missing(names: &[&str]) -> CniError {
    CniError::new(
        Code::InvalidEnvironment,
        format!("required env variables [{}] missing", names.join(",")),
    )
}

/// libcni `ValidateContainerID` (emptiness is "missing", checked before).
fn container_id_problem(id: &str) -> Option<String> {
    (!config::is_cni_name(id)).then(|| {
        format!(
            "invalid characters in containerID {id:?}: must start with a letter or digit, \
             followed by letters, digits, '_', '.' or '-'"
        )
    })
}

/// The version to speak: see the module comment, step 4.
fn negotiate(obj: &Map<String, Value>) -> CniResult<String> {
    let requested = match obj.get("cniVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(CniError::decode(format!(
                "error decoding version from network config: cniVersion must be a string, got {}",
                json_kind(other)
            )))
        }
    };
    let listed: Option<Vec<&str>> = match obj.get("cniVersions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) if parse_version(s).is_ok() => Ok(s.as_str()),
                    other => Err(CniError::decode(format!(
                        "error decoding version from network config: invalid cniVersions entry {other} at index {i}"
                    ))),
                })
                .collect::<CniResult<_>>()?,
        ),
        Some(other) => {
            return Err(CniError::decode(format!(
                "error decoding version from network config: cniVersions must be a list of strings, got {}",
                json_kind(other)
            )))
        }
    };
    let chosen = match &listed {
        None => requested.filter(|v| is_supported(v)),
        Some(list) => list
            .iter()
            .copied()
            .chain(requested)
            .filter(|v| is_supported(v))
            .max_by_key(|v| parse_version(v).unwrap_or_default()),
    };
    chosen.map(str::to_string).ok_or_else(|| {
        let asked = match (requested, &listed) {
            (Some(v), None) => format!("config is {v:?}"),
            (None, None) => "config has no cniVersion".to_string(),
            (v, Some(list)) => format!("config is {:?} with cniVersions {list:?}", v.unwrap_or("")),
        };
        CniError::new(Code::IncompatibleVersion, "incompatible CNI versions")
            .with_details(format!("{asked}, plugin supports {SUPPORTED_VERSIONS:?}"))
    })
}

/// `prevResult`: code 6 when it is not a result, 7 when an address points at
/// an interface the result does not list.
fn parse_prev_result(v: &Value) -> CniResult<CniOutput> {
    if !v.is_object() {
        return Err(CniError::decode("invalid prevResult: not a JSON object")
            .with_details(format!("got {}", json_kind(v))));
    }
    let prev = CniOutput::from_json(v)
        .map_err(|e| CniError::decode("invalid prevResult").with_details(e.to_string()))?;
    for (i, ip) in prev.ips.iter().enumerate() {
        if let Some(idx) = ip.interface {
            if idx >= prev.interfaces.len() {
                return Err(CniError::config(format!(
                    "invalid prevResult.ips[{i}].interface: {idx}"
                ))
                .with_details(format!(
                    "the index must point into prevResult.interfaces, which has {} entries",
                    prev.interfaces.len()
                )));
            }
        }
    }
    Ok(prev)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Interface, IpConfig, Route};
    use std::cell::RefCell;

    /// Records each request and answers with a fixed result or error.
    #[derive(Default)]
    struct Fixed {
        result: CniOutput,
        error: Option<CniError>,
        panic: bool,
        seen: RefCell<Vec<Request>>,
    }

    impl Fixed {
        fn answer(&self, req: &Request) -> CniResult<()> {
            self.seen.borrow_mut().push(req.clone());
            if self.panic {
                panic!("boom");
            }
            self.error.clone().map_or(Ok(()), Err)
        }
        fn last(&self) -> Request {
            self.seen
                .borrow()
                .last()
                .cloned()
                .expect("handler was not called")
        }
    }

    impl Commands for Fixed {
        fn add(&self, req: &Request) -> CniResult<CniOutput> {
            self.answer(req).map(|()| self.result.clone())
        }
        fn del(&self, req: &Request) -> CniResult<()> {
            self.answer(req)
        }
        fn check(&self, req: &Request) -> CniResult<()> {
            self.answer(req)
        }
        fn gc(&self, req: &Request) -> CniResult<()> {
            self.answer(req)
        }
        fn status(&self, req: &Request) -> CniResult<()> {
            self.answer(req)
        }
    }

    fn sample() -> CniOutput {
        CniOutput {
            interfaces: vec![
                Interface {
                    name: "veth1234".into(),
                    mac: Some("0a:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/p1".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.22.0.5/24".parse().unwrap(),
                    gateway: Some("10.22.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Default::default(),
        }
    }

    fn env(cmd: &str) -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ctr-1"),
            ("CNI_NETNS", "/var/run/netns/p1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
            ("HOME", "/root"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn without(mut env: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
        env.retain(|(k, _)| k != key);
        env
    }

    fn set(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
        env
    }

    fn conf(version: &str) -> String {
        json!({"cniVersion": version, "name": "net1", "type": "sluice"}).to_string()
    }

    fn run_json(env: Vec<(String, String)>, stdin: &str, h: &Fixed) -> (Value, u8) {
        let (out, code) = run_with(env, stdin.as_bytes(), h);
        assert!(out.ends_with('\n'), "{out:?}");
        assert_eq!(out.trim_end().lines().count(), 1, "{out:?}");
        (serde_json::from_str(&out).unwrap(), code)
    }

    fn error_code(v: &Value) -> u64 {
        v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("not an error: {v}"))
    }

    #[test]
    fn add_result_in_each_version_layout() {
        let h = Fixed {
            result: sample(),
            ..Default::default()
        };
        for version in SUPPORTED_VERSIONS {
            let (v, code) = run_json(env("ADD"), &conf(version), &h);
            assert_eq!(code, 0, "{version}: {v}");
            assert_eq!(v["cniVersion"], version);
            assert_eq!(v, sample().to_json(version).unwrap(), "{version}");
            let old = parse_version(version).unwrap() < (1, 0, 0);
            assert_eq!(v["ips"][0].get("version").is_some(), old, "{version}");
            assert_eq!(
                v["ips"][1]["version"].as_str(),
                old.then_some("6"),
                "{version}"
            );
            let v11 = version == "1.1.0";
            assert_eq!(v["interfaces"][0].get("mtu").is_some(), v11, "{version}");
            assert_eq!(v["routes"][0].get("mtu").is_some(), v11, "{version}");
        }
    }

    #[test]
    fn request_carries_everything() {
        let h = Fixed::default();
        let stdin = json!({
            "cniVersion": "1.0.0", "name": "net1", "type": "sluice", "mode": "bridge",
            "ipam": {"type": "sluice-ipam", "subnet": "10.22.0.0/24"},
            "prevResult": sample().to_json("1.0.0").unwrap(),
            "someOtherKey": {"kept": true}
        })
        .to_string();
        let e = set(
            env("ADD"),
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;FOO=1",
        );
        let (v, code) = run_json(e, &stdin, &h);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v, CniOutput::default().to_json("1.0.0").unwrap());
        let req = h.last();
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.container_id, "ctr-1");
        assert_eq!(req.netns, Some(PathBuf::from("/var/run/netns/p1")));
        assert_eq!(req.ifname, "eth0");
        assert_eq!(
            req.cni_path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(req.args.k8s_pod_namespace.as_deref(), Some("ns"));
        assert_eq!(req.args.k8s_pod_name.as_deref(), Some("web"));
        assert_eq!(req.cni_version, "1.0.0");
        assert_eq!(req.config.name, "net1");
        assert_eq!(req.config.mode.as_str(), "bridge");
        assert_eq!(req.config.ignored_keys, vec!["someOtherKey".to_string()]);
        assert_eq!(req.raw_config["someOtherKey"]["kept"], true);
        assert_eq!(req.stdin, stdin.as_bytes());
        assert_eq!(
            req.cni_env.get("CNI_COMMAND").map(String::as_str),
            Some("ADD")
        );
        assert!(!req.cni_env.contains_key("HOME"));
        let prev = req.prev_result.unwrap();
        assert_eq!(prev.ips, sample().ips);
    }

    #[test]
    fn success_without_result_prints_nothing() {
        let h = Fixed::default();
        for (cmd, stdin) in [
            ("DEL", conf("0.3.1")),
            ("GC", json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice", "cni.dev/valid-attachments": []}).to_string()),
            ("STATUS", conf("1.1.0")),
        ] {
            let (out, code) = run_with(env(cmd), stdin.as_bytes(), &h);
            assert_eq!((out.as_str(), code), ("", 0), "{cmd}");
        }
        let check = json!({"cniVersion": "0.4.0", "name": "n", "type": "sluice", "prevResult": sample().to_json("0.4.0").unwrap()});
        let (out, code) = run_with(env("CHECK"), check.to_string().as_bytes(), &h);
        assert_eq!((out.as_str(), code), ("", 0));
        assert!(h.last().prev_result.is_some());
    }

    #[test]
    fn handler_errors_are_written_in_the_negotiated_version() {
        let h = Fixed {
            error: Some(
                CniError::new(Code::TryAgainLater, "agent not ready").with_details("no pins"),
            ),
            ..Default::default()
        };
        let (v, code) = run_json(env("ADD"), &conf("0.4.0"), &h);
        assert_eq!(code, 1);
        assert_eq!(
            v,
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "agent not ready", "details": "no pins"})
        );
        let h = Fixed {
            error: Some(CniError::new(Code::Kernel, "")),
            ..Default::default()
        };
        let (v, _) = run_json(env("DEL"), &conf("1.0.0"), &h);
        assert_eq!(v["msg"], "error code 100");
    }

    #[test]
    fn a_panicking_handler_still_answers_with_one_error_object() {
        let h = Fixed {
            panic: true,
            ..Default::default()
        };
        let (v, code) = run_json(env("ADD"), &conf("1.1.0"), &h);
        assert_eq!(code, 1);
        assert_eq!(error_code(&v), 999);
        assert_eq!(v["details"], "boom");
    }

    #[test]
    fn version_echoes_the_request_and_tolerates_any_stdin() {
        let h = Fixed::default();
        let e = vec![("CNI_COMMAND".to_string(), "VERSION".to_string())];
        for (stdin, expect) in [
            ("", LATEST_VERSION),
            ("not json", LATEST_VERSION),
            ("{}", LATEST_VERSION),
            ("{\"cniVersion\": \"0.3.1\"}", "0.3.1"),
            ("{\"cniVersion\": \"0.2.0\"}", "0.2.0"),
            ("{\"cniVersion\": \"x\"}", LATEST_VERSION),
        ] {
            let (v, code) = run_json(e.clone(), stdin, &h);
            assert_eq!(code, 0);
            assert_eq!(v["cniVersion"], expect, "{stdin}");
            assert_eq!(v["supportedVersions"], json!(SUPPORTED_VERSIONS));
        }
        assert!(h.seen.borrow().is_empty());
    }

    #[test]
    fn negotiation_with_cni_versions() {
        let pick = |v: Value| negotiate(v.as_object().unwrap());
        assert_eq!(
            pick(json!({"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "0.3.1"]})).unwrap(),
            "1.0.0"
        );
        assert_eq!(
            pick(json!({"cniVersions": ["9.0.0", "0.4.0", "1.1.0"]})).unwrap(),
            "1.1.0"
        );
        assert_eq!(
            pick(json!({"cniVersion": "2.0.0", "cniVersions": ["0.3.0"]})).unwrap(),
            "0.3.0"
        );
        assert_eq!(
            pick(json!({"cniVersion": "1.1.0", "cniVersions": []})).unwrap(),
            "1.1.0"
        );
        assert_eq!(
            pick(json!({"cniVersions": ["0.2.0"]})).unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            pick(json!({"cniVersions": ["1.0.x"]})).unwrap_err().code,
            Code::DecodingFailure
        );
        assert_eq!(
            pick(json!({"cniVersions": "1.0.0"})).unwrap_err().code,
            Code::DecodingFailure
        );
        assert_eq!(
            pick(json!({"cniVersion": 1})).unwrap_err().code,
            Code::DecodingFailure
        );
        let e = pick(json!({"cniVersion": "0.2.0"})).unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion);
        for v in SUPPORTED_VERSIONS {
            assert!(e.details.contains(v), "{}", e.details);
        }
        assert_eq!(pick(json!({})).unwrap_err().code, Code::IncompatibleVersion);
    }

    #[test]
    fn command_minimum_versions() {
        let h = Fixed::default();
        let prev = sample().to_json("0.3.1").unwrap();
        let check =
            json!({"cniVersion": "0.3.1", "name": "n", "type": "sluice", "prevResult": prev});
        let (v, _) = run_json(env("CHECK"), &check.to_string(), &h);
        assert_eq!(error_code(&v), 1);
        for cmd in ["GC", "STATUS"] {
            let (v, _) = run_json(env(cmd), &conf("1.0.0"), &h);
            assert_eq!(error_code(&v), 1, "{cmd}");
            assert_eq!(v["cniVersion"], "1.0.0");
        }
        // cniVersions lifts the request to 1.1.0, which allows GC.
        let gc = json!({"cniVersion": "1.0.0", "cniVersions": ["1.1.0"], "name": "n", "type": "sluice", "cni.dev/valid-attachments": []});
        let (out, code) = run_with(env("GC"), gc.to_string().as_bytes(), &h);
        assert_eq!((out.as_str(), code), ("", 0));
        assert!(h.seen.borrow().len() == 1);
    }

    #[test]
    fn gc_and_status_need_only_command_and_path() {
        let h = Fixed::default();
        let only = vec![
            ("CNI_COMMAND".to_string(), "STATUS".to_string()),
            ("CNI_PATH".to_string(), "/opt/cni/bin".to_string()),
        ];
        let (out, code) = run_with(only, conf("1.1.0").as_bytes(), &h);
        assert_eq!((out.as_str(), code), ("", 0));
        let req = h.last();
        assert_eq!(
            (
                req.container_id.as_str(),
                req.ifname.as_str(),
                req.netns.clone()
            ),
            ("", "", None)
        );
        // An invalid container id is not looked at for GC (libcni validates
        // only the variables a command requires).
        let e = set(env("GC"), "CNI_CONTAINERID", "-bad");
        let gc = json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice", "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]});
        let (out, code) = run_with(e, gc.to_string().as_bytes(), &h);
        assert_eq!((out.as_str(), code), ("", 0));
        assert_eq!(h.last().config.valid_attachments.unwrap().len(), 1);
        let (v, _) = run_json(env("GC"), &conf("1.1.0"), &h);
        assert_eq!(error_code(&v), 7);
        let (v, _) = run_json(without(env("STATUS"), "CNI_PATH"), &conf("1.1.0"), &h);
        assert_eq!(error_code(&v), 4);
    }

    #[test]
    fn del_without_netns_and_with_a_broken_prev_result_reaches_the_handler() {
        let h = Fixed::default();
        let stdin = json!({"cniVersion": "1.0.0", "name": "n", "type": "sluice", "prevResult": {"ips": [{"address": "bad"}]}});
        let (out, code) = run_with(
            without(env("DEL"), "CNI_NETNS"),
            stdin.to_string().as_bytes(),
            &h,
        );
        assert_eq!((out.as_str(), code), ("", 0));
        let req = h.last();
        assert_eq!(req.netns, None);
        assert_eq!(req.prev_result, None);
        // The same prevResult fails ADD.
        let (v, _) = run_json(env("ADD"), &stdin.to_string(), &h);
        assert_eq!(error_code(&v), 6);
    }

    #[test]
    fn env_errors() {
        let h = Fixed::default();
        let c = conf("1.0.0");
        let (v, code) = run_json(
            without(without(env("ADD"), "CNI_NETNS"), "CNI_PATH"),
            &c,
            &h,
        );
        assert_eq!(code, 1);
        assert_eq!(error_code(&v), 4);
        assert_eq!(
            v["msg"],
            "required env variables [CNI_NETNS,CNI_PATH] missing"
        );
        assert_eq!(v["cniVersion"], "1.0.0", "the version stdin asked for");
        let (v, _) = run_json(set(env("ADD"), "CNI_IFNAME", "eth0:1"), &c, &h);
        assert_eq!(error_code(&v), 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_IFNAME"));
        let (v, _) = run_json(set(env("ADD"), "CNI_COMMAND", "add"), &c, &h);
        assert_eq!(error_code(&v), 4);
        let (v, _) = run_json(set(env("ADD"), "CNI_LOG_LEVEL", "verbose"), &c, &h);
        assert_eq!(error_code(&v), 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_LOG_LEVEL"));
        assert!(h.seen.borrow().is_empty());
    }

    #[test]
    fn stdin_read_error_is_code_5() {
        let h = Fixed::default();
        let e: HashMap<String, String> = env("ADD").into_iter().collect();
        let (out, code) = execute(&e, Err("broken pipe"), &h, &|_| {});
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((error_code(&v), code), (5, 1));
    }
}
