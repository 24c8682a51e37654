//! The segment cleaner: frees segments whose frames are mostly dead.
//!
//! A cycle runs when free slots drop below a low-water mark:
//!
//! 1. Turn on *touch tracking*: from now on every write that finds a block
//!    already stored (a dedupe hit) records its fingerprint.
//! 2. Checkpoint, and mark everything reachable from the checkpoint's roots
//!    (map nodes and blocks). Recovery needs exactly those roots plus the
//!    journal after them, whose blocks are new or touched.
//! 3. Pick victims among segments written before the checkpoint, emptiest
//!    first, only while their live fraction is at most [`MAX_LIVE_PERCENT`]
//!    (so cleaning copies at most 0.75 / 0.25 = 3 bytes per byte it frees).
//! 4. For each victim, under the store lock: live or touched entries the
//!    index points at are copied into the open segment; the rest leave the
//!    index. Guest I/O waits at most for one victim's bookkeeping.
//! 5. Write the copies durably, then free the victims' slots. A crash
//!    before that leaves the old copies where they were.
//!
//! On a pool the flash is a cache: a live frame in a segment a destage
//! round covered (the pool holds it) is dropped instead of copied, and
//! costs nothing when victims are chosen, so the oldest destaged data
//! leaves first and a vdisk may be larger than the flash. A read of a
//! dropped frame fetches its map leaf's region from the pool again. Map
//! nodes are always copied: every cycle's mark walks them.
//!
//! A read that raced with a move sees a frame fail verification and looks
//! the block up again (see the `strata` engine).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use strata_common::fingerprint::Fingerprint;
use strata_common::map::{MapError, Visit, Walk};
use strata_common::ondisk::{decode_summary, EntryKind, SegmentHeader, PAGE, SEGMENT_HEADER_LEN};

use super::core::{SlotState, State};
use super::destage::Destager;
use super::flusher;
use super::{Shared, StoreError};
use crate::engine::buffers::AlignedBuf;

/// Start cleaning when fewer than this percentage of slots is free.
pub const LOW_FREE_PERCENT: usize = 20;
/// Stop picking victims once this percentage is free.
const TARGET_FREE_PERCENT: usize = 30;
/// Never clean a segment more than this percent live.
pub const MAX_LIVE_PERCENT: u64 = 75;

/// Whether free slots are below the low-water mark.
pub fn needs_cleaning(state: &State) -> bool {
    state.free.len() * 100 < state.slots.len() * LOW_FREE_PERCENT
}

/// What one cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// Segments freed.
    pub freed: usize,
    /// Bytes copied to keep live entries.
    pub moved_bytes: u64,
    /// Dead entries dropped from the index.
    pub dropped: usize,
    /// Live frames dropped because the pool holds them.
    pub evicted: usize,
}

/// Runs one cleaning cycle.
pub fn clean(shared: &Shared) -> Result<CycleReport, StoreError> {
    let started = Instant::now();
    let core = &*shared.core;
    core.lock().touched = Some(FxHashSet::default());
    let result = clean_tracked(shared);
    core.lock().touched = None;
    let report = result?;
    tracing::info!(
        freed = report.freed,
        moved_bytes = report.moved_bytes,
        dropped = report.dropped,
        evicted = report.evicted,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "segment cleaner cycle"
    );
    Ok(report)
}

