//! The io_uring queue: one ring per queue thread, completions announced
//! through an eventfd that the queue thread's epoll watches.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::buffers::{aligned, is_unsupported, total_len, AlignedBuf, Fallback, Fallocate};
use super::{BlockOp, Completion, EngineQueue, IoBuf};

/// Submission queue entries per ring; more in flight simply waits its turn.
const RING_ENTRIES: u32 = 256;
/// The file's index in a queue ring's registered file table.
pub(super) const QUEUE_FILE: types::Fixed = types::Fixed(0);
/// The image, for the raw queue.
const IMAGE: types::Fixed = QUEUE_FILE;

/// A queue thread's ring of `entries`: `file` registered as
/// [`QUEUE_FILE`], completions announced on `eventfd`.
///
/// Not `SINGLE_ISSUER`: the ring is made on the serving thread and drained
/// from the vhost-user thread. `COOP_TASKRUN` was measured and made no
/// difference (docs/BENCHMARKS.md, ninth session).
pub(super) fn queue_ring(entries: u32, file: RawFd, eventfd: RawFd) -> io::Result<IoUring> {
    let ring = IoUring::new(entries)?;
    ring.submitter().register_files(&[file])?;
    ring.submitter().register_eventfd(eventfd)?;
    Ok(ring)
}

/// What an operation in flight needs kept alive or done on completion.
#[derive(Default)]
struct OpSlot {
    tag: u32,
    /// Bytes the read or write must transfer; 0 for other operations.
    expected: usize,
    /// The iovec array of a vectored read or write.
    iovecs: Vec<libc::iovec>,
    /// Bounce buffer for unaligned guest buffers.
    bounce: Option<AlignedBuf>,
    /// Guest buffers a bounced read is copied out to.
    read_targets: Vec<IoBuf>,
    /// A fallocate in flight: mode, offset, length, and whether it is a discard.
    fallocate: Option<(Fallocate, u64, u64, bool)>,
}

// SAFETY: the raw pointers inside (iovecs, read targets) point into guest
// memory that the submitter keeps alive; the slot is only used by the queue
// thread that owns the ring.
unsafe impl Send for OpSlot {}

/// A queue backed by io_uring.
pub struct UringQueue {
    ring: IoUring,
    // Keeps the registered file open.
    _file: Arc<File>,
    eventfd: EventFd,
    align: usize,
    slots: Vec<OpSlot>,
    free: Vec<u32>,
    in_flight: usize,
}

impl UringQueue {
    /// Sets up a ring on `file`, whose I/O must be aligned to `align`.
    pub fn new(file: Arc<File>, align: usize) -> io::Result<Self> {
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        let ring = queue_ring(RING_ENTRIES, file.as_raw_fd(), eventfd.as_raw_fd())?;
        Ok(UringQueue {
            ring,
            _file: file,
            eventfd,
            align,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
        })
    }

