//! The flusher: the one thread that writes to the store's flash. It writes
//! queued journal batches (group commit: everything queued while the last
//! write ran goes in the next record), sealed segments in one write each,
//! and checkpoints.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_common::ondisk::{decode_batch, BatchBuilder, Checkpoint, RecordKind, VdiskRoot};
use strata_common::wire::{VdiskTicket, MAX_APPEND_VDISKS};

use super::core::{Core, SlotState};
use super::device::PageWriter;
use super::journal::{record_image, JournalRing, CHECKPOINT_RESERVE};
use super::nvlog_frames::frames_of_batch;
use super::{Shared, StoreError};
use crate::pool::{Moved, PoolLink};

/// A checkpoint is due when the journal is this full (fraction in percent).
const CHECKPOINT_JOURNAL_PERCENT: usize = 50;
/// ... or when the maps hold this many unflushed bytes.
const CHECKPOINT_DIRTY_MAP_BYTES: usize = 64 << 20;
/// ... or this long after the last one, if anything changed since.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);

/// The flusher's own tools: the page writer and the journal bookkeeping.
pub struct Writer {
    /// Writes pages to flash.
    pub pages: PageWriter,
    /// The journal ring.
    pub ring: JournalRing,
    /// When the last checkpoint was written.
    pub last_checkpoint: Instant,
    /// Records written since the last checkpoint.
    pub records_since_checkpoint: u64,
    /// The pool's NVLOG, when the store has a pool.
    pub pool: Option<PoolLink>,
}

/// The flusher thread's body: runs until the store stops, then writes a
/// final checkpoint.
pub fn run(shared: Arc<Shared>) {
    let core = &*shared.core;
    loop {
        let stopping = {
            let mut state = core.lock();
            loop {
                let due = state.checkpoint_wanted
                    || !state.batch.is_empty()
                    || !state.unwritten.is_empty()
                    || state.stopping;
                if due {
                    break;
                }
                let (next, wait) = core
                    .flusher_wake
                    .wait_timeout(state, CHECKPOINT_INTERVAL)
                    .unwrap_or_else(|p| p.into_inner());
                state = next;
                // Idle for a while: checkpoint whatever the journal holds.
                state.checkpoint_wanted |= wait.timed_out();
            }
            state.stopping
        };
        if core.failure().is_some() {
            if stopping {
                return;
            }
            // Nothing more can be written; drop queued work so writers fail
            // instead of waiting.
            let mut state = core.lock();
            state.batch.clear();
            state.unwritten.clear();
            state.checkpoint_wanted = false;
            drop(state);
            core.room.notify_all();
            continue;
        }
        let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let result = flush_once(&shared, &mut writer, stopping);
        if let Err(e) = result {
            core.fail(format!("{e}"));
        }
        if stopping {
            return;
        }
    }
}

/// One round: the queued batch, the sealed segments, and a checkpoint if
/// one is due (always when stopping).
fn flush_once(shared: &Shared, writer: &mut Writer, stopping: bool) -> Result<(), StoreError> {
    write_batch(shared, writer)?;
    write_segments(&shared.core, writer)?;
    if stopping || checkpoint_due(shared, writer) {
        checkpoint(shared, writer)?;
    }
    Ok(())
}

