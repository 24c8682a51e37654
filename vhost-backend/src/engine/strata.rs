//! The `strata` engine: a vdisk in the host's flash store, deduplicated,
//! compressed, encrypted and checksummed block by block.
//!
//! Writes are copied once out of guest memory (so the fingerprint and the
//! stored bytes are of the same data even if the guest changes its buffer),
//! then handed to the store; under writethrough they complete when the
//! journal holds them. Reads look each block up in the map, copy frames
//! still in RAM, and read the rest from flash through this queue's
//! io_uring; every frame is verified before a byte reaches the guest.
//! Requests that are not whole 4 KiB blocks are served by read-modify-write.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use strata_common::fingerprint::{Fingerprint, BLOCK_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::buffers::{total_len, AlignedBuf};
use super::{BlockOp, Completion, Engine, EngineInfo, EngineQueue, IoBuf, IoMode};
use crate::flash::{Core, FlashStore, Located, Location, StoreVdisk};
use strata_common::ondisk::PAGE;

/// Blocks handed to the store at once; bounds the RAM a huge request takes.
const CHUNK_BLOCKS: usize = 256;
/// Flash reads one ring holds.
const RING_ENTRIES: u32 = 256;
const BLOCK: u64 = BLOCK_SIZE as u64;

/// A `strata` vdisk, shared by its queues.
pub struct StrataEngine {
    store: Arc<FlashStore>,
    vdisk: Arc<StoreVdisk>,
    read_only: bool,
    io: IoMode,
}

impl StrataEngine {
    /// The engine of `vdisk` in `store`.
    pub fn new(
        store: Arc<FlashStore>,
        vdisk: Arc<StoreVdisk>,
        read_only: bool,
        io: IoMode,
    ) -> Self {
        StrataEngine {
            store,
            vdisk,
            read_only,
            io,
        }
    }
}

