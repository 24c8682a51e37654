//! Opening an existing store: the index from segment summaries, the maps
//! from the last checkpoint, then the journal records after it replayed.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustc_hash::{FxHashMap, FxHashSet};
use strata_common::fingerprint::{Fingerprint, BLOCK_SIZE};
use strata_common::frame::{verify_checksum, SplitTail, SPLIT_TAIL_LEN};
use strata_common::map::{MapError, Visit, Walk};
use strata_common::ondisk::{
    decode_batch, decode_summary, BatchBuilder, BatchItem, Checkpoint, EntryKind, RecordKind,
    SegmentHeader, Superblock, PAGE, SEGMENT_HEADER_LEN,
};

use super::core::{Slot, SlotState, State, MAX_UNWRITTEN_SEGMENTS};
use super::journal::{recovered_ring, scan, FoundRecord};
use super::vdisk::StoreVdisk;
use super::Shared;
use crate::engine::buffers::AlignedBuf;
use strata_common::wire::{Request, Response, MAX_FINGERPRINTS};

use crate::pool::PoolLink;

/// The state of a store with every slot free and nothing indexed.
pub fn empty_state(superblock: &Superblock) -> State {
    let count = superblock.segment_count;
    State {
        index: FxHashMap::default(),
        slots: (0..count)
            .map(|_| Slot {
                state: SlotState::Free,
                seq: 0,
            })
            .collect(),
        free: (0..count).rev().collect(),
        open: None,
        unwritten: Default::default(),
        next_segment_seq: 1,
        batch: BatchBuilder::new(),
        batch_last_seq: 0,
        next_seq: 1,
        checkpoint_wanted: false,
        stopping: false,
        failed: None,
        touched: None,
        out_of_space: false,
    }
}

/// Recovers the store; returns how many journal updates were replayed.
pub fn recover(shared: &Shared) -> anyhow::Result<usize> {
    let core = &*shared.core;
    scan_segments(shared)?;

    let sb = &core.superblock;
    let mut ring = AlignedBuf::new(sb.journal_len as usize, PAGE);
    core.device
        .read_exact_at(ring.as_mut_slice(), sb.journal_offset)
        .context("cannot read the journal")?;
    let records = scan(ring.as_slice(), &sb.store_id);
    drop(ring);
    let (checkpoint_at, checkpoint) = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.header.kind == RecordKind::Checkpoint)
        .max_by_key(|(_, r)| r.header.rec_no)
        .context("the journal holds no checkpoint")?;
    let cp = Checkpoint::decode(&checkpoint.body).context("the last checkpoint is damaged")?;
    let cp_no = checkpoint.header.rec_no;

    // The records after the checkpoint, in order, up to the first gap.
    let mut by_no: HashMap<u64, &FoundRecord> = records
        .iter()
        .filter(|r| r.header.rec_no > cp_no)
        .map(|r| (r.header.rec_no, r))
        .collect();
    let mut chain = vec![&records[checkpoint_at]];
    while let Some(next) = by_no.remove(&(cp_no + chain.len() as u64)) {
        chain.push(next);
    }
    if !by_no.is_empty() {
        let mut lost: Vec<u64> = by_no.keys().copied().collect();
        lost.sort_unstable();
        tracing::error!(
            after = cp_no + chain.len() as u64 - 1,
            ?lost,
            "journal has a gap: records after it are not replayed"
        );
    }

    let mut replay = BatchReplay::new(shared);
    replay.load(&cp);
    for record in &chain[1..] {
        if record.header.kind != RecordKind::Batch {
            continue;
        }
        replay
            .apply(&record.body)
            .with_context(|| format!("journal record {}", record.header.rec_no))?;
    }
    let replayed = replay.updates;
    let last_seq = core.lock().next_seq - 1;
    core.publish_durable(last_seq);
    let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
    writer.ring = recovered_ring(sb.journal_len as usize, &chain);
    core.journal_used.store(
        writer.ring.used() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Make the replayed state a checkpoint, so the journal starts afresh.
    if chain.len() > 1 {
        super::flusher::checkpoint(shared, &mut writer)
            .context("cannot checkpoint after recovery")?;
    }
    Ok(replayed)
}

