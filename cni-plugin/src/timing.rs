//! Step timings at debug level: `logLevel: debug` shows where a verb spent
//! its time (how the ADD/DEL latency in `cargo xtask bench` was broken
//! down).

use std::time::Instant;

/// Logs the time since the previous step (and since the start) at debug
/// level.
pub struct StepTimer {
    verb: &'static str,
    started: Instant,
    last: Instant,
}

impl StepTimer {
    /// Starts timing `verb`.
    pub fn start(verb: &'static str) -> Self {
        let now = Instant::now();
        Self {
            verb,
            started: now,
            last: now,
        }
    }

    /// Ends the step `name`.
    pub fn step(&mut self, name: &str) {
        let now = Instant::now();
        tracing::debug!(
            "{} step {name}: {:.3} ms (total {:.3} ms)",
            self.verb,
            (now - self.last).as_secs_f64() * 1000.0,
            (now - self.started).as_secs_f64() * 1000.0
        );
        self.last = now;
    }
}
