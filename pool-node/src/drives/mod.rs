//! The pool's drives and the chunks on them.
//!
//! A drive is either a **directory** (a mounted file system; the no-config
//! default makes six under the data directory), holding one file per chunk
//! ([`directory`]), or a **block device** (or a regular file of fixed size
//! standing in for one), holding chunks in extents it allocates
//! ([`device`]). `--drive PATH` picks by what PATH is: an existing block
//! device or regular file is a device drive, anything else a directory.
//!
//! Either way a chunk is stored as a 32-byte header (magic, stripe u64,
//! index u8, zero u8, generation u16, length u32, xxh3 of the payload u64)
//! and its payload ([`encode_chunk`]), written once and never overwritten
//! while the catalog names it. Reading checks every header field and the
//! checksum ([`decode_chunk`]): a chunk that is missing, cut short,
//! misplaced or damaged reads as unusable, never as bytes.
//!
//! Where a chunk is: a directory drive finds it by name; a device drive by
//! its **place**, the byte offset of its extent, which the catalog records
//! with the stripe (0, unused, on a directory drive).

mod device;
mod directory;

use std::fmt;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use strata_common::erasure::chunk_checksum;

pub use device::{decode_label, encode_label, DriveLabel};

use device::DeviceDrive;
use directory::DirectoryDrive;

const MAGIC: &[u8; 8] = b"STRCHK02";
/// Bytes of a chunk's header.
pub const HEADER_LEN: usize = 32;

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

/// One chunk on one drive: which chunk, where, and its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSlot {
    /// The drive.
    pub drive: usize,
    /// The chunk.
    pub chunk: ChunkId,
    /// Its place on the drive (a device drive's byte offset; 0 on a
    /// directory drive).
    pub place: u64,
    /// Bytes of payload.
    pub len: usize,
}

