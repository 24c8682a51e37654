//! The pool's drives and the chunk files on them.
//!
//! A drive is a directory (a mounted disk in production; the no-config
//! default makes six under the data directory). A stripe's chunk `i` lives
//! on one drive as `<drive>/<stripe / 4096, hex>/<stripe, hex>.<gen>.<i>`
//! (`gen`: how often a rebuild rewrote the stripe): a 32-byte header
//! (magic, stripe u64, index u8, zero u8, generation u16, length u32,
//! xxh3 of the payload u64), then the payload. A chunk is written
//! once, to a temporary name, synced and renamed into place, so a crash
//! leaves either no chunk or a whole one. Reading checks every header
//! field and the checksum: a chunk that is missing, cut short, misplaced
//! or damaged reads as unusable, never as bytes.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use strata_common::erasure::chunk_checksum;

const MAGIC: &[u8; 8] = b"STRCHK02";
const HEADER_LEN: usize = 32;

/// Which chunk: of which stripe, which rewrite of it, which position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkId {
    /// The stripe.
    pub stripe: u64,
    /// The stripe's generation.
    pub gen: u16,
    /// The chunk's index in the stripe (data chunks first).
    pub index: usize,
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.stripe, self.gen, self.index)
    }
}

/// Why a chunk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// There is no chunk file (or no such drive).
    #[error("chunk {chunk} is missing from drive {drive}")]
    Missing {
        /// The drive.
        drive: usize,
        /// The chunk.
        chunk: ChunkId,
    },
    /// The file is there but its header or checksum is wrong.
    #[error("chunk {chunk} on drive {drive} is damaged: {why}")]
    Damaged {
        /// The drive.
        drive: usize,
        /// The chunk.
        chunk: ChunkId,
        /// What is wrong.
        why: &'static str,
    },
    /// The drive could not be read or written.
    #[error("drive {drive} ({path}): {what}: {source}")]
    Io {
        /// The drive.
        drive: usize,
        /// Its directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The pool's drives.
#[derive(Debug)]
pub struct Drives {
    paths: Vec<PathBuf>,
}

impl Drives {
    /// Opens (creating if needed) the drive directories `paths`.
    pub fn open(paths: Vec<PathBuf>) -> anyhow::Result<Drives> {
        for path in &paths {
            fs::create_dir_all(path).map_err(|e| {
                anyhow::anyhow!("cannot create drive directory {}: {e}", path.display())
            })?;
        }
        Ok(Drives { paths })
    }

    /// The six directory drives of a data directory with no drive list.
    pub fn default_paths(data_dir: &Path) -> Vec<PathBuf> {
        (0..6)
            .map(|i| data_dir.join("drives").join(i.to_string()))
            .collect()
    }

    /// Number of drives.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no drives.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn chunk_path(&self, drive: usize, chunk: ChunkId) -> Result<PathBuf, ChunkError> {
        let base = self
            .paths
            .get(drive)
            .ok_or(ChunkError::Missing { drive, chunk })?;
        Ok(base
            .join(format!("{:x}", chunk.stripe >> 12))
            .join(format!("{:x}.{}.{}", chunk.stripe, chunk.gen, chunk.index)))
    }

    fn io_error(&self, drive: usize, what: &'static str) -> impl FnOnce(io::Error) -> ChunkError {
        let path = self.paths.get(drive).cloned().unwrap_or_default();
        move |source| ChunkError::Io {
            drive,
            path,
            what,
            source,
        }
    }

    /// Whether `chunk`'s file exists on `drive` (not whether it is sound).
    pub fn has_chunk(&self, drive: usize, chunk: ChunkId) -> bool {
        self.chunk_path(drive, chunk).is_ok_and(|p| p.exists())
    }

    /// Writes `chunk` to `drive`, durably.
    pub fn write_chunk(
        &self,
        drive: usize,
        chunk: ChunkId,
        payload: &[u8],
    ) -> Result<(), ChunkError> {
        let path = self.chunk_path(drive, chunk)?;
        let dir = path.parent().unwrap_or(&self.paths[drive]);
        if !dir.exists() {
            // The new directory's name must be durable too.
            fs::create_dir_all(dir)
                .and_then(|()| fs::File::open(&self.paths[drive])?.sync_all())
                .map_err(self.io_error(drive, "creating a chunk directory"))?;
        }
        let image = encode_chunk(chunk, payload);
        let tmp = path.with_extension(format!("{}.tmp", chunk.index));
        let mut file = fs::File::create(&tmp).map_err(self.io_error(drive, "creating a chunk"))?;
        file.write_all(&image)
            .and_then(|()| file.sync_data())
            .map_err(self.io_error(drive, "writing a chunk"))?;
        fs::rename(&tmp, &path).map_err(self.io_error(drive, "naming a chunk"))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io_error(drive, "syncing a chunk directory"))
    }

    /// Reads and checks `chunk` (of `len` bytes) from `drive`.
    pub fn read_chunk(
        &self,
        drive: usize,
        chunk: ChunkId,
        len: usize,
    ) -> Result<Vec<u8>, ChunkError> {
        let path = self.chunk_path(drive, chunk)?;
        let image = match fs::read(&path) {
            Ok(image) => image,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ChunkError::Missing { drive, chunk })
            }
            Err(source) => return Err(self.io_error(drive, "reading a chunk")(source)),
        };
        match decode_chunk(&image, chunk, len) {
            Ok(payload) => Ok(payload.to_vec()),
            Err(why) => Err(ChunkError::Damaged { drive, chunk, why }),
        }
    }

    /// Deletes `chunk` from `drive` (a rebuild's old copy); a missing file
    /// is not an error.
    pub fn remove_chunk(&self, drive: usize, chunk: ChunkId) {
        if let Ok(path) = self.chunk_path(drive, chunk) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(drive, %chunk, error = %e, "cannot delete an old chunk"),
            }
        }
    }
}