fn checkpoint_due(shared: &Shared, writer: &Writer) -> bool {
    let core = &*shared.core;
    if std::mem::take(&mut core.lock().checkpoint_wanted) {
        return writer.records_since_checkpoint > 0;
    }
    if writer.ring.used() * 100 >= writer.ring.len() * CHECKPOINT_JOURNAL_PERCENT {
        return true;
    }
    maps_need_flush(shared)
        || (writer.records_since_checkpoint > 0
            && writer.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
}

/// Whether the maps hold enough unflushed nodes to checkpoint for RAM's sake.
pub fn maps_need_flush(shared: &Shared) -> bool {
    let dirty: usize = shared.vdisks().iter().map(|v| v.map().dirty_bytes()).sum();
    dirty >= CHECKPOINT_DIRTY_MAP_BYTES
}

/// Makes the queued batch durable and publishes it: in the pool's NVLOG
/// when the store has a pool (the flash is then a cache, rebuilt from the
/// pool at start, so its journal holds only checkpoints), else as one
/// record of the flash's journal.
pub fn write_batch(shared: &Shared, writer: &mut Writer) -> Result<(), StoreError> {
    let core = &*shared.core;
    let (batch, last_seq) = {
        let mut state = core.lock();
        if state.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut state.batch, BatchBuilder::new());
        (batch, state.batch_last_seq)
    };
    core.room.notify_all();
    if let Some(link) = writer.pool.as_mut() {
        let vdisks = batch.vdisks().to_vec();
        let body = batch.into_body();
        let frames = frames_of_batch(&body);
        core.counters
            .nvlog_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        append_to_pool(shared, link, body, &vdisks)?;
        core.counters.nvlog_records.fetch_add(1, Ordering::Relaxed);
        if let Some(reads) = &core.pool_reads {
            reads.logged.note(link.last_appended(), frames);
        }
        core.nvlog_appended
            .store(link.last_appended(), Ordering::Release);
        core.publish_durable(last_seq);
        return Ok(());
    }
    let len = strata_common::ondisk::record_len(batch.body().len());
    let pos = match writer.ring.place(len, CHECKPOINT_RESERVE) {
        Some(pos) => pos,
        None => {
            // The journal is full: a checkpoint covers everything in it.
            checkpoint(shared, writer)?;
            writer
                .ring
                .place(len, CHECKPOINT_RESERVE)
                .ok_or(StoreError::JournalTooSmall {
                    record: len,
                    journal: writer.ring.len(),
                })?
        }
    };
    write_record(core, writer, RecordKind::Batch, pos, batch.body())?;
    core.publish_durable(last_seq);
    Ok(())
}

/// Appends a batch body that changes `vdisk_ids` to the pool's NVLOG.
/// Updates of vdisks another host took over are dropped from it (and
/// those vdisks marked moved, so their writes fail) until the pool takes
/// the rest.
fn append_to_pool(
    shared: &Shared,
    link: &mut PoolLink,
    mut body: Vec<u8>,
    vdisk_ids: &[u32],
) -> Result<(), StoreError> {
    let core = &*shared.core;
    let pool = link.address();
    let touched: Vec<_> = shared
        .vdisks()
        .into_iter()
        .filter(|v| vdisk_ids.contains(&v.id))
        .collect();
    if touched.len() != vdisk_ids.len() {
        return Err(StoreError::Pool(format!(
            "a batch changes vdisks {vdisk_ids:?}, but the store has only {} of them",
            touched.len()
        )));
    }
    if touched.len() > MAX_APPEND_VDISKS {
        return Err(StoreError::Pool(format!(
            "a batch changes {} vdisks; an NVLOG record may name at most {MAX_APPEND_VDISKS}",
            touched.len()
        )));
    }
    loop {
        let moved: Vec<u32> = touched
            .iter()
            .filter(|v| v.moved().is_some())
            .map(|v| v.id)
            .collect();
        if !moved.is_empty() {
            body = without_vdisks(&body, &moved)?;
        }
        let tickets = touched
            .iter()
            .filter(|v| v.moved().is_none())
            .map(|v| VdiskTicket {
                name: v.name.clone(),
                epoch: v.lease_epoch(),
            })
            .collect();
        let refusal = match link.append(body, tickets, &|| core.lock().stopping) {
            Ok(()) => return Ok(()),
            Err(e) => e
                .downcast::<Moved>()
                .map_err(|e| StoreError::Pool(format!("NVLOG on pool {pool}: {e:#}")))?,
        };
        let mut marked = false;
        for vdisk in touched.iter().filter(|v| refusal.vdisks.contains(&v.name)) {
            vdisk.mark_moved(format!("pool {pool} says another host claimed it"));
            marked = true;
        }
        if !marked {
            return Err(StoreError::Pool(format!(
                "pool {pool} refused an append for vdisks {:?} this store did not send",
                refusal.vdisks
            )));
        }
        body = refusal.payload;
    }
}

/// A batch body without the items of vdisks `ids` (frames stay: they
/// belong to no vdisk, and other updates may use them).
fn without_vdisks(body: &[u8], ids: &[u32]) -> Result<Vec<u8>, StoreError> {
    let items = decode_batch(body)
        .map_err(|e| StoreError::Pool(format!("re-reading a batch to drop moved vdisks: {e}")))?;
    let mut kept = BatchBuilder::new();
    for item in items
        .iter()
        .filter(|i| i.vdisk().is_none_or(|id| !ids.contains(&id)))
    {
        kept.push_item(item);
    }
    Ok(kept.into_body())
}

