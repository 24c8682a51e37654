//! The durable pool: stripes on the drives, found through the catalog.
//!
//! Hosts erasure-code their stripes ([`strata_common::erasure`]); the pool
//! checks a stripe's shape, places its k + 2 chunks on k + 2 different
//! drives in service (the layout rotates the starting drive with the stripe
//! id, so chunks, and the reads and rebuilds that follow them, spread
//! evenly over every drive), writes them durably, then records the stripe
//! and indexes its frames in one catalog transaction.
//!
//! A frame is read from the data chunk(s) holding its bytes. A chunk that
//! is missing, fails its checksum or sits on a drive marked failed is
//! restored from any k others, so a stripe reads with up to two bad drives.
//!
//! Drives marked failed take no new chunks. A rebuild rewrites every stripe
//! with a chunk on a failed drive (or a chunk file gone): it reads and
//! restores the stripe, re-encodes its data for the drives in service
//! (k shrinks when fewer than k + 2 remain, so every chunk is still on its
//! own drive and any two more drive losses are survived), writes the
//! chunks under the stripe's next generation, switches the record, then
//! deletes the old chunks. Frame offsets are offsets in the stripe's data,
//! which a rewrite keeps, so the index does not change.
//!
//! A scrub reads every chunk in full and checks it, and rewrites the same
//! way each stripe with a chunk that is damaged (which a rebuild, looking
//! only at whether chunks are there, does not see).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::Context;
use strata_common::erasure::{self, MAX_DATA_CHUNKS, PARITY_CHUNKS};
use strata_common::fingerprint::Fingerprint;
use strata_common::wire::{StripeEntry, MAX_ENTRY_LEN};

use crate::catalog::{Catalog, FrameLocation, StripeRecord};
use crate::drives::{ChunkError, ChunkId, ChunkSlot, Drives};
use strata_common::wire::DriveState;

/// Why a stripe was refused or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The request cannot be served as asked (a stripe of the wrong shape,
    /// no such drive).
    #[error("bad request: {0}")]
    Bad(String),
    /// Too few chunks are readable to restore a stripe.
    #[error("stripe {stripe} cannot be read: {source}")]
    Unavailable {
        /// The stripe.
        stripe: u64,
        /// Why.
        #[source]
        source: erasure::ErasureError,
    },
    /// Drive or catalog I/O failed.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// The pool's drives and catalog.
pub struct StripeStore {
    drives: Drives,
    catalog: Catalog,
    next_id: Mutex<u64>,
    /// Per drive, whether the administrator marked it failed.
    marked_failed: RwLock<Vec<bool>>,
    /// Held shared while chunks are written and recorded, exclusively
    /// while a drive is opened again: a drive's free space is rebuilt from
    /// the catalog with no chunk half way between the two.
    writes: RwLock<()>,
    /// One rebuild or scrub at a time.
    rebuilding: Mutex<()>,
}

/// The drives as a status request reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveReport {
    /// Per drive, its state.
    pub drives: Vec<DriveState>,
    /// Stripes with a chunk on a failed or offline drive.
    pub degraded_stripes: u64,
    /// Most data chunks a new stripe may have.
    pub max_data_chunks: usize,
}

