//! Running a comparison: the same workload on every target, in rounds.
//!
//! In each round every target runs the workload once, in the order
//! [`round_order`] gives. A target is opened when it first runs and stays
//! open until its last round, unless another target names the same
//! vhost-user socket: a backend serves one frontend at a time, so such a
//! target is opened and closed around each of its runs. A target that fails
//! is reported as failed and sits out the remaining rounds; the others go on.

use std::path::PathBuf;

use anyhow::Result;

use super::aggregate::{PhaseSpread, RoundFigures, RoundTotals};
use super::report::WorkloadSummary;
use super::run::{Session, TargetRun};
use super::schedule::{round_order, round_seed};
use super::tag::Mismatch;
use super::target::{NamedTarget, TargetKind};
use super::workload::WorkloadSpec;

/// One target's outcome in a comparison.
#[derive(Clone, Debug)]
pub struct TargetOutcome {
    /// The target's name.
    pub name: String,
    /// The target spec.
    pub target: String,
    /// The figures over all rounds, or why the target failed.
    pub result: Result<TargetRun, String>,
    /// The figures of each round the target completed.
    pub rounds: Vec<RoundFigures>,
    /// The lowest and highest per-round IOPS of each phase.
    pub spread: Vec<PhaseSpread>,
    /// Whether it failed because `--verify` read back different data.
    pub mismatch: bool,
}

/// One target while the comparison runs.
struct Contender<'a> {
    target: &'a NamedTarget,
    /// Whether the session may stay open between this target's runs.
    keep_open: bool,
    session: Option<Session>,
    /// The target's description, from its first session.
    run: Option<TargetRun>,
    totals: RoundTotals,
    error: Option<anyhow::Error>,
}

/// Runs `workload` on every target in `rounds` rounds (at least one) and
/// returns one outcome per target, in the order of `targets`. Progress goes
/// to stderr.
pub fn run_compare(
    targets: &[NamedTarget],
    workload: &WorkloadSpec,
    rounds: usize,
) -> Vec<TargetOutcome> {
    let rounds = rounds.max(1);
    let mut contenders: Vec<Contender> = targets
        .iter()
        .zip(exclusive_sockets(targets))
        .map(|(target, exclusive)| Contender {
            target,
            keep_open: exclusive,
            session: None,
            run: None,
            totals: RoundTotals::new(),
            error: None,
        })
        .collect();
    for round in 0..rounds {
        let seed = round_seed(workload.seed, round);
        let line = WorkloadSummary::new(&WorkloadSpec {
            seed,
            ..workload.clone()
        })
        .line();
        let last = round + 1 == rounds;
        for (position, index) in round_order(round, contenders.len()).enumerate() {
            let c = &mut contenders[index];
            if c.error.is_some() {
                continue;
            }
            // Progress and errors name the round when there are several.
            let label = (rounds > 1).then(|| format!("round {}/{rounds}", round + 1));
            let prefix = label.as_ref().map(|l| format!("{l}: ")).unwrap_or_default();
            eprintln!(
                "strata-bench: {prefix}{line} on {} ({})...",
                c.target.name, c.target.spec
            );
            match c.run_once(workload, round, position, seed) {
                Ok(()) if c.keep_open && !last => {}
                Ok(()) => c.session = None,
                Err(e) => {
                    let e = match label {
                        Some(label) => e.context(label),
                        None => e,
                    };
                    eprintln!("strata-bench: error: {}: {e:#}", c.target.name);
                    c.session = None;
                    c.error = Some(e);
                }
            }
        }
    }
    contenders.into_iter().map(Contender::finish).collect()
}

