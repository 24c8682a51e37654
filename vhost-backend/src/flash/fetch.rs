//! Reads from the pool into the flash: the flash of a host on a pool is a
//! cache, so a frame or map node it lacks (a fresh host, an evicted entry)
//! or holds damaged is fetched from the pool's stripes, checked, and stored
//! again. A damaged frame the stripes do not hold yet (written since the
//! last destage) is read back from the NVLOG record that logged it.
//!
//! Data reads fetch a region at a time: the whole leaf of the map (256
//! blocks, 1 MiB of the vdisk) around a missing block, in one request, so
//! a cold host warms as it reads.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_common::fingerprint::Fingerprint;
use strata_common::ondisk::EntryKind;
use strata_common::wire::{code, Request, Response, MAX_FRAMES};

use super::core::Core;
use super::nvlog_frames::{frame_in_batch, NvlogFrames};
use super::StoreError;
use crate::pool::{PoolLink, Refused};

/// How long a read waits for an unreachable pool before failing.
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

/// The connection reads from the pool share, and which NVLOG record holds
/// each frame the stripes do not have yet.
pub struct PoolReads {
    link: Mutex<PoolLink>,
    /// Frames logged since the last destage, by record.
    pub logged: NvlogFrames,
}

impl PoolReads {
    /// Reads over `link` (a connection of its own, so reads never wait
    /// behind the flusher's appends).
    pub fn new(link: PoolLink) -> PoolReads {
        PoolReads {
            link: Mutex::new(link),
            logged: NvlogFrames::default(),
        }
    }

    /// The bytes of frame `fingerprint` from NVLOG record `seq`; `None`
    /// when the log no longer holds the record (a destage truncated it
    /// meanwhile) or the record lacks the frame.
    fn get_logged(
        &self,
        seq: u64,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        let request = Request::ReadRecord { seq };
        let response = link.call(&request, &|| started.elapsed() >= FETCH_PATIENCE);
        let payload = match response {
            Ok(Response::Record { seq: got, payload }) if got == seq => payload,
            Ok(other) => {
                return Err(StoreError::Pool(format!(
                    "pool {} answered a read of NVLOG record {seq} with {other:?}",
                    link.address()
                )))
            }
            Err(e)
                if e.downcast_ref::<Refused>()
                    .is_some_and(|r| r.code == code::NOT_FOUND) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(StoreError::Pool(format!(
                    "reading NVLOG record {seq} from the pool: {e:#}"
                )))
            }
        };
        Ok(frame_in_batch(&payload, fingerprint).map(<[u8]>::to_vec))
    }

    /// The bytes of each of `fingerprints` (at most [`MAX_FRAMES`]), in
    /// order; `None` for one the pool lacks.
    fn get(&self, fingerprints: &[Fingerprint]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let started = Instant::now();
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        let request = Request::GetFrames {
            fingerprints: fingerprints.to_vec(),
        };
        let response = link
            .call(&request, &|| started.elapsed() >= FETCH_PATIENCE)
            .map_err(|e| StoreError::Pool(format!("fetching from the pool: {e:#}")))?;
        match response {
            Response::Frames { frames } if frames.len() == fingerprints.len() => Ok(frames
                .into_iter()
                .map(|f| (!f.is_empty()).then_some(f))
                .collect()),
            other => Err(StoreError::Pool(format!(
                "pool {} answered a fetch of {} entries with {other:?}",
                link.address(),
                fingerprints.len()
            ))),
        }
    }
}

impl Core {
    /// Fetches from the pool those of `fingerprints` the store lacks,
    /// stores each that passes `check` as an entry of `kind`, and returns
    /// how many it stored. A standalone store fetches nothing.
    pub fn fetch_from_pool(
        &self,
        fingerprints: &[Fingerprint],
        kind: EntryKind,
        check: &dyn Fn(&Fingerprint, &[u8]) -> bool,
    ) -> Result<usize, StoreError> {
        let Some(reads) = &self.pool_reads else {
            return Ok(0);
        };
        let mut wanted: Vec<Fingerprint> = {
            let state = self.lock();
            fingerprints
                .iter()
                .filter(|fp| !fp.is_zero() && !state.index.contains_key(fp))
                .copied()
                .collect()
        };
        wanted.sort_unstable();
        wanted.dedup();
        let mut stored = 0;
        for part in wanted.chunks(MAX_FRAMES) {
            // Checked before the store's lock is taken: a full decode per
            // frame is too long to hold every queue's lookups up for.
            let good: Vec<(&Fingerprint, Vec<u8>)> = part
                .iter()
                .zip(reads.get(part)?)
                .filter_map(|(fp, bytes)| Some((fp, bytes?)))
                .filter(|(fp, bytes)| {
                    let sound = check(fp, bytes);
                    if !sound {
                        self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(fingerprint = %fp, "the pool's copy fails verification; not stored");
                    }
                    sound
                })
                .collect();
            let mut state = self.lock();
            for (fp, bytes) in good {
                if !state.index.contains_key(fp) {
                    self.append(&mut state, *fp, kind, &bytes)?;
                    stored += 1;
                }
            }
        }
        self.counters
            .frames_fetched
            .fetch_add(stored as u64, Ordering::Relaxed);
        Ok(stored)
    }

    /// Replaces a frame that failed verification on flash with the pool's
    /// copy, if the pool has a good one; returns the good bytes. The copy
    /// comes from the stripes, or, for a frame written since the last
    /// destage, from the NVLOG record that logged it. The bad place is
    /// left to the cleaner; the index points at the new copy.
    pub fn repair_from_pool(
        &self,
        fingerprint: &Fingerprint,
        check: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(reads) = &self.pool_reads else {
            return Ok(None);
        };
        let Some((bytes, from_nvlog)) = pool_copy(reads, fingerprint)? else {
            return Ok(None);
        };
        if !check(&bytes) {
            return Ok(None);
        }
        let mut state = self.lock();
        self.append(&mut state, *fingerprint, EntryKind::Frame, &bytes)?;
        drop(state);
        self.counters
            .frames_repaired
            .fetch_add(1, Ordering::Relaxed);
        if from_nvlog {
            self.counters
                .frames_repaired_from_nvlog
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(%fingerprint, "bad frame on flash replaced by the pool's copy");
        Ok(Some(bytes))
    }
}

/// The pool's copy of frame `fingerprint`, and whether it came from an
/// NVLOG record: from the stripes, else from the record that logged it
/// (if a destage truncated that record in between, the stripes have the
/// frame by then).
fn pool_copy(
    reads: &PoolReads,
    fingerprint: &Fingerprint,
) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
    let from_stripes = |reads: &PoolReads| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(reads
            .get(std::slice::from_ref(fingerprint))?
            .pop()
            .flatten())
    };
    if let Some(bytes) = from_stripes(reads)? {
        return Ok(Some((bytes, false)));
    }
    let Some(seq) = reads.logged.record_of(fingerprint) else {
        return Ok(None);
    };
    match reads.get_logged(seq, fingerprint)? {
        Some(bytes) => {
            tracing::info!(%fingerprint, seq, "the stripes lack a bad frame: its copy comes from the NVLOG");
            Ok(Some((bytes, true)))
        }
        None => Ok(from_stripes(reads)?.map(|bytes| (bytes, false))),
    }
}
