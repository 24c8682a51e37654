//! Output: the human-readable report, the comparison table with ratios, and
//! the JSON documents behind both.

use std::fmt::Write as _;

use serde::Serialize;

use super::aggregate::{PhaseSpread, RoundFigures};
use super::compare::TargetOutcome;
use super::run::TargetRun;
use super::size::format_size;
use super::stats::{OpSummary, PhaseSummary};
use super::workload::{Limit, WorkloadSpec};

/// The workload settings as printed and serialised.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSummary {
    /// `randread`, `randwrite`, `read`, `write` or `randrw`.
    pub workload: &'static str,
    /// Bytes per I/O.
    pub block_size: u64,
    /// I/Os in flight per queue.
    pub iodepth: usize,
    /// Number of queues (threads).
    pub queues: usize,
    /// Percentage of reads, for `randrw`.
    pub rwmix_read: Option<u8>,
    /// Bytes of the device used, if limited by `--size`.
    pub size: Option<u64>,
    /// Run time limit in seconds, if any.
    pub runtime_s: Option<f64>,
    /// I/O count limit, if any.
    pub ios: Option<u64>,
    /// Data pattern of writes (not used by `--verify`).
    pub pattern: &'static str,
    /// Distinct blocks of the `dup` pattern.
    pub dup_blocks: Option<usize>,
    /// The passes of a verification run (`both`, `write`, `read`), if it
    /// was one.
    pub verify: Option<&'static str>,
    /// The seed, in hex: offsets, data and verification generation.
    pub seed: String,
}

impl WorkloadSummary {
    /// Summarises a workload spec.
    pub fn new(spec: &WorkloadSpec) -> Self {
        let (runtime_s, ios) = match spec.limit {
            Limit::Runtime(d) => (Some(d.as_secs_f64()), None),
            Limit::Ios(n) => (None, Some(n)),
        };
        let verify = spec.verify.is_some();
        let writes = spec.has_writes() && !verify;
        WorkloadSummary {
            workload: spec.workload.name(),
            block_size: spec.block_size,
            iodepth: spec.iodepth,
            queues: spec.queues,
            rwmix_read: (spec.workload == super::workload::Workload::Randrw)
                .then_some(spec.rwmix_read),
            size: spec.size,
            runtime_s: if verify { None } else { runtime_s },
            ios: if verify { None } else { ios },
            pattern: spec.pattern.name(),
            dup_blocks: (writes && spec.pattern == super::pattern::Pattern::Dup)
                .then_some(spec.dup_blocks),
            verify: spec.verify.map(|v| v.name()),
            seed: format!("{:#018x}", spec.seed),
        }
    }

    /// One line describing the workload.
    pub fn line(&self) -> String {
        let mut out = format!(
            "{} bs={} iodepth={} queues={}",
            self.workload,
            format_size(self.block_size),
            self.iodepth,
            self.queues
        );
        if let Some(mix) = self.rwmix_read {
            let _ = write!(out, " rwmix-read={mix}%");
        }
        if let Some(size) = self.size {
            let _ = write!(out, " size={}", format_size(size));
        }
        if let Some(secs) = self.runtime_s {
            let _ = write!(out, " runtime={secs}s");
        }
        if let Some(ios) = self.ios {
            let _ = write!(out, " ios={ios}");
        }
        if let Some(passes) = self.verify {
            let _ = write!(out, " verify={passes}");
        } else if self.workload != "randread" && self.workload != "read" {
            let _ = write!(out, " pattern={}", self.pattern);
            if let Some(n) = self.dup_blocks {
                let _ = write!(out, " dup-blocks={n}");
            }
        }
        let _ = write!(out, " seed={}", self.seed);
        out
    }
}

/// The JSON document of `strata-bench run --json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The workload settings.
    pub workload: WorkloadSummary,
    /// The results.
    pub result: TargetRun,
}

