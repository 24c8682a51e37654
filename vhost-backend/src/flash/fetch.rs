//! Reads from the pool's stripes into the flash: the flash of a host on a
//! pool is a cache, so a frame or map node it lacks (a fresh host, an
//! evicted entry) or holds damaged is fetched from the pool, checked, and
//! stored again.
//!
//! Data reads fetch a region at a time: the whole leaf of the map (256
//! blocks, 1 MiB of the vdisk) around a missing block, in one request, so
//! a cold host warms as it reads.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_common::fingerprint::Fingerprint;
use strata_common::ondisk::EntryKind;
use strata_common::wire::{Request, Response, MAX_FRAMES};

use super::core::Core;
use super::StoreError;
use crate::pool::PoolLink;

/// How long a read waits for an unreachable pool before failing.
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

/// The connection reads from the pool share.
pub struct PoolReads {
    link: Mutex<PoolLink>,
}

impl PoolReads {
    /// Reads over `link` (a connection of its own, so reads never wait
    /// behind the flusher's appends).
    pub fn new(link: PoolLink) -> PoolReads {
        PoolReads {
            link: Mutex::new(link),
        }
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
            let fetched = reads.get(part)?;
            let mut state = self.lock();
            for (fp, bytes) in part.iter().zip(fetched) {
                let Some(bytes) = bytes else { continue };
                if !check(fp, &bytes) {
                    self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(fingerprint = %fp, "the pool's copy fails verification; not stored");
                    continue;
                }
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
    /// copy, if the pool has a good one; returns the good bytes. The bad
    /// place is left to the cleaner; the index points at the new copy.
    pub fn repair_from_pool(
        &self,
        fingerprint: &Fingerprint,
        check: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(reads) = &self.pool_reads else {
            return Ok(None);
        };
        let Some(Some(bytes)) = reads.get(std::slice::from_ref(fingerprint))?.pop() else {
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
        tracing::warn!(%fingerprint, "bad frame on flash replaced by the pool's copy");
        Ok(Some(bytes))
    }
}
