//! A vdisk inside the flash store: its map, and the write and lookup
//! operations the `strata` engine calls from queue threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rayon::prelude::*;
use strata_common::fingerprint::{Fingerprint, BLOCK_SIZE};
use strata_common::map::{MapError, NodeIdKey, NodeStore, VdiskMap, FANOUT};
use strata_common::ondisk::EntryKind;

use super::core::{Core, MAX_BATCH_BYTES, MAX_UNWRITTEN_SEGMENTS, RESERVED_SLOTS};
use super::segment::worst_case_room;
use super::StoreError;

/// Requests with at least this many blocks fingerprint and encode them on
/// all cores.
const PARALLEL_BLOCKS: usize = 8;

/// Map nodes as entries of the flash store (fetched from the pool when a
/// pooled store lacks one).
#[derive(Clone)]
pub struct NodeAccess {
    core: Arc<Core>,
    node_ids: NodeIdKey,
}

impl NodeAccess {
    /// Node access through `core`; `node_ids` checks nodes from the pool.
    pub fn new(core: Arc<Core>, node_ids: NodeIdKey) -> NodeAccess {
        NodeAccess { core, node_ids }
    }

    fn read(&self, id: &Fingerprint) -> Result<Option<Vec<u8>>, StoreError> {
        self.core.read_entry(id).map_err(|source| StoreError::Io {
            what: "reading a map node",
            source,
        })
    }
}

impl NodeStore for NodeAccess {
    type Error = StoreError;

    fn get(&self, id: &Fingerprint) -> Result<Option<Arc<[u8]>>, StoreError> {
        let mut bytes = self.read(id)?;
        if bytes.is_none() {
            let check = |id: &Fingerprint, node: &[u8]| self.node_ids.id_of(node) == *id;
            if self
                .core
                .fetch_from_pool(std::slice::from_ref(id), EntryKind::MapNode, &check)?
                > 0
            {
                bytes = self.read(id)?;
            }
        }
        Ok(bytes.map(Arc::from))
    }

    fn put(&self, id: &Fingerprint, bytes: &[u8]) -> Result<(), StoreError> {
        let mut state = self.core.lock();
        if !state.index.contains_key(id) {
            self.core
                .append(&mut state, *id, EntryKind::MapNode, bytes)?;
        }
        Ok(())
    }
}

/// One vdisk of the store.
pub struct StoreVdisk {
    /// Its id in journal records and checkpoints.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its size in blocks.
    pub block_count: u64,
    map: RwLock<VdiskMap<NodeAccess>>,
    /// Writes of whole blocks share it; a read-modify-write of part of a
    /// block holds it alone, so no write lands between its read and write.
    rmw: RwLock<()>,
    core: Arc<Core>,
    /// The epoch of this host's lease of the vdisk at the pool (0: none,
    /// or no pool), which every append changing it names.
    lease_epoch: AtomicU64,
    /// Set when another host took the vdisk over: why its I/O now fails.
    moved: OnceLock<String>,
}

impl StoreVdisk {
    /// A vdisk over `map`.
    pub fn new(id: u32, name: String, map: VdiskMap<NodeAccess>, core: Arc<Core>) -> StoreVdisk {
        StoreVdisk {
            id,
            name,
            block_count: map.block_count(),
            map: RwLock::new(map),
            rmw: RwLock::new(()),
            core,
            lease_epoch: AtomicU64::new(0),
            moved: OnceLock::new(),
        }
    }

    /// The epoch of this host's lease of the vdisk (0: none).
    pub fn lease_epoch(&self) -> u64 {
        self.lease_epoch.load(Ordering::Acquire)
    }

    /// Records the epoch of this host's lease of the vdisk.
    pub fn set_lease_epoch(&self, epoch: u64) {
        self.lease_epoch.store(epoch, Ordering::Release);
    }

    /// Another host took the vdisk over: from now on every read and write
    /// of it fails, with `reason`.
    pub fn mark_moved(&self, reason: String) {
        if self.moved.set(reason.clone()).is_ok() {
            tracing::error!(vdisk = %self.name, %reason, "vdisk moved to another host; its I/O here now fails");
        }
    }