fn clean_tracked(shared: &Shared) -> Result<CycleReport, StoreError> {
    let core = &*shared.core;
    // On a pool, recovery never reads the flash, so roots need no
    // checkpoint (and the flusher may be waiting on the pool for a
    // destage that runs on this thread).
    let (roots, first_unsafe_seq) = if shared.pooled {
        let (roots, _) = flusher::flush_roots(shared)?;
        (roots, core.lock().next_segment_seq)
    } else {
        let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let roots = flusher::checkpoint(shared, &mut writer)?;
        (roots, core.lock().next_segment_seq)
    };

    // Mark. Live map nodes are also kept apart: they are copied even
    // where the pool holds them, so they count when choosing victims.
    let mut live: FxHashSet<Fingerprint> = FxHashSet::default();
    let mut live_nodes: FxHashSet<Fingerprint> = FxHashSet::default();
    for root in &roots {
        let map = shared.open_map(root.block_count, root.root);
        map.visit(|visit| {
            Ok::<_, MapError>(match visit {
                Visit::Node { id: Some(id), .. } if !live.insert(id) => Walk::SkipChildren,
                Visit::Node { id: Some(id), .. } => {
                    live_nodes.insert(id);
                    Walk::Continue
                }
                Visit::Node { .. } => Walk::Continue,
                Visit::Block { fingerprint, .. } => {
                    live.insert(fingerprint);
                    Walk::Continue
                }
            })
        })
        .map_err(|source| StoreError::Map {
            vdisk: root.name.clone(),
            source,
        })?;
    }

    // Choose victims: emptiest first, counting only the live bytes that
    // must be copied.
    let in_pool_through = core.destaged_through_segment.load(Ordering::Acquire);
    let victims = {
        let state = core.lock();
        let touched = state.touched.as_ref();
        let mut live_bytes: FxHashMap<u32, u64> = FxHashMap::default();
        for (fp, location) in &state.index {
            if evictable(shared, &state, location.slot, in_pool_through) && !live_nodes.contains(fp)
            {
                continue;
            }
            if live.contains(fp) || touched.is_some_and(|t| t.contains(fp)) {
                *live_bytes.entry(location.slot).or_default() += location.flash_len();
            }
        }
        let size = u64::from(core.superblock.segment_size);
        let mut candidates: Vec<(u64, u32)> = state
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, SlotState::OnFlash) && s.seq < first_unsafe_seq)
            .map(|(i, _)| {
                let slot = i as u32;
                (live_bytes.get(&slot).copied().unwrap_or(0), slot)
            })
            .filter(|(bytes, _)| bytes * 100 <= size * MAX_LIVE_PERCENT)
            .collect();
        candidates.sort_unstable();
        let want = (state.slots.len() * TARGET_FREE_PERCENT / 100).saturating_sub(state.free.len());
        // Each victim's live bytes need room in new segments; stop when the
        // copies would use more than is free. Its split frames' bodies are
        // copied first, so its copies skip to a page boundary at most twice;
        // a victim with nothing live needs no room at all.
        let mut budget = (state.free.len() as u64).saturating_sub(1) * size;
        let mut victims = Vec::new();
        for (bytes, slot) in candidates {
            let room = match bytes {
                0 => 0,
                bytes => bytes + 2 * PAGE as u64,
            };
            if victims.len() >= want.max(1) || room > budget {
                break;
            }
            budget -= room;
            victims.push(slot);
        }
        victims
    };
    if victims.is_empty() {
        return Ok(CycleReport::default());
    }

    let mut report = CycleReport::default();
    for &slot in &victims {
        let moved = evacuate(shared, slot, &live, in_pool_through)?;
        report.moved_bytes += moved.bytes;
        report.dropped += moved.dropped;
        report.evicted += moved.evicted;
    }
    core.counters
        .frames_evicted
        .fetch_add(report.evicted as u64, Ordering::Relaxed);
    // The copies must be durable before the old places are reused (on a
    // pool, readable is enough: sealed segments are read from RAM until
    // written).
    core.seal_open(&mut core.lock());
    if !shared.pooled {
        let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        flusher::write_segments(core, &mut writer)?;
    }
    let mut state = core.lock();
    for &slot in &victims {
        state.slots[slot as usize].state = SlotState::Free;
        state.slots[slot as usize].seq = 0;
        state.free.push(slot);
    }
    // Lowest slots are used first.
    state.free.sort_unstable_by(|a, b| b.cmp(a));
    drop(state);
    core.room.notify_all();
    report.freed = victims.len();
    Ok(report)
}

/// Whether the frames of `slot` are all in the pool (on a pooled store, a
/// segment a destage round covered).
fn evictable(shared: &Shared, state: &State, slot: u32, in_pool_through: u64) -> bool {
    shared.pooled && state.slots[slot as usize].seq <= in_pool_through
}

/// What evacuating one segment did.
#[derive(Debug, Default)]
struct Evacuated {
    /// Bytes of live entries copied.
    bytes: u64,
    /// Dead entries dropped.
    dropped: usize,
    /// Live frames dropped because the pool holds them.
    evicted: usize,
}