impl StripeStore {
    /// Opens the catalog under `data_dir` and the drives `drive_paths`.
    pub fn open(data_dir: &Path, drive_paths: Vec<PathBuf>) -> anyhow::Result<StripeStore> {
        anyhow::ensure!(
            drive_paths.len() > PARITY_CHUNKS,
            "the pool needs at least {} drives, {} given",
            PARITY_CHUNKS + 1,
            drive_paths.len()
        );
        let catalog = Catalog::open(data_dir)?;
        let known = catalog.drive_kinds(drive_paths.len())?;
        let stripes = catalog.stripes()?;
        let mut used: Vec<Option<ChunkSlot>> = vec![None; drive_paths.len()];
        for slot in stripes
            .iter()
            .flat_map(|(id, record)| chunk_slots(*id, record))
        {
            if let Some(first @ None) = used.get_mut(slot.drive) {
                *first = Some(slot);
            }
        }
        let drives = Drives::open(catalog.pool_id()?, drive_paths, &known, &used);
        for (drive, (kind, known)) in drives.kinds().into_iter().zip(&known).enumerate() {
            if let (Some(kind), None) = (kind, known) {
                catalog.set_drive_kind(drive, kind)?;
            }
        }
        // Device drives learn which of their extents hold chunks.
        drives.reserve_all(
            stripes
                .iter()
                .flat_map(|(id, record)| chunk_slots(*id, record)),
        );
        let next_id = catalog.next_stripe_id()?;
        let marked_failed = catalog.failed_drives(drives.len())?;
        Ok(StripeStore {
            drives,
            catalog,
            next_id: Mutex::new(next_id),
            marked_failed: RwLock::new(marked_failed),
            writes: RwLock::new(()),
            rebuilding: Mutex::new(()),
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn marked_failed(&self) -> Vec<bool> {
        self.marked_failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Per drive, whether it is out of service: marked failed, or offline.
    fn failed(&self) -> Vec<bool> {
        self.marked_failed()
            .into_iter()
            .zip(self.drives.offline())
            .map(|(marked, offline)| marked || offline.is_some())
            .collect()
    }

    /// Per drive, its state.
    fn states(&self) -> Vec<DriveState> {
        let full = self.drives.full();
        self.marked_failed()
            .into_iter()
            .zip(self.drives.offline())
            .zip(full)
            .map(|((marked, offline), full)| match (marked, offline, full) {
                (true, _, _) => DriveState::Failed,
                (false, Some(_), _) => DriveState::Offline,
                (false, None, true) => DriveState::Full,
                (false, None, false) => DriveState::InService,
            })
            .collect()
    }

    fn gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.writes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The drives that take new chunks: in service, and not full.
    fn writable(&self) -> Vec<usize> {
        let failed = self.failed();
        let full = self.drives.full();
        (0..self.drives.len())
            .filter(|&d| !failed[d] && !full[d])
            .collect()
    }

    /// The most data chunks a new stripe may have on the drives that take
    /// new chunks (0 when fewer than 3 do).
    pub fn max_data_chunks(&self) -> usize {
        self.writable()
            .len()
            .saturating_sub(PARITY_CHUNKS)
            .min(MAX_DATA_CHUNKS)
    }

    /// Marks `drive` failed or back in service. A drive put in service is
    /// opened again first (a replaced disk, failed or offline or even swapped
    /// while in service): one without a label is labelled; one that cannot
    /// be opened stays out of service, and the error says why.
    pub fn set_drive(&self, drive: usize, failed: bool) -> Result<DriveReport, StripeError> {
        if drive >= self.drives.len() {
            return Err(StripeError::Bad(format!(
                "no drive {drive}: the pool has drives 0 to {}",
                self.drives.len() - 1
            )));
        }
        if !failed {
            let _no_writes = self.writes.write().unwrap_or_else(|p| p.into_inner());
            let in_use: Vec<ChunkSlot> = self
                .catalog
                .stripes()?
                .iter()
                .flat_map(|(id, record)| chunk_slots(*id, record))
                .filter(|slot| slot.drive == drive)
                .collect();
            let known = self.catalog.drive_kinds(self.drives.len())?[drive];
            self.drives
                .reopen(drive, known, &in_use)
                .with_context(|| format!("drive {drive} cannot return to service"))?;
            if let (None, Some(kind)) = (known, self.drives.kinds()[drive]) {
                self.catalog.set_drive_kind(drive, kind)?;
            }
        }
        self.catalog.set_drive(drive, failed)?;
        self.marked_failed
            .write()
            .unwrap_or_else(|p| p.into_inner())[drive] = failed;
        tracing::warn!(drive, failed, "drive state changed");
        self.drive_report()
    }

    /// The drives' state.
    pub fn drive_report(&self) -> Result<DriveReport, StripeError> {
        let failed = self.failed();
        let degraded = self
            .catalog
            .stripes()?
            .iter()
            .filter(|(_, r)| r.drives.iter().any(|&d| is_failed(&failed, d)))
            .count();
        Ok(DriveReport {
            drives: self.states(),
            degraded_stripes: degraded as u64,
            max_data_chunks: self.max_data_chunks(),
        })
    }

    /// Whether the pool holds each fingerprint.
    pub fn lookup(&self, fingerprints: &[Fingerprint]) -> anyhow::Result<Vec<bool>> {
        Ok(self
            .catalog
            .locate(fingerprints)?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    /// Checks, places and stores a stripe; returns its id.
    pub fn put_stripe(
        &self,
        k: usize,
        data_len: usize,
        chunks: &[Vec<u8>],
        entries: &[StripeEntry],
    ) -> Result<u64, StripeError> {
        let bad = |why: String| Err(StripeError::Bad(why));
        let k_max = self.max_data_chunks();
        if k == 0 || k > k_max {
            return bad(format!(
                "{k} data chunks; the drives in service take 1 to {k_max}"
            ));
        }
        if chunks.len() != k + PARITY_CHUNKS {
            return bad(format!("{} chunks for k={k}", chunks.len()));
        }
        let chunk_len = chunks[0].len();
        if chunks.iter().any(|c| c.len() != chunk_len)
            || chunk_len != erasure::chunk_len(data_len, k)
        {
            return bad(format!(
                "chunks are not all {} bytes for {data_len} bytes of data",
                erasure::chunk_len(data_len, k)
            ));
        }
        if let Some(e) = entries.iter().find(|e| {
            e.len == 0
                || e.len as usize > MAX_ENTRY_LEN
                || e.offset as usize + e.len as usize > data_len
        }) {
            return bad(format!(
                "entry {} at {}+{} is empty, too long or outside the {data_len} bytes of data",
                e.fingerprint, e.offset, e.len
            ));
        }
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            let id = *next;
            *next += 1;
            id
        };
        let _writing = self.gate();
        let drives = self.layout(id, k)?;
        let places = self.write_chunks(id, 0, &drives, chunks)?;
        let record = StripeRecord {
            k,
            gen: 0,
            chunk_len,
            data_len,
            drives,
            places,
        };
        // If this fails, the chunks stay: a failed commit may still have
        // reached the disk. A device drive's free space is rebuilt from
        // the catalog at the next start; a file is space to reclaim.
        self.catalog
            .add_stripe(id, &record, entries)
            .with_context(|| format!("recording stripe {id}"))?;
        tracing::debug!(
            stripe = id,
            k,
            data_len,
            entries = entries.len(),
            "stripe stored"
        );
        Ok(id)
    }

    /// The drives of stripe `id`'s k + 2 chunks: consecutive drives that
    /// take new chunks, from a starting one that rotates with the id. An
    /// error if fewer than k + 2 do (one went offline or filled up since k
    /// was chosen).
    fn layout(&self, id: u64, k: usize) -> Result<Vec<usize>, StripeError> {
        let drives = self.writable();
        if drives.len() < k + PARITY_CHUNKS {
            return Err(StripeError::Bad(format!(
                "{} drives in service with room, too few for {k} + {PARITY_CHUNKS} chunks",
                drives.len()
            )));
        }
        let start = (id % drives.len() as u64) as usize;
        Ok((0..k + PARITY_CHUNKS)
            .map(|i| drives[(start + i) % drives.len()])
            .collect())
    }

    /// Writes generation `gen` of stripe `id`'s chunks to `drives`, in
    /// parallel; returns their places. If any write fails, the chunks
    /// written are deleted again.
    fn write_chunks(
        &self,
        id: u64,
        gen: u16,
        drives: &[usize],
        chunks: &[Vec<u8>],
    ) -> anyhow::Result<Vec<u64>> {
        let results: Vec<anyhow::Result<u64>> = std::thread::scope(|scope| {
            let writes: Vec<_> = chunks
                .iter()
                .zip(drives)
                .enumerate()
                .map(|(index, (chunk, &drive))| {
                    let chunk_id = ChunkId {
                        stripe: id,
                        gen,
                        index,
                    };
                    scope.spawn(move || self.drives.write_chunk(drive, chunk_id, chunk))
                })
                .collect();
            writes
                .into_iter()
                .map(|w| match w.join() {
                    Ok(written) => written.map_err(anyhow::Error::from),
                    Err(_) => Err(anyhow::anyhow!("a chunk writer panicked")),
                })
                .collect()
        });
        if results.iter().all(Result::is_ok) {
            return Ok(results.into_iter().flatten().collect());
        }
        let mut first_error = None;
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(place) => self.drives.remove_chunk(&ChunkSlot {
                    drive: drives[index],
                    chunk: ChunkId {
                        stripe: id,
                        gen,
                        index,
                    },
                    place,
                    len: chunks[index].len(),
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let error = first_error.unwrap_or_else(|| anyhow::anyhow!("a chunk write failed"));
        Err(error.context(format!("writing stripe {id}")))
    }

    /// Deletes the chunks of `record` (no longer, or never, in the
    /// catalog).
    fn remove_chunks(&self, id: u64, record: &StripeRecord) {
        for slot in chunk_slots(id, record) {
            self.drives.remove_chunk(&slot);
        }
    }

    /// The bytes of each of `fingerprints` (empty where the pool lacks one).
    pub fn get_frames(&self, fingerprints: &[Fingerprint]) -> Result<Vec<Vec<u8>>, StripeError> {
        let locations = self.catalog.locate(fingerprints)?;
        let mut reader = StripeReader {
            store: self,
            failed: self.failed(),
            records: HashMap::new(),
            data: HashMap::new(),
        };
        locations
            .iter()
            .map(|location| match location {
                None => Ok(Vec::new()),
                Some(location) => reader.frame(location),
            })
            .collect()
    }

    /// Reads the whole of stripe `id`, restoring chunks that are missing,
    /// damaged or on a failed drive: all k + 2 chunks, data first.
    pub fn read_stripe(&self, id: u64, record: &StripeRecord) -> Result<Vec<Vec<u8>>, StripeError> {
        let failed = self.failed();
        let mut chunks: Vec<Option<Vec<u8>>> = (0..record.drives.len())
            .map(|index| read_chunk(&self.drives, &failed, id, record, index).ok())
            .collect();
        erasure::restore(&mut chunks, record.k)
            .map_err(|source| StripeError::Unavailable { stripe: id, source })?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// Rewrites every stripe with a chunk on a failed drive, or a chunk
    /// file gone, onto the drives in service; returns how many it rewrote.
    pub fn rebuild(&self) -> Result<u64, StripeError> {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let k_max = self.rewrite_width()?;
        let failed = self.failed();
        let mut rebuilt = 0;
        for (id, record) in self.catalog.stripes()? {
            let degraded = chunk_slots(id, &record)
                .any(|slot| is_failed(&failed, slot.drive) || !self.drives.has_chunk(&slot));
            if !degraded {
                continue;
            }
            let chunks = self.read_stripe(id, &record)?;
            self.rewrite_stripe(id, &record, &chunks, k_max)?;
            rebuilt += 1;
        }
        Ok(rebuilt)
    }

    /// Reads every chunk of every stripe in full and checks it (chunks on
    /// failed drives are a rebuild's business), and rewrites each stripe
    /// with a missing or damaged chunk from the good ones. A stripe with
    /// too few good chunks is counted and logged, and the scrub goes on.
    pub fn scrub(&self) -> Result<ScrubReport, StripeError> {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let k_max = self.rewrite_width()?;
        let failed = self.failed();
        let mut report = ScrubReport::default();
        for (id, record) in self.catalog.stripes()? {
            report.stripes += 1;
            let mut bad = 0;
            let mut chunks: Vec<Option<Vec<u8>>> = chunk_slots(id, &record)
                .map(|slot| {
                    if is_failed(&failed, slot.drive) {
                        return None;
                    }
                    report.chunks += 1;
                    match self.drives.read_chunk(&slot) {
                        Ok(chunk) => Some(chunk),
                        Err(e) => {
                            tracing::warn!(stripe = id, index = slot.chunk.index, drive = slot.drive, error = %e, "scrub: bad chunk");
                            bad += 1;
                            None
                        }
                    }
                })
                .collect();
            if bad == 0 {
                continue;
            }
            report.bad_chunks += bad;
            if let Err(e) = erasure::restore(&mut chunks, record.k) {
                tracing::error!(stripe = id, error = %e, "scrub: too few good chunks to restore the stripe");
                report.unreadable += 1;
                continue;
            }
            let chunks: Vec<Vec<u8>> = chunks.into_iter().flatten().collect();
            self.rewrite_stripe(id, &record, &chunks, k_max)?;
            report.repaired += 1;
        }
        tracing::info!(?report, "scrub finished");
        Ok(report)
    }

    /// The most data chunks a rewritten stripe may have; an error when
    /// fewer than 3 drives are in service.
    fn rewrite_width(&self) -> Result<usize, StripeError> {
        match self.max_data_chunks() {
            0 => Err(StripeError::Bad(
                "fewer than 3 drives in service: nothing to rewrite stripes onto".into(),
            )),
            k_max => Ok(k_max),
        }
    }

    /// Rewrites stripe `id` from its restored `chunks` (all k + 2) onto
    /// the drives in service, at most `k_max` data chunks wide, under its
    /// next generation; switches the record, then deletes the old chunks.
    fn rewrite_stripe(
        &self,
        id: u64,
        record: &StripeRecord,
        chunks: &[Vec<u8>],
        k_max: usize,
    ) -> Result<(), StripeError> {
        let mut data = chunks[..record.k].concat();
        data.truncate(record.data_len);
        let k = record.k.min(k_max);
        let encoded = erasure::encode(&data, k)
            .map_err(|e| StripeError::Storage(anyhow::anyhow!("re-encoding stripe {id}: {e}")))?;
        let _writing = self.gate();
        let gen = record.gen.wrapping_add(1);
        let drives = self.layout(id, k)?;
        let places = self.write_chunks(id, gen, &drives, &encoded)?;
        let new = StripeRecord {
            k,
            gen,
            chunk_len: erasure::chunk_len(data.len(), k),
            data_len: record.data_len,
            drives,
            places,
        };
        // If this fails, both copies stay (see `put_stripe`).
        self.catalog
            .replace_stripe(id, &new)
            .with_context(|| format!("recording rewritten stripe {id}"))?;
        self.remove_chunks(id, record);
        tracing::info!(stripe = id, k_was = record.k, k, "stripe rewritten");
        Ok(())
    }
}

/// What a scrub found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// Stripes looked at.
    pub stripes: u64,
    /// Chunks read and checked.
    pub chunks: u64,
    /// Chunks missing or damaged.
    pub bad_chunks: u64,
    /// Stripes rewritten because of them.
    pub repaired: u64,
    /// Stripes with too few good chunks to restore.
    pub unreadable: u64,
}

fn is_failed(failed: &[bool], drive: usize) -> bool {
    failed.get(drive).is_none_or(|&f| f)
}

/// Chunk `index` of stripe `id` as `record` has it now, and where.
fn chunk_slot(id: u64, record: &StripeRecord, index: usize) -> ChunkSlot {
    ChunkSlot {
        drive: record.drives[index],
        chunk: ChunkId {
            stripe: id,
            gen: record.gen,
            index,
        },
        place: record.places[index],
        len: record.chunk_len,
    }
}

/// Every chunk of stripe `id` as `record` has it now.
fn chunk_slots(id: u64, record: &StripeRecord) -> impl Iterator<Item = ChunkSlot> + '_ {
    (0..record.drives.len()).map(move |index| chunk_slot(id, record, index))
}

/// Reads chunk `index` of stripe `id`; a chunk on a failed drive counts
/// as missing. Logs why a chunk is unusable.
fn read_chunk(
    drives: &Drives,
    failed: &[bool],
    id: u64,
    record: &StripeRecord,
    index: usize,
) -> Result<Vec<u8>, ChunkError> {
    let slot = chunk_slot(id, record, index);
    let result = if is_failed(failed, slot.drive) {
        Err(ChunkError::Missing {
            drive: slot.drive,
            chunk: slot.chunk,
        })
    } else {
        drives.read_chunk(&slot)
    };
    if let Err(e) = &result {
        tracing::warn!(stripe = id, index, drive = slot.drive, error = %e, "unusable chunk: restoring it from the others");
    }
    result
}

/// Reads frames, each needed chunk once.
struct StripeReader<'a> {
    store: &'a StripeStore,
    failed: Vec<bool>,
    records: HashMap<u64, StripeRecord>,
    /// Data chunks read so far, by stripe and index.
    data: HashMap<(u64, usize), Vec<u8>>,
}

impl StripeReader<'_> {
    fn frame(&mut self, location: &FrameLocation) -> Result<Vec<u8>, StripeError> {
        let id = location.stripe;
        if !self.records.contains_key(&id) {
            let record =
                self.store.catalog.stripe(id)?.with_context(|| {
                    format!("the index names stripe {id}, which the catalog lacks")
                })?;
            self.records.insert(id, record);
        }
        let record = self.records[&id].clone();
        let end = location.offset + location.len;
        if end > record.data_len {
            return Err(StripeError::Storage(anyhow::anyhow!(
                "index entry {}+{} lies outside stripe {id}",
                location.offset,
                location.len
            )));
        }
        let mut out = Vec::with_capacity(location.len);
        let mut at = location.offset;
        while at < end {
            let index = at / record.chunk_len;
            let within = at % record.chunk_len;
            let take = (record.chunk_len - within).min(end - at);
            let chunk = self.data_chunk(id, &record, index)?;
            out.extend_from_slice(&chunk[within..within + take]);
            at += take;
        }
        Ok(out)
    }

    fn data_chunk(
        &mut self,
        id: u64,
        record: &StripeRecord,
        index: usize,
    ) -> Result<&Vec<u8>, StripeError> {
        if !self.data.contains_key(&(id, index)) {
            match read_chunk(&self.store.drives, &self.failed, id, record, index) {
                Ok(chunk) => {
                    self.data.insert((id, index), chunk);
                }
                Err(_) => {
                    let chunks = self.store.read_stripe(id, record)?;
                    for (i, chunk) in chunks.into_iter().take(record.k).enumerate() {
                        self.data.insert((id, i), chunk);
                    }
                }
            }
        }
        self.data
            .get(&(id, index))
            .ok_or(StripeError::Storage(anyhow::anyhow!(
                "chunk {index} of stripe {id} not read"
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Vec<(Fingerprint, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let mut fp = [0u8; 32];
                fp[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                let bytes: Vec<u8> = (0..1000 + i * 37).map(|j| (i * 7 + j) as u8).collect();
                (Fingerprint::from_bytes(fp), bytes)
            })
            .collect()
    }

    /// Packs `frames` into a stripe of k data chunks, as a host does, and
    /// stores it.
    fn try_put(
        store: &StripeStore,
        frames: &[(Fingerprint, Vec<u8>)],
        k: usize,
    ) -> Result<u64, StripeError> {
        let mut data = Vec::new();
        let mut entries = Vec::new();
        for (fp, bytes) in frames {
            entries.push(StripeEntry {
                fingerprint: *fp,
                offset: data.len() as u32,
                len: bytes.len() as u32,
            });
            data.extend_from_slice(bytes);
        }
        let chunks = erasure::encode(&data, k).unwrap();
        store.put_stripe(k, data.len(), &chunks, &entries)
    }

    fn put(store: &StripeStore, frames: &[(Fingerprint, Vec<u8>)], k: usize) -> u64 {
        try_put(store, frames, k).unwrap()
    }

    fn check_all(store: &StripeStore, frames: &[(Fingerprint, Vec<u8>)]) {
        let fps: Vec<Fingerprint> = frames.iter().map(|f| f.0).collect();
        let got = store.get_frames(&fps).unwrap();
        for ((_, want), got) in frames.iter().zip(got) {
            assert_eq!(&got, want);
        }
    }

    #[test]
    fn frames_read_back_with_any_two_drives_gone() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Drives::default_paths(dir.path());
        let store = StripeStore::open(dir.path(), paths.clone()).unwrap();
        let all = frames(60);
        for part in all.chunks(20) {
            put(&store, part, 4);
        }
        check_all(&store, &all);
        for a in 0..6 {
            for b in a + 1..6 {
                let hidden: Vec<PathBuf> = [a, b]
                    .iter()
                    .map(|&d| {
                        let gone = paths[d].with_extension("gone");
                        std::fs::rename(&paths[d], &gone).unwrap();
                        gone
                    })
                    .collect();
                check_all(&store, &all);
                for (d, gone) in [a, b].iter().zip(hidden) {
                    std::fs::rename(gone, &paths[*d]).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_corrupt_chunk_is_read_around_and_three_losses_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Drives::default_paths(dir.path());
        let store = StripeStore::open(dir.path(), paths.clone()).unwrap();
        let all = frames(10);
        let id = put(&store, &all, 4);
        let record = store.catalog.stripe(id).unwrap().unwrap();
        // Flip a byte in the middle of the first data chunk's payload.
        let first = paths[record.drives[0]]
            .join(format!("{:x}", id >> 12))
            .join(format!("{id:x}.0.0"));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&first, bytes).unwrap();
        check_all(&store, &all);
        for index in [1, 2] {
            let path = paths[record.drives[index]]
                .join(format!("{:x}", id >> 12))
                .join(format!("{id:x}.0.{index}"));
            std::fs::remove_file(path).unwrap();
        }
        assert!(matches!(
            store.get_frames(&[all[0].0]),
            Err(StripeError::Unavailable { .. })
        ));
    }

    #[test]
    fn bad_stripes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StripeStore::open(dir.path(), Drives::default_paths(dir.path())).unwrap();
        let chunks = erasure::encode(&[1u8; 1000], 4).unwrap();
        let entry = |offset, len| StripeEntry {
            fingerprint: Fingerprint::from_bytes([1; 32]),
            offset,
            len,
        };
        for (k, data_len, chunks, entries) in [
            (5, 1000, chunks.clone(), vec![]),
            (0, 1000, chunks.clone(), vec![]),
            (4, 1000, chunks[..5].to_vec(), vec![]),
            (4, 100_000, chunks.clone(), vec![]),
            (4, 1000, chunks.clone(), vec![entry(900, 101)]),
            (4, 1000, chunks.clone(), vec![entry(0, 0)]),
        ] {
            assert!(matches!(
                store.put_stripe(k, data_len, &chunks, &entries),
                Err(StripeError::Bad(_))
            ));
        }
        assert_eq!(store.catalog.next_stripe_id().unwrap(), 1);
    }

    #[test]
    fn a_rebuild_restores_redundancy_and_survives_a_third_failure() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Drives::default_paths(dir.path());
        let store = StripeStore::open(dir.path(), paths.clone()).unwrap();
        let all = frames(80);
        for part in all.chunks(10) {
            put(&store, part, 4);
        }
        for d in [1, 4] {
            std::fs::remove_dir_all(&paths[d]).unwrap();
            store.set_drive(d, true).unwrap();
        }
        let report = store.drive_report().unwrap();
        assert_eq!(report.degraded_stripes, 8);
        assert_eq!(report.max_data_chunks, 2);
        check_all(&store, &all);
        assert_eq!(store.rebuild().unwrap(), 8);
        assert_eq!(store.drive_report().unwrap().degraded_stripes, 0);
        for (_, record) in store.catalog.stripes().unwrap() {
            assert_eq!(record.k, 2);
            let mut drives = record.drives.clone();
            drives.sort_unstable();
            assert_eq!(drives, vec![0, 2, 3, 5], "one chunk per drive in service");
        }
        // A rebuild of a healthy pool rewrites nothing.
        assert_eq!(store.rebuild().unwrap(), 0);
        // Any third drive may go now, and then a fourth.
        std::fs::remove_dir_all(&paths[3]).unwrap();
        check_all(&store, &all);
        std::fs::remove_dir_all(&paths[0]).unwrap();
        check_all(&store, &all);
        // Drive states survive a reopen; the drives whose directories went
        // are offline, not created afresh.
        drop(store);
        let store = StripeStore::open(dir.path(), paths).unwrap();
        use DriveState::*;
        assert_eq!(
            store.drive_report().unwrap().drives,
            vec![Offline, Failed, InService, Offline, Failed, InService]
        );
        check_all(&store, &all);
    }

    #[test]
    fn chunks_spread_evenly_over_the_drives() {
        let dir = tempfile::tempdir().unwrap();
        let store = StripeStore::open(dir.path(), Drives::default_paths(dir.path())).unwrap();
        let mut per_drive = [0usize; 6];
        for id in 1..=60 {
            let drives = store.layout(id, 2).unwrap();
            let mut sorted = drives.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 4, "stripe {id} puts two chunks on one drive");
            for d in drives {
                per_drive[d] += 1;
            }
        }
        assert_eq!(per_drive, [40; 6]);
    }

    #[test]
    fn a_scrub_repairs_damage_a_rebuild_does_not_see() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pool");
        // Three directory drives and three device drives.
        let mut paths = Drives::default_paths(dir.path());
        paths.truncate(3);
        paths.extend(device_paths(dir.path()).into_iter().skip(3));
        let store = StripeStore::open(&data, paths.clone()).unwrap();
        let all = frames(60);
        let ids: Vec<u64> = all.chunks(10).map(|part| put(&store, part, 4)).collect();
        let clean = ScrubReport {
            stripes: 6,
            chunks: 36,
            ..ScrubReport::default()
        };
        assert_eq!(store.scrub().unwrap(), clean);
        // One flipped payload byte in a chunk file and one on a device, in
        // two stripes; three chunks of a third stripe.
        let flip = |id: u64, index: usize| {
            let record = store.catalog.stripe(id).unwrap().unwrap();
            let slot = chunk_slot(id, &record, index);
            let (path, at) = if slot.drive < 3 {
                let file = paths[slot.drive]
                    .join(format!("{:x}", id >> 12))
                    .join(format!("{id:x}.{}.{index}", record.gen));
                (file, 40)
            } else {
                (paths[slot.drive].clone(), slot.place + 40)
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let mut byte = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x20], at).unwrap();
            slot.drive
        };
        let record = store.catalog.stripe(ids[1]).unwrap().unwrap();
        let on_dir = (0..6).find(|&i| record.drives[i] < 3).unwrap();
        assert!(flip(ids[1], on_dir) < 3);
        let record = store.catalog.stripe(ids[2]).unwrap().unwrap();
        let on_device = (0..6).find(|&i| record.drives[i] >= 3).unwrap();
        assert!(flip(ids[2], on_device) >= 3);
        for index in [0, 2, 5] {
            flip(ids[4], index);
        }
        assert_eq!(store.rebuild().unwrap(), 0, "a rebuild sees no damage");
        check_all(&store, &all[..40]);
        assert_eq!(
            store.scrub().unwrap(),
            ScrubReport {
                bad_chunks: 5,
                repaired: 2,
                unreadable: 1,
                ..clean.clone()
            }
        );
        // Repaired for good: a second scrub finds only the lost stripe.
        assert_eq!(
            store.scrub().unwrap(),
            ScrubReport {
                bad_chunks: 3,
                unreadable: 1,
                ..clean
            }
        );
        check_all(&store, &all[..40]);
        check_all(&store, &all[50..]);
    }

    /// Six blank 16 MiB files standing in for block devices.
    fn device_paths(dir: &Path) -> Vec<PathBuf> {
        (0..6)
            .map(|i| {
                let path = dir.join(format!("dev{i}"));
                std::fs::File::create(&path)
                    .and_then(|f| f.set_len(16 << 20))
                    .unwrap();
                path
            })
            .collect()
    }

    /// Zeroes everything after the label area of a device: a drive that
    /// lost its data.
    fn wipe_chunks(path: &Path) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; 15 << 20], 1 << 20).unwrap();
    }