    /// Why the vdisk's I/O fails, if another host took it over.
    pub fn moved(&self) -> Option<&str> {
        self.moved.get().map(String::as_str)
    }

    /// Held (shared) by writes of whole blocks.
    pub fn whole_block_write(&self) -> RwLockReadGuard<'_, ()> {
        self.rmw.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held (exclusive) by a read-modify-write of partial blocks.
    pub fn partial_block_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.rmw.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The map, for reading.
    pub fn map(&self) -> RwLockReadGuard<'_, VdiskMap<NodeAccess>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The map, for changing.
    pub fn map_mut(&self) -> RwLockWriteGuard<'_, VdiskMap<NodeAccess>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    fn map_error(&self, source: MapError) -> StoreError {
        StoreError::Map {
            vdisk: self.name.clone(),
            source,
        }
    }

    /// The fingerprints of blocks `lba..lba + count`, into `out`.
    pub fn fingerprints(
        &self,
        lba: u64,
        count: u64,
        out: &mut Vec<Fingerprint>,
    ) -> Result<(), StoreError> {
        let map = self.map();
        for block in lba..lba + count {
            out.push(map.get(block).map_err(|e| self.map_error(e))?);
        }
        Ok(())
    }

    /// Writes whole blocks `data` at block `lba`: fingerprints them, stores
    /// the ones the store lacks, points the map at them and queues the
    /// update for the journal. Returns the update's sequence number: the
    /// write is durable once the store's durable sequence reaches it.
    pub fn write_blocks(&self, lba: u64, data: &[u8]) -> Result<u64, StoreError> {
        let core = &*self.core;
        let blocks: Vec<&[u8; BLOCK_SIZE]> = data
            .chunks_exact(BLOCK_SIZE)
            .filter_map(|b| b.try_into().ok())
            .collect();
        let parallel = blocks.len() >= PARALLEL_BLOCKS;
        let fingerprints: Vec<Fingerprint> = if parallel {
            blocks
                .par_iter()
                .map(|b| core.codec.fingerprint(b))
                .collect()
        } else {
            blocks.iter().map(|b| core.codec.fingerprint(b)).collect()
        };

        // Which blocks the store lacks (each new one once).
        let mut misses: Vec<usize> = Vec::new();
        {
            let mut state = core.lock();
            let state = &mut *state;
            for (i, fp) in fingerprints.iter().enumerate() {
                if fp.is_zero() {
                    continue;
                }
                // A hit is protected from the cleaner below, under the
                // lock that also records the reference.
                if !state.index.contains_key(fp) && !misses.iter().any(|&m| fingerprints[m] == *fp)
                {
                    misses.push(i);
                }
            }
        }
        let encode = |&i: &usize| {
            let mut frame = Vec::new();
            core.codec
                .encode_fingerprinted(blocks[i], &fingerprints[i], &mut frame)
                .map(|()| (fingerprints[i], frame))
        };
        let frames: Result<Vec<_>, _> = if parallel {
            misses.par_iter().map(encode).collect()
        } else {
            misses.iter().map(encode).collect()
        };
        let frames = frames.map_err(StoreError::Encode)?;
        let hits = fingerprints.iter().filter(|f| !f.is_zero()).count() - frames.len();
        core.counters
            .dedupe_hits
            .fetch_add(hits as u64, std::sync::atomic::Ordering::Relaxed);

        let frame_bytes = frames
            .iter()
            .map(|(_, frame)| worst_case_room(frame.len()))
            .sum();
        self.wait_for_room(frame_bytes)?;
        // The map lock spans the append, the map change and the journal
        // entry, so a checkpoint sees all three or none of them.
        let mut map = self.map_mut();
        {
            let mut state = core.lock();
            let append = |state: &mut super::core::State, fp: &Fingerprint, frame: &[u8]| {
                core.append(state, *fp, EntryKind::Frame, frame)?;
                state.batch.push_frame(frame);
                core.counters
                    .frames_appended
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                core.counters
                    .frame_bytes_appended
                    .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok::<(), StoreError>(())
            };
            for (fp, frame) in &frames {
                if !state.index.contains_key(fp) {
                    append(&mut state, fp, frame)?;
                }
            }
            // A dedupe hit found before waiting for room may have been
            // dropped by a cleaner that started since (nothing referenced
            // it yet): store such a block again. The others are kept from
            // a running cleaner from here on.
            for (i, fp) in fingerprints.iter().enumerate() {
                if fp.is_zero() {
                    continue;
                }
                if state.index.contains_key(fp) {
                    if let Some(touched) = state.touched.as_mut() {
                        touched.insert(*fp);
                    }
                    continue;
                }
                let mut frame = Vec::new();
                core.codec
                    .encode_fingerprinted(blocks[i], fp, &mut frame)
                    .map_err(StoreError::Encode)?;
                append(&mut state, fp, &frame)?;
            }
        }
        let updates: Vec<(u64, Fingerprint)> = (lba..).zip(fingerprints.iter().copied()).collect();
        map.set(&updates).map_err(|e| self.map_error(e))?;
        let mut state = core.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.batch.push_set(seq, self.id, lba, &fingerprints);
        state.batch_last_seq = seq;
        drop(state);
        drop(map);
        core.flusher_wake.notify_all();
        Ok(seq)
    }

    /// Fetches from the pool the blocks of the map leaf around block `lba`
    /// (1 MiB of the vdisk) that the flash lacks; returns how many it
    /// stored.
    pub fn fetch_region(&self, lba: u64) -> Result<usize, StoreError> {
        let start = lba - lba % FANOUT as u64;
        let count = (FANOUT as u64).min(self.block_count - start);
        let mut fps = Vec::with_capacity(count as usize);
        self.fingerprints(start, count, &mut fps)?;
        // In full, content hash included: reads from the flash then only
        // check the tag (see `FrameCodec::decode_authenticated`).
        let check = |fp: &Fingerprint, frame: &[u8]| {
            let mut block = [0u8; BLOCK_SIZE];
            self.core.codec.decode(frame, fp, &mut block).is_ok()
        };
        // Room for them all, as for a write (the cleaner evicts what the
        // pool holds to make it).
        let most = fps.iter().filter(|fp| !fp.is_zero()).count()
            * worst_case_room(strata_common::frame::MAX_FRAME_LEN);
        self.wait_for_room(most)?;
        self.core.fetch_from_pool(&fps, EntryKind::Frame, &check)
    }

    /// Makes blocks `lba..lba + count` read as zeros and frees their
    /// mapping. Returns the update's sequence number.
    pub fn unmap(&self, lba: u64, count: u64) -> Result<u64, StoreError> {
        let core = &*self.core;
        self.wait_for_room(0)?;
        let mut map = self.map_mut();
        map.zero_range(lba, count).map_err(|e| self.map_error(e))?;
        let mut state = core.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.batch.push_unmap(seq, self.id, lba, count);
        state.batch_last_seq = seq;
        drop(state);
        drop(map);
        core.flusher_wake.notify_all();
        Ok(seq)
    }

    /// Sequence number of the last update queued so far (by any vdisk): a
    /// FLUSH is done when the durable sequence reaches it.
    pub fn last_seq(&self) -> u64 {
        self.core.lock().next_seq.saturating_sub(1)
    }

    /// Back-pressure: waits while the flusher is behind.
    /// `frame_bytes` is the most room what the caller is about to append
    /// can take ([`worst_case_room`]): it may dip into the slots kept for
    /// the cleaner only if that fits in the open segment (a request of many
    /// frames could otherwise take one slot after another).
    fn wait_for_room(&self, frame_bytes: usize) -> Result<(), StoreError> {
        let core = &*self.core;
        let mut state = core.lock();
        loop {
            if let Some(reason) = &state.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            let slots_ok = state.free.len() >= RESERVED_SLOTS
                || state.open.as_ref().is_some_and(|o| o.has_room(frame_bytes));
            if slots_ok
                && state.unwritten.len() < MAX_UNWRITTEN_SEGMENTS
                && state.batch.len() < MAX_BATCH_BYTES
            {
                return Ok(());
            }
            if !slots_ok && state.out_of_space {
                return Err(StoreError::Full {
                    segments: core.superblock.segment_count,
                });
            }
            core.flusher_wake.notify_all();
            core.cleaner_wake.notify_all();
            state = core.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}
