//! Counters and latency histograms, and their summaries.
//!
//! Each queue thread records into its own [`PhaseStats`]; the run merges
//! them afterwards, so recording never synchronises.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::Op;

/// Highest latency the histograms resolve: ten minutes, in nanoseconds.
/// Slower completions are recorded as this value.
const MAX_LATENCY_NS: u64 = 600_000_000_000;

/// Counts and latencies of one operation kind.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// Completion latency in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl OpStats {
    /// Empty counters.
    pub fn new() -> Result<Self> {
        Ok(OpStats {
            ios: 0,
            bytes: 0,
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .context("creating the latency histogram")?,
        })
    }

    /// Records one completed I/O.
    pub fn record(&mut self, bytes: u64, latency: Duration) {
        self.ios += 1;
        self.bytes += bytes;
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.saturating_record(ns.max(1));
    }

    /// Adds another set of counters to this one.
    pub fn merge(&mut self, other: &OpStats) -> Result<()> {
        self.ios += other.ios;
        self.bytes += other.bytes;
        self.latency_ns
            .add(&other.latency_ns)
            .context("merging latency histograms")
    }

    /// Summarises the counters over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> OpSummary {
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = self.latency_ns.is_empty();
        let quantile = |q: f64| {
            if empty {
                0.0
            } else {
                us(self.latency_ns.value_at_quantile(q))
            }
        };
        OpSummary {
            ios: self.ios,
            bytes: self.bytes,
            iops: self.ios as f64 / secs,
            mib_per_s: self.bytes as f64 / secs / f64::from(1u32 << 20),
            latency_us: LatencySummary {
                mean: if empty {
                    0.0
                } else {
                    self.latency_ns.mean() / 1000.0
                },
                p50: quantile(0.5),
                p99: quantile(0.99),
                p99_9: quantile(0.999),
                max: if empty {
                    0.0
                } else {
                    us(self.latency_ns.max())
                },
            },
        }
    }
}

/// Everything one queue (or, merged, the whole run) measured in one phase.
#[derive(Clone, Debug)]
pub struct PhaseStats {
    /// Reads.
    pub read: OpStats,
    /// Writes.
    pub write: OpStats,
    /// When the first I/O was submitted.
    pub started: Instant,
    /// When the last I/O completed.
    pub finished: Instant,
}

impl PhaseStats {
    /// Empty counters starting now.
    pub fn new() -> Result<Self> {
        let now = Instant::now();
        Ok(PhaseStats {
            read: OpStats::new()?,
            write: OpStats::new()?,
            started: now,
            finished: now,
        })
    }

    /// The counters of one operation kind.
    pub fn op_mut(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Read => &mut self.read,
            Op::Write => &mut self.write,
        }
    }

    /// Adds another queue's counters; the time span becomes the union.
    pub fn merge(&mut self, other: &PhaseStats) -> Result<()> {
        self.read.merge(&other.read)?;
        self.write.merge(&other.write)?;
        self.started = self.started.min(other.started);
        self.finished = self.finished.max(other.finished);
        Ok(())
    }

    /// Wall time from the first submission to the last completion.
    pub fn elapsed(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }

    /// Summarises the phase.
    pub fn summary(&self, phase: &str) -> Result<PhaseSummary> {
        PhaseSummary::new(phase, &self.read, &self.write, self.elapsed())
    }
}

/// Latency figures in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Maximum.
    pub max: f64,
}

/// Throughput and latency of one operation kind (or all of them).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OpSummary {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Throughput in MiB/s.
    pub mib_per_s: f64,
    /// Completion latency.
    pub latency_us: LatencySummary,
}

/// The summary of one phase of a run (the measured workload, or one pass of
/// `--verify`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseSummary {
    /// `workload`, `verify-write` or `verify-read`.
    pub phase: String,
    /// Seconds from first submission to last completion.
    pub elapsed_s: f64,
    /// Reads and writes together.
    pub total: OpSummary,
    /// Reads alone, if there were any.
    pub read: Option<OpSummary>,
    /// Writes alone, if there were any.
    pub write: Option<OpSummary>,
}

impl PhaseSummary {
    /// Summarises the reads and writes of `phase`, measured over `elapsed`.
    pub fn new(phase: &str, read: &OpStats, write: &OpStats, elapsed: Duration) -> Result<Self> {
        let mut total = read.clone();
        total.merge(write)?;
        let part = |s: &OpStats| (s.ios > 0).then(|| s.summary(elapsed));
        Ok(PhaseSummary {
            phase: phase.to_string(),
            elapsed_s: elapsed.as_secs_f64(),
            total: total.summary(elapsed),
            read: part(read),
            write: part(write),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_computes_rates_and_percentiles() {
        let mut s = OpStats::new().unwrap();
        for i in 1..=1000u64 {
            s.record(4096, Duration::from_micros(i));
        }
        let sum = s.summary(Duration::from_secs(2));
        assert_eq!(sum.ios, 1000);
        assert!((sum.iops - 500.0).abs() < 1e-9);
        assert!((sum.mib_per_s - 1000.0 * 4096.0 / 2.0 / 1048576.0).abs() < 1e-9);
        assert!(
            (sum.latency_us.p50 - 500.0).abs() < 1.0,
            "{}",
            sum.latency_us.p50
        );
        assert!(
            (sum.latency_us.p99 - 990.0).abs() < 1.0,
            "{}",
            sum.latency_us.p99
        );
        assert!(sum.latency_us.max >= 999.0);
    }

    #[test]
    fn merge_adds_counts_and_spans() {
        let mut a = PhaseStats::new().unwrap();
        let mut b = PhaseStats::new().unwrap();
        a.op_mut(Op::Read).record(512, Duration::from_micros(10));
        b.op_mut(Op::Write).record(512, Duration::from_micros(20));
        b.finished = b.started + Duration::from_secs(1);
        a.merge(&b).unwrap();
        let sum = a.summary("workload").unwrap();
        assert_eq!(sum.total.ios, 2);
        assert!(sum.read.is_some() && sum.write.is_some());
        assert!(sum.elapsed_s >= 1.0);
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = PhaseStats::new().unwrap().summary("workload").unwrap();
        assert_eq!(s.total.ios, 0);
        assert_eq!(s.total.latency_us.p99, 0.0);
        assert!(s.read.is_none());
    }
}