impl Engine for StrataEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            capacity: self.vdisk.block_count * BLOCK,
            read_only: self.read_only,
        }
    }

    fn new_queue(&self, queue_index: u16) -> io::Result<Box<dyn EngineQueue>> {
        let core = self.store.core().clone();
        let eventfd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let ring = match self.io {
            IoMode::Sync => None,
            mode => match IoUring::new(RING_ENTRIES).and_then(|ring| {
                ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
                Ok(ring)
            }) {
                Ok(ring) => Some(ring),
                Err(e) if mode == IoMode::Auto => {
                    tracing::warn!(vdisk = %self.vdisk.name, queue = queue_index, error = %e,
                        "io_uring unavailable; flash reads use blocking syscalls");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        core.add_waiter(&eventfd);
        Ok(Box::new(StrataQueue {
            flash_fd: core.device.file().as_raw_fd(),
            core,
            vdisk: self.vdisk.clone(),
            eventfd,
            ring,
            ops: Vec::new(),
            free_ops: Vec::new(),
            reads: Vec::new(),
            free_reads: Vec::new(),
            ready: VecDeque::new(),
            durable_waits: VecDeque::new(),
            in_flight: 0,
            fingerprints: Vec::new(),
        }))
    }
}

/// A read request waiting for flash reads.
#[derive(Default)]
struct ReadOp {
    tag: u32,
    /// Flash reads not yet completed.
    remaining: u32,
    error: Option<io::Error>,
    /// Guest buffers, in order.
    bufs: Vec<IoBuf>,
    /// Byte offset of the request on the vdisk.
    offset: u64,
}

// SAFETY: the guest buffers are kept valid by the submitter until the
// operation completes, and only the owning queue thread touches them.
unsafe impl Send for ReadOp {}

/// One flash read in flight.
struct FlashRead {
    op: u32,
    lba: u64,
    fingerprint: Fingerprint,
    location: Location,
    pages: AlignedBuf,
    skip: usize,
}

/// One queue of a `strata` vdisk.
pub struct StrataQueue {
    core: Arc<Core>,
    vdisk: Arc<StoreVdisk>,
    flash_fd: RawFd,
    eventfd: Arc<EventFd>,
    ring: Option<IoUring>,
    ops: Vec<ReadOp>,
    free_ops: Vec<u32>,
    reads: Vec<Option<FlashRead>>,
    free_reads: Vec<u32>,
    ready: VecDeque<(u32, io::Result<()>)>,
    /// Writes and flushes waiting for the journal: (sequence, tag), in order.
    durable_waits: VecDeque<(u64, u32)>,
    in_flight: usize,
    fingerprints: Vec<Fingerprint>,
}

impl StrataQueue {
    fn io_error(&self, what: &str, e: impl std::fmt::Display) -> io::Error {
        tracing::error!(vdisk = %self.vdisk.name, error = %e, "{what}");
        io::Error::other(format!("vdisk {}: {what}: {e}", self.vdisk.name))
    }

    /// Decodes `frame` as block `lba` with `fingerprint`, counting and
    /// logging a bad one.
    fn decode(
        &self,
        lba: u64,
        fingerprint: &Fingerprint,
        frame: &[u8],
        block: &mut [u8; BLOCK_SIZE],
    ) -> io::Result<()> {
        self.core.codec.decode(frame, fingerprint, block).map_err(|e| {
            self.core
                .counters
                .bad_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(vdisk = %self.vdisk.name, lba, %fingerprint, error = %e, "bad frame: read fails");
            io::Error::other(format!(
                "vdisk {}: block {lba}: bad frame: {e}",
                self.vdisk.name
            ))
        })
    }

    /// The current contents of block `lba` (blocking).
    fn read_block(&self, lba: u64, block: &mut [u8; BLOCK_SIZE]) -> io::Result<()> {
        let mut fps = Vec::with_capacity(1);
        self.vdisk.fingerprints(lba, 1, &mut fps)?;
        let fp = fps[0];
        if fp.is_zero() {
            block.fill(0);
            return Ok(());
        }
        let frame = match self.core.locate(&fp) {
            None => return Err(self.missing(lba, &fp)),
            Some(Located::Ram(frame)) => frame,
            Some(Located::Flash(location)) => self
                .core
                .read_flash(&location)
                .map_err(|e| self.io_error("flash read failed", e))?,
        };
        self.decode(lba, &fp, &frame, block)
    }

    /// Whether `fingerprint` is no longer at `location` (the cleaner moved it).
    fn moved(&self, fingerprint: &Fingerprint, location: &Location) -> bool {
        !matches!(self.core.locate(fingerprint), Some(Located::Flash(l)) if l == *location)
    }

    fn missing(&self, lba: u64, fp: &Fingerprint) -> io::Error {
        self.core
            .counters
            .bad_frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.io_error(
            "block missing from the store",
            format!("block {lba} maps to {fp}, which the flash index lacks"),
        )
    }

    /// # Safety
    /// As [`EngineQueue::submit`].
    unsafe fn submit_read(&mut self, offset: u64, bufs: &[IoBuf], tag: u32) -> io::Result<()> {
        let len = total_len(bufs) as u64;
        if len == 0 {
            self.ready.push_back((tag, Ok(())));
            return Ok(());
        }
        let first = offset / BLOCK;
        let count = (offset + len).div_ceil(BLOCK) - first;
        let mut fps = std::mem::take(&mut self.fingerprints);
        fps.clear();
        if let Err(e) = self.vdisk.fingerprints(first, count, &mut fps) {
            self.fingerprints = fps;
            return Err(self.io_error("map lookup failed", e));
        }
        let op = self.new_op(tag, offset, bufs);
        let mut block = [0u8; BLOCK_SIZE];
        for (lba, fp) in (first..).zip(fps.iter()) {
            let issued = if fp.is_zero() {
                block.fill(0);
                Ok(true)
            } else {
                match self.core.locate(fp) {
                    None => Err(self.missing(lba, fp)),
                    Some(Located::Ram(frame)) => {
                        self.decode(lba, fp, &frame, &mut block).map(|()| true)
                    }
                    Some(Located::Flash(location)) => {
                        self.read_from_flash(op, lba, *fp, location).map(|()| false)
                    }
                }
            };
            match issued {
                // SAFETY: the submitter's promise covers the op's buffers.
                Ok(true) => unsafe { scatter(&self.ops[op as usize], lba, &block) },
                Ok(false) => {}
                Err(e) => {
                    // Reads already issued still land in the guest buffers:
                    // the op completes (with this error) after them.
                    self.ops[op as usize].error.get_or_insert(e);
                    break;
                }
            }
        }
        self.finish_if_done(op);
        self.fingerprints = fps;
        Ok(())
    }

    fn new_op(&mut self, tag: u32, offset: u64, bufs: &[IoBuf]) -> u32 {
        let index = self.free_ops.pop().unwrap_or_else(|| {
            self.ops.push(ReadOp::default());
            (self.ops.len() - 1) as u32
        });
        let op = &mut self.ops[index as usize];
        op.tag = tag;
        op.remaining = 1; // held until every block is issued
        op.error = None;
        op.bufs.clear();
        op.bufs.extend_from_slice(bufs);
        op.offset = offset;
        index
    }

    /// Drops one reference to read `op`; completes it at zero.
    fn finish_if_done(&mut self, op: u32) {
        let state = &mut self.ops[op as usize];
        state.remaining -= 1;
        if state.remaining == 0 {
            let result = state.error.take().map_or(Ok(()), Err);
            self.ready.push_back((state.tag, result));
            self.free_ops.push(op);
        }
    }

    fn read_from_flash(
        &mut self,
        op: u32,
        lba: u64,
        fingerprint: Fingerprint,
        location: Location,
    ) -> io::Result<()> {
        let (offset, len, skip) = self.core.covering_pages(&location);
        let Some(ring) = self.ring.as_mut() else {
            let frame = self
                .core
                .read_flash(&location)
                .map_err(|e| self.io_error("flash read failed", e))?;
            let mut block = [0u8; BLOCK_SIZE];
            self.decode(lba, &fingerprint, &frame, &mut block)?;
            // SAFETY: the submitter's promise covers the op's buffers.
            unsafe { scatter(&self.ops[op as usize], lba, &block) };
            return Ok(());
        };
        let index = self.free_reads.pop().unwrap_or_else(|| {
            self.reads.push(None);
            (self.reads.len() - 1) as u32
        });
        let mut pages = AlignedBuf::new(len, PAGE);
        let entry = opcode::Read::new(
            types::Fd(self.flash_fd),
            pages.as_mut_slice().as_mut_ptr(),
            len as u32,
        )
        .offset(offset)
        .build()
        .user_data(u64::from(index));
        loop {
            // SAFETY: the buffer lives in `self.reads[index]` until the
            // completion is reaped (Drop drains the ring first).
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                break;
            }
            ring.submit()?;
        }
        self.reads[index as usize] = Some(FlashRead {
            op,
            lba,
            fingerprint,
            location,
            pages,
            skip,
        });
        self.ops[op as usize].remaining += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// # Safety
    /// As [`EngineQueue::submit`].
    unsafe fn submit_write(&mut self, offset: u64, bufs: &[IoBuf]) -> io::Result<u64> {
        let len = total_len(bufs) as u64;
        let first = offset / BLOCK;
        let end = (offset + len).div_ceil(BLOCK);
        let skip = (offset - first * BLOCK) as usize;
        let partial = skip != 0 || !(offset + len).is_multiple_of(BLOCK);
        let vdisk = self.vdisk.clone();
        let _exclusive = partial.then(|| vdisk.partial_block_write());
        let _shared = (!partial).then(|| vdisk.whole_block_write());
        let mut data = vec![0u8; ((end - first) * BLOCK) as usize];
        if skip != 0 {
            let head: &mut [u8; BLOCK_SIZE] = (&mut data[..BLOCK_SIZE])
                .try_into()
                .map_err(|_| io::Error::other("short bounce buffer"))?;
            self.read_block(first, head)?;
        }
        if !(offset + len).is_multiple_of(BLOCK) && (end - 1 > first || skip == 0) {
            let at = data.len() - BLOCK_SIZE;
            let tail: &mut [u8; BLOCK_SIZE] = (&mut data[at..])
                .try_into()
                .map_err(|_| io::Error::other("short bounce buffer"))?;
            self.read_block(end - 1, tail)?;
        }
        // SAFETY: the submitter guarantees the buffers are readable.
        unsafe { gather(bufs, &mut data[skip..skip + len as usize]) };
        let mut seq = 0;
        for (i, chunk) in data.chunks(CHUNK_BLOCKS * BLOCK_SIZE).enumerate() {
            let lba = first + (i * CHUNK_BLOCKS) as u64;
            seq = self.vdisk.write_blocks(lba, chunk)?;
        }
        Ok(seq)
    }

    /// Discard and write-zeroes: whole blocks are unmapped, partial ones
    /// rewritten with zeros.
    fn submit_zeroes(&mut self, offset: u64, len: u64) -> io::Result<u64> {
        let first_whole = offset.div_ceil(BLOCK);
        let end_whole = (offset + len) / BLOCK;
        let mut seq = 0;
        let mut zero_part = |this: &mut Self, start: u64, end: u64| -> io::Result<()> {
            if start < end {
                let mut zeros = vec![0u8; (end - start) as usize];
                let buf = [IoBuf {
                    ptr: zeros.as_mut_ptr(),
                    len: zeros.len(),
                }];
                // SAFETY: `zeros` outlives the call, which copies it.
                seq = unsafe { this.submit_write(start, &buf) }?;
            }
            Ok(())
        };
        if first_whole >= end_whole {
            zero_part(self, offset, offset + len)?;
            return Ok(seq);
        }
        zero_part(self, offset, first_whole * BLOCK)?;
        zero_part(self, end_whole * BLOCK, offset + len)?;
        let vdisk = self.vdisk.clone();
        let _shared = vdisk.whole_block_write();
        seq = vdisk.unmap(first_whole, end_whole - first_whole)?;
        Ok(seq)
    }

    /// Completes `tag` once `seq` is durable.
    fn complete_when_durable(&mut self, seq: u64, tag: u32) {
        if seq <= self.core.durable_seq() {
            self.ready.push_back((tag, Ok(())));
        } else {
            self.durable_waits.push_back((seq, tag));
        }
    }

    fn reap_flash(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (index, res) in done {
            let Some(read) = self.reads.get_mut(index as usize).and_then(Option::take) else {
                tracing::error!(index, "completion for an unknown flash read");
                continue;
            };
            self.free_reads.push(index as u32);
            self.in_flight -= 1;
            let outcome = if res < 0 {
                Err(self.io_error("flash read failed", io::Error::from_raw_os_error(-res)))
            } else if (res as usize) < read.skip + read.location.len as usize {
                Err(self.io_error("flash read came back short", format!("{res} bytes")))
            } else {
                let frame =
                    &read.pages.as_slice()[read.skip..read.skip + read.location.len as usize];
                let mut block = [0u8; BLOCK_SIZE];
                let decoded = match self.core.codec.decode(frame, &read.fingerprint, &mut block) {
                    Ok(()) => Ok(()),
                    // The cleaner may have moved the frame (and reused its
                    // place) between lookup and read: look it up again.
                    Err(_) if self.moved(&read.fingerprint, &read.location) => {
                        self.read_block(read.lba, &mut block)
                    }
                    Err(_) => self.decode(read.lba, &read.fingerprint, frame, &mut block),
                };
                decoded.map(|()| {
                    // SAFETY: the op's buffers stay valid until it completes.
                    unsafe { scatter(&self.ops[read.op as usize], read.lba, &block) }
                })
            };
            if let Err(e) = outcome {
                self.ops[read.op as usize].error.get_or_insert(e);
            }
            self.finish_if_done(read.op);
        }
    }

    fn reap_durable(&mut self) {
        if self.durable_waits.is_empty() {
            return;
        }
        if let Some(reason) = self.core.failure() {
            for (_, tag) in self.durable_waits.drain(..) {
                self.ready.push_back((
                    tag,
                    Err(io::Error::other(format!("flash store failed: {reason}"))),
                ));
            }
            return;
        }
        let durable = self.core.durable_seq();
        while self
            .durable_waits
            .front()
            .is_some_and(|&(seq, _)| seq <= durable)
        {
            if let Some((_, tag)) = self.durable_waits.pop_front() {
                self.ready.push_back((tag, Ok(())));
            }
        }
    }

    fn deliver(&mut self, done: Completion<'_>) {
        while let Some((tag, result)) = self.ready.pop_front() {
            done(tag, result);
        }
    }

    /// Waits until the eventfd fires or a short while passes.
    fn wait_event(&self) {
        let mut fds = [libc::pollfd {
            fd: self.eventfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
        let _ = self.eventfd.read();
    }
}

impl EngineQueue for StrataQueue {
    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    unsafe fn submit(&mut self, op: BlockOp<'_>, tag: u32) -> io::Result<()> {
        match op {
            // SAFETY: the caller's promise is passed on.
            BlockOp::Read { offset, bufs } => unsafe { self.submit_read(offset, bufs, tag) },
            BlockOp::Write {
                offset,
                bufs,
                durable,
            } => {
                // SAFETY: as above.
                let seq = unsafe { self.submit_write(offset, bufs) }?;
                if durable {
                    self.complete_when_durable(seq, tag);
                } else {
                    self.ready.push_back((tag, Ok(())));
                }
                Ok(())
            }
            BlockOp::Flush => {
                let seq = self.vdisk.last_seq();
                self.complete_when_durable(seq, tag);
                Ok(())
            }
            BlockOp::Discard { offset, len } | BlockOp::WriteZeroes { offset, len, .. } => {
                let seq = self.submit_zeroes(offset, len)?;
                self.complete_when_durable(seq, tag);
                Ok(())
            }
        }
    }

    fn commit(&mut self) -> io::Result<()> {
        if let Some(ring) = self.ring.as_mut() {
            ring.submit()?;
        }
        Ok(())
    }

    fn clear_completion_event(&mut self) {
        let _ = self.eventfd.read();
    }

    fn reap(&mut self, done: Completion<'_>) {
        self.reap_flash();
        self.reap_durable();
        self.deliver(done);
    }

    fn drain(&mut self, done: Completion<'_>) {
        loop {
            self.reap(done);
            if self.in_flight == 0 && self.durable_waits.is_empty() {
                return;
            }
            if self.in_flight > 0 {
                if let Some(ring) = self.ring.as_mut() {
                    if let Err(e) = ring.submit_and_wait(1) {
                        tracing::warn!(error = %e, "waiting for flash reads");
                    }
                }
            } else {
                self.wait_event();
            }
        }
    }
}

impl Drop for StrataQueue {
    fn drop(&mut self) {
        // The kernel may still write into read buffers: wait for them.
        while self.in_flight > 0 {
            let Some(ring) = self.ring.as_mut() else {
                break;
            };
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            let n = ring.completion().count();
            self.in_flight = self.in_flight.saturating_sub(n);
        }
    }
}

/// Copies the part of `block` (vdisk block `lba`) that read `op` covers into
/// its guest buffers.
///
/// # Safety
/// The op's buffers must be valid for writes and unshared.
unsafe fn scatter(op: &ReadOp, lba: u64, block: &[u8; BLOCK_SIZE]) {
    let total = total_len(&op.bufs) as u64;
    let block_start = lba * BLOCK;
    let start = op.offset.max(block_start);
    let end = (op.offset + total).min(block_start + BLOCK);
    if start >= end {
        return;
    }
    let mut src = &block[(start - block_start) as usize..(end - block_start) as usize];
    let mut at = (start - op.offset) as usize;
    for buf in &op.bufs {
        if src.is_empty() {
            break;
        }
        if at >= buf.len {
            at -= buf.len;
            continue;
        }
        let n = (buf.len - at).min(src.len());
        // SAFETY: the caller guarantees `buf` is writable for `buf.len`
        // bytes, and `at + n <= buf.len`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.ptr.add(at), n) };
        src = &src[n..];
        at = 0;
    }
}

/// Copies the guest buffers, in order, into `dst` (whose length is theirs).
///
/// # Safety
/// Every buffer must be valid for reads of its length.
unsafe fn gather(bufs: &[IoBuf], dst: &mut [u8]) {
    let mut at = 0;
    for buf in bufs {
        // SAFETY: the caller guarantees `buf` is readable for `buf.len` bytes;
        // `dst` is our own memory.
        let src = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) };
        dst[at..at + buf.len].copy_from_slice(src);
        at += buf.len;
    }
}
