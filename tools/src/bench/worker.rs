//! The per-queue loop: keep `iodepth` I/Os in flight, wait for completions
//! with a blocking `do_io`, record latencies, resubmit.
//!
//! Everything the loop needs is allocated before the start barrier; the loop
//! itself does not allocate, and it sleeps in the kernel (eventfd or
//! io_uring wait) rather than spinning, so it leaves CPU to the daemon under
//! test.

use std::mem::MaybeUninit;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use blkio::{Completion, Errno, ReqFlags};

use super::device::{IoMemory, QueueIo};
use super::pattern::{PatternWriter, WriteData};
use super::stats::PhaseStats;
use super::tag;
use super::workload::{Op, OpGenerator};

/// Where each slot's buffers live inside a queue's I/O memory.
///
/// A slot is one in-flight I/O. Reads and writes have separate buffers so
/// that reads in a mixed workload never change what later writes contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    block_size: usize,
    iodepth: usize,
    read_base: usize,
    write_base: usize,
    pool_base: usize,
    pool_len: usize,
    total: usize,
}

impl Layout {
    /// The layout for `iodepth` slots of `block_size` bytes, with read
    /// and/or write buffers, plus a `pool_len`-byte data pool.
    pub fn new(
        block_size: usize,
        iodepth: usize,
        reads: bool,
        writes: bool,
        pool_len: usize,
    ) -> Result<Self> {
        let area = block_size
            .checked_mul(iodepth)
            .context("--bs times --iodepth overflows")?;
        let read_base = 0;
        let write_base = if reads { area } else { 0 };
        let pool_base = write_base + if writes { area } else { 0 };
        let total = pool_base
            .checked_add(pool_len)
            .context("I/O memory size overflows")?;
        Ok(Layout {
            block_size,
            iodepth,
            read_base,
            write_base,
            pool_base,
            pool_len,
            total,
        })
    }

    /// Bytes of I/O memory per queue.
    pub fn total(&self) -> usize {
        self.total
    }

    fn read_buf(&self, slot: usize) -> usize {
        self.read_base + slot * self.block_size
    }

    fn write_buf(&self, slot: usize) -> usize {
        self.write_base + slot * self.block_size
    }
}

/// What writes contain and what reads are checked against.
#[derive(Clone, Debug)]
pub enum Payload {
    /// Benchmark data; reads are not checked.
    Pattern(PatternWriter),
    /// The tagged verification pattern of this generation; every read is
    /// compared byte for byte.
    Verify {
        /// The generation written into (and expected in) every sector.
        generation: u64,
    },
}

/// Everything one queue thread needs for one phase.
#[derive(Clone, Debug)]
pub struct Job {
    /// Queue index, for messages.
    pub queue: usize,
    /// Where the I/Os go.
    pub generator: OpGenerator,
    /// Data written and checks made.
    pub payload: Payload,
    /// Stop after this many I/Os.
    pub max_ios: Option<u64>,
    /// Stop submitting after this long.
    pub runtime: Option<Duration>,
    /// I/Os in flight.
    pub iodepth: usize,
    /// Buffer placement.
    pub layout: Layout,
    /// The longest wait for any completion before giving up.
    pub io_timeout: Duration,
}

/// The state of one slot while its I/O is in flight.
#[derive(Clone, Copy, Debug)]
struct Slot {
    op: Op,
    offset: u64,
    submitted: Instant,
}

impl Job {
    /// Fills the write buffers and data pool before the run.
    pub fn prepare_memory(&self, memory: &IoMemory) {
        let Payload::Pattern(writer) = &self.payload else {
            return;
        };
        let has_write_area = self.layout.pool_base > self.layout.write_base;
        if has_write_area {
            for slot in 0..self.iodepth {
                // SAFETY: nothing is in flight before the run starts, and
                // each slot's buffer is disjoint from the others.
                let buf = unsafe {
                    memory.slice_mut(self.layout.write_buf(slot), self.layout.block_size)
                };
                writer.init_slot(slot, buf);
            }
        }
        if self.layout.pool_len > 0 {
            // SAFETY: as above; the pool is disjoint from the slots.
            let pool = unsafe { memory.slice_mut(self.layout.pool_base, self.layout.pool_len) };
            writer.init_pool(pool);
        }
    }

    /// Runs the phase on `io` once `gate` opens.
    ///
    /// Always arrives at the gate exactly once, even when setup fails, so
    /// that the other queues are never left waiting.
    pub fn run(mut self, io: &mut QueueIo, gate: &StartGate) -> Result<PhaseStats> {
        let prepared = PhaseStats::new();
        let mut completions: Vec<MaybeUninit<Completion>> =
            std::iter::repeat_with(MaybeUninit::uninit)
                .take(self.iodepth)
                .collect();
        let now = Instant::now();
        let mut slots = vec![
            Slot {
                op: Op::Read,
                offset: 0,
                submitted: now,
            };
            self.iodepth
        ];
        if !gate.arrive_and_wait() {
            bail!("queue {}: run cancelled before it started", self.queue);
        }
        let mut stats = prepared?;

        let start = Instant::now();
        stats.started = start;
        stats.finished = start;
        let deadline = self.runtime.map(|d| start + d);
        let mut budget = self.max_ios.unwrap_or(u64::MAX);
        let mut in_flight = 0usize;

        for (index, slot) in slots.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            let Some((op, offset)) = self.generator.next_op() else {
                break;
            };
            self.submit(io, slot, index, op, offset);
            budget -= 1;
            in_flight += 1;
        }

