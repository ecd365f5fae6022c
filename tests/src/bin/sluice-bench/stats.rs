//! Latency samples and their summary.

use serde_json::{json, Value};

/// Summary of a set of latencies, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (milliseconds); `None` when there are none.
    /// Percentiles are nearest-rank: p99 of 200 samples is the 198th
    /// smallest, of 50 samples the largest.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = |p: f64| -> f64 {
            let r = ((p / 100.0) * n as f64).ceil() as usize;
            sorted[r.clamp(1, n) - 1]
        };
        Some(Self {
            n,
            p50: rank(50.0),
            p99: rank(99.0),
            mean: sorted.iter().sum::<f64>() / n as f64,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": round(self.p50),
            "p99_ms": round(self.p99),
            "mean_ms": round(self.mean),
            "min_ms": round(self.min),
            "max_ms": round(self.max),
        })
    }
}

/// Three decimals (microseconds) are plenty for milliseconds.
pub fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `12.3 ms` with precision that suits the size.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<f64> = (1..=200).map(f64::from).collect();
        let sum = Summary::of(&s).unwrap();
        assert_eq!(sum.p50, 100.0);
        assert_eq!(sum.p99, 198.0);
        assert_eq!(sum.mean, 100.5);
        let s: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(Summary::of(&s).unwrap().p99, 50.0);
        assert_eq!(Summary::of(&[]), None);
    }
}
