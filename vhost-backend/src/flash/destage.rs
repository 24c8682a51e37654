//! Destage: moving what the NVLOG holds into the pool's drives, so the
//! NVLOG can be truncated.
//!
//! One round, on the cleaner thread (so the cleaner never drops an entry a
//! round is still sending):
//!
//! 1. Note the last NVLOG record appended, R. Every update in records up to
//!    R is in the maps now.
//! 2. Flush the maps: each vdisk's root covers every update up to R.
//! 3. Take every entry (frame or map node) of the segments written since
//!    the last round. That covers every frame of records up to R, and
//!    every node and frame the roots reference that the pool may lack.
//! 4. Ask the pool which of them it lacks (the pool-wide dedupe), pack
//!    those into stripes of up to [`STRIPE_DATA`] bytes, erasure-code them
//!    here (k = [`DATA_CHUNKS`], or fewer if the pool has fewer drives in
//!    service, and 2 parity) and send each to the pool, which
//!    writes the chunks to k + 2 drives and indexes the entries.
//! 5. Commit the roots to the pool as this host's state covering R.
//! 6. Truncate the NVLOG through R.
//!
//! A host that starts afresh loads the committed roots, replays the NVLOG
//! after R, and fetches from the stripes what its flash lacks. A crash
//! anywhere in a round leaves the last commit and an NVLOG that still
//! holds everything after it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_common::erasure;
use strata_common::fingerprint::Fingerprint;
use strata_common::frame::BLOCK_SIZE;
use strata_common::ondisk::Checkpoint;
use strata_common::wire::{Request, Response, StripeEntry, MAX_FINGERPRINTS};

use super::core::{Core, SlotState};
use super::flusher::flush_roots;
use super::segment::Location;
use super::{Shared, StoreError};
use crate::pool::{Fenced, PoolLink};

/// Bytes of entries per stripe.
pub const STRIPE_DATA: usize = 4 << 20;
/// Data chunks per stripe at most (the default pool has six drives: 4 + 2);
/// fewer when the pool has fewer drives in service.
pub const DATA_CHUNKS: usize = 4;
/// A round starts early once the NVLOG holds this fraction (1/n) of its quota.
const QUOTA_FRACTION: u64 = 4;

/// The destager's connection and progress.
pub struct Destager {
    link: PoolLink,
    interval: Duration,
    last_round: Instant,
    /// Data chunks of this round's stripes.
    data_chunks: usize,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Entries looked at.
    pub entries: usize,
    /// Entries the pool lacked and got.
    pub sent: usize,
    /// Stripes written.
    pub stripes: usize,
}

impl Destager {
    /// A destager over its own connection `link`, starting a round at
    /// least every `interval` while the NVLOG holds anything.
    pub fn new(link: PoolLink, interval: Duration) -> Destager {
        Destager {
            link,
            interval,
            last_round: Instant::now(),
            data_chunks: DATA_CHUNKS,
        }
    }

    /// Whether a round is due: the NVLOG holds records and the interval
    /// passed (or `now`), or it is past its quota fraction. With `now`, a
    /// round is also due when segments were sealed since the last one
    /// (entries fetched from the pool, say): it lets the cleaner evict
    /// them.
    pub fn due(&mut self, shared: &Shared, now: bool) -> bool {
        let appended = shared.core.nvlog_appended.load(Ordering::Acquire);
        // Asked first in any case: a round with the pool away would wait
        // for it, and the cleaner thread with it.
        let status = self.link.call(&Request::Status, &|| true);
        if status.is_ok() && now && self.sealed_since_last_round(shared) {
            return true;
        }
        match status {
            Ok(Response::Status {
                used,
                quota,
                truncated_through,
                ..
            }) => {
                let pending = appended > truncated_through && used > 0;
                pending
                    && (now
                        || self.last_round.elapsed() >= self.interval
                        || used.saturating_mul(QUOTA_FRACTION) >= quota)
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected answer to an NVLOG status");
                false
            }
            Err(e) => {
                tracing::debug!(
                    error = format!("{e:#}"),
                    "pool status unavailable; destage waits"
                );
                false
            }
        }
    }

    /// Whether a segment was sealed since the last round's cut.
    fn sealed_since_last_round(&self, shared: &Shared) -> bool {
        let state = shared.core.lock();
        let open = state
            .open
            .as_ref()
            .map_or(state.next_segment_seq, |o| o.seq());
        open.saturating_sub(1) > shared.core.destaged_through_segment.load(Ordering::Acquire)
    }

