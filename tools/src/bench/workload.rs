//! The workload: what kind of I/O, how big, how deep, for how long, and the
//! per-queue generator of (operation, offset) pairs.

use std::time::Duration;

use serde::Serialize;

use super::pattern::Pattern;
use super::rng::{mix64, Rng};

/// The I/O mix and access order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Reads at uniformly random block-aligned offsets.
    Randread,
    /// Writes at uniformly random block-aligned offsets.
    Randwrite,
    /// Sequential reads; each queue walks its own slice of the region.
    Read,
    /// Sequential writes; each queue walks its own slice of the region.
    Write,
    /// Random reads and writes, `--rwmix-read` percent reads.
    Randrw,
}

impl Workload {
    /// Whether offsets are random (otherwise sequential).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::Randread | Workload::Randwrite | Workload::Randrw
        )
    }

    /// The share of reads in percent, given the `--rwmix-read` setting.
    pub fn read_percent(self, rwmix_read: u8) -> u8 {
        match self {
            Workload::Randread | Workload::Read => 100,
            Workload::Randwrite | Workload::Write => 0,
            Workload::Randrw => rwmix_read,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Randread => "randread",
            Workload::Randwrite => "randwrite",
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Randrw => "randrw",
        }
    }
}

/// Which passes a `--verify` run makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyPasses {
    /// Write the tagged pattern, then read it back and compare.
    Both,
    /// Only write the tagged pattern (check it later with `read`).
    Write,
    /// Only read back and compare a pattern written earlier with the same
    /// `--seed` (for example before a restart).
    Read,
}

impl VerifyPasses {
    /// Whether the write pass runs.
    pub fn writes(self) -> bool {
        self != VerifyPasses::Read
    }

    /// Whether the read pass runs.
    pub fn reads(self) -> bool {
        self != VerifyPasses::Write
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VerifyPasses::Both => "both",
            VerifyPasses::Write => "write",
            VerifyPasses::Read => "read",
        }
    }
}

/// One I/O operation kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read from the device.
    Read,
    /// Write to the device.
    Write,
}

impl Op {
    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// When a measured run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Stop submitting after this much time.
    Runtime(Duration),
    /// Stop after this many I/Os in total (shared out between queues).
    Ios(u64),
}

/// A complete workload description, as given on the command line.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// The I/O mix and access order.
    pub workload: Workload,
    /// Bytes per I/O; a multiple of 512 (and of the device's block size).
    pub block_size: u64,
    /// I/Os kept in flight per queue.
    pub iodepth: usize,
    /// Number of queues, each driven by its own thread.
    pub queues: usize,
    /// Percentage of reads for `randrw`.
    pub rwmix_read: u8,
    /// Bytes at the start of the device to use; `None` for all of it.
    pub size: Option<u64>,
    /// When to stop.
    pub limit: Limit,
    /// What benchmark writes contain.
    pub pattern: Pattern,
    /// Distinct 4 KiB blocks for the `dup` pattern.
    pub dup_blocks: usize,
    /// Instead of the timed run, write a tagged pattern over the region
    /// and/or read it back and compare.
    pub verify: Option<VerifyPasses>,
    /// Seed for offsets and data; also the verification generation.
    pub seed: u64,
    /// How long to wait for any completion before declaring the target hung.
    pub io_timeout: Duration,
}

impl WorkloadSpec {
    /// The share of reads in percent.
    pub fn read_percent(&self) -> u8 {
        self.workload.read_percent(self.rwmix_read)
    }

    /// Whether the measured run issues any reads.
    pub fn has_reads(&self) -> bool {
        match self.verify {
            Some(passes) => passes.reads(),
            None => self.read_percent() > 0,
        }
    }

    /// Whether the measured run issues any writes.
    pub fn has_writes(&self) -> bool {
        match self.verify {
            Some(passes) => passes.writes(),
            None => self.read_percent() < 100,
        }
    }

