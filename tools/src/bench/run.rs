//! Running one workload on one target: open the device, work out the
//! region, run each phase on all queues at once (one thread per queue), and
//! summarise. A [`Session`] keeps the target open to run the workload again
//! (the rounds of `strata-bench compare --rounds`).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::device::{Device, DeviceConfig, DeviceInfo, QueueIo};
use super::pattern::PatternWriter;
use super::size::format_size;
use super::stats::{PhaseStats, PhaseSummary};
use super::target::TargetSpec;
use super::worker::{Job, Layout, Payload, StartGate};
use super::workload::{Limit, Op, OpGenerator, Region, WorkloadSpec};

/// The results of one workload on one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetRun {
    /// The target's name (compare mode) or its spec.
    pub name: String,
    /// The target spec, e.g. `vhost-user:/run/a.sock`.
    pub target: String,
    /// The libblkio driver used.
    pub driver: String,
    /// Device capacity in bytes.
    pub capacity: u64,
    /// The device's logical block size (request alignment).
    pub block_size: u64,
    /// Bytes of the device the workload used.
    pub region_bytes: u64,
    /// One entry per phase: `workload`, or `verify-write` and `verify-read`.
    pub phases: Vec<PhaseSummary>,
}

impl TargetRun {
    /// The summary of the named phase.
    pub fn phase(&self, name: &str) -> Option<&PhaseSummary> {
        self.phases.iter().find(|p| p.phase == name)
    }
}

/// Runs `workload` on `spec`, labelled `name`.
pub fn run_target(name: &str, spec: &TargetSpec, workload: &WorkloadSpec) -> Result<TargetRun> {
    let mut session = Session::open(spec, workload)?;
    let phases = session
        .run(workload.seed)?
        .iter()
        .map(|p| p.stats.summary(p.phase))
        .collect::<Result<_>>()?;
    Ok(session.describe(name, phases))
}

/// What one phase of a run measured, before summarising.
#[derive(Clone, Debug)]
pub struct PhaseRun {
    /// `workload`, `verify-write` or `verify-read`.
    pub phase: &'static str,
    /// The merged counters of all queues.
    pub stats: PhaseStats,
}

/// A target opened for one workload: the device, its queues and the region
/// the workload uses, ready to run the workload as often as needed.
///
/// Dropping it disconnects from the target.
pub struct Session {
    /// Declared before `device`, so dropped first: the queues and their I/O
    /// memory belong to the device.
    queues: Vec<QueueIo>,
    device: Device,
    spec: TargetSpec,
    workload: WorkloadSpec,
    region: Region,
    layout: Layout,
    /// Bytes per I/O.
    block_size: usize,
}

impl Session {
    /// Connects to `spec` with the queues, ring sizes and I/O memory that
    /// `workload` needs, and checks that the workload suits the device.
    pub fn open(spec: &TargetSpec, workload: &WorkloadSpec) -> Result<Session> {
        workload.validate().map_err(|e| anyhow!(e))?;
        let block_size = usize::try_from(workload.block_size).context("--bs too large")?;
        let pool_len = if workload.verify.is_some() {
            0
        } else {
            PatternWriter::pool_len(workload.pattern, block_size, workload.dup_blocks)
        };
        let layout = Layout::new(
            block_size,
            workload.iodepth,
            workload.has_reads(),
            workload.has_writes(),
            if workload.has_writes() { pool_len } else { 0 },
        )?;
        let config = DeviceConfig {
            queues: workload.queues,
            iodepth: workload.iodepth,
            read_only: !workload.has_writes(),
            memory_per_queue: layout.total(),
        };
        let mut device = Device::open(spec, &config)?;
        let region = resolve_region(device.info(), spec, workload)?;
        let queues = device.take_queues();
        Ok(Session {
            queues,
            device,
            spec: spec.clone(),
            workload: workload.clone(),
            region,
            layout,
            block_size,
        })
    }

