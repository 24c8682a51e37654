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
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

mod verifier;

use io_uring::{opcode, IoUring};
use strata_common::fingerprint::{Fingerprint, BLOCK_SIZE};
use strata_common::frame::{split_header, HEADER_LEN, SPLIT_TAIL_LEN};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::buffers::{total_len, AlignedBuf};
use super::uring::{queue_ring, QUEUE_FILE};
use super::{BlockOp, Completion, Engine, EngineInfo, EngineQueue, IoBuf, IoMode};
use crate::flash::{Core, FlashStore, Located, Location, StoreVdisk};
use strata_common::ondisk::PAGE;
use verifier::VerifyHelper;

/// Blocks handed to the store at once; bounds the RAM a huge request takes.
const CHUNK_BLOCKS: usize = 256;
/// Flash reads one ring holds.
const RING_ENTRIES: u32 = 256;
/// Bytes of a flash read buffer: enough for the largest frame starting
/// anywhere in a page.
const READ_BUF_LEN: usize = 3 * PAGE;
const BLOCK: u64 = BLOCK_SIZE as u64;
/// Lookups of one block a read makes before a frame that keeps moving (or
/// being evicted) under it counts as bad.
const LOOKUP_ATTEMPTS: usize = 3;
/// Completions reaped at once from which the queue thread, falling behind,
/// hands two thirds to its verify helper; fewer are verified in place, as
/// waking the helper for them costs more latency than it saves
/// (docs/BENCHMARKS.md).
const HAND_OVER_MIN: usize = 8;

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
            mode => match queue_ring(
                RING_ENTRIES,
                core.device.file().as_raw_fd(),
                eventfd.as_raw_fd(),
            ) {
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
        let reader = BlockReader {
            core,
            vdisk: self.vdisk.clone(),
        };
        let helper = ring.as_ref().and_then(|_| {
            VerifyHelper::start(
                reader.clone(),
                eventfd.clone(),
                helper_name(&self.vdisk.name, queue_index),
            )
            .inspect_err(|e| {
                tracing::warn!(vdisk = %self.vdisk.name, queue = queue_index, error = %e,
                        "cannot start a verify helper; the queue thread verifies every read");
            })
            .ok()
        });
        Ok(Box::new(StrataQueue {
            reader,
            eventfd,
            ring,
            helper,
            ops: Vec::new(),
            free_ops: Vec::new(),
            reads: Vec::new(),
            free_reads: Vec::new(),
            spare_reads: Vec::new(),
            in_kernel: 0,
            reaped: Vec::new(),
            ready: VecDeque::new(),
            durable_waits: VecDeque::new(),
            fingerprints: Vec::new(),
            scratch: None,
        }))
    }
}

