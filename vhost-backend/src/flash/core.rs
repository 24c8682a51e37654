//! The store's shared state: the flash index, the segment slots, the open
//! segment and the journal batch not yet written. Queue threads append to
//! it; the flusher thread drains it to flash.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use rustc_hash::{FxHashMap, FxHashSet};
use strata_common::fingerprint::Fingerprint;
use strata_common::frame::FrameCodec;
use strata_common::ondisk::{BatchBuilder, EntryKind, Superblock, PAGE};
use vmm_sys_util::eventfd::EventFd;

use super::device::FlashDevice;
use super::segment::{Location, OpenSegment, SealedSegment};
use super::StoreError;
use crate::engine::buffers::AlignedBuf;

/// Sealed segments allowed to wait in RAM for their write before writers wait.
pub const MAX_UNWRITTEN_SEGMENTS: usize = 4;
/// Journal bytes allowed to wait for the flusher before writers wait.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Free slots kept for checkpoints and the cleaner: writers wait below it.
pub const RESERVED_SLOTS: usize = 3;

/// What a segment slot holds.
pub enum SlotState {
    /// Nothing anyone needs.
    Free,
    /// The open segment.
    Open,
    /// A sealed segment in RAM, waiting for its write.
    Unwritten(Arc<SealedSegment>),
    /// A segment on flash.
    OnFlash,
}

/// One slot of the segment area.
pub struct Slot {
    /// What it holds.
    pub state: SlotState,
    /// Sequence number of the segment in it (0 if free).
    pub seq: u64,
}

/// Everything behind the store's lock.
pub struct State {
    /// Fingerprint (of a block, or id of a map node) to where its bytes are.
    pub index: FxHashMap<Fingerprint, Location>,
    /// The segment slots.
    pub slots: Vec<Slot>,
    /// Free slots, lowest last so they are used in order.
    pub free: Vec<u32>,
    /// The segment being filled.
    pub open: Option<OpenSegment>,
    /// Sealed segments waiting for the flusher, oldest first.
    pub unwritten: VecDeque<Arc<SealedSegment>>,
    /// Number of the next segment.
    pub next_segment_seq: u64,
    /// Journal items not yet handed to the flusher.
    pub batch: BatchBuilder,
    /// Sequence number of the last map update in `batch`.
    pub batch_last_seq: u64,
    /// Number of the next map update.
    pub next_seq: u64,
    /// Someone asked for a checkpoint.
    pub checkpoint_wanted: bool,
    /// The store is stopping: the flusher finishes and exits.
    pub stopping: bool,
    /// Why the store stopped accepting writes, after a flash write failed.
    pub failed: Option<Arc<str>>,
    /// While the cleaner runs: fingerprints writes found already stored
    /// (they gained a reference the cleaner's mark cannot see).
    pub touched: Option<FxHashSet<Fingerprint>>,
    /// The cleaner found nothing to free: writes that need space fail.
    pub out_of_space: bool,
}

/// Counters for the status command.
#[derive(Debug, Default)]
pub struct Counters {
    /// Blocks written that were already stored (dedupe hits).
    pub dedupe_hits: AtomicU64,
    /// New frames appended.
    pub frames_appended: AtomicU64,
    /// Bytes of new frames appended.
    pub frame_bytes_appended: AtomicU64,
    /// Frames read that failed verification.
    pub bad_frames: AtomicU64,
    /// Segments written to flash.
    pub segments_written: AtomicU64,
    /// Journal records written.
    pub journal_records: AtomicU64,
    /// Batches made durable in the pool's NVLOG.
    pub nvlog_records: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Destages that committed to the pool.
    pub destages: AtomicU64,
    /// Stripes written to the pool's drives.
    pub stripes_written: AtomicU64,
    /// Bytes of those stripes' chunks (data and parity) sent to the pool.
    pub stripe_bytes: AtomicU64,
    /// Bytes of batches sent to the pool's NVLOG.
    pub nvlog_bytes: AtomicU64,
    /// Entries (frames and map nodes) sent to the pool in stripes.
    pub frames_destaged: AtomicU64,
    /// Entries fetched from the pool into the flash.
    pub frames_fetched: AtomicU64,
    /// Bad frames on flash replaced by the pool's copy.
    pub frames_repaired: AtomicU64,
    /// Those of them whose copy came from an NVLOG record (not destaged
    /// yet).
    pub frames_repaired_from_nvlog: AtomicU64,
    /// Frames the cleaner dropped from the flash because the pool holds
    /// them (the flash is a cache on a pool).
    pub frames_evicted: AtomicU64,
}