impl Contender<'_> {
    /// Runs round `round` (the target's `position`-th in it) with `seed`,
    /// opening the target first unless it is still open.
    fn run_once(
        &mut self,
        workload: &WorkloadSpec,
        round: usize,
        position: usize,
        seed: u64,
    ) -> Result<()> {
        let session = match &mut self.session {
            Some(session) => session,
            None => self
                .session
                .insert(Session::open(&self.target.spec, workload)?),
        };
        let phases = session.run(seed)?;
        if self.run.is_none() {
            self.run = Some(session.describe(&self.target.name, Vec::new()));
        }
        self.totals.add(round, position, seed, &phases)
    }

    /// The outcome over all rounds.
    fn finish(self) -> TargetOutcome {
        let result = match (self.error, self.run) {
            (Some(e), _) => Err(e),
            (None, Some(run)) => self
                .totals
                .summaries()
                .map(|phases| TargetRun { phases, ..run }),
            (None, None) => Err(anyhow::anyhow!("the target never ran")),
        };
        let mismatch = result
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<Mismatch>().is_some());
        TargetOutcome {
            name: self.target.name.clone(),
            target: self.target.spec.to_string(),
            result: result.map_err(|e| format!("{e:#}")),
            rounds: self.totals.rounds().to_vec(),
            spread: self.totals.spread(),
            mismatch,
        }
    }
}

/// For each target, whether no other target names the same vhost-user
/// socket (compared after resolving links), so that its connection may stay
/// open while the others run.
pub fn exclusive_sockets(targets: &[NamedTarget]) -> Vec<bool> {
    let socket = |t: &NamedTarget| -> Option<PathBuf> {
        (t.spec.kind == TargetKind::VhostUser)
            .then(|| std::fs::canonicalize(&t.spec.path).unwrap_or_else(|_| t.spec.path.clone()))
    };
    let sockets: Vec<Option<PathBuf>> = targets.iter().map(socket).collect();
    sockets
        .iter()
        .enumerate()
        .map(|(i, mine)| {
            mine.as_ref().is_none_or(|mine| {
                sockets
                    .iter()
                    .enumerate()
                    .all(|(j, other)| j == i || other.as_ref() != Some(mine))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::pattern::Pattern;
    use crate::bench::workload::{Limit, Workload};

    fn targets(specs: &[&str]) -> Vec<NamedTarget> {
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| format!("t{i}={spec}").parse().unwrap())
            .collect()
    }

    #[test]
    fn only_vhost_user_targets_sharing_a_socket_are_reopened() {
        let t = targets(&[
            "vhost-user:/nonexistent/a.sock",
            "vhost-user:/nonexistent/b.sock",
            "vhost-user:/nonexistent/a.sock",
            "file:/nonexistent/img",
            "file:/nonexistent/img",
        ]);
        assert_eq!(exclusive_sockets(&t), [false, true, false, true, true]);
        assert_eq!(exclusive_sockets(&[]), Vec::<bool>::new());
    }

    #[test]
    fn links_to_one_socket_count_as_the_same() {
        let dir = std::env::temp_dir().join(format!("strata-bench-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real.sock");
        let link = dir.join("link.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let t = targets(&[
            &format!("vhost-user:{}", real.display()),
            &format!("vhost-user:{}", link.display()),
        ]);
        let exclusive = exclusive_sockets(&t);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(exclusive, [false, false]);
    }

    #[test]
    fn a_target_that_cannot_open_fails_once_and_sits_out() {
        let t = targets(&["vhost-user:/nonexistent/a.sock", "file:/nonexistent/img"]);
        let workload = WorkloadSpec {
            workload: Workload::Randread,
            block_size: 4096,
            iodepth: 1,
            queues: 1,
            rwmix_read: 100,
            size: None,
            limit: Limit::Runtime(Duration::from_millis(10)),
            pattern: Pattern::Unique,
            dup_blocks: 1,
            verify: None,
            seed: 1,
            io_timeout: Duration::from_secs(1),
        };
        let outcomes = run_compare(&t, &workload, 3);
        assert_eq!(outcomes.len(), 2);
        for o in &outcomes {
            let error = o.result.as_ref().unwrap_err();
            assert!(error.starts_with("round 1/3: "), "{error}");
            assert!(o.rounds.is_empty() && o.spread.is_empty() && !o.mismatch);
        }
    }
}