    /// Checks the settings that do not depend on the target.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_size == 0 || self.block_size % 512 != 0 {
            return Err(format!(
                "--bs {} is not a positive multiple of 512",
                self.block_size
            ));
        }
        if self.block_size > 64 << 20 {
            return Err(format!("--bs {} is larger than 64 MiB", self.block_size));
        }
        if !(1..=4096).contains(&self.iodepth) {
            return Err(format!("--iodepth {} is not in 1..=4096", self.iodepth));
        }
        if !(1..=64).contains(&self.queues) {
            return Err(format!("--queues {} is not in 1..=64", self.queues));
        }
        if self.rwmix_read > 100 {
            return Err(format!("--rwmix-read {} is over 100", self.rwmix_read));
        }
        if self.dup_blocks == 0 {
            return Err("--dup-blocks must be at least 1".to_string());
        }
        match self.limit {
            Limit::Runtime(d) if d.is_zero() => Err("--runtime must be positive".to_string()),
            Limit::Ios(0) => Err("--ios must be positive".to_string()),
            _ => Ok(()),
        }
    }

    /// The per-queue I/O budget when the run is limited by an I/O count.
    pub fn ios_for_queue(&self, queue: usize) -> Option<u64> {
        match self.limit {
            Limit::Runtime(_) => None,
            Limit::Ios(total) => {
                let queues = self.queues as u64;
                let extra = u64::from((queue as u64) < total % queues);
                Some(total / queues + extra)
            }
        }
    }
}

/// The part of the device a run uses: `blocks` blocks of `block_size` bytes
/// starting at offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Bytes per block (the I/O size).
    pub block_size: u64,
    /// Number of whole blocks in the region.
    pub blocks: u64,
}

impl Region {
    /// The region's length in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    /// The contiguous slice of block indices queue `queue` of `queues` owns,
    /// as (first block, block count). Slices never overlap and cover the
    /// region.
    pub fn slice_for_queue(&self, queue: usize, queues: usize) -> (u64, u64) {
        let start = self.blocks * queue as u64 / queues as u64;
        let end = self.blocks * (queue as u64 + 1) / queues as u64;
        (start, end - start)
    }
}

/// How a generator picks offsets.
#[derive(Clone, Debug)]
enum Order {
    /// Uniformly random over the whole region, forever.
    Random { blocks: u64 },
    /// Sequential over the queue's slice, wrapping at its end, forever.
    Sequential { first: u64, count: u64, cursor: u64 },
    /// Every block of the queue's slice exactly once, in a scrambled order
    /// if `stride` is not 1, then done.
    Pass {
        first: u64,
        count: u64,
        index: u64,
        stride: u64,
        shift: u64,
    },
}

/// Generates the (operation, byte offset) pairs of one queue.
#[derive(Clone, Debug)]
pub struct OpGenerator {
    rng: Rng,
    order: Order,
    read_percent: u8,
    block_size: u64,
}

impl OpGenerator {
    /// The generator of a measured run for queue `queue`.
    ///
    /// Random workloads pick from the whole region; sequential ones walk the
    /// queue's own slice so that queues do not read or write the same blocks
    /// in lockstep.
    pub fn for_workload(spec: &WorkloadSpec, region: Region, queue: usize) -> Self {
        let order = if spec.workload.is_random() {
            Order::Random {
                blocks: region.blocks,
            }
        } else {
            let (first, count) = region.slice_for_queue(queue, spec.queues);
            Order::Sequential {
                first,
                count,
                cursor: 0,
            }
        };
        OpGenerator {
            rng: Rng::new(mix64(spec.seed ^ (queue as u64).wrapping_mul(0x51_7cc1))),
            order,
            read_percent: spec.read_percent(),
            block_size: region.block_size,
        }
    }

    /// A generator that visits every block of queue `queue`'s slice exactly
    /// once with operation `op`: in a scrambled order if `random`, else in
    /// ascending order. Used by the verification passes.
    pub fn for_pass(
        op: Op,
        random: bool,
        region: Region,
        queue: usize,
        queues: usize,
        seed: u64,
    ) -> Self {
        let (first, count) = region.slice_for_queue(queue, queues);
        let mut rng = Rng::new(mix64(seed ^ 0x7061_7373 ^ queue as u64));
        let (stride, shift) = if random && count > 2 {
            (coprime_stride(count, &mut rng), rng.below(count))
        } else {
            (1, 0)
        };
        OpGenerator {
            rng,
            order: Order::Pass {
                first,
                count,
                index: 0,
                stride,
                shift,
            },
            read_percent: if op == Op::Read { 100 } else { 0 },
            block_size: region.block_size,
        }
    }