/// Fills a freshly formatted store from the pool: the vdisks and map roots
/// of this host's last commit (their nodes and blocks stay in the pool's
/// stripes, fetched when read), then the NVLOG records after it, in two
/// passes: the first applies the log's vdisk, set and unmap items to the
/// maps; the second stores only the log's frames those maps still
/// reference (a log holding many overwrites may be larger than the flash).
/// Every other referenced block must be in the pool, which is checked.
/// Returns the number of map updates applied.
pub fn refill_from_pool(shared: &Shared, link: &mut PoolLink) -> anyhow::Result<usize> {
    let core = &*shared.core;
    let mut replay = BatchReplay::new(shared);
    replay.store_frames = false;
    let from_seq = match link.load_commit()? {
        Some((through_seq, state)) => {
            let cp =
                Checkpoint::decode(&state).context("the pool's commit of this host is damaged")?;
            replay.load(&cp);
            tracing::info!(
                through_seq,
                vdisks = cp.vdisks.len(),
                "loaded the pool's commit"
            );
            through_seq + 1
        }
        None => 1,
    };
    link.replay(from_seq, |seq, payload| {
        replay
            .apply(payload)
            .with_context(|| format!("NVLOG record {seq}"))?;
        if super::flusher::maps_need_flush(shared) {
            let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            super::flusher::checkpoint(shared, &mut writer)?;
        }
        Ok(())
    })?;
    let updates = replay.updates;

    let mut wanted: FxHashSet<Fingerprint> = FxHashSet::default();
    for vdisk in shared.vdisks() {
        vdisk
            .map()
            .visit(|visit| {
                if let Visit::Block { fingerprint, .. } = visit {
                    wanted.insert(fingerprint);
                }
                Ok::<_, MapError>(Walk::Continue)
            })
            .with_context(|| format!("vdisk {}: listing its blocks", vdisk.name))?;
    }
    let referenced = wanted.len();
    link.replay(from_seq, |seq, payload| {
        let items = decode_batch(payload).with_context(|| format!("NVLOG record {seq}"))?;
        let mut logged = Vec::new();
        for item in items {
            if let BatchItem::Frame(frame) = item {
                let header = verify_checksum(frame)
                    .with_context(|| format!("NVLOG record {seq}: a damaged frame"))?;
                logged.push(header.fingerprint);
                if !wanted.contains(&header.fingerprint) {
                    continue;
                }
                // In full, as every frame from the pool: reads from the
                // flash then only check the tag. A bad one is left to the
                // stripes (checked after this pass).
                let mut block = [0u8; BLOCK_SIZE];
                if let Err(e) = core.codec.decode(frame, &header.fingerprint, &mut block) {
                    core.counters
                        .bad_frames
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(seq, fingerprint = %header.fingerprint, error = %e,
                        "a frame in the NVLOG fails to decode; it must come from the stripes");
                    continue;
                }
                wanted.remove(&header.fingerprint);
                store_frame(shared, header.fingerprint, frame)?;
            }
        }
        if let Some(reads) = &core.pool_reads {
            reads.logged.note(seq, logged);
        }
        if core.lock().unwritten.len() >= MAX_UNWRITTEN_SEGMENTS {
            let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            super::flusher::write_segments(core, &mut writer)?;
        }
        Ok(())
    })?;
    let from_log = referenced - wanted.len();
    let lacking = blocks_the_pool_lacks(link, wanted.into_iter().collect())?.len();
    if lacking > 0 {
        bail!("neither the NVLOG nor the pool holds {lacking} of the {referenced} blocks the vdisks reference");
    }
    core.nvlog_appended
        .store(link.last_appended(), std::sync::atomic::Ordering::Release);
    let last_seq = core.lock().next_seq - 1;
    core.publish_durable(last_seq);
    let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
    super::flusher::checkpoint(shared, &mut writer)
        .context("cannot checkpoint after the refill")?;
    tracing::info!(
        updates,
        referenced,
        from_log,
        "refilled the flash from the pool (the rest is fetched when read)"
    );
    Ok(updates)
}