fn write_record(
    core: &Core,
    writer: &mut Writer,
    kind: RecordKind,
    pos: usize,
    body: &[u8],
) -> Result<(), StoreError> {
    let rec_no = writer.ring.next_rec_no();
    let image = record_image(kind, rec_no, &core.superblock.store_id, body);
    let offset = core.superblock.journal_offset + pos as u64;
    writer
        .pages
        .write_all_at(image.as_slice(), offset)
        .and_then(|()| core.device.sync())
        .map_err(|source| StoreError::Io {
            what: "writing the journal",
            source,
        })?;
    writer.ring.written(pos, image.as_slice().len());
    core.journal_used
        .store(writer.ring.used() as u64, Ordering::Relaxed);
    writer.records_since_checkpoint += 1;
    core.counters
        .journal_records
        .fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Writes every sealed segment, each in one write, then makes them durable.
pub fn write_segments(core: &Core, writer: &mut Writer) -> Result<(), StoreError> {
    let pending: Vec<_> = core.lock().unwritten.iter().cloned().collect();
    if pending.is_empty() {
        return Ok(());
    }
    for segment in &pending {
        writer
            .pages
            .write_all_at(segment.image(), core.slot_offset(segment.slot))
            .map_err(|source| StoreError::Io {
                what: "writing a segment",
                source,
            })?;
    }
    core.device.sync().map_err(|source| StoreError::Io {
        what: "syncing segments",
        source,
    })?;
    let mut state = core.lock();
    for segment in &pending {
        state.unwritten.retain(|s| !Arc::ptr_eq(s, segment));
        state.slots[segment.slot as usize].state = SlotState::OnFlash;
    }
    drop(state);
    core.counters
        .segments_written
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    core.room.notify_all();
    Ok(())
}

/// Flushes every map into the store (nodes appended like frames) and seals
/// the open segment; returns each vdisk's root and the next update's
/// sequence number. Every frame and node the roots reference is then in a
/// sealed segment (in RAM until the flusher writes it).
pub fn flush_roots(shared: &Shared) -> Result<(Vec<VdiskRoot>, u64), StoreError> {
    let core = &*shared.core;
    let mut roots = Vec::new();
    for vdisk in shared.vdisks() {
        let mut map = vdisk.map_mut();
        // Under the map's lock no update of this vdisk is in flight: every
        // update numbered below next_seq is in the map.
        let applied_seq = core.lock().next_seq.saturating_sub(1);
        let root = map.flush().map_err(|source| StoreError::Map {
            vdisk: vdisk.name.clone(),
            source,
        })?;
        roots.push(VdiskRoot {
            id: vdisk.id,
            name: vdisk.name.clone(),
            block_count: vdisk.block_count,
            root,
            applied_seq,
        });
    }
    let mut state = core.lock();
    core.seal_open(&mut state);
    Ok((roots, state.next_seq))
}

/// Flushes every map, writes all frames and nodes to segments and records
/// the roots in a checkpoint; the journal before it is then free.
pub fn checkpoint(shared: &Shared, writer: &mut Writer) -> Result<Vec<VdiskRoot>, StoreError> {
    let core = &*shared.core;
    let (roots, next_seq) = flush_roots(shared)?;
    write_segments(core, writer)?;
    let rec_no = writer.ring.next_rec_no();
    let body = Checkpoint {
        replay_from_rec: rec_no,
        next_seq,
        vdisks: roots.clone(),
    }
    .encode();
    let len = strata_common::ondisk::record_len(body.len());
    let pos = writer
        .ring
        .place(len, 0)
        .ok_or(StoreError::JournalTooSmall {
            record: len,
            journal: writer.ring.len(),
        })?;
    write_record(core, writer, RecordKind::Checkpoint, pos, &body)?;
    writer.ring.release_before(rec_no);
    core.journal_used
        .store(writer.ring.used() as u64, Ordering::Relaxed);
    writer.last_checkpoint = Instant::now();
    writer.records_since_checkpoint = 0;
    core.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(rec_no, next_seq, "checkpoint written");
    Ok(roots)
}