/// The verify helper's thread name: `v`, the queue, `-`, then as much of
/// the vdisk's name as fits Linux's 15 bytes.
fn helper_name(vdisk: &str, queue_index: u16) -> String {
    let mut name = format!("v{queue_index}-");
    for c in vdisk.chars() {
        if name.len() + c.len_utf8() > 15 {
            break;
        }
        name.push(c);
    }
    name
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

/// One flash read of one block: issued through the queue's ring, verified
/// and copied to the guest when it completes, then kept for reuse (its
/// buffer is never zeroed again).
#[derive(Default)]
struct FlashRead {
    /// Index of the request in the queue's `ops`.
    op: u32,
    lba: u64,
    fingerprint: Fingerprint,
    location: Location,
    /// Aligned buffer the kernel reads into: `len` bytes at `into`.
    buf: AlignedBuf,
    into: usize,
    len: usize,
    /// Where the stored bytes start in what is read.
    skip: usize,
    /// The guest byte ranges that receive `range` of the block, in order.
    pieces: Vec<IoBuf>,
    range: Range<usize>,
    /// The kernel's result: bytes read, or a negated errno.
    result: i32,
    /// Why the read failed, once verified.
    error: Option<io::Error>,
}

/// What reading and verifying a block needs: the store and the vdisk.
#[derive(Clone)]
struct BlockReader {
    core: Arc<Core>,
    vdisk: Arc<StoreVdisk>,
}

impl BlockReader {
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
        let Err(e) = self
            .core
            .codec
            .decode_authenticated(frame, fingerprint, block)
        else {
            return Ok(());
        };
        self.core
            .counters
            .bad_frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let check = |good: &[u8]| {
            let mut scratch = [0u8; BLOCK_SIZE];
            self.core
                .codec
                .decode(good, fingerprint, &mut scratch)
                .is_ok()
        };
        match self.core.repair_from_pool(fingerprint, &check) {
            Ok(Some(good)) => {
                tracing::warn!(vdisk = %self.vdisk.name, lba, %fingerprint, error = %e, "bad frame on flash: read served from the pool's copy");
                return self
                    .core
                    .codec
                    .decode(&good, fingerprint, block)
                    .map_err(|e| {
                        self.io_error("the pool's copy of a bad frame failed to decode", e)
                    });
            }
            Ok(None) => {}
            Err(repair) => {
                tracing::error!(vdisk = %self.vdisk.name, lba, error = %repair, "cannot fetch a bad frame's copy from the pool");
            }
        }
        tracing::error!(vdisk = %self.vdisk.name, lba, %fingerprint, error = %e, "bad frame: read fails");
        Err(io::Error::other(format!(
            "vdisk {}: block {lba}: bad frame: {e}",
            self.vdisk.name
        )))
    }

    /// Where block `lba`'s frame `fp` is, fetching the block's region from
    /// the pool when the flash lacks it (again, a few times, if the cleaner
    /// evicts it in between).
    fn find(&self, lba: u64, fp: &Fingerprint) -> io::Result<Located> {
        for _ in 0..LOOKUP_ATTEMPTS {
            if let Some(located) = self.core.locate(fp) {
                return Ok(located);
            }
            if self
                .vdisk
                .fetch_region(lba)
                .map_err(|e| self.io_error("fetching from the pool failed", e))?
                == 0
            {
                break;
            }
        }
        self.core.locate(fp).ok_or_else(|| self.missing(lba, fp))
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
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (frame, location) = match self.find(lba, &fp)? {
                Located::Ram(frame) => (frame, None),
                Located::Flash(location) => (
                    self.core
                        .read_flash(&fp, &location)
                        .map_err(|e| self.io_error("flash read failed", e))?,
                    Some(location),
                ),
            };
            // The cleaner may have moved or evicted the frame (and reused
            // its place) between lookup and read: look it up again.
            let raced = |location: Option<Location>| {
                location.is_some_and(|l| self.moved(&fp, &l)) && attempts < LOOKUP_ATTEMPTS
            };
            match self.core.codec.decode_authenticated(&frame, &fp, block) {
                Ok(()) => return Ok(()),
                Err(_) if raced(location) => continue,
                Err(_) => return self.decode(lba, &fp, &frame, block),
            }
        }
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

    /// Verifies the frame a completed flash read brought in and copies the
    /// block to the guest through `block`, the caller's scratch; on failure
    /// records why in `read.error`.
    fn verify(&self, read: &mut FlashRead, block: &mut [u8; BLOCK_SIZE]) {
        let needed = read.skip + read.location.len as usize;
        let outcome = if read.result < 0 {
            Err(self.io_error(
                "flash read failed",
                io::Error::from_raw_os_error(-read.result),
            ))
        } else if (read.result as usize) < needed {
            Err(self.io_error(
                "flash read came back short",
                format!("{} bytes", read.result),
            ))
        } else {
            // A split frame's header and tail were put around its body
            // when the read was issued.
            let start = match read.location.tail {
                Some(_) => read.into - HEADER_LEN,
                None => read.into + read.skip,
            };
            let frame = &read.buf.as_slice()[start..start + read.location.entry_len()];
            match self
                .core
                .codec
                .decode_authenticated(frame, &read.fingerprint, block)
            {
                Ok(()) => Ok(()),
                // The cleaner may have moved the frame (and reused its
                // place) between lookup and read: look it up again.
                Err(_) if self.moved(&read.fingerprint, &read.location) => {
                    self.read_block(read.lba, block)
                }
                Err(_) => self.decode(read.lba, &read.fingerprint, frame, block),
            }
        };
        match outcome {
            // SAFETY: the request's guest buffers stay valid and unshared
            // until it completes, which waits for this read.
            Ok(()) => unsafe { copy_to_guest(&read.pieces, &block[read.range.clone()]) },
            Err(e) => read.error = Some(e),
        }
    }
}

