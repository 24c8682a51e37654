//! One target's figures across the rounds of a comparison.
//!
//! Rounds are combined from their raw counters, not from their summaries:
//! throughput is all I/Os over all measured time (a short round weighs less
//! than a long one) and latency percentiles come from the merged
//! histograms. The per-round figures are kept too, to show the spread.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::run::PhaseRun;
use super::stats::{OpStats, PhaseSummary};

/// What one target measured in one round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundFigures {
    /// The round, counting from 0.
    pub round: usize,
    /// The target's place in the round's order, counting from 0.
    pub position: usize,
    /// The round's seed, in hex.
    pub seed: String,
    /// The round's phases.
    pub phases: Vec<PhaseSummary>,
}

/// The lowest and highest IOPS of one phase among the rounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseSpread {
    /// The phase.
    pub phase: String,
    /// The lowest per-round IOPS.
    pub iops_min: f64,
    /// The highest per-round IOPS.
    pub iops_max: f64,
}

/// One phase's counters summed over rounds.
#[derive(Clone, Debug)]
struct PhaseTotals {
    phase: &'static str,
    read: OpStats,
    write: OpStats,
    /// The sum of the rounds' measured times (first submission to last
    /// completion), leaving out the time other targets ran in between.
    elapsed: Duration,
}

/// One target's results, round by round and in total.
#[derive(Clone, Debug, Default)]
pub struct RoundTotals {
    phases: Vec<PhaseTotals>,
    rounds: Vec<RoundFigures>,
}

impl RoundTotals {
    /// No rounds yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the phases one round measured; the target ran at `position` in
    /// round `round`, with `seed`.
    pub fn add(
        &mut self,
        round: usize,
        position: usize,
        seed: u64,
        phases: &[PhaseRun],
    ) -> Result<()> {
        let mut summaries = Vec::with_capacity(phases.len());
        for run in phases {
            summaries.push(run.stats.summary(run.phase)?);
            match self.phases.iter_mut().find(|t| t.phase == run.phase) {
                Some(totals) => {
                    totals.read.merge(&run.stats.read)?;
                    totals.write.merge(&run.stats.write)?;
                    totals.elapsed += run.stats.elapsed();
                }
                None => self.phases.push(PhaseTotals {
                    phase: run.phase,
                    read: run.stats.read.clone(),
                    write: run.stats.write.clone(),
                    elapsed: run.stats.elapsed(),
                }),
            }
        }
        self.rounds.push(RoundFigures {
            round,
            position,
            seed: format!("{seed:#018x}"),
            phases: summaries,
        });
        Ok(())
    }

    /// The figures of each round added, in the order they were added.
    pub fn rounds(&self) -> &[RoundFigures] {
        &self.rounds
    }

    /// One summary per phase over all rounds, in the order the phases
    /// first ran.
    pub fn summaries(&self) -> Result<Vec<PhaseSummary>> {
        self.phases
            .iter()
            .map(|t| PhaseSummary::new(t.phase, &t.read, &t.write, t.elapsed))
            .collect()
    }

    /// The lowest and highest per-round IOPS of each phase.
    pub fn spread(&self) -> Vec<PhaseSpread> {
        spread(&self.rounds)
    }
}