/// Ratios of one target's figures to the baseline's, for one phase.
/// Above 1 means more (IOPS) or slower (latency) than the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRatios {
    /// The phase compared.
    pub phase: String,
    /// IOPS / baseline IOPS.
    pub iops: Option<f64>,
    /// MiB/s / baseline MiB/s.
    pub mib_per_s: Option<f64>,
    /// Median latency / baseline median latency.
    pub p50: Option<f64>,
    /// p99 latency / baseline p99 latency.
    pub p99: Option<f64>,
    /// p99.9 latency / baseline p99.9 latency.
    pub p99_9: Option<f64>,
}

/// One target in a comparison: its results or why it failed.
#[derive(Clone, Debug, Serialize)]
pub struct CompareEntry {
    /// The target's name.
    pub name: String,
    /// The target spec.
    pub target: String,
    /// The results over all rounds, if it ran.
    pub result: Option<TargetRun>,
    /// The error, if it did not.
    pub error: Option<String>,
    /// Ratios against the baseline, one per phase (empty if either failed).
    pub ratios: Vec<PhaseRatios>,
    /// The lowest and highest per-round IOPS, one per phase.
    pub spread: Vec<PhaseSpread>,
    /// The figures of each round the target completed.
    pub rounds: Vec<RoundFigures>,
}

/// The JSON document of `strata-bench compare --json`.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// The workload settings.
    pub workload: WorkloadSummary,
    /// The name of the baseline target.
    pub baseline: String,
    /// Rounds the comparison was split into; each target ran the workload
    /// once per round.
    pub rounds: usize,
    /// The targets, in the order given (the order of the first round).
    pub targets: Vec<CompareEntry>,
}

impl CompareReport {
    /// Builds the report, computing each target's ratios to the baseline.
    pub fn new(
        workload: WorkloadSummary,
        baseline: &str,
        rounds: usize,
        outcomes: Vec<TargetOutcome>,
    ) -> Self {
        let base = outcomes
            .iter()
            .find(|o| o.name == baseline)
            .and_then(|o| o.result.as_ref().ok())
            .cloned();
        let targets = outcomes
            .into_iter()
            .map(|o| {
                let (result, error) = match o.result {
                    Ok(run) => (Some(run), None),
                    Err(e) => (None, Some(e)),
                };
                let ratios = match (&result, &base) {
                    (Some(run), Some(base)) => ratios(run, base),
                    _ => Vec::new(),
                };
                CompareEntry {
                    name: o.name,
                    target: o.target,
                    result,
                    error,
                    ratios,
                    spread: o.spread,
                    rounds: o.rounds,
                }
            })
            .collect();
        CompareReport {
            workload,
            baseline: baseline.to_string(),
            rounds,
            targets,
        }
    }

    /// Whether every target ran.
    pub fn all_ok(&self) -> bool {
        self.targets.iter().all(|t| t.error.is_none())
    }
}

fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && value.is_finite()).then(|| value / base)
}

fn ratios(run: &TargetRun, base: &TargetRun) -> Vec<PhaseRatios> {
    run.phases
        .iter()
        .filter_map(|phase| {
            let b = base.phase(&phase.phase)?;
            let (t, b) = (&phase.total, &b.total);
            Some(PhaseRatios {
                phase: phase.phase.clone(),
                iops: ratio(t.iops, b.iops),
                mib_per_s: ratio(t.mib_per_s, b.mib_per_s),
                p50: ratio(t.latency_us.p50, b.latency_us.p50),
                p99: ratio(t.latency_us.p99, b.latency_us.p99),
                p99_9: ratio(t.latency_us.p99_9, b.latency_us.p99_9),
            })
        })
        .collect()
}

/// The rows of one phase: per-direction rows when both reads and writes
/// happened, then the total.
fn phase_rows(phase: &PhaseSummary) -> Vec<(&'static str, &OpSummary)> {
    match (&phase.read, &phase.write) {
        (Some(r), Some(w)) => vec![("read", r), ("write", w), ("total", &phase.total)],
        (Some(r), None) => vec![("read", r)],
        (None, Some(w)) => vec![("write", w)],
        (None, None) => vec![("total", &phase.total)],
    }
}

