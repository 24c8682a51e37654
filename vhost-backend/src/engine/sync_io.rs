//! The fallback queue: blocking syscalls on the queue thread, for kernels
//! where io_uring is missing or disabled.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustix::fs::{fallocate, FallocateFlags};

use super::buffers::{aligned, is_unsupported, total_len, AlignedBuf, Fallback, Fallocate};
use super::{BlockOp, Completion, EngineQueue};

/// Executes each operation when it is submitted.
pub struct SyncQueue {
    file: Arc<File>,
    align: usize,
    done: VecDeque<(u32, io::Result<()>)>,
}

impl SyncQueue {
    /// A queue on `file`, whose I/O must be aligned to `align`.
    pub fn new(file: Arc<File>, align: usize) -> Self {
        SyncQueue {
            file,
            align,
            done: VecDeque::new(),
        }
    }

    /// # Safety
    ///
    /// As [`EngineQueue::submit`].
    unsafe fn execute(&self, op: BlockOp<'_>) -> io::Result<()> {
        match op {
            BlockOp::Read { offset, bufs } => {
                if aligned(offset, bufs, self.align) {
                    let mut at = offset;
                    for b in bufs {
                        // SAFETY: the submitter guarantees `b` is valid and
                        // unshared until this operation completes, which is now.
                        let dst = unsafe { std::slice::from_raw_parts_mut(b.ptr, b.len) };
                        self.file.read_exact_at(dst, at)?;
                        at += b.len as u64;
                    }
                } else {
                    let mut bounce = AlignedBuf::new(total_len(bufs), self.align);
                    self.file.read_exact_at(bounce.as_mut_slice(), offset)?;
                    // SAFETY: as above.
                    unsafe { bounce.scatter_to(bufs) };
                }
                Ok(())
            }
            BlockOp::Write {
                offset,
                bufs,
                durable,
            } => {
                if aligned(offset, bufs, self.align) {
                    let mut at = offset;
                    for b in bufs {
                        // SAFETY: as for reads.
                        let src = unsafe { std::slice::from_raw_parts(b.ptr, b.len) };
                        self.file.write_all_at(src, at)?;
                        at += b.len as u64;
                    }
                } else {
                    let mut bounce = AlignedBuf::new(total_len(bufs), self.align);
                    // SAFETY: as for reads.
                    unsafe { bounce.gather_from(bufs) };
                    self.file.write_all_at(bounce.as_mut_slice(), offset)?;
                }
                if durable {
                    self.file.sync_data()?;
                }
                Ok(())
            }
            BlockOp::Flush => self.file.sync_data(),
            BlockOp::Discard { .. } | BlockOp::WriteZeroes { .. } => {
                let Some((mode, offset, len)) = Fallocate::for_op(&op) else {
                    return Ok(());
                };
                let is_discard = matches!(op, BlockOp::Discard { .. });
                match self.fallocate(mode, offset, len) {
                    Err(e) if is_unsupported(&e) => match mode.on_unsupported(is_discard) {
                        Some(Fallback::Retry(other)) => self.fallocate(other, offset, len),
                        Some(Fallback::Succeed) => Ok(()),
                        None => Err(e),
                    },
                    other => other,
                }
            }
        }
    }

    fn fallocate(&self, mode: Fallocate, offset: u64, len: u64) -> io::Result<()> {
        let flags = FallocateFlags::from_bits_retain(mode.mode_bits() as u32);
        fallocate(&*self.file, flags, offset, len).map_err(io::Error::from)
    }
}

impl EngineQueue for SyncQueue {
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    unsafe fn submit(&mut self, op: BlockOp<'_>, tag: u32) -> io::Result<()> {
        // SAFETY: forwarded from our caller's promise.
        let result = unsafe { self.execute(op) };
        self.done.push_back((tag, result));
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, done: Completion<'_>) {
        while let Some((tag, result)) = self.done.pop_front() {
            done(tag, result);
        }
    }

    fn drain(&mut self, done: Completion<'_>) {
        self.reap(done);
    }
}