    /// Runs one round.
    pub fn round(&mut self, shared: &Shared) -> Result<RoundReport, StoreError> {
        let started = Instant::now();
        let core = &*shared.core;
        let through_seq = core.nvlog_appended.load(Ordering::Acquire);
        let (roots, next_seq) = flush_roots(shared)?;

        // Every entry of the segments since the last round; segments from
        // the open one on may still grow, so the next round looks again.
        let sent_through = core.destaged_through_segment.load(Ordering::Acquire);
        let (mut entries, next_cut) = {
            let state = core.lock();
            let entries: Vec<(Fingerprint, Location)> = state
                .index
                .iter()
                .filter(|(_, l)| {
                    let slot = &state.slots[l.slot as usize];
                    !matches!(slot.state, SlotState::Free) && slot.seq > sent_through
                })
                .map(|(fp, l)| (*fp, *l))
                .collect();
            let open = state.open.as_ref().map(|o| o.seq());
            (entries, open.unwrap_or(state.next_segment_seq) - 1)
        };
        // In flash order, so each segment is read once.
        entries.sort_unstable_by_key(|(_, l)| (l.slot, l.offset));

        let mut report = RoundReport {
            entries: entries.len(),
            ..RoundReport::default()
        };
        // Stripes as wide as the pool's drives in service allow, up to
        // DATA_CHUNKS (the pool narrows its stripes after drive failures).
        self.data_chunks = match self.call(core, Request::DriveStatus)? {
            Response::Drives {
                max_data_chunks, ..
            } if max_data_chunks > 0 => DATA_CHUNKS.min(usize::from(max_data_chunks)),
            other => return Err(unexpected("drive status", &other)),
        };
        let mut lacking: Vec<(Fingerprint, Location)> = Vec::new();
        for part in entries.chunks(MAX_FINGERPRINTS) {
            let fingerprints = part.iter().map(|(fp, _)| *fp).collect();
            match self.call(core, Request::Lookup { fingerprints })? {
                Response::Have { have } if have.len() == part.len() => lacking.extend(
                    part.iter()
                        .zip(have)
                        .filter(|(_, have)| !have)
                        .map(|(entry, _)| *entry),
                ),
                other => return Err(unexpected("lookup", &other)),
            }
        }
        let mut packer = Packer::default();
        for group in lacking.chunk_by(|a, b| a.1.slot == b.1.slot) {
            for (fp, bytes) in read_segment_entries(core, group)? {
                // The pool keeps the first copy of a fingerprint it gets,
                // and the NVLOG is truncated after: a damaged copy must
                // never be sent. A damaged frame is repaired from its
                // NVLOG record; anything else fails the round, and the log
                // keeps the data.
                let bytes = if entry_is_sound(shared, &fp, &bytes) {
                    bytes
                } else {
                    core.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    repair_frame(core, &fp)?.ok_or_else(|| {
                        StoreError::Pool(format!(
                            "destage: entry {fp} fails verification on flash and the pool has no copy; not sent, NVLOG kept"
                        ))
                    })?
                };
                if packer.data.len() + bytes.len() > STRIPE_DATA {
                    self.send_stripe(core, &mut packer, &mut report)?;
                }
                packer.add(fp, &bytes);
            }
        }
        self.send_stripe(core, &mut packer, &mut report)?;

        // Nothing new in the log (a round to let the cleaner evict what
        // reads brought in): the last commit still stands.
        if through_seq > core.nvlog_destaged.load(Ordering::Acquire) {
            let state = Checkpoint {
                replay_from_rec: 0,
                next_seq,
                vdisks: roots,
            }
            .encode();
            match self.call(core, Request::Commit { through_seq, state })? {
                Response::Committed { through_seq: t } if t == through_seq => {}
                other => return Err(unexpected("commit", &other)),
            }
            match self.call(core, Request::Truncate { through_seq })? {
                Response::Truncated { .. } => {}
                other => return Err(unexpected("truncate", &other)),
            }
            core.counters.destages.fetch_add(1, Ordering::Relaxed);
            core.nvlog_destaged.store(through_seq, Ordering::Release);
            if let Some(reads) = &core.pool_reads {
                reads.logged.forget_through(through_seq);
            }
        }
        core.destaged_through_segment
            .store(next_cut, Ordering::Release);
        self.last_round = Instant::now();
        tracing::info!(
            entries = report.entries,
            sent = report.sent,
            stripes = report.stripes,
            through_seq,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "destaged to the pool"
        );
        Ok(report)
    }