    /// The next operation and its byte offset, or `None` when a pass is
    /// complete (measured runs never end by themselves).
    pub fn next_op(&mut self) -> Option<(Op, u64)> {
        let block = match &mut self.order {
            Order::Random { blocks } => {
                let blocks = *blocks;
                self.rng.below(blocks)
            }
            Order::Sequential {
                first,
                count,
                cursor,
            } => {
                let block = *first + *cursor;
                *cursor += 1;
                if *cursor == *count {
                    *cursor = 0;
                }
                block
            }
            Order::Pass {
                first,
                count,
                index,
                stride,
                shift,
            } => {
                if *index == *count {
                    return None;
                }
                let scrambled = (u128::from(*index) * u128::from(*stride) + u128::from(*shift))
                    % u128::from(*count);
                *index += 1;
                *first + scrambled as u64
            }
        };
        let op = match self.read_percent {
            100 => Op::Read,
            0 => Op::Write,
            pct => {
                if self.rng.below(100) < u64::from(pct) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        Some((op, block * self.block_size))
    }
}

/// Picks a stride in `1..count` coprime with `count`, so that
/// `i -> (i * stride + shift) % count` is a permutation of `0..count`.
fn coprime_stride(count: u64, rng: &mut Rng) -> u64 {
    loop {
        let candidate = (count / 2 + rng.below(count / 2)) | 1;
        let candidate = candidate % count;
        if candidate > 1 && gcd(candidate, count) == 1 {
            return candidate;
        }
        if count <= 3 {
            return 1;
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(workload: Workload, queues: usize) -> WorkloadSpec {
        WorkloadSpec {
            workload,
            block_size: 4096,
            iodepth: 4,
            queues,
            rwmix_read: 70,
            size: None,
            limit: Limit::Ios(10),
            pattern: Pattern::Unique,
            dup_blocks: 4,
            verify: None,
            seed: 1,
            io_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn slices_cover_region_without_overlap() {
        let region = Region {
            block_size: 4096,
            blocks: 10,
        };
        let mut next = 0;
        for q in 0..3 {
            let (first, count) = region.slice_for_queue(q, 3);
            assert_eq!(first, next);
            next = first + count;
        }
        assert_eq!(next, 10);
    }

    #[test]
    fn pass_visits_every_block_once() {
        for blocks in [1u64, 2, 3, 7, 64, 1000] {
            let region = Region {
                block_size: 512,
                blocks,
            };
            for random in [false, true] {
                let mut seen = vec![false; blocks as usize];
                for q in 0..2 {
                    let mut gen = OpGenerator::for_pass(Op::Write, random, region, q, 2, 9);
                    while let Some((op, offset)) = gen.next_op() {
                        assert_eq!(op, Op::Write);
                        let block = (offset / 512) as usize;
                        assert!(!seen[block], "block {block} visited twice");
                        seen[block] = true;
                    }
                }
                assert!(seen.iter().all(|&s| s), "blocks={blocks} random={random}");
            }
        }
    }

    #[test]
    fn sequential_wraps_within_slice() {
        let region = Region {
            block_size: 4096,
            blocks: 8,
        };
        let mut gen = OpGenerator::for_workload(&spec(Workload::Write, 2), region, 1);
        let offsets: Vec<u64> = (0..6).map(|_| gen.next_op().unwrap().1 / 4096).collect();
        assert_eq!(offsets, vec![4, 5, 6, 7, 4, 5]);
    }

    #[test]
    fn randrw_mixes_roughly_as_asked() {
        let region = Region {
            block_size: 4096,
            blocks: 1000,
        };
        let mut gen = OpGenerator::for_workload(&spec(Workload::Randrw, 1), region, 0);
        let reads = (0..10_000)
            .filter(|_| gen.next_op().unwrap().0 == Op::Read)
            .count();
        assert!((6500..7500).contains(&reads), "{reads} reads of 10000");
    }

    #[test]
    fn ios_are_shared_between_queues() {
        let mut s = spec(Workload::Randread, 3);
        s.limit = Limit::Ios(10);
        let total: u64 = (0..3).map(|q| s.ios_for_queue(q).unwrap()).sum();
        assert_eq!(total, 10);
    }
}