    /// Runs the workload once with `seed` in place of the workload's own
    /// (offsets, data and verification generation): the timed `workload`
    /// phase, or the passes of `--verify`.
    pub fn run(&mut self, seed: u64) -> Result<Vec<PhaseRun>> {
        let workload = WorkloadSpec {
            seed,
            ..self.workload.clone()
        };
        let (region, layout, block_size) = (self.region, self.layout, self.block_size);
        let mut phases = Vec::new();
        if let Some(passes) = workload.verify {
            let random = workload.workload.is_random();
            let pass = |op: Op| -> Vec<Job> {
                (0..workload.queues)
                    .map(|q| Job {
                        queue: q,
                        generator: OpGenerator::for_pass(
                            op,
                            random,
                            region,
                            q,
                            workload.queues,
                            workload.seed,
                        ),
                        payload: Payload::Verify {
                            generation: workload.seed,
                        },
                        max_ios: None,
                        runtime: None,
                        iodepth: workload.iodepth,
                        layout,
                        io_timeout: workload.io_timeout,
                    })
                    .collect()
            };
            let steps = [
                (passes.writes(), Op::Write, "verify-write", "write"),
                (passes.reads(), Op::Read, "verify-read", "read"),
            ];
            for (wanted, op, phase, name) in steps {
                if wanted {
                    let stats = run_phase(&mut self.queues, pass(op))
                        .with_context(|| format!("verification {name} pass"))?;
                    phases.push(PhaseRun { phase, stats });
                }
            }
        } else {
            let jobs = (0..workload.queues)
                .map(|q| Job {
                    queue: q,
                    generator: OpGenerator::for_workload(&workload, region, q),
                    payload: Payload::Pattern(PatternWriter::new(
                        workload.pattern,
                        workload.seed,
                        q,
                        block_size,
                        workload.dup_blocks,
                    )),
                    max_ios: workload.ios_for_queue(q),
                    runtime: match workload.limit {
                        Limit::Runtime(d) => Some(d),
                        Limit::Ios(_) => None,
                    },
                    iodepth: workload.iodepth,
                    layout,
                    io_timeout: workload.io_timeout,
                })
                .collect();
            let stats = run_phase(&mut self.queues, jobs).context("workload")?;
            phases.push(PhaseRun {
                phase: "workload",
                stats,
            });
        }
        Ok(phases)
    }

    /// The target's description with `phases` as its results.
    pub fn describe(&self, name: &str, phases: Vec<PhaseSummary>) -> TargetRun {
        let info = self.device.info();
        TargetRun {
            name: name.to_string(),
            target: self.spec.to_string(),
            driver: info.driver.to_string(),
            capacity: info.capacity,
            block_size: info.request_alignment,
            region_bytes: self.region.bytes(),
            phases,
        }
    }
}

/// Works out which part of the device the workload uses and checks that the
/// I/O size suits the device.
fn resolve_region(info: &DeviceInfo, spec: &TargetSpec, workload: &WorkloadSpec) -> Result<Region> {
    let bs = workload.block_size;
    if bs % info.request_alignment != 0 {
        bail!(
            "--bs {bs} is not a multiple of {spec}'s block size {}",
            info.request_alignment
        );
    }
    let size = workload.size.unwrap_or(info.capacity);
    if size > info.capacity {
        bail!(
            "--size {} exceeds {spec}'s capacity of {} ({} bytes)",
            format_size(size),
            format_size(info.capacity),
            info.capacity
        );
    }
    let blocks = size / bs;
    if blocks == 0 {
        bail!(
            "the region of {} on {spec} holds no whole block of {}",
            format_size(size),
            format_size(bs)
        );
    }
    if !workload.workload.is_random() && blocks < workload.queues as u64 {
        bail!(
            "sequential workloads give each queue its own slice, but the region has {blocks} block(s) for {} queues",
            workload.queues
        );
    }
    Ok(Region {
        block_size: bs,
        blocks,
    })
}

/// Runs one job per queue in parallel, all starting together, and merges
/// their statistics.
fn run_phase(queues: &mut [QueueIo], jobs: Vec<Job>) -> Result<PhaseStats> {
    for (io, job) in queues.iter().zip(&jobs) {
        job.prepare_memory(&io.memory);
    }
    let gate = StartGate::new();
    let results: Vec<Result<PhaseStats>> = std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .iter_mut()
            .zip(jobs)
            .enumerate()
            .map(|(q, (io, job))| {
                let gate = &gate;
                std::thread::Builder::new()
                    .name(format!("bench-q{q}"))
                    .spawn_scoped(scope, move || job.run(io, gate))
            })
            .collect();
        let spawned = handles.iter().filter(|h| h.is_ok()).count();
        gate.wait_for(spawned);
        gate.decide(spawned == handles.len());
        handles
            .into_iter()
            .enumerate()
            .map(|(q, handle)| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("queue {q}: worker thread panicked"))),
                Err(e) => Err(anyhow!("queue {q}: spawning worker thread: {e}")),
            })
            .collect()
    });
    let mut merged: Option<PhaseStats> = None;
    for result in results {
        let stats = result?;
        match &mut merged {
            None => merged = Some(stats),
            Some(m) => m.merge(&stats)?,
        }
    }
    merged.ok_or_else(|| anyhow!("no queues ran"))
}

/// A default seed that differs between runs, so that `unique` data never
/// repeats what an earlier run wrote and `--verify` catches stale blocks.
pub fn fresh_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    super::rng::mix64(now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
}
