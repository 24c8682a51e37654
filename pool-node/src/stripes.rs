//! The durable pool: stripes on the drives, found through the catalog.
//!
//! Hosts erasure-code their stripes ([`strata_common::erasure`]); the pool
//! checks a stripe's shape, places its k + 2 chunks on k + 2 different
//! drives (the layout rotates the starting drive with the stripe id, so
//! chunks, and the reads and rebuilds that follow them, spread evenly over
//! every drive), writes them durably, then records the stripe and indexes
//! its frames in one catalog transaction.
//!
//! A frame is read from the data chunk(s) holding its bytes. A chunk that
//! is missing or fails its checksum is restored from any k others, so a
//! stripe reads with up to two bad drives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use strata_common::erasure::{self, MAX_DATA_CHUNKS, PARITY_CHUNKS};
use strata_common::fingerprint::Fingerprint;
use strata_common::wire::{StripeEntry, MAX_ENTRY_LEN};

use crate::catalog::{Catalog, FrameLocation, StripeRecord};
use crate::drives::Drives;

/// Why a stripe was refused or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The stripe does not have a shape the pool can store.
    #[error("bad stripe: {0}")]
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
        let drives = Drives::open(drive_paths)?;
        let catalog = Catalog::open(data_dir)?;
        let next_id = catalog.next_stripe_id()?;
        Ok(StripeStore {
            drives,
            catalog,
            next_id: Mutex::new(next_id),
        })
    }

    /// The most data chunks a stripe may have on these drives.
    pub fn max_data_chunks(&self) -> usize {
        (self.drives.len() - PARITY_CHUNKS).min(MAX_DATA_CHUNKS)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
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
        if k == 0 || k > self.max_data_chunks() {
            return bad(format!(
                "{k} data chunks; these {} drives take 1 to {}",
                self.drives.len(),
                self.max_data_chunks()
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
        let drives = self.layout(id, k);
        std::thread::scope(|scope| {
            let writes: Vec<_> = chunks
                .iter()
                .zip(&drives)
                .enumerate()
                .map(|(index, (chunk, &drive))| {
                    scope.spawn(move || self.drives.write_chunk(drive, id, index, chunk))
                })
                .collect();
            writes.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a chunk writer panicked"))?
                    .map_err(anyhow::Error::from)
            })
        })
        .with_context(|| format!("writing stripe {id}"))?;
        let record = StripeRecord {
            k,
            chunk_len,
            data_len,
            drives,
        };
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

    /// The drives of stripe `id`'s k + 2 chunks: consecutive drives from a
    /// starting drive that rotates with the id.
    fn layout(&self, id: u64, k: usize) -> Vec<usize> {
        let n = self.drives.len();
        let start = (id % n as u64) as usize;
        (0..k + PARITY_CHUNKS).map(|i| (start + i) % n).collect()
    }

    /// The bytes of each of `fingerprints` (empty where the pool lacks one).
    pub fn get_frames(&self, fingerprints: &[Fingerprint]) -> Result<Vec<Vec<u8>>, StripeError> {
        let locations = self.catalog.locate(fingerprints)?;
        let mut reader = StripeReader {
            store: self,
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

    /// Reads the whole of stripe `id`, restoring chunks that are missing
    /// or damaged: all k + 2 chunks, data first.
    pub fn read_stripe(&self, id: u64, record: &StripeRecord) -> Result<Vec<Vec<u8>>, StripeError> {
        let mut chunks: Vec<Option<Vec<u8>>> = record
            .drives
            .iter()
            .enumerate()
            .map(|(index, &drive)| {
                self.drives
                    .read_chunk(drive, id, index, record.chunk_len)
                    .map_err(|e| tracing::warn!(stripe = id, index, drive, error = %e, "unusable chunk: restoring it from the others"))
                    .ok()
            })
            .collect();
        erasure::restore(&mut chunks, record.k)
            .map_err(|source| StripeError::Unavailable { stripe: id, source })?;
        Ok(chunks.into_iter().flatten().collect())
    }
}

/// Reads frames, each needed chunk once.
struct StripeReader<'a> {
    store: &'a StripeStore,
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
            let direct =
                self.store
                    .drives
                    .read_chunk(record.drives[index], id, index, record.chunk_len);
            match direct {
                Ok(chunk) => {
                    self.data.insert((id, index), chunk);
                }
                Err(e) => {
                    tracing::warn!(stripe = id, index, error = %e, "unusable chunk: reading the stripe from parity");
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

    fn put(store: &StripeStore, frames: &[(Fingerprint, Vec<u8>)], k: usize) -> u64 {
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
        store.put_stripe(k, data.len(), &chunks, &entries).unwrap()
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
            .join(format!("{id:x}.0"));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&first, bytes).unwrap();
        check_all(&store, &all);
        for index in [1, 2] {
            let path = paths[record.drives[index]]
                .join(format!("{:x}", id >> 12))
                .join(format!("{id:x}.{index}"));
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
    fn chunks_spread_evenly_over_the_drives() {
        let dir = tempfile::tempdir().unwrap();
        let store = StripeStore::open(dir.path(), Drives::default_paths(dir.path())).unwrap();
        let mut per_drive = [0usize; 6];
        for id in 1..=60 {
            let drives = store.layout(id, 2);
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
}
