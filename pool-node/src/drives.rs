//! The pool's drives and the chunk files on them.
//!
//! A drive is a directory (a mounted disk in production; the no-config
//! default makes six under the data directory). A stripe's chunk `i` lives
//! on one drive as `<drive>/<stripe / 4096, hex>/<stripe, hex>.<i>`: a
//! 32-byte header (magic, stripe, index, length, xxh3 of the payload), then
//! the payload. A chunk is written once, to a temporary name, synced and
//! renamed into place, so a crash leaves either no chunk or a whole one.
//! Reading checks every header field and the checksum: a chunk that is
//! missing, cut short, misplaced or damaged reads as unusable, never as
//! bytes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use strata_common::erasure::chunk_checksum;

const MAGIC: &[u8; 8] = b"STRCHK01";
const HEADER_LEN: usize = 32;

/// Why a chunk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// There is no chunk file.
    #[error("chunk {stripe}.{index} is missing from drive {drive}")]
    Missing {
        /// The drive.
        drive: usize,
        /// The stripe.
        stripe: u64,
        /// The chunk's index in the stripe.
        index: usize,
    },
    /// The file is there but its header or checksum is wrong.
    #[error("chunk {stripe}.{index} on drive {drive} is damaged: {why}")]
    Damaged {
        /// The drive.
        drive: usize,
        /// The stripe.
        stripe: u64,
        /// The chunk's index.
        index: usize,
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

    /// The directory of drive `drive`.
    pub fn path(&self, drive: usize) -> &Path {
        &self.paths[drive]
    }

    /// A drive number the catalog names but the pool no longer has (it was
    /// started with fewer drives) makes the chunk missing.
    fn check_drive(&self, drive: usize, stripe: u64, index: usize) -> Result<(), ChunkError> {
        if drive < self.paths.len() {
            return Ok(());
        }
        Err(ChunkError::Missing {
            drive,
            stripe,
            index,
        })
    }

    fn chunk_path(&self, drive: usize, stripe: u64, index: usize) -> PathBuf {
        self.paths[drive]
            .join(format!("{:x}", stripe >> 12))
            .join(format!("{stripe:x}.{index}"))
    }

    /// Writes chunk `index` of `stripe` to `drive`, durably.
    pub fn write_chunk(
        &self,
        drive: usize,
        stripe: u64,
        index: usize,
        payload: &[u8],
    ) -> Result<(), ChunkError> {
        self.check_drive(drive, stripe, index)?;
        let path = self.chunk_path(drive, stripe, index);
        let io_err = |what: &'static str| {
            let base = self.paths[drive].clone();
            move |source| ChunkError::Io {
                drive,
                path: base,
                what,
                source,
            }
        };
        let dir = path.parent().unwrap_or(&self.paths[drive]);
        if !dir.exists() {
            // The new directory's name must be durable too.
            fs::create_dir_all(dir)
                .and_then(|()| fs::File::open(&self.paths[drive])?.sync_all())
                .map_err(io_err("creating a chunk directory"))?;
        }
        let mut image = Vec::with_capacity(HEADER_LEN + payload.len());
        image.extend_from_slice(MAGIC);
        image.extend_from_slice(&stripe.to_le_bytes());
        image.push(index as u8);
        image.extend_from_slice(&[0; 3]);
        image.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&chunk_checksum(payload).to_le_bytes());
        image.extend_from_slice(payload);
        let tmp = path.with_extension(format!("{index}.tmp"));
        let mut file = fs::File::create(&tmp).map_err(io_err("creating a chunk"))?;
        file.write_all(&image)
            .and_then(|()| file.sync_data())
            .map_err(io_err("writing a chunk"))?;
        fs::rename(&tmp, &path).map_err(io_err("naming a chunk"))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing a chunk directory"))
    }

    /// Reads and checks chunk `index` of `stripe` from `drive`.
    pub fn read_chunk(
        &self,
        drive: usize,
        stripe: u64,
        index: usize,
        len: usize,
    ) -> Result<Vec<u8>, ChunkError> {
        self.check_drive(drive, stripe, index)?;
        let path = self.chunk_path(drive, stripe, index);
        let image = match fs::read(&path) {
            Ok(image) => image,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ChunkError::Missing {
                    drive,
                    stripe,
                    index,
                })
            }
            Err(source) => {
                return Err(ChunkError::Io {
                    drive,
                    path: self.paths[drive].clone(),
                    what: "reading a chunk",
                    source,
                })
            }
        };
        let damaged = |why| ChunkError::Damaged {
            drive,
            stripe,
            index,
            why,
        };
        if image.len() != HEADER_LEN + len {
            return Err(damaged("wrong length"));
        }
        let (header, payload) = image.split_at(HEADER_LEN);
        if &header[..8] != MAGIC {
            return Err(damaged("bad magic"));
        }
        let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        if header[17..20] != [0; 3] {
            return Err(damaged("bad header padding"));
        }
        if field(8) != stripe || usize::from(header[16]) != index {
            return Err(damaged("header names another chunk"));
        }
        let stored_len = u32::from_le_bytes(header[20..24].try_into().unwrap_or([0; 4]));
        if stored_len as usize != len {
            return Err(damaged("header length differs"));
        }
        if field(24) != chunk_checksum(payload) {
            return Err(damaged("checksum mismatch"));
        }
        Ok(payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drives(dir: &Path) -> Drives {
        Drives::open(Drives::default_paths(dir)).unwrap()
    }

    #[test]
    fn a_written_chunk_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = drives(dir.path());
        assert_eq!(d.len(), 6);
        let payload: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        d.write_chunk(3, 0x1234_5678, 2, &payload).unwrap();
        assert_eq!(d.read_chunk(3, 0x1234_5678, 2, 4096).unwrap(), payload);
        assert!(matches!(
            d.read_chunk(4, 0x1234_5678, 2, 4096),
            Err(ChunkError::Missing { drive: 4, .. })
        ));
        // A drive the pool no longer has.
        assert!(matches!(
            d.read_chunk(9, 0x1234_5678, 2, 4096),
            Err(ChunkError::Missing { drive: 9, .. })
        ));
    }

    #[test]
    fn every_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let d = drives(dir.path());
        let payload = vec![0x5a; 256];
        d.write_chunk(0, 7, 1, &payload).unwrap();
        let path = d.chunk_path(0, 7, 1);
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert!(
                matches!(d.read_chunk(0, 7, 1, 256), Err(ChunkError::Damaged { .. })),
                "a flipped bit at byte {at} was not caught"
            );
        }
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(d.read_chunk(0, 7, 1, 256).is_err());
        // The right bytes under another chunk's name are not that chunk.
        fs::write(&path, &good).unwrap();
        fs::copy(&path, d.chunk_path(0, 7, 2)).unwrap();
        assert!(matches!(
            d.read_chunk(0, 7, 2, 256),
            Err(ChunkError::Damaged { .. })
        ));
    }
}