    /// Erasure-codes and sends the packed entries as one stripe.
    fn send_stripe(
        &mut self,
        core: &Core,
        packer: &mut Packer,
        report: &mut RoundReport,
    ) -> Result<(), StoreError> {
        if packer.entries.is_empty() {
            return Ok(());
        }
        let packed = std::mem::take(packer);
        let chunks = erasure::encode(&packed.data, self.data_chunks)
            .map_err(|e| StoreError::Pool(format!("erasure coding a stripe: {e}")))?;
        let count = packed.entries.len();
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        let request = Request::PutStripe {
            k: self.data_chunks as u8,
            data_len: packed.data.len() as u32,
            chunks,
            entries: packed.entries,
        };
        match self.call(core, request)? {
            Response::StripeStored { .. } => {}
            other => return Err(unexpected("stripe", &other)),
        }
        report.sent += count;
        report.stripes += 1;
        core.counters
            .stripes_written
            .fetch_add(1, Ordering::Relaxed);
        core.counters
            .frames_destaged
            .fetch_add(count as u64, Ordering::Relaxed);
        core.counters
            .stripe_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `request`, retrying across lost connections until the store
    /// stops.
    /// A newer strata-host having taken this host's lease fails the store:
    /// nothing this one does reaches the pool any more.
    fn call(&mut self, core: &Core, request: Request) -> Result<Response, StoreError> {
        self.link
            .call(&request, &|| core.lock().stopping)
            .map_err(|e| {
                let error = format!("destage: {e:#}");
                if e.downcast_ref::<Fenced>().is_some() {
                    core.fail(error.clone());
                }
                StoreError::Pool(error)
            })
    }
}

/// The bytes of `group`'s entries, all in one segment slot, in order: one
/// read of the covered range for a segment on flash (the cleaner, which
/// alone frees slots, runs on this thread, so the slot stays put), copies
/// for one still in RAM.
fn read_segment_entries(
    core: &Core,
    group: &[(Fingerprint, Location)],
) -> Result<Vec<(Fingerprint, Vec<u8>)>, StoreError> {
    let io = |source| StoreError::Io {
        what: "reading entries to destage",
        source,
    };
    let on_flash = group.first().is_some_and(|(_, l)| {
        matches!(core.lock().slots[l.slot as usize].state, SlotState::OnFlash)
    });
    if !on_flash {
        return group
            .iter()
            .map(|(fp, _)| match core.read_entry(fp).map_err(io)? {
                Some(bytes) => Ok((*fp, bytes)),
                None => Err(StoreError::Internal("an entry to destage left the index")),
            })
            .collect();
    }
    let (Some((_, first)), Some((_, last))) = (group.first(), group.last()) else {
        return Ok(Vec::new());
    };
    let span = Location {
        slot: first.slot,
        offset: first.offset,
        len: last.offset + last.len - first.offset,
        tail: None,
    };
    let bytes = core.read_stored(&span).map_err(io)?;
    Ok(group
        .iter()
        .map(|(fp, l)| {
            let at = (l.offset - first.offset) as usize;
            (*fp, l.entry_from(fp, &bytes[at..at + l.len as usize]))
        })
        .collect())
}

/// Whether `bytes` are a sound copy of `fingerprint`: a frame whose
/// checksum holds and that names it, or a map node whose id it is.
fn entry_is_sound(shared: &Shared, fingerprint: &Fingerprint, bytes: &[u8]) -> bool {
    strata_common::frame::verify_checksum(bytes).is_ok_and(|h| h.fingerprint == *fingerprint)
        || shared.node_ids.id_of(bytes) == *fingerprint
}

/// A good copy of frame `fingerprint`, damaged on flash, from the pool
/// (its NVLOG record, as destage only sends what the stripes lack), stored
/// again on flash; `None` if the pool has none.
fn repair_frame(core: &Core, fingerprint: &Fingerprint) -> Result<Option<Vec<u8>>, StoreError> {
    let check = |good: &[u8]| {
        let mut block = [0u8; BLOCK_SIZE];
        core.codec.decode(good, fingerprint, &mut block).is_ok()
    };
    core.repair_from_pool(fingerprint, &check)
}

fn unexpected(what: &str, response: &Response) -> StoreError {
    StoreError::Pool(format!(
        "destage: the pool answered a {what} with {response:?}"
    ))
}

/// Entries gathered for the next stripe.
#[derive(Default)]
struct Packer {
    data: Vec<u8>,
    entries: Vec<StripeEntry>,
}

impl Packer {
    fn add(&mut self, fingerprint: Fingerprint, bytes: &[u8]) {
        self.entries.push(StripeEntry {
            fingerprint,
            offset: self.data.len() as u32,
            len: bytes.len() as u32,
        });
        self.data.extend_from_slice(bytes);
    }
}