    #[test]
    fn device_drives_hold_stripes_across_reopens_losses_and_a_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pool");
        let paths = device_paths(dir.path());
        let all = frames(90);
        {
            let store = StripeStore::open(&data, paths.clone()).unwrap();
            for part in all[..60].chunks(10) {
                put(&store, part, 4);
            }
            check_all(&store, &all[..60]);
        }
        // Reopened, the drives know which extents hold chunks: new stripes
        // never overwrite them.
        let store = StripeStore::open(&data, paths.clone()).unwrap();
        for part in all[60..].chunks(10) {
            put(&store, part, 4);
        }
        check_all(&store, &all);
        // Two drives lose everything: every frame still reads.
        wipe_chunks(&paths[1]);
        wipe_chunks(&paths[4]);
        check_all(&store, &all);
        // A rebuild finds the damage without the drives being marked
        // failed, and rewrites every stripe that had a chunk there.
        assert_eq!(store.rebuild().unwrap(), 9);
        assert_eq!(store.rebuild().unwrap(), 0);
        wipe_chunks(&paths[2]);
        wipe_chunks(&paths[5]);
        check_all(&store, &all);
        assert_eq!(store.rebuild().unwrap(), 9);

        // Drive 3 fails and is replaced by a blank disk of another size.
        store.set_drive(3, true).unwrap();
        assert_eq!(store.rebuild().unwrap(), 9);
        std::fs::remove_file(&paths[3]).unwrap();
        std::fs::File::create(&paths[3])
            .and_then(|f| f.set_len(32 << 20))
            .unwrap();
        store.set_drive(3, false).unwrap();
        assert_eq!(store.drive_report().unwrap().max_data_chunks, 4);
        let more = frames(100);
        put(&store, &more[90..], 4);
        // The replaced drive holds a sound chunk of the newest stripe.
        let (id, newest) = store.catalog.stripes().unwrap().pop().unwrap();
        let on_3 = newest.drives.iter().position(|&d| d == 3).unwrap();
        store
            .drives
            .read_chunk(&chunk_slot(id, &newest, on_3))
            .expect("the new chunk on the replaced drive");
        check_all(&store, &all);
        check_all(&store, &more[90..]);
        drop(store);
        let store = StripeStore::open(&data, paths).unwrap();
        check_all(&store, &more);
    }

    #[test]
    fn drives_that_are_not_what_the_pool_used_are_offline_until_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pool");
        let paths = device_paths(dir.path());
        let all = frames(40);
        {
            let store = StripeStore::open(&data, paths.clone()).unwrap();
            for part in all.chunks(10) {
                put(&store, part, 4);
            }
        }
        // While the pool is down, drive 2 is swapped for a blank disk and
        // drive 5 for a disk of another pool.
        for d in [2, 5] {
            std::fs::remove_file(&paths[d]).unwrap();
            std::fs::File::create(&paths[d])
                .and_then(|f| f.set_len(16 << 20))
                .unwrap();
        }
        let foreign = crate::drives::encode_label(&crate::drives::DriveLabel {
            pool: [0xee; 16],
            number: 5,
            kind: crate::drives::DriveKind::Device,
            capacity: 16 << 20,
        });
        std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[5])
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &foreign, 0))
            .unwrap();
        // The pool starts without them: nothing is labelled or written
        // behind the administrator's back, and every frame reads.
        let store = StripeStore::open(&data, paths.clone()).unwrap();
        use DriveState::*;
        let report = store.drive_report().unwrap();
        assert_eq!(
            report.drives,
            vec![InService, InService, Offline, InService, InService, Offline]
        );
        assert_eq!(report.max_data_chunks, 2);
        assert_eq!(report.degraded_stripes, 4);
        check_all(&store, &all);
        let more = frames(50);
        put(&store, &more[40..], 2);
        // Replacing takes the blank one into use; the foreign one stays out.
        store.set_drive(2, false).unwrap();
        let err = store.set_drive(5, false).unwrap_err();
        assert!(format!("{err:#}").contains("another pool"), "{err:#}");
        assert_eq!(store.drive_report().unwrap().drives[2], InService);
        assert_eq!(store.drive_report().unwrap().drives[5], Offline);
        // The four old stripes had chunks on drive 5; the new one was laid
        // out on the four drives in service.
        assert_eq!(store.rebuild().unwrap(), 4);
        assert_eq!(store.drive_report().unwrap().degraded_stripes, 0);
        check_all(&store, &more);
    }

    #[test]
    fn a_drive_whose_writes_fail_goes_offline_and_stripes_go_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Drives::default_paths(dir.path());
        let store = StripeStore::open(dir.path(), paths.clone()).unwrap();
        let all = frames(40);
        put(&store, &all[..10], 4);
        // Drive 2's disk vanishes under the running pool: the next stripe
        // (4 + 2 chunks on the six drives) fails, and takes it offline.
        std::fs::remove_dir_all(&paths[2]).unwrap();
        assert!(try_put(&store, &all[10..20], 4).is_err());
        let report = store.drive_report().unwrap();
        assert_eq!(report.drives[2], DriveState::Offline);
        assert_eq!(report.max_data_chunks, 3);
        // The stripes after it go around the drive; everything reads.
        for part in all[10..].chunks(10) {
            put(&store, part, 3);
        }
        check_all(&store, &all);
        assert_eq!(store.rebuild().unwrap(), 1);
        // A new disk at the same place is taken into use by a replace.
        store.set_drive(2, false).unwrap();
        assert_eq!(
            store.drive_report().unwrap().drives[2],
            DriveState::InService
        );
        put(&store, &frames(50)[40..], 4);
        check_all(&store, &frames(50));
    }

    #[test]
    fn a_full_drive_stays_in_service_and_new_stripes_go_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pool");
        let paths = device_paths(dir.path());
        // Drive 5 is the smallest disk a pool takes: it fills first.
        std::fs::File::create(&paths[5])
            .and_then(|f| f.set_len(crate::drives::MIN_DEVICE_CAPACITY))
            .unwrap();
        let store = StripeStore::open(&data, paths).unwrap();
        let all = frames(200);
        let parts: Vec<_> = all.chunks(10).collect();
        // Stripes of 4 + 2 chunks use every drive, until one finds drive 5
        // full: that stripe fails, and the drive reports full.
        let mut stored = 0;
        while try_put(&store, parts[stored], 4).is_ok() {
            stored += 1;
            assert!(stored < parts.len(), "drive 5 never filled");
        }
        assert!(stored > 0, "drive 5 took no chunk at all");
        let report = store.drive_report().unwrap();
        assert_eq!(report.drives[5], DriveState::Full);
        assert_eq!(report.drives[..5], [DriveState::InService; 5]);
        assert_eq!(report.max_data_chunks, 3);
        // The next stripes, one data chunk narrower, go around it.
        for part in &parts[stored..] {
            put(&store, part, 3);
        }
        for (id, record) in store.catalog.stripes().unwrap() {
            assert_eq!(
                record.drives.contains(&5),
                record.k == 4,
                "stripe {id}: {record:?}"
            );
        }
        check_all(&store, &all);
        // Its chunks are still read: with two other drives failed, the
        // first stripes need them.
        store.set_drive(0, true).unwrap();
        store.set_drive(1, true).unwrap();
        check_all(&store, &all);
    }

    #[test]
    fn a_device_that_is_not_blank_stays_out_of_service() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pool");
        let paths = device_paths(dir.path());
        let store = StripeStore::open(&data, paths.clone()).unwrap();
        store.set_drive(0, true).unwrap();
        std::fs::write(&paths[0], b"someone's file system").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&paths[0])
            .and_then(|f| f.set_len(16 << 20))
            .unwrap();
        let err = store.set_drive(0, false).unwrap_err();
        assert!(format!("{err:#}").contains("not blank"), "{err:#}");
        assert_eq!(store.drive_report().unwrap().drives[0], DriveState::Failed);
    }
}
