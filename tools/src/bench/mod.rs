//! `strata-bench`: a host-side load generator for block devices.
//!
//! It drives a vhost-user-blk socket (libblkio's `virtio-blk-vhost-user`
//! driver) or a plain file (libblkio's `io_uring` driver with `O_DIRECT`)
//! with the same client code, so figures for Strata, qemu-storage-daemon and
//! the raw file compare directly.
//!
//! One concept per module:
//!
//! - [`size`]: parsing and printing byte sizes (`4k`, `1G`).
//! - [`target`]: what to benchmark (`vhost-user:SOCKET`, `file:PATH`).
//! - [`device`]: opening a target with libblkio, queues and I/O buffers.
//! - [`rng`]: the small deterministic random number generator.
//! - [`workload`]: the workload description and per-queue offset generator.
//! - [`pattern`]: the data written by benchmark writes.
//! - [`tag`]: the self-describing verification pattern.
//! - [`stats`]: per-queue counters and latency histograms.
//! - [`worker`]: the per-queue submission/completion loop.
//! - [`run`]: running one workload on one target across all queues.
//! - [`schedule`]: the rotated target order and the seed of each round.
//! - [`aggregate`]: one target's figures across rounds.
//! - [`compare`]: running a comparison of several targets in rounds.
//! - [`report`]: human-readable and JSON output, the comparison table.
//! - [`cli`]: the command line.

pub mod aggregate;
pub mod cli;
pub mod compare;
pub mod device;
pub mod pattern;
pub mod report;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod size;
pub mod stats;
pub mod tag;
pub mod target;
pub mod worker;
pub mod workload;
