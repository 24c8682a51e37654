//! Running one workload on one target: open the device, work out the
//! region, run each phase on all queues at once (one thread per queue), and
//! summarise.

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
    let info = device.info().clone();
    let region = resolve_region(&info, spec, workload)?;
    let mut queues = device.take_queues();

    let phases = if let Some(passes) = workload.verify {
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
        let mut phases = Vec::new();
        if passes.writes() {
            let written =
                run_phase(&mut queues, pass(Op::Write)).context("verification write pass")?;
            phases.push(written.summary("verify-write")?);
        }
        if passes.reads() {
            let read = run_phase(&mut queues, pass(Op::Read)).context("verification read pass")?;
            phases.push(read.summary("verify-read")?);
        }
        phases
    } else {
        let jobs = (0..workload.queues)
            .map(|q| Job {
                queue: q,
                generator: OpGenerator::for_workload(workload, region, q),
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
        let stats = run_phase(&mut queues, jobs).context("workload")?;
        vec![stats.summary("workload")?]
    };

    // Queues go before the device (which disconnects on drop).
    drop(queues);
    drop(device);
    Ok(TargetRun {
        name: name.to_string(),
        target: spec.to_string(),
        driver: info.driver.to_string(),
        capacity: info.capacity,
        block_size: info.request_alignment,
        region_bytes: region.bytes(),
        phases,
    })
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