/// Moves the live entries out of `slot` (or, for frames the pool holds,
/// drops them) and drops the dead ones from the index.
fn evacuate(
    shared: &Shared,
    slot: u32,
    live: &FxHashSet<Fingerprint>,
    in_pool_through: u64,
) -> Result<Evacuated, StoreError> {
    let core = &*shared.core;
    let io = |source| StoreError::Io {
        what: "reading a segment to clean",
        source,
    };
    let sb = &core.superblock;
    let mut image = AlignedBuf::new(sb.segment_size as usize, PAGE);
    core.device
        .read_exact_at(&mut image.as_mut_slice()[..PAGE], core.slot_offset(slot))
        .map_err(io)?;
    let header = SegmentHeader::decode(
        &image.as_slice()[..SEGMENT_HEADER_LEN],
        &sb.store_id,
        sb.segment_size,
    )
    .map_err(|_| StoreError::Internal("a segment to clean lost its header"))?;
    let used = header.used_len();
    core.device
        .read_exact_at(
            &mut image.as_mut_slice()[PAGE..used],
            core.slot_offset(slot) + PAGE as u64,
        )
        .map_err(io)?;
    let mut entries = decode_summary(&image.as_slice()[header.summary_range()], &header)
        .map_err(|_| StoreError::Internal("a segment to clean has a damaged summary"))?;
    // Bodies first: copied one after another they need no alignment, and
    // the small entries after them at most one skip (the budget counts on
    // it).
    entries.sort_by_key(|e| e.kind != EntryKind::FrameBody);

    let mut done = Evacuated::default();
    let mut state = core.lock();
    let in_pool = evictable(shared, &state, slot, in_pool_through);
    for entry in entries {
        // Only the copy the index points at (never a split frame's tail,
        // which comes with its body).
        let Some(location) = state
            .index
            .get(&entry.fingerprint)
            .filter(|l| l.slot == slot && l.offset == entry.offset)
            .copied()
        else {
            continue;
        };
        let kind = match entry.kind {
            EntryKind::FrameBody => EntryKind::Frame,
            kind => kind,
        };
        let keep = live.contains(&entry.fingerprint)
            || state
                .touched
                .as_ref()
                .is_some_and(|t| t.contains(&entry.fingerprint));
        if keep && in_pool && kind == EntryKind::Frame {
            state.index.remove(&entry.fingerprint);
            done.evicted += 1;
        } else if keep {
            let start = entry.offset as usize;
            let stored = &image.as_slice()[start..start + entry.len as usize];
            let bytes = location.entry_from(&entry.fingerprint, stored);
            core.append(&mut state, entry.fingerprint, kind, &bytes)?;
            done.bytes += u64::from(entry.len);
        } else {
            state.index.remove(&entry.fingerprint);
            done.dropped += 1;
        }
    }
    Ok(done)
}

/// How often a pooled store's cleaner thread checks whether a destage is due.
const DESTAGE_POLL: Duration = Duration::from_secs(1);

/// The cleaner thread's body; on a pool it also runs the destager.
pub fn run(shared: Arc<Shared>, mut destager: Option<Destager>) {
    let core = &*shared.core;
    loop {
        {
            let mut state = core.lock();
            while !state.stopping && !needs_cleaning(&state) {
                if let Some(destager) = destager.as_mut() {
                    let (next, _) = core
                        .cleaner_wake
                        .wait_timeout(state, DESTAGE_POLL)
                        .unwrap_or_else(|p| p.into_inner());
                    state = next;
                    if state.stopping || needs_cleaning(&state) {
                        break;
                    }
                    drop(state);
                    destage_if(&shared, destager, false);
                    state = core.lock();
                } else {
                    state = core
                        .cleaner_wake
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
            if state.stopping {
                drop(state);
                // What the NVLOG holds goes to the stripes before the host
                // stops; this also frees quota a last append may wait for.
                if let Some(destager) = destager.as_mut() {
                    destage_if(&shared, destager, true);
                }
                return;
            }
        }
        if core.failure().is_some() {
            return;
        }
        match clean(&shared) {
            // On a pool, a destage makes the live data evictable.
            Ok(report)
                if report.freed == 0
                    && destager
                        .as_mut()
                        .is_some_and(|d| destage_if(&shared, d, true)) => {}
            Ok(report) if report.freed == 0 => {
                tracing::warn!(
                    "segment cleaner found nothing to free: the flash store is full of live data"
                );
                let mut state = core.lock();
                state.out_of_space = true;
                drop(state);
                core.room.notify_all();
                // Wait for a change (a vdisk freed data, or shutdown).
                let state = core.lock();
                let _unused = core
                    .cleaner_wake
                    .wait_timeout(state, std::time::Duration::from_secs(5))
                    .unwrap_or_else(|p| p.into_inner());
            }
            Ok(_) => {
                core.lock().out_of_space = false;
                core.room.notify_all();
            }
            Err(e) => core.fail(format!("segment cleaner: {e}")),
        }
        // Cleaning must not starve destage: the flusher may be waiting for
        // NVLOG room only a destage frees.
        if let Some(destager) = destager.as_mut() {
            destage_if(&shared, destager, false);
        }
    }
}

/// Runs a destage round if one is due (`now`: if the NVLOG holds anything)
/// and returns whether one ran and succeeded. A failed round is logged and
/// tried again later: the NVLOG still holds everything, so nothing is at
/// risk.
fn destage_if(shared: &Shared, destager: &mut Destager, now: bool) -> bool {
    if shared.core.failure().is_some() || !destager.due(shared, now) {
        return false;
    }
    match destager.round(shared) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "destage to the pool failed; will retry");
            false
        }
    }
}