/// The human-readable report of one run.
pub fn format_run(workload: &WorkloadSummary, run: &TargetRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target:   {} ({}), capacity {}, block size {}, region {}",
        run.target,
        run.driver,
        format_size(run.capacity),
        format_size(run.block_size),
        format_size(run.region_bytes)
    );
    let _ = writeln!(out, "workload: {}", workload.line());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<13} {:<6} {:>11} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase", "op", "IOPS", "MiB/s", "I/Os", "mean us", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    for phase in &run.phases {
        for (op, s) in phase_rows(phase) {
            let _ = writeln!(
                out,
                "  {:<13} {:<6} {:>11.1} {:>9.2} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                phase.phase,
                op,
                s.iops,
                s.mib_per_s,
                s.ios,
                s.latency_us.mean,
                s.latency_us.p50,
                s.latency_us.p99,
                s.latency_us.p99_9,
                s.latency_us.max
            );
        }
    }
    for phase in &run.phases {
        if phase.phase == "verify-read" {
            let _ = writeln!(
                out,
                "\nverify: OK, {} read back and compared byte for byte",
                format_size(phase.total.bytes)
            );
        }
    }
    out
}

fn format_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

/// The human-readable comparison table.
pub fn format_compare(report: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "workload: {}", report.workload.line());
    let _ = writeln!(
        out,
        "ratios:   against {} (IOPS above 1.00x is faster, latency above 1.00x is slower)",
        report.baseline
    );
    let multi = report.rounds > 1;
    if multi {
        let _ = writeln!(
            out,
            "rounds:   {}, each running every target once in a rotated order; figures are over all rounds, min/max IOPS per round",
            report.rounds
        );
    }
    // The per-round IOPS range, shown only when there are several rounds.
    let spread_columns = |min: &str, max: &str| {
        if multi {
            format!(" {min:>11} {max:>11}")
        } else {
            String::new()
        }
    };
    let width = report
        .targets
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<width$} {:<12} {:>11}{} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "target",
        "phase",
        "IOPS",
        spread_columns("min IOPS", "max IOPS"),
        "MiB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "IOPS",
        "p50",
        "p99",
        "p99.9"
    );
    for entry in &report.targets {
        match (&entry.result, &entry.error) {
            (Some(run), _) => {
                for phase in &run.phases {
                    let s = &phase.total;
                    let r = entry.ratios.iter().find(|r| r.phase == phase.phase);
                    let spread = match entry.spread.iter().find(|s| s.phase == phase.phase) {
                        Some(s) => spread_columns(
                            &format!("{:.1}", s.iops_min),
                            &format!("{:.1}", s.iops_max),
                        ),
                        None => spread_columns("-", "-"),
                    };
                    let _ = writeln!(
                        out,
                        "  {:<width$} {:<12} {:>11.1}{} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>8} {:>8} {:>8}",
                        entry.name,
                        phase.phase,
                        s.iops,
                        spread,
                        s.mib_per_s,
                        s.latency_us.p50,
                        s.latency_us.p99,
                        s.latency_us.p99_9,
                        format_ratio(r.and_then(|r| r.iops)),
                        format_ratio(r.and_then(|r| r.p50)),
                        format_ratio(r.and_then(|r| r.p99)),
                        format_ratio(r.and_then(|r| r.p99_9)),
                    );
                }
            }
            (None, error) => {
                let _ = writeln!(
                    out,
                    "  {:<width$} FAILED: {}",
                    entry.name,
                    error.as_deref().unwrap_or("unknown error")
                );
            }
        }
    }
    let _ = writeln!(out);
    for entry in &report.targets {
        let _ = writeln!(out, "  {:<width$} {}", entry.name, entry.target);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::LatencySummary;

    fn run(name: &str, iops: f64, p99: f64) -> TargetRun {
        let op = OpSummary {
            ios: 100,
            bytes: 409_600,
            iops,
            mib_per_s: iops * 4096.0 / 1048576.0,
            latency_us: LatencySummary {
                mean: 10.0,
                p50: 10.0,
                p99,
                p99_9: p99 * 2.0,
                max: p99 * 3.0,
            },
        };
        TargetRun {
            name: name.to_string(),
            target: format!("file:/tmp/{name}"),
            driver: "io_uring".to_string(),
            capacity: 1 << 30,
            block_size: 512,
            region_bytes: 1 << 30,
            phases: vec![PhaseSummary {
                phase: "workload".to_string(),
                elapsed_s: 1.0,
                total: op,
                read: Some(op),
                write: None,
            }],
        }
    }

    fn workload() -> WorkloadSummary {
        WorkloadSummary {
            workload: "randread",
            block_size: 4096,
            iodepth: 1,
            queues: 1,
            rwmix_read: None,
            size: None,
            runtime_s: Some(1.0),
            ios: None,
            pattern: "unique",
            dup_blocks: None,
            verify: None,
            seed: "0x1".to_string(),
        }
    }

    fn outcome(name: &str, result: Result<TargetRun, String>) -> TargetOutcome {
        let spread = match &result {
            Ok(run) => vec![PhaseSpread {
                phase: "workload".to_string(),
                iops_min: run.phases[0].total.iops - 5.0,
                iops_max: run.phases[0].total.iops + 5.0,
            }],
            Err(_) => Vec::new(),
        };
        let rounds = match &result {
            Ok(run) => vec![RoundFigures {
                round: 0,
                position: 0,
                seed: "0x1".to_string(),
                phases: run.phases.clone(),
            }],
            Err(_) => Vec::new(),
        };
        TargetOutcome {
            name: name.to_string(),
            target: format!("file:/{name}"),
            result,
            rounds,
            spread,
            mismatch: false,
        }
    }

    fn report(rounds: usize) -> CompareReport {
        CompareReport::new(
            workload(),
            "b",
            rounds,
            vec![
                outcome("a", Ok(run("a", 50.0, 20.0))),
                outcome("b", Ok(run("b", 100.0, 10.0))),
                outcome("c", Err("round 2/4: boom".into())),
            ],
        )
    }

    #[test]
    fn ratios_are_against_the_baseline() {
        let report = report(1);
        let a = &report.targets[0].ratios[0];
        assert_eq!(a.iops, Some(0.5));
        assert_eq!(a.p99, Some(2.0));
        assert_eq!(report.targets[1].ratios[0].iops, Some(1.0));
        assert!(report.targets[2].ratios.is_empty());
        assert!(!report.all_ok());
        let table = format_compare(&report);
        assert!(table.contains("0.50x"), "{table}");
        assert!(table.contains("FAILED: round 2/4: boom"), "{table}");
        assert!(!table.contains("rounds:"), "{table}");
        assert!(!table.contains("min IOPS"), "{table}");
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"baseline\":\"b\""));
    }

    #[test]
    fn several_rounds_show_the_iops_range_and_per_round_figures() {
        let report = report(4);
        let table = format_compare(&report);
        assert!(table.contains("rounds:   4,"), "{table}");
        assert!(table.contains("min IOPS    max IOPS"), "{table}");
        let a = table.lines().find(|l| l.starts_with("  a ")).unwrap();
        assert!(a.contains("50.0        45.0        55.0"), "{table}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rounds"], 4);
        let a = &json["targets"][0];
        assert_eq!(a["spread"][0]["iops_max"], 55.0);
        assert_eq!(a["rounds"][0]["phases"][0]["total"]["iops"], 50.0);
        assert_eq!(json["targets"][2]["rounds"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn run_report_mentions_figures() {
        let text = format_run(&workload(), &run("a", 1234.5, 20.0));
        assert!(text.contains("1234.5"), "{text}");
        assert!(text.contains("randread bs=4 KiB iodepth=1"), "{text}");
    }
}