/// The lowest and highest IOPS of each phase in `rounds`, one entry per
/// phase in the order the phases first appear.
pub fn spread(rounds: &[RoundFigures]) -> Vec<PhaseSpread> {
    let mut spreads: Vec<PhaseSpread> = Vec::new();
    for phase in rounds.iter().flat_map(|r| &r.phases) {
        let iops = phase.total.iops;
        match spreads.iter_mut().find(|s| s.phase == phase.phase) {
            Some(s) => {
                s.iops_min = s.iops_min.min(iops);
                s.iops_max = s.iops_max.max(iops);
            }
            None => spreads.push(PhaseSpread {
                phase: phase.phase.clone(),
                iops_min: iops,
                iops_max: iops,
            }),
        }
    }
    spreads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::PhaseStats;
    use crate::bench::workload::Op;

    /// A phase of `ios` reads of 4 KiB, each taking `latency_us`, measured
    /// over `secs` seconds.
    fn phase(name: &'static str, ios: u64, latency_us: u64, secs: u64) -> PhaseRun {
        let mut stats = PhaseStats::new().unwrap();
        for _ in 0..ios {
            stats
                .op_mut(Op::Read)
                .record(4096, Duration::from_micros(latency_us));
        }
        stats.finished = stats.started + Duration::from_secs(secs);
        PhaseRun { phase: name, stats }
    }

    /// Totals of one `workload` phase per round, each given as (I/Os,
    /// latency in us, seconds); round `i` ran at position `i` with seed `i`.
    fn rounds(figures: &[(u64, u64, u64)]) -> RoundTotals {
        let mut totals = RoundTotals::new();
        for (i, &(ios, latency_us, secs)) in figures.iter().enumerate() {
            let run = phase("workload", ios, latency_us, secs);
            totals.add(i, i, i as u64, &[run]).unwrap();
        }
        totals
    }

    #[test]
    fn totals_are_all_ios_over_all_measured_time() {
        let sum = rounds(&[(100, 10, 1), (300, 100, 2)]).summaries().unwrap();
        assert_eq!(sum.len(), 1);
        let w = &sum[0];
        assert_eq!(w.phase, "workload");
        assert_eq!(w.total.ios, 400);
        assert_eq!(w.total.bytes, 400 * 4096);
        assert!((w.elapsed_s - 3.0).abs() < 1e-9);
        // 400 I/Os in 3 s, not the mean of 100/s and 150/s.
        let iops = w.total.iops;
        assert!((iops - 400.0 / 3.0).abs() < 1e-9, "{iops}");
        let mib = 400.0 * 4096.0 / 3.0 / 1048576.0;
        assert!((w.total.mib_per_s - mib).abs() < 1e-9);
        assert!(w.read.is_some() && w.write.is_none());
    }

    #[test]
    fn latency_percentiles_come_from_the_merged_histograms() {
        let latency = |figures| rounds(figures).summaries().unwrap()[0].total.latency_us;
        // A quarter of the I/Os took 10 us, the rest 100 us.
        let lat = latency(&[(100, 10, 1), (300, 100, 1)]);
        assert!((lat.p50 - 100.0).abs() < 0.1, "{lat:?}");
        assert!((lat.p99 - 100.0).abs() < 0.1, "{lat:?}");
        assert!((lat.mean - 77.5).abs() < 0.1, "{lat:?}");
        assert!((lat.max - 100.0).abs() < 0.1, "{lat:?}");
        // Three quarters took 10 us.
        let lat = latency(&[(300, 10, 1), (100, 100, 1)]);
        assert!((lat.p50 - 10.0).abs() < 0.01, "{lat:?}");
        assert!((lat.p99 - 100.0).abs() < 0.1, "{lat:?}");
    }

    #[test]
    fn rounds_keep_their_own_figures_and_spread() {
        let totals = rounds(&[(200, 10, 2), (150, 10, 1), (120, 10, 1)]);
        let figures = totals.rounds();
        assert_eq!(figures.len(), 3);
        assert_eq!((figures[1].round, figures[1].position), (1, 1));
        assert_eq!(figures[2].seed, "0x0000000000000002");
        assert!((figures[0].phases[0].total.iops - 100.0).abs() < 1e-9);
        assert_eq!(
            totals.spread(),
            [PhaseSpread {
                phase: "workload".to_string(),
                iops_min: 100.0,
                iops_max: 150.0,
            }]
        );
    }

    #[test]
    fn phases_are_kept_apart_in_their_first_order() {
        let mut totals = RoundTotals::new();
        let round = || {
            [
                phase("verify-write", 10, 5, 1),
                phase("verify-read", 40, 5, 1),
            ]
        };
        totals.add(0, 0, 1, &round()).unwrap();
        totals.add(1, 0, 2, &round()).unwrap();
        let sum = totals.summaries().unwrap();
        let names: Vec<&str> = sum.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(names, ["verify-write", "verify-read"]);
        assert_eq!((sum[0].total.ios, sum[1].total.ios), (20, 80));
        let spread = totals.spread();
        assert_eq!(spread.len(), 2);
        assert_eq!(spread[1].iops_min, 40.0);
    }

    #[test]
    fn no_rounds_give_no_figures() {
        let totals = RoundTotals::new();
        assert!(totals.summaries().unwrap().is_empty());
        assert!(totals.spread().is_empty());
        assert!(spread(&[]).is_empty());
    }
}