/// One queue of a `strata` vdisk.
pub struct StrataQueue {
    reader: BlockReader,
    eventfd: Arc<EventFd>,
    ring: Option<IoUring>,
    /// Verifies some completed reads when many arrive at once.
    helper: Option<VerifyHelper>,
    ops: Vec<ReadOp>,
    free_ops: Vec<u32>,
    /// Reads in the kernel, by ring `user_data`.
    reads: Vec<Option<FlashRead>>,
    free_reads: Vec<u32>,
    /// Finished reads, kept for their buffers.
    spare_reads: Vec<FlashRead>,
    /// Reads submitted to the ring and not yet reaped.
    in_kernel: usize,
    /// Scratch list of reaped reads, kept for its allocation.
    reaped: Vec<FlashRead>,
    ready: VecDeque<(u32, io::Result<()>)>,
    /// Writes and flushes waiting for the journal: (sequence, tag), in order.
    durable_waits: VecDeque<(u64, u32)>,
    fingerprints: Vec<Fingerprint>,
    /// The queue thread's scratch block (zero blocks, frames still in RAM,
    /// reads it verifies), allocated once: zeroing a fresh 4 KiB per block
    /// showed in the QD32 profile.
    scratch: Option<Box<[u8; BLOCK_SIZE]>>,
}