/// The part of the store that map node access, queue threads and the
/// flusher all share.
pub struct Core {
    /// The flash.
    pub device: FlashDevice,
    /// Its layout.
    pub superblock: Superblock,
    /// Frame encoding under the datastore's keys.
    pub codec: FrameCodec,
    /// The lock-protected state.
    pub state: Mutex<State>,
    /// Wakes the flusher.
    pub flusher_wake: Condvar,
    /// Wakes writers waiting for segment or journal room.
    pub room: Condvar,
    /// Wakes the cleaner.
    pub cleaner_wake: Condvar,
    /// Every map update up to this sequence number is durable.
    pub durable_seq: AtomicU64,
    /// The last record appended to the pool's NVLOG (0 without a pool).
    pub nvlog_appended: AtomicU64,
    /// The last NVLOG record a destage committed (0: none yet).
    pub nvlog_destaged: AtomicU64,
    /// Every entry the index places in a segment numbered up to this is in
    /// the pool (a destage round sent it or found it there): the cleaner
    /// may drop such frames instead of copying them.
    pub destaged_through_segment: AtomicU64,
    /// Bytes of the journal ring in use, as of the flusher's last write
    /// (readable while the flusher is busy).
    pub journal_used: AtomicU64,
    /// Fetches entries the flash lacks from the pool's stripes (`None`
    /// for a standalone host).
    pub pool_reads: Option<super::fetch::PoolReads>,
    /// Queue eventfds to signal when `durable_seq` moves.
    pub waiters: Mutex<Vec<Weak<EventFd>>>,
    /// Counters.
    pub counters: Counters,
}

impl Core {
    /// Locks the state. A poisoned lock means a thread panicked holding it;
    /// the state is still consistent enough to read, so carry on.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Byte offset of `slot` on the flash.
    pub fn slot_offset(&self, slot: u32) -> u64 {
        self.superblock.segments_offset + u64::from(slot) * u64::from(self.superblock.segment_size)
    }

    /// Appends an entry to the open segment, opening a new one (and sealing
    /// the full one) as needed.
    pub fn append(
        &self,
        state: &mut State,
        fingerprint: Fingerprint,
        kind: EntryKind,
        bytes: &[u8],
    ) -> Result<Location, StoreError> {
        if let Some(reason) = &state.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        if state.open.as_ref().is_some_and(|o| !o.fits(kind, bytes)) {
            self.seal_open(state);
        }
        if state.open.is_none() {
            let slot = state.free.pop().ok_or(StoreError::Full {
                segments: self.superblock.segment_count,
            })?;
            if super::cleaner::needs_cleaning(state) {
                self.cleaner_wake.notify_one();
            }
            let seq = state.next_segment_seq;
            state.next_segment_seq += 1;
            state.slots[slot as usize] = Slot {
                state: SlotState::Open,
                seq,
            };
            state.open = Some(OpenSegment::new(
                slot,
                seq,
                self.superblock.segment_size as usize,
            ));
        }
        let open = state
            .open
            .as_mut()
            .ok_or(StoreError::Internal("no open segment after opening one"))?;
        if !open.fits(kind, bytes) {
            return Err(StoreError::Internal("an entry larger than a segment"));
        }
        let location = open.append(fingerprint, kind, bytes);
        state.index.insert(fingerprint, location);
        Ok(location)
    }

    /// Seals the open segment (if it holds anything) and queues it for the
    /// flusher.
    pub fn seal_open(&self, state: &mut State) {
        let Some(open) = state.open.take() else {
            return;
        };
        if open.is_empty() {
            state.open = Some(open);
            return;
        }
        let sealed = Arc::new(open.seal(&self.superblock.store_id));
        state.slots[sealed.slot as usize].state = SlotState::Unwritten(sealed.clone());
        state.unwritten.push_back(sealed);
        self.flusher_wake.notify_all();
    }

