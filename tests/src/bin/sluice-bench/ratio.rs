//! One line of the suite's summary: a measurement of Sluice (or of the path
//! under test) divided by a baseline measured in the same run. Every group
//! returns its ratios; `summary` turns them into `bench/results/summary.*`
//! (JSON, Markdown and the PNG chart).

use serde_json::{json, Value};

/// Which way a ratio is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Throughput-like: higher is better; a target is a floor.
    Higher,
    /// Latency/cost-like: lower is better; a target is a ceiling.
    Lower,
}

/// A ratio against a same-run baseline.
#[derive(Clone, Debug)]
pub struct Ratio {
    /// Group that measured it (`net`, `xdp`, `cni`, ...).
    pub group: &'static str,
    /// What was measured, e.g. `TCP stream, 1 stream, sluice routed`.
    pub name: String,
    /// The baseline it is divided by, e.g. `bare veth pair`.
    pub baseline: String,
    /// measured / baseline.
    pub value: f64,
    pub better: Better,
    /// The target for this ratio, if it has one.
    pub target: Option<f64>,
}

impl Ratio {
    /// Whether the target is met (`None` when there is no target).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| match self.better {
            Better::Higher => self.value >= t,
            Better::Lower => self.value <= t,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "group": self.group,
            "name": self.name,
            "baseline": self.baseline,
            "ratio": self.value,
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "target": self.target,
            "met": self.met(),
        })
    }
}
