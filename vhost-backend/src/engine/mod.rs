//! Storage engines: what turns block operations into bytes on the host.
//!
//! The virtio layer speaks only [`Engine`] and [`EngineQueue`], so a new kind
//! of vdisk (Strata's deduplicating store) slots in without touching it. An
//! engine is shared by all queues of a vdisk; each queue thread owns one
//! [`EngineQueue`], which submits operations and reports their completions.

pub(crate) mod buffers;
pub mod raw;
pub mod strata;
mod sync_io;
mod uring;

use std::io;
use std::os::fd::RawFd;

pub use raw::RawImage;

/// A piece of host memory an operation reads into or writes from.
///
/// It points into guest memory mapped by the daemon. Whoever submits it
/// promises that the memory stays mapped until the operation completes.
#[derive(Debug, Clone, Copy)]
pub struct IoBuf {
    /// Start of the buffer.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: an IoBuf is only an address and a length; the submitter keeps the
// memory alive (see EngineQueue::submit) and each buffer is used by one
// thread at a time (a strata queue's verify helper writes the pieces of the
// reads it is handed; they move to it and back under a lock).
unsafe impl Send for IoBuf {}

/// One operation on the vdisk.
#[derive(Debug, Clone, Copy)]
pub enum BlockOp<'a> {
    /// Read `bufs` (in order) from `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Destination buffers.
        bufs: &'a [IoBuf],
    },
    /// Write `bufs` (in order) at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Source buffers.
        bufs: &'a [IoBuf],
        /// Complete only once the data is durable (write cache off).
        durable: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Deallocate a range; reads of it may return anything until rewritten
    /// (Strata returns zeros).
    Discard {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Make a range read as zeros, deallocating it if `unmap`.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Deallocation is allowed.
        unmap: bool,
    },
}

/// What an engine reports about the vdisk it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineInfo {
    /// Size in bytes.
    pub capacity: u64,
    /// The image refuses writes.
    pub read_only: bool,
}

/// How queues move data: io_uring, or plain syscalls where that is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    /// io_uring if the kernel allows it, otherwise syscalls.
    Auto,
    /// io_uring only: fail if it cannot be set up.
    Uring,
    /// Blocking syscalls on the queue thread.
    Sync,
}

/// A vdisk's storage, shared by its queues.
pub trait Engine: Send + Sync {
    /// Size and mode of the vdisk.
    fn info(&self) -> EngineInfo;
    /// Makes the submission/completion context for one queue thread.
    fn new_queue(&self, queue_index: u16) -> io::Result<Box<dyn EngineQueue>>;
}

/// Receives the completion of operation `tag`.
pub type Completion<'a> = &'a mut dyn FnMut(u32, io::Result<()>);

/// One queue thread's view of an engine.
pub trait EngineQueue: Send {
    /// A file descriptor that becomes readable when completions are ready,
    /// or `None` if completions are ready as soon as `commit` returns.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Queues `op`; its completion is reported with `tag`.
    ///
    /// # Safety
    ///
    /// Every buffer in `op` must stay valid, and not be accessed by anyone
    /// else, until the completion for `tag` has been delivered by `reap` or
    /// `drain`.
    unsafe fn submit(&mut self, op: BlockOp<'_>, tag: u32) -> io::Result<()>;

    /// Starts everything queued since the last call.
    fn commit(&mut self) -> io::Result<()>;

    /// Clears the completion fd after it fired; call before `reap`.
    fn clear_completion_event(&mut self) {}

    /// Delivers the completions that are ready, without blocking.
    fn reap(&mut self, done: Completion<'_>);

    /// Blocks until every submitted operation has completed and delivers them.
    fn drain(&mut self, done: Completion<'_>);
}