    fn take_slot(&mut self, tag: u32) -> u32 {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(OpSlot::default());
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.tag = tag;
        slot.expected = 0;
        slot.iovecs.clear();
        slot.bounce = None;
        slot.read_targets.clear();
        slot.fallocate = None;
        index
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points at memory that outlives
            // the operation: guest buffers (the submitter's promise) or the
            // slot's own iovecs and bounce buffer, which stay untouched until
            // the completion is reaped.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Builds the read or write entry for `bufs` at `offset` in slot `index`.
    fn rw_entry(
        &mut self,
        index: u32,
        write: bool,
        offset: u64,
        bufs: &[IoBuf],
        rw_flags: i32,
    ) -> squeue::Entry {
        let align = self.align;
        let slot = &mut self.slots[index as usize];
        slot.expected = total_len(bufs);
        let entry = if !aligned(offset, bufs, align) {
            let mut bounce = AlignedBuf::new(slot.expected, align);
            if write {
                // SAFETY: the submitter promises the buffers are valid.
                unsafe { bounce.gather_from(bufs) };
            } else {
                slot.read_targets.extend_from_slice(bufs);
            }
            let buf = bounce.as_mut_slice();
            let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
            slot.bounce = Some(bounce);
            if write {
                opcode::Write::new(IMAGE, ptr, len)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            } else {
                opcode::Read::new(IMAGE, ptr, len).offset(offset).build()
            }
        } else if let [one] = bufs {
            if write {
                opcode::Write::new(IMAGE, one.ptr, one.len as u32)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            } else {
                opcode::Read::new(IMAGE, one.ptr, one.len as u32)
                    .offset(offset)
                    .build()
            }
        } else {
            slot.iovecs.extend(bufs.iter().map(|b| libc::iovec {
                iov_base: b.ptr.cast(),
                iov_len: b.len,
            }));
            let (iov, n) = (slot.iovecs.as_ptr(), slot.iovecs.len() as u32);
            if write {
                opcode::Writev::new(IMAGE, iov, n)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            } else {
                opcode::Readv::new(IMAGE, iov, n).offset(offset).build()
            }
        };
        entry.user_data(u64::from(index))
    }

    fn fallocate_entry(index: u32, mode: Fallocate, offset: u64, len: u64) -> squeue::Entry {
        opcode::Fallocate::new(IMAGE, len)
            .offset(offset)
            .mode(mode.mode_bits())
            .build()
            .user_data(u64::from(index))
    }

    /// Turns a completion into the operation's result, or resubmits it.
    fn complete(&mut self, index: u32, res: i32, done: Completion<'_>) -> io::Result<()> {
        let slot = &mut self.slots[index as usize];
        let mut result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else if (res as usize) < slot.expected {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short transfer: {res} of {} bytes", slot.expected),
            ))
        } else {
            Ok(())
        };
        if let (Err(e), Some((mode, offset, len, is_discard))) = (&result, slot.fallocate) {
            if is_unsupported(e) {
                match mode.on_unsupported(is_discard) {
                    Some(Fallback::Retry(other)) => {
                        slot.fallocate = Some((other, offset, len, is_discard));
                        return self.push(Self::fallocate_entry(index, other, offset, len));
                    }
                    Some(Fallback::Succeed) => result = Ok(()),
                    None => {}
                }
            }
        }
        if result.is_ok() {
            if let Some(bounce) = slot.bounce.as_mut() {
                // SAFETY: the read targets are guest buffers the submitter
                // keeps valid until this completion is delivered.
                unsafe { bounce.scatter_to(&slot.read_targets) };
            }
        }
        let tag = slot.tag;
        slot.bounce = None;
        self.free.push(index);
        self.in_flight -= 1;
        done(tag, result);
        Ok(())
    }
}

impl EngineQueue for UringQueue {
    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    unsafe fn submit(&mut self, op: BlockOp<'_>, tag: u32) -> io::Result<()> {
        let index = self.take_slot(tag);
        let entry = match op {
            BlockOp::Read { offset, bufs } => self.rw_entry(index, false, offset, bufs, 0),
            BlockOp::Write {
                offset,
                bufs,
                durable,
            } => {
                let flags = if durable { libc::RWF_DSYNC } else { 0 };
                self.rw_entry(index, true, offset, bufs, flags)
            }
            BlockOp::Flush => opcode::Fsync::new(IMAGE)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(u64::from(index)),
            BlockOp::Discard { .. } | BlockOp::WriteZeroes { .. } => {
                let (mode, offset, len) =
                    Fallocate::for_op(&op).unwrap_or((Fallocate::PunchHole, 0, 0));
                let is_discard = matches!(op, BlockOp::Discard { .. });
                self.slots[index as usize].fallocate = Some((mode, offset, len, is_discard));
                Self::fallocate_entry(index, mode, offset, len)
            }
        };
        if let Err(e) = self.push(entry) {
            self.free.push(index);
            return Err(e);
        }
        self.in_flight += 1;
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn clear_completion_event(&mut self) {
        // Cleared before the CQ is looked at, so a completion that lands
        // after the look raises it again. EAGAIN just means it was not raised.
        let _ = self.eventfd.read();
    }

    fn reap(&mut self, done: Completion<'_>) {
        loop {
            let next = self.ring.completion().next();
            let Some(cqe) = next else { break };
            let index = cqe.user_data() as u32;
            if let Err(e) = self.complete(index, cqe.result(), done) {
                // Resubmission failed: report the operation as failed.
                let tag = self.slots[index as usize].tag;
                self.free.push(index);
                self.in_flight -= 1;
                done(tag, Err(e));
            }
        }
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "io_uring submit failed after reaping");
        }
    }

    fn drain(&mut self, done: Completion<'_>) {
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, in_flight = self.in_flight, "io_uring wait failed while draining");
                    return;
                }
            }
            self.reap(done);
        }
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still write into slot buffers: wait for it.
        if self.in_flight > 0 {
            self.drain(&mut |_, _| {});
        }
    }
}