    /// Where `fingerprint`'s bytes are: copied out of RAM if they are there,
    /// else their flash location. `None` if the store does not have them.
    pub fn locate(&self, fingerprint: &Fingerprint) -> Option<Located> {
        let state = self.lock();
        let location = *state.index.get(fingerprint)?;
        Some(match &state.slots[location.slot as usize].state {
            SlotState::Open => match state
                .open
                .as_ref()
                .and_then(|o| o.entry(fingerprint, &location))
            {
                Some(bytes) => Located::Ram(bytes),
                None => Located::Flash(location),
            },
            SlotState::Unwritten(sealed) => Located::Ram(sealed.entry(fingerprint, &location)),
            SlotState::OnFlash | SlotState::Free => Located::Flash(location),
        })
    }

    /// The smallest flash range covering `location` that a read may ask
    /// for (aligned to [`FlashDevice::read_align`]): its byte offset, its
    /// length, and where the entry starts inside it.
    pub fn covering_range(&self, location: &Location) -> (u64, usize, usize) {
        let align = self.device.read_align();
        let start = self.slot_offset(location.slot) + u64::from(location.offset);
        let aligned = start & !(align - 1);
        let skip = (start - aligned) as usize;
        let len = (skip as u64 + u64::from(location.len)).next_multiple_of(align);
        (aligned, len as usize, skip)
    }

    /// Reads the bytes stored at a flash `location` (blocking): a split
    /// frame's body alone.
    pub fn read_stored(&self, location: &Location) -> io::Result<Vec<u8>> {
        let (offset, len, skip) = self.covering_range(location);
        let mut pages = AlignedBuf::new(len, PAGE);
        self.device.read_exact_at(pages.as_mut_slice(), offset)?;
        Ok(pages.as_slice()[skip..skip + location.len as usize].to_vec())
    }

    /// Reads entry `fingerprint` at a flash `location` (blocking), whole.
    pub fn read_flash(
        &self,
        fingerprint: &Fingerprint,
        location: &Location,
    ) -> io::Result<Vec<u8>> {
        Ok(location.entry_from(fingerprint, &self.read_stored(location)?))
    }

    /// The bytes of `fingerprint`, from RAM or flash (blocking); `None` if
    /// the store does not have them.
    pub fn read_entry(&self, fingerprint: &Fingerprint) -> io::Result<Option<Vec<u8>>> {
        match self.locate(fingerprint) {
            None => Ok(None),
            Some(Located::Ram(bytes)) => Ok(Some(bytes)),
            Some(Located::Flash(location)) => self.read_flash(fingerprint, &location).map(Some),
        }
    }

    /// Registers a queue's eventfd to be signalled when writes become durable.
    pub fn add_waiter(&self, eventfd: &Arc<EventFd>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        waiters.retain(|w| w.strong_count() > 0);
        waiters.push(Arc::downgrade(eventfd));
    }

    /// Publishes that every update up to `seq` is durable and wakes queues.
    pub fn publish_durable(&self, seq: u64) {
        self.durable_seq.fetch_max(seq, Ordering::AcqRel);
        self.wake_waiters();
    }

    /// Signals every registered queue.
    pub fn wake_waiters(&self) {
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for waiter in waiters.iter().filter_map(Weak::upgrade) {
            if let Err(e) = waiter.write(1) {
                tracing::warn!(error = %e, "cannot signal a queue");
            }
        }
    }

    /// Every update up to this sequence number is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Marks the store failed: no more writes; waiting writes fail.
    pub fn fail(&self, reason: String) {
        tracing::error!(flash = %self.device.path().display(), %reason, "flash store failed; writes now fail");
        {
            let mut state = self.lock();
            state.failed.get_or_insert_with(|| reason.into());
        }
        self.room.notify_all();
        self.cleaner_wake.notify_all();
        self.wake_waiters();
    }

    /// Why the store failed, if it did.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.lock().failed.clone()
    }
}

/// The answer of [`Core::locate`].
pub enum Located {
    /// The entry's bytes, copied from a segment still in RAM.
    Ram(Vec<u8>),
    /// The entry is on flash here.
    Flash(Location),
}