        let block_size = self.layout.block_size as u64;
        let mut stopping = false;
        while in_flight > 0 {
            let mut timeout = self.io_timeout;
            let n = io
                .queue
                .do_io(&mut completions, 1, Some(&mut timeout), None)
                .map_err(|e| {
                    if e.errno() == Errno::TIME {
                        anyhow!(
                            "queue {}: no completion within {:?} ({in_flight} I/Os outstanding); is the target hung?",
                            self.queue,
                            self.io_timeout
                        )
                    } else {
                        anyhow!("queue {}: waiting for completions: {}", self.queue, e.message())
                    }
                })?;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                stopping = true;
            }
            for completion in &completions[..n] {
                // SAFETY: do_io initialised the first `n` entries.
                let completion = unsafe { completion.assume_init_read() };
                let index = completion.user_data;
                let slot = *slots.get(index).with_context(|| {
                    format!("queue {}: completion for unknown slot {index}", self.queue)
                })?;
                in_flight -= 1;
                if completion.ret < 0 {
                    bail!(
                        "queue {}: {} of {} bytes at offset {} failed: {}",
                        self.queue,
                        slot.op.name(),
                        block_size,
                        slot.offset,
                        completion_error(&completion)
                    );
                }
                stats
                    .op_mut(slot.op)
                    .record(block_size, now.saturating_duration_since(slot.submitted));
                if let (Op::Read, Payload::Verify { generation }) = (slot.op, &self.payload) {
                    // SAFETY: this slot's read has completed and nothing else
                    // uses its buffer until it is resubmitted below.
                    let data = unsafe {
                        io.memory
                            .slice_mut(self.layout.read_buf(index), self.layout.block_size)
                    };
                    tag::check(data, slot.offset, *generation).map_err(|mismatch| {
                        anyhow::Error::new(mismatch).context(format!(
                            "queue {}: verification failed reading {} bytes at offset {}",
                            self.queue, block_size, slot.offset
                        ))
                    })?;
                }
                if stopping || budget == 0 {
                    continue;
                }
                if let Some((op, offset)) = self.generator.next_op() {
                    self.submit(io, &mut slots[index], index, op, offset);
                    budget -= 1;
                    in_flight += 1;
                }
            }
            stats.finished = now;
        }
        Ok(stats)
    }

    /// Queues one I/O on `slot` (submitted to the device by the next
    /// `do_io`).
    fn submit(&mut self, io: &mut QueueIo, state: &mut Slot, slot: usize, op: Op, offset: u64) {
        let len = self.layout.block_size;
        match op {
            Op::Read => {
                let buf = io.memory.ptr(self.layout.read_buf(slot), len);
                io.queue.read(offset, buf, len, slot, ReqFlags::empty());
            }
            Op::Write => {
                let buf_offset = self.layout.write_buf(slot);
                // SAFETY: the slot is idle: its previous I/O has completed.
                let buf = unsafe { io.memory.slice_mut(buf_offset, len) };
                let data = match &mut self.payload {
                    Payload::Pattern(writer) => match writer.next_write(buf) {
                        WriteData::Slot => buf.as_ptr(),
                        WriteData::Pool { offset } => {
                            io.memory.ptr(self.layout.pool_base + offset, len)
                        }
                    },
                    Payload::Verify { generation } => {
                        tag::fill(buf, offset, *generation);
                        buf.as_ptr()
                    }
                };
                io.queue.write(offset, data, len, slot, ReqFlags::empty());
            }
        }
        *state = Slot {
            op,
            offset,
            submitted: Instant::now(),
        };
    }
}

/// Lets all queue threads start their I/O at the same moment, or none.
///
/// Unlike a `Barrier`, the coordinating thread can cancel the start (for
/// instance when spawning a later thread failed), so nobody waits forever.
#[derive(Debug, Default)]
pub struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    decision: Option<bool>,
}

impl StartGate {
    /// A closed gate nobody has reached yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called by a worker: announces it is ready and waits for the decision.
    /// Returns `true` to start, `false` if the run was cancelled.
    pub fn arrive_and_wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.arrived += 1;
        self.changed.notify_all();
        loop {
            if let Some(go) = state.decision {
                return go;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Called by the coordinator: waits until `workers` workers arrived.
    pub fn wait_for(&self, workers: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.arrived < workers {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Called by the coordinator: lets the workers start (`true`) or cancels
    /// them (`false`).
    pub fn decide(&self, go: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.decision = Some(go);
        self.changed.notify_all();
    }
}

/// Describes a failed completion: errno name and libblkio's message.
fn completion_error(completion: &Completion) -> String {
    let errno = Errno::from_raw_os_error(-completion.ret);
    let message = if completion.error_msg.is_null() {
        String::new()
    } else {
        // SAFETY: libblkio sets error_msg to a static NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(completion.error_msg) };
        format!(" ({})", text.to_string_lossy())
    };
    format!("{errno}{message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_starts_or_cancels_everyone() {
        for go in [true, false] {
            let gate = StartGate::new();
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..3).map(|_| s.spawn(|| gate.arrive_and_wait())).collect();
                gate.wait_for(3);
                gate.decide(go);
                for w in workers {
                    assert_eq!(w.join().unwrap(), go);
                }
            });
        }
    }

    #[test]
    fn layout_separates_areas() {
        let l = Layout::new(4096, 4, true, true, 8192).unwrap();
        assert_eq!(l.read_buf(0), 0);
        assert_eq!(l.write_buf(0), 16384);
        assert_eq!(l.pool_base, 32768);
        assert_eq!(l.total(), 40960);
        let l = Layout::new(512, 2, false, true, 0).unwrap();
        assert_eq!(l.write_buf(1), 512);
        assert_eq!(l.total(), 1024);
        let l = Layout::new(512, 2, true, false, 0).unwrap();
        assert_eq!(l.total(), 1024);
    }
}
