//! Logging for the plugin binary: to stderr, or appended to `logFile`, never
//! to stdout (stdout belongs to the CNI protocol; see `skel.rs`).
//!
//! The level and file come from the network config (`logLevel`, `logFile`)
//! and are overridden by the environment (`CNI_LOG_LEVEL`, `CNI_LOG_FILE`),
//! so an operator can turn on debug logs for one runtime without editing the
//! conflist.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::error::{CniError, CniResult};

/// Environment variable that overrides `logLevel`.
pub const ENV_LOG_LEVEL: &str = "CNI_LOG_LEVEL";
/// Environment variable that overrides `logFile`.
pub const ENV_LOG_FILE: &str = "CNI_LOG_FILE";

/// How much the plugin logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// One line per operation and its main steps (default).
    #[default]
    Info,
    /// Everything, including each netlink/BPF step.
    Debug,
}

impl LogLevel {
    /// The spelling used in the config and `CNI_LOG_LEVEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
        }
    }

    fn to_tracing(self) -> tracing::Level {
        match self {
            Self::Error => tracing::Level::ERROR,
            Self::Warn => tracing::Level::WARN,
            Self::Info => tracing::Level::INFO,
            Self::Debug => tracing::Level::DEBUG,
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = String;

    /// Exactly `error`, `warn`, `info` or `debug` (lowercase, as documented).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            _ => Err(format!(
                "{s:?} is not a log level; use \"error\", \"warn\", \"info\" or \"debug\""
            )),
        }
    }
}

/// Where logs go and how much.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// Maximum level written.
    pub level: LogLevel,
    /// File appended to; stderr when `None`.
    pub file: Option<PathBuf>,
}

impl LogSettings {
    /// The config's settings with the environment's overrides applied. An
    /// invalid `CNI_LOG_LEVEL`, or a relative `CNI_LOG_FILE`, is code 4
    /// naming the variable. `env` looks a variable up; empty counts as unset.
    pub fn resolve(
        conf_level: LogLevel,
        conf_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> CniResult<Self> {
        let level = match env(ENV_LOG_LEVEL) {
            Some(v) => v.parse().map_err(|why| CniError::env(ENV_LOG_LEVEL, why))?,
            None => conf_level,
        };
        let file = match env(ENV_LOG_FILE) {
            Some(v) => {
                let p = PathBuf::from(&v);
                if !p.is_absolute() {
                    return Err(CniError::env(
                        ENV_LOG_FILE,
                        format!("{v:?} is not an absolute path"),
                    ));
                }
                Some(p)
            }
            None => conf_file.map(Path::to_path_buf),
        };
        Ok(Self { level, file })
    }

    /// Best effort, for when the config (or the environment) failed to
    /// validate: whatever of `logLevel`/`logFile` and the overrides is usable,
    /// so that the error itself still reaches the configured log.
    pub fn best_effort(
        raw: Option<&Map<String, Value>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let conf_level = raw
            .and_then(|o| o.get("logLevel"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let conf_file = raw
            .and_then(|o| o.get("logFile"))
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        let level = env(ENV_LOG_LEVEL)
            .and_then(|v| v.parse().ok())
            .unwrap_or(conf_level);
        let file = env(ENV_LOG_FILE)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or(conf_file);
        Self { level, file }
    }
}

/// Installs the process-wide subscriber (once; later calls do nothing) and
/// bridges `log` records from dependencies (netlink crates) into it. When the
/// log file cannot be opened the logs go to stderr and a warning says why:
/// an unwritable log must not fail a pod's networking.
pub fn install(settings: &LogSettings) {
    let mut fallback = None;
    let writer = match &settings.file {
        Some(path) => match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
        {
            Ok(file) => BoxMakeWriter::new(Mutex::new(file)),
            Err(e) => {
                fallback = Some(format!(
                    "cannot open log file {}: {e}; logging to stderr",
                    path.display()
                ));
                BoxMakeWriter::new(std::io::stderr)
            }
        },
        None => BoxMakeWriter::new(std::io::stderr),
    };
    // try_init fails only when a subscriber is already installed (a second
    // call in the same process); keeping the first one is what we want.
    let _ = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_max_level(settings.level.to_tracing())
        .try_init();
    if let Some(why) = fallback {
        tracing::warn!("{why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_overrides_conf() {
        let s = LogSettings::resolve(
            LogLevel::Warn,
            Some(Path::new("/var/log/a.log")),
            &env_of(&[(ENV_LOG_LEVEL, "debug"), (ENV_LOG_FILE, "/tmp/b.log")]),
        )
        .unwrap();
        assert_eq!(s.level, LogLevel::Debug);
        assert_eq!(s.file.as_deref(), Some(Path::new("/tmp/b.log")));
        let s = LogSettings::resolve(LogLevel::Warn, None, &env_of(&[])).unwrap();
        assert_eq!(
            s,
            LogSettings {
                level: LogLevel::Warn,
                file: None
            }
        );
    }

    #[test]
    fn bad_env_is_code_4_naming_the_variable() {
        let e = LogSettings::resolve(LogLevel::Info, None, &env_of(&[(ENV_LOG_LEVEL, "loud")]))
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains(ENV_LOG_LEVEL));
        let e = LogSettings::resolve(LogLevel::Info, None, &env_of(&[(ENV_LOG_FILE, "rel.log")]))
            .unwrap_err();
        assert!(e.msg.contains(ENV_LOG_FILE));
    }

    #[test]
    fn best_effort_skips_what_is_invalid() {
        let raw = serde_json::json!({"logLevel": "debug", "logFile": "relative"});
        let s = LogSettings::best_effort(raw.as_object(), &env_of(&[(ENV_LOG_LEVEL, "nope")]));
        assert_eq!(
            s,
            LogSettings {
                level: LogLevel::Debug,
                file: None
            }
        );
    }
}