/// The bytes of `chunk`'s file: header, then `payload`.
pub fn encode_chunk(chunk: ChunkId, payload: &[u8]) -> Vec<u8> {
    let mut image = Vec::with_capacity(HEADER_LEN + payload.len());
    image.extend_from_slice(MAGIC);
    image.extend_from_slice(&chunk.stripe.to_le_bytes());
    image.push(chunk.index as u8);
    image.push(0);
    image.extend_from_slice(&chunk.gen.to_le_bytes());
    image.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    image.extend_from_slice(&chunk_checksum(payload).to_le_bytes());
    image.extend_from_slice(payload);
    image
}

/// Checks that `image` is the file of `chunk` with a `len`-byte payload and
/// returns the payload, or which check failed. Never panics, whatever the
/// bytes.
pub fn decode_chunk(image: &[u8], chunk: ChunkId, len: usize) -> Result<&[u8], &'static str> {
    if Some(image.len()) != HEADER_LEN.checked_add(len) {
        return Err("wrong length");
    }
    let (header, payload) = image.split_at(HEADER_LEN);
    let word = |at: usize, n: usize| {
        header[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    };
    if &header[..8] != MAGIC {
        return Err("bad magic");
    }
    if header[17] != 0 {
        return Err("bad header padding");
    }
    if word(8, 8) != chunk.stripe
        || usize::from(header[16]) != chunk.index
        || word(18, 2) != u64::from(chunk.gen)
    {
        return Err("header names another chunk");
    }
    if word(20, 4) != len as u64 {
        return Err("header length differs");
    }
    if word(24, 8) != chunk_checksum(payload) {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drives(dir: &Path) -> Drives {
        Drives::open(Drives::default_paths(dir)).unwrap()
    }

    fn id(stripe: u64, gen: u16, index: usize) -> ChunkId {
        ChunkId { stripe, gen, index }
    }

    #[test]
    fn a_written_chunk_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = drives(dir.path());
        assert_eq!(d.len(), 6);
        let payload: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let chunk = id(0x1234_5678, 3, 2);
        d.write_chunk(3, chunk, &payload).unwrap();
        assert!(d.has_chunk(3, chunk));
        assert_eq!(d.read_chunk(3, chunk, 4096).unwrap(), payload);
        assert!(matches!(
            d.read_chunk(4, chunk, 4096),
            Err(ChunkError::Missing { drive: 4, .. })
        ));
        // A drive the pool no longer has.
        assert!(matches!(
            d.read_chunk(9, chunk, 4096),
            Err(ChunkError::Missing { drive: 9, .. })
        ));
        d.remove_chunk(3, chunk);
        assert!(!d.has_chunk(3, chunk));
        d.remove_chunk(3, chunk);
    }

    #[test]
    fn every_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let d = drives(dir.path());
        let payload = vec![0x5a; 256];
        let chunk = id(7, 1, 1);
        d.write_chunk(0, chunk, &payload).unwrap();
        let path = d.chunk_path(0, chunk).unwrap();
        let good = fs::read(&path).unwrap();
        assert_eq!(good.len(), HEADER_LEN + 256);
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert!(
                matches!(d.read_chunk(0, chunk, 256), Err(ChunkError::Damaged { .. })),
                "a flipped bit at byte {at} was not caught"
            );
        }
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(d.read_chunk(0, chunk, 256).is_err());
        // The right bytes under another chunk's name are not that chunk.
        fs::write(&path, &good).unwrap();
        for other in [id(7, 1, 2), id(7, 2, 1), id(8, 1, 1)] {
            fs::create_dir_all(d.chunk_path(0, other).unwrap().parent().unwrap()).unwrap();
            fs::copy(&path, d.chunk_path(0, other).unwrap()).unwrap();
            assert!(matches!(
                d.read_chunk(0, other, 256),
                Err(ChunkError::Damaged { .. })
            ));
        }
    }
}