impl StrataQueue {
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
        if let Err(e) = self.reader.vdisk.fingerprints(first, count, &mut fps) {
            self.fingerprints = fps;
            return Err(self.reader.io_error("map lookup failed", e));
        }
        let op = self.new_op(tag, offset, bufs);
        let mut block = self
            .scratch
            .take()
            .unwrap_or_else(|| Box::new([0; BLOCK_SIZE]));
        let mut pieces = Vec::new();
        for (lba, fp) in (first..).zip(fps.iter()) {
            let issued = if fp.is_zero() {
                block.fill(0);
                Ok(true)
            } else {
                match self.reader.find(lba, fp) {
                    Err(e) => Err(e),
                    Ok(Located::Ram(frame)) => self
                        .reader
                        .decode(lba, fp, &frame, &mut block)
                        .map(|()| true),
                    Ok(Located::Flash(location)) => {
                        self.read_from_flash(op, lba, *fp, location).map(|()| false)
                    }
                }
            };
            match issued {
                Ok(true) => {
                    pieces.clear();
                    let range = block_pieces(bufs, offset, lba, &mut pieces);
                    // SAFETY: the submitter's promise covers the op's buffers.
                    unsafe { copy_to_guest(&pieces, &block[range]) }
                }
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
        self.scratch = Some(block);
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

    /// Issues the flash read of block `lba` of read `op`: through the ring,
    /// or blocking (verified and copied here) without one.
    fn read_from_flash(
        &mut self,
        op: u32,
        lba: u64,
        fingerprint: Fingerprint,
        location: Location,
    ) -> io::Result<()> {
        let (offset, len, skip) = self.reader.core.covering_range(&location);
        let mut read = self.spare_reads.pop().unwrap_or_default();
        read.op = op;
        read.lba = lba;
        read.fingerprint = fingerprint;
        read.location = location;
        // A split frame's body goes one page in, leaving room for its
        // header before it and its tail after it.
        read.into = if location.tail.is_some() { PAGE } else { 0 };
        read.len = len;
        read.skip = skip;
        read.error = None;
        read.pieces.clear();
        let state = &self.ops[op as usize];
        read.range = block_pieces(&state.bufs, state.offset, lba, &mut read.pieces);
        let into = read.into;
        if read.buf.as_slice().len() < into + len + SPLIT_TAIL_LEN {
            read.buf = AlignedBuf::new((into + len + SPLIT_TAIL_LEN).max(READ_BUF_LEN), PAGE);
        }
        if let Some(tail) = location.tail {
            let buf = read.buf.as_mut_slice();
            buf[into - HEADER_LEN..into].copy_from_slice(&split_header(&fingerprint));
            buf[into + len..into + len + SPLIT_TAIL_LEN].copy_from_slice(&tail);
        }
        let Some(ring) = self.ring.as_mut() else {
            read.result = match self
                .reader
                .core
                .device
                .read_exact_at(&mut read.buf.as_mut_slice()[into..into + len], offset)
            {
                Ok(()) => len as i32,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            };
            self.reader.verify(&mut read, &mut [0; BLOCK_SIZE]);
            let failed = read.error.take();
            self.spare_reads.push(read);
            return failed.map_or(Ok(()), Err);
        };
        let index = self.free_reads.pop().unwrap_or_else(|| {
            self.reads.push(None);
            (self.reads.len() - 1) as u32
        });
        let entry = opcode::Read::new(
            QUEUE_FILE,
            read.buf.as_mut_slice()[into..].as_mut_ptr(),
            len as u32,
        )
        .offset(offset)
        .build()
        .user_data(u64::from(index));
        loop {
            // SAFETY: the buffer lives in `self.reads[index]` until the
            // completion is reaped (Drop waits for every read first).
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                break;
            }
            ring.submit()?;
        }
        self.reads[index as usize] = Some(read);
        self.ops[op as usize].remaining += 1;
        self.in_kernel += 1;
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
        let vdisk = self.reader.vdisk.clone();
        let _exclusive = partial.then(|| vdisk.partial_block_write());
        let _shared = (!partial).then(|| vdisk.whole_block_write());
        let mut data = vec![0u8; ((end - first) * BLOCK) as usize];
        if skip != 0 {
            let head: &mut [u8; BLOCK_SIZE] = (&mut data[..BLOCK_SIZE])
                .try_into()
                .map_err(|_| io::Error::other("short bounce buffer"))?;
            self.reader.read_block(first, head)?;
        }
        if !(offset + len).is_multiple_of(BLOCK) && (end - 1 > first || skip == 0) {
            let at = data.len() - BLOCK_SIZE;
            let tail: &mut [u8; BLOCK_SIZE] = (&mut data[at..])
                .try_into()
                .map_err(|_| io::Error::other("short bounce buffer"))?;
            self.reader.read_block(end - 1, tail)?;
        }
        // SAFETY: the submitter guarantees the buffers are readable.
        unsafe { gather(bufs, &mut data[skip..skip + len as usize]) };
        let mut seq = 0;
        for (i, chunk) in data.chunks(CHUNK_BLOCKS * BLOCK_SIZE).enumerate() {
            let lba = first + (i * CHUNK_BLOCKS) as u64;
            seq = self.reader.vdisk.write_blocks(lba, chunk)?;
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
        let vdisk = self.reader.vdisk.clone();
        let _shared = vdisk.whole_block_write();
        seq = vdisk.unmap(first_whole, end_whole - first_whole)?;
        Ok(seq)
    }

    /// Completes `tag` once `seq` is durable.
    fn complete_when_durable(&mut self, seq: u64, tag: u32) {
        // The durable sequence first: the flusher marks a vdisk moved
        // before it publishes a batch it dropped the vdisk's updates from.
        let durable = self.reader.core.durable_seq();
        let vdisk = &self.reader.vdisk;
        if let Some(reason) = vdisk.moved() {
            self.ready
                .push_back((tag, Err(moved_error(&vdisk.name, reason))));
        } else if seq <= durable {
            self.ready.push_back((tag, Ok(())));
        } else {
            self.durable_waits.push_back((seq, tag));
        }
    }

    /// Takes the ring's completions, verifies them (handing some to the
    /// helper when many arrive at once) and copies their blocks to the
    /// guest; completes the reads the helper has finished.
    fn reap_flash(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mut done = std::mem::take(&mut self.reaped);
        for cqe in ring.completion() {
            let index = cqe.user_data() as usize;
            let Some(mut read) = self.reads.get_mut(index).and_then(Option::take) else {
                tracing::error!(index, "completion for an unknown flash read");
                continue;
            };
            read.result = cqe.result();
            self.free_reads.push(index as u32);
            done.push(read);
        }
        self.in_kernel -= done.len();
        if let Some(helper) = self.helper.as_mut() {
            if done.len() >= HAND_OVER_MIN {
                let handed = done.split_off(done.len() / 3);
                if let Err(back) = helper.hand_over(handed) {
                    done.extend(back);
                }
            }
        }
        let scratch = self
            .scratch
            .get_or_insert_with(|| Box::new([0; BLOCK_SIZE]));
        for read in &mut done {
            self.reader.verify(read, scratch);
        }
        if let Some(helper) = self.helper.as_mut() {
            helper.take_finished(&mut done);
        }
        for read in done.drain(..) {
            self.complete_read(read);
        }
        self.reaped = done;
    }

    /// Counts a verified read against its request and keeps it for reuse.
    fn complete_read(&mut self, mut read: FlashRead) {
        if let Some(e) = read.error.take() {
            self.ops[read.op as usize].error.get_or_insert(e);
        }
        self.finish_if_done(read.op);
        read.pieces.clear();
        self.spare_reads.push(read);
    }

    /// Waits until no read is in the kernel or with the helper, completing
    /// them as usual.
    fn settle_reads(&mut self) {
        loop {
            self.reap_flash();
            let with_helper = self.helper.as_ref().map_or(0, VerifyHelper::outstanding);
            if self.in_kernel == 0 && with_helper == 0 {
                return;
            }
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            if self.in_kernel == 0 {
                if self.helper.as_ref().is_some_and(VerifyHelper::is_gone) {
                    self.reap_flash();
                    tracing::error!(vdisk = %self.reader.vdisk.name, reads = with_helper,
                        "the verify helper ended holding reads; their requests never complete");
                    return;
                }
                self.wait_event();
            } else if let Err(e) = ring.submit_and_wait(1) {
                // The kernel still owns the buffers: all that is safe is to
                // wait again.
                tracing::warn!(error = %e, "waiting for flash reads");
                self.wait_event();
            }
        }
    }

    fn reap_durable(&mut self) {
        if self.durable_waits.is_empty() {
            return;
        }
        // Read before the moved flag (see complete_when_durable).
        let durable = self.reader.core.durable_seq();
        let vdisk = &self.reader.vdisk;
        if let Some(reason) = vdisk.moved() {
            // Flagged before the batch without its updates was published:
            // none of these writes is in the pool.
            for (_, tag) in self.durable_waits.drain(..) {
                self.ready
                    .push_back((tag, Err(moved_error(&vdisk.name, reason))));
            }
            return;
        }
        if let Some(reason) = self.reader.core.failure() {
            for (_, tag) in self.durable_waits.drain(..) {
                self.ready.push_back((
                    tag,
                    Err(io::Error::other(format!("flash store failed: {reason}"))),
                ));
            }
            return;
        }
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
        // This host's copy of a vdisk another host took over is stale, and
        // nothing written here could reach the pool.
        let vdisk = &self.reader.vdisk;
        if let Some(reason) = vdisk.moved() {
            return Err(moved_error(&vdisk.name, reason));
        }
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
                let seq = self.reader.vdisk.last_seq();
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
        // Writes, and reads served from RAM, queue nothing: no system call.
        if let Some(ring) = self.ring.as_mut() {
            if !ring.submission().is_empty() {
                ring.submit()?;
            }
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
        self.settle_reads();
        loop {
            self.reap(done);
            if self.durable_waits.is_empty() {
                return;
            }
            self.wait_event();
        }
    }
}

impl Drop for StrataQueue {
    fn drop(&mut self) {
        // The kernel may still write into read buffers: wait for it.
        self.settle_reads();
    }
}

/// The error of every request of vdisk `name` once another host took it
/// over (`reason`).
fn moved_error(name: &str, reason: &str) -> io::Error {
    io::Error::other(format!("vdisk {name} moved to another host: {reason}"))
}

/// Finds the guest byte ranges that receive block `lba` of a read of `bufs`
/// at vdisk byte `offset`: appends them to `pieces`, in order, and returns
/// the part of the block they take.
fn block_pieces(bufs: &[IoBuf], offset: u64, lba: u64, pieces: &mut Vec<IoBuf>) -> Range<usize> {
    let total = total_len(bufs) as u64;
    let block_start = lba * BLOCK;
    let start = offset.max(block_start);
    let end = (offset + total).min(block_start + BLOCK);
    if start >= end {
        return 0..0;
    }
    let mut want = (end - start) as usize;
    let mut at = (start - offset) as usize;
    for buf in bufs {
        if want == 0 {
            break;
        }
        if at >= buf.len {
            at -= buf.len;
            continue;
        }
        let n = (buf.len - at).min(want);
        pieces.push(IoBuf {
            ptr: buf.ptr.wrapping_add(at),
            len: n,
        });
        want -= n;
        at = 0;
    }
    (start - block_start) as usize..(end - block_start) as usize
}

/// Copies `src` into the guest `pieces`, in order.
///
/// # Safety
/// Every piece must be valid for writes of its length and unshared.
unsafe fn copy_to_guest(pieces: &[IoBuf], mut src: &[u8]) {
    for piece in pieces {
        let n = piece.len.min(src.len());
        // SAFETY: the caller guarantees `piece` is writable for `piece.len`
        // bytes, and `n <= piece.len`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), piece.ptr, n) };
        src = &src[n..];
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

#[cfg(test)]
mod tests {
    use super::helper_name;

    #[test]
    fn helper_names_fit_linux_thread_names_without_splitting_characters() {
        assert_eq!(helper_name("bench", 0), "v0-bench");
        assert_eq!(helper_name("a-very-long-vdisk-name", 3), "v3-a-very-long-");
        // 'é' is two bytes and would make 17: it is left out.
        assert_eq!(helper_name("abcdefghijklé", 12), "v12-abcdefghijk");
        assert!(helper_name(&"é".repeat(20), 65535).len() <= 15);
    }
}