/// Which of `fingerprints` the pool's stripes lack.
pub fn blocks_the_pool_lacks(
    link: &mut PoolLink,
    fingerprints: Vec<Fingerprint>,
) -> anyhow::Result<Vec<Fingerprint>> {
    let mut lacking = Vec::new();
    for part in fingerprints.chunks(MAX_FINGERPRINTS) {
        let request = Request::Lookup {
            fingerprints: part.to_vec(),
        };
        match link.call(&request, &|| true)? {
            Response::Have { have } if have.len() == part.len() => {
                lacking.extend(part.iter().zip(have).filter(|(_, h)| !h).map(|(fp, _)| *fp));
            }
            other => bail!("pool answered a lookup with {other:?}"),
        }
    }
    Ok(lacking)
}

/// Applies batch bodies (from the journal, or the pool's NVLOG) to the
/// store: frames it lacks are stored, vdisks it lacks are created, and map
/// updates newer than what each vdisk already reflects are applied.
pub struct BatchReplay<'a> {
    shared: &'a Shared,
    /// Per vdisk id, the highest update sequence its map already reflects.
    applied: HashMap<u32, u64>,
    /// Map updates applied so far.
    pub updates: usize,
    /// Whether frame items are stored (else skipped).
    pub store_frames: bool,
    /// The store's vdisks by id, refreshed when an id is missing.
    by_id: FxHashMap<u32, Arc<StoreVdisk>>,
}