/// Why a chunk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// There is no such chunk (or no such drive).
    #[error("chunk {chunk} is missing from drive {drive}")]
    Missing {
        /// The drive.
        drive: usize,
        /// The chunk.
        chunk: ChunkId,
    },
    /// The chunk is there but its header or checksum is wrong.
    #[error("chunk {chunk} on drive {drive} is damaged: {why}")]
    Damaged {
        /// The drive.
        drive: usize,
        /// The chunk.
        chunk: ChunkId,
        /// What is wrong.
        why: &'static str,
    },
    /// The drive has no free extent long enough.
    #[error("drive {drive} ({path}) is full: no free extent of {len} bytes")]
    Full {
        /// The drive.
        drive: usize,
        /// Its path.
        path: PathBuf,
        /// The extent asked for.
        len: u64,
    },
    /// The drive could not be read or written.
    #[error("drive {drive} ({path}): {what}: {source}")]
    Io {
        /// The drive.
        drive: usize,
        /// Its directory or device.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// One drive of the pool.
#[derive(Debug)]
enum Drive {
    Directory(DirectoryDrive),
    Device(DeviceDrive),
}

/// The pool's drives.
#[derive(Debug)]
pub struct Drives {
    drives: Vec<Drive>,
}

impl Drives {
    /// Opens the drives `paths`, in order (drive 0 first): existing block
    /// devices and regular files as device drives (formatting a blank one),
    /// anything else as a directory drive (created if needed).
    pub fn open(paths: Vec<PathBuf>) -> anyhow::Result<Drives> {
        let drives = paths
            .into_iter()
            .enumerate()
            .map(|(number, path)| {
                let is_device = std::fs::metadata(&path)
                    .is_ok_and(|m| m.file_type().is_block_device() || m.is_file());
                Ok(if is_device {
                    Drive::Device(DeviceDrive::open(number, path)?)
                } else {
                    Drive::Directory(DirectoryDrive::open(number, path)?)
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Drives { drives })
    }

    /// The six directory drives of a data directory with no drive list.
    pub fn default_paths(data_dir: &Path) -> Vec<PathBuf> {
        (0..6)
            .map(|i| data_dir.join("drives").join(i.to_string()))
            .collect()
    }

    /// Number of drives.
    pub fn len(&self) -> usize {
        self.drives.len()
    }

    /// Whether there are no drives.
    pub fn is_empty(&self) -> bool {
        self.drives.is_empty()
    }

    fn drive(&self, drive: usize, chunk: ChunkId) -> Result<&Drive, ChunkError> {
        self.drives
            .get(drive)
            .ok_or(ChunkError::Missing { drive, chunk })
    }

    /// Marks `slot`'s extent in use, as the catalog records it (when the
    /// pool opens). Fails if it overlaps another or lies off the drive:
    /// the catalog and the drive disagree. A drive the pool no longer has
    /// (the drive list got shorter) counts as failed, not as an error.
    pub fn reserve(&self, slot: &ChunkSlot) -> anyhow::Result<()> {
        match self.drives.get(slot.drive) {
            Some(Drive::Device(device)) => device.reserve(slot.place, slot.len),
            Some(Drive::Directory(_)) | None => Ok(()),
        }
    }

    /// Takes drive `drive` into use again (a replaced disk): a directory is
    /// created if missing; a device is opened again (formatted if blank)
    /// with only the extents of `in_use`, the catalog's chunks on it, in
    /// use. The drive must be marked failed meanwhile.
    pub fn reopen(&self, drive: usize, in_use: &[ChunkSlot]) -> anyhow::Result<()> {
        match self.drives.get(drive) {
            None => anyhow::bail!("no drive {drive}"),
            Some(Drive::Directory(dir)) => dir.create(),
            Some(Drive::Device(device)) => {
                let extents: Vec<(u64, usize)> = in_use
                    .iter()
                    .filter(|slot| slot.drive == drive)
                    .map(|slot| (slot.place, slot.len))
                    .collect();
                device.reopen(&extents)
            }
        }
    }

    /// Writes `chunk` to `drive`, durably; returns its place.
    pub fn write_chunk(
        &self,
        drive: usize,
        chunk: ChunkId,
        payload: &[u8],
    ) -> Result<u64, ChunkError> {
        let image = encode_chunk(chunk, payload);
        match self.drive(drive, chunk)? {
            Drive::Directory(dir) => dir.write(chunk, &image).map(|()| 0),
            Drive::Device(device) => device.write(&image),
        }
    }

    /// Reads and checks the chunk in `slot`.
    pub fn read_chunk(&self, slot: &ChunkSlot) -> Result<Vec<u8>, ChunkError> {
        let image = match self.drive(slot.drive, slot.chunk)? {
            Drive::Directory(dir) => dir.read(slot.chunk)?,
            Drive::Device(device) => device.read(slot.chunk, slot.place, HEADER_LEN + slot.len)?,
        };
        match decode_chunk(&image, slot.chunk, slot.len) {
            Ok(payload) => Ok(payload.to_vec()),
            Err(why) => Err(ChunkError::Damaged {
                drive: slot.drive,
                chunk: slot.chunk,
                why,
            }),
        }
    }

    /// Whether the chunk in `slot` is there: its file exists on a
    /// directory drive, its header is right on a device drive (neither
    /// reads the payload).
    pub fn has_chunk(&self, slot: &ChunkSlot) -> bool {
        match self.drive(slot.drive, slot.chunk) {
            Ok(Drive::Directory(dir)) => dir.has(slot.chunk),
            Ok(Drive::Device(device)) => device
                .read(slot.chunk, slot.place, HEADER_LEN)
                .is_ok_and(|header| check_header(&header, slot.chunk, slot.len).is_ok()),
            Err(_) => false,
        }
    }

    /// Deletes the chunk in `slot` (one the catalog no longer names): its
    /// file, or its extent back to the free space. A missing chunk is not
    /// an error.
    pub fn remove_chunk(&self, slot: &ChunkSlot) {
        match self.drive(slot.drive, slot.chunk) {
            Ok(Drive::Directory(dir)) => dir.remove(slot.chunk),
            Ok(Drive::Device(device)) => device.release(slot.place, slot.len),
            Err(_) => {}
        }
    }
}

/// The bytes of `chunk` as stored: header, then `payload`.
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

/// Checks that `image` is `chunk` with a `len`-byte payload and returns
/// the payload, or which check failed. Never panics, whatever the bytes.
pub fn decode_chunk(image: &[u8], chunk: ChunkId, len: usize) -> Result<&[u8], &'static str> {
    if Some(image.len()) != HEADER_LEN.checked_add(len) {
        return Err("wrong length");
    }
    let (header, payload) = image.split_at(HEADER_LEN);
    let checksum = check_header(header, chunk, len)?;
    if checksum != chunk_checksum(payload) {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// Checks a chunk header's fields against `chunk` and `len`; returns the
/// payload checksum it records.
fn check_header(header: &[u8], chunk: ChunkId, len: usize) -> Result<u64, &'static str> {
    if header.len() != HEADER_LEN {
        return Err("wrong header length");
    }
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
    Ok(word(24, 8))
}

#[cfg(test)]
mod tests;