impl<'a> BatchReplay<'a> {
    /// A replay into `shared`, whose vdisks reflect nothing yet.
    pub fn new(shared: &'a Shared) -> BatchReplay<'a> {
        BatchReplay {
            shared,
            applied: HashMap::new(),
            updates: 0,
            store_frames: true,
            by_id: FxHashMap::default(),
        }
    }

    /// Starts from checkpoint `cp` (the flash's last one, or the host's
    /// commit in the pool): its vdisks at their roots, and the updates
    /// each root already reflects.
    pub fn load(&mut self, cp: &Checkpoint) {
        let shared = self.shared;
        let mut vdisks = shared.vdisks.write().unwrap_or_else(|p| p.into_inner());
        for v in &cp.vdisks {
            let map = shared.open_map(v.block_count, v.root);
            vdisks.push(Arc::new(StoreVdisk::new(
                v.id,
                v.name.clone(),
                map,
                shared.core.clone(),
            )));
            self.applied.insert(v.id, v.applied_seq);
        }
        shared.core.lock().next_seq = cp.next_seq.max(1);
    }

    /// Vdisk `id` of the store, if it has one.
    fn vdisk(&mut self, id: u32) -> Option<Arc<StoreVdisk>> {
        if !self.by_id.contains_key(&id) {
            self.by_id = self
                .shared
                .vdisks()
                .into_iter()
                .map(|v| (v.id, v))
                .collect();
        }
        self.by_id.get(&id).cloned()
    }

    /// Applies one batch body.
    pub fn apply(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let shared = self.shared;
        let core = &*shared.core;
        let items = decode_batch(body).context("damaged batch")?;
        for item in items {
            let (seq, vdisk_id) = match &item {
                BatchItem::Frame(frame) => {
                    if self.store_frames {
                        let header = verify_checksum(frame).context("a damaged frame")?;
                        store_frame(shared, header.fingerprint, frame)?;
                    }
                    continue;
                }
                BatchItem::Vdisk {
                    id,
                    block_count,
                    name,
                } => {
                    self.create_vdisk(*id, *block_count, name)?;
                    continue;
                }
                BatchItem::Adopt {
                    seq,
                    id,
                    block_count,
                    root,
                    name,
                } => {
                    {
                        let mut state = core.lock();
                        state.next_seq = state.next_seq.max(seq + 1);
                    }
                    self.adopt_vdisk(*seq, *id, *block_count, *root, name)?;
                    continue;
                }
                BatchItem::Set { seq, vdisk, .. } | BatchItem::Unmap { seq, vdisk, .. } => {
                    (*seq, *vdisk)
                }
            };
            {
                let mut state = core.lock();
                state.next_seq = state.next_seq.max(seq + 1);
            }
            let Some(vdisk) = self.vdisk(vdisk_id) else {
                tracing::warn!(
                    vdisk_id,
                    seq,
                    "batch names an unknown vdisk; update skipped"
                );
                continue;
            };
            if seq <= self.applied.get(&vdisk_id).copied().unwrap_or(0) {
                continue;
            }
            let mut map = vdisk.map_mut();
            let result = match item {
                BatchItem::Set { lba, fps, .. } => {
                    let updates: Vec<_> = (lba..).zip(fps).collect();
                    map.set(&updates)
                }
                BatchItem::Unmap { lba, count, .. } => map.zero_range(lba, count),
                BatchItem::Frame(_) | BatchItem::Vdisk { .. } | BatchItem::Adopt { .. } => Ok(()),
            };
            result.with_context(|| format!("vdisk {}: replaying update {seq}", vdisk.name))?;
            self.updates += 1;
        }
        Ok(())
    }

    /// Creates vdisk `id` unless the store has it (its checkpoint came
    /// first); a different vdisk under the same id or name is damage.
    fn create_vdisk(&mut self, id: u32, block_count: u64, name: &str) -> anyhow::Result<()> {
        if existing_vdisk(self.shared, id, block_count, name, "creates")?.is_some() {
            return Ok(());
        }
        add_vdisk(self.shared, id, block_count, name, Fingerprint::ZERO);
        self.applied.insert(id, 0);
        Ok(())
    }

    /// Points vdisk `id` (created if the store lacks it) at the map `root`
    /// adopted from another host, as of update `seq`: what it held before
    /// is replaced.
    fn adopt_vdisk(
        &mut self,
        seq: u64,
        id: u32,
        block_count: u64,
        root: Fingerprint,
        name: &str,
    ) -> anyhow::Result<()> {
        match existing_vdisk(self.shared, id, block_count, name, "adopts")? {
            Some(vdisk) => *vdisk.map_mut() = self.shared.open_map(block_count, root),
            None => {
                add_vdisk(self.shared, id, block_count, name, root);
            }
        }
        self.applied.insert(id, seq);
        Ok(())
    }
}

/// The store's vdisk `id` named `name` of `block_count` blocks, if it has
/// it; an error if another vdisk has that id or name, or it has another
/// size. `what` says what the batch does with it.
pub fn existing_vdisk(
    shared: &Shared,
    id: u32,
    block_count: u64,
    name: &str,
    what: &str,
) -> anyhow::Result<Option<Arc<StoreVdisk>>> {
    let vdisks = shared.vdisks();
    let Some(v) = vdisks.into_iter().find(|v| v.id == id || v.name == name) else {
        return Ok(None);
    };
    if v.id != id || v.name != name || v.block_count != block_count {
        bail!(
            "batch {what} vdisk {name} (id {id}, {block_count} blocks), but the store has {} (id {}, {} blocks)",
            v.name,
            v.id,
            v.block_count
        );
    }
    Ok(Some(v))
}

/// Adds vdisk `id` named `name` of `block_count` blocks at map `root` to
/// the store, which lacks it.
pub fn add_vdisk(
    shared: &Shared,
    id: u32,
    block_count: u64,
    name: &str,
    root: Fingerprint,
) -> Arc<StoreVdisk> {
    let map = shared.open_map(block_count, root);
    let vdisk = Arc::new(StoreVdisk::new(
        id,
        name.to_string(),
        map,
        shared.core.clone(),
    ));
    let mut vdisks = shared.vdisks.write().unwrap_or_else(|p| p.into_inner());
    vdisks.push(vdisk.clone());
    vdisks.sort_by_key(|v| v.id);
    vdisk
}

/// Puts a checked frame from a batch back into the store, unless it is
/// there.
pub fn store_frame(shared: &Shared, fingerprint: Fingerprint, frame: &[u8]) -> anyhow::Result<()> {
    let core = &*shared.core;
    let mut state = core.lock();
    if !state.index.contains_key(&fingerprint) {
        core.append(&mut state, fingerprint, EntryKind::Frame, frame)
            .context("cannot store a replayed frame")?;
    }
    Ok(())
}

/// Reads every slot's header and summary into the index.
fn scan_segments(shared: &Shared) -> anyhow::Result<()> {
    let core = &*shared.core;
    let sb = &core.superblock;
    if core.slot_offset(sb.segment_count) > core.device.len() {
        bail!(
            "flash is {} bytes, smaller than its superblock's layout ({} bytes)",
            core.device.len(),
            core.slot_offset(sb.segment_count)
        );
    }
    let mut state = core.lock();
    let mut header_page = AlignedBuf::new(PAGE, PAGE);
    let mut valid = 0u32;
    // seq of the segment each index entry came from: newer copies win.
    let mut entry_seq: FxHashMap<_, u64> = FxHashMap::default();
    for slot in 0..sb.segment_count {
        let offset = core.slot_offset(slot);
        core.device
            .read_exact_at(header_page.as_mut_slice(), offset)
            .with_context(|| format!("cannot read segment slot {slot}"))?;
        let Ok(header) = SegmentHeader::decode(
            &header_page.as_slice()[..SEGMENT_HEADER_LEN],
            &sb.store_id,
            sb.segment_size,
        ) else {
            continue;
        };
        let range = header.summary_range();
        let read_from = |first: usize| -> anyhow::Result<AlignedBuf> {
            let mut pages = AlignedBuf::new(header.used_len() - first, PAGE);
            core.device
                .read_exact_at(pages.as_mut_slice(), offset + first as u64)
                .with_context(|| format!("cannot read the summary of segment slot {slot}"))?;
            Ok(pages)
        };
        let mut first_page = range.start & !(PAGE - 1);
        let mut pages = read_from(first_page)?;
        let summary = &pages.as_slice()[range.start - first_page..range.end - first_page];
        let entries = match decode_summary(summary, &header) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(slot, seq = header.seq, error = %e, "segment summary damaged; slot ignored");
                continue;
            }
        };
        // Split frames' tails are written just before the summary.
        let tails_start = entries
            .iter()
            .filter(|e| e.kind == EntryKind::FrameTail)
            .map(|e| e.offset as usize & !(PAGE - 1))
            .min();
        if let Some(start) = tails_start.filter(|&start| start < first_page) {
            first_page = start;
            pages = read_from(first_page)?;
        }
        let tails: FxHashMap<Fingerprint, SplitTail> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::FrameTail)
            .filter_map(|e| {
                let at = (e.offset as usize).checked_sub(first_page)?;
                let tail = pages.as_slice().get(at..at + SPLIT_TAIL_LEN)?;
                Some((e.fingerprint, tail.try_into().ok()?))
            })
            .collect();
        for entry in entries {
            let tail = match entry.kind {
                EntryKind::FrameTail => continue,
                EntryKind::FrameBody => match tails.get(&entry.fingerprint) {
                    Some(tail) => Some(*tail),
                    None => {
                        tracing::warn!(slot, seq = header.seq, fingerprint = %entry.fingerprint,
                            "a split frame without its tail; frame ignored");
                        continue;
                    }
                },
                EntryKind::Frame | EntryKind::MapNode => None,
            };
            let newer = entry_seq
                .get(&entry.fingerprint)
                .is_none_or(|&s| s < header.seq);
            if newer {
                entry_seq.insert(entry.fingerprint, header.seq);
                state.index.insert(
                    entry.fingerprint,
                    super::Location {
                        slot,
                        offset: entry.offset,
                        len: entry.len,
                        tail,
                    },
                );
            }
        }
        state.slots[slot as usize] = Slot {
            state: SlotState::OnFlash,
            seq: header.seq,
        };
        state.next_segment_seq = state.next_segment_seq.max(header.seq + 1);
        valid += 1;
    }
    state.free = (0..sb.segment_count)
        .rev()
        .filter(|&s| matches!(state.slots[s as usize].state, SlotState::Free))
        .collect();
    if valid == 0 && sb.segment_count > 0 {
        tracing::debug!("no segments on flash yet");
    }
    drop(state);
    Ok(())
}
