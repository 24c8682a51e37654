//! A device drive: a block device (or a regular file of fixed size standing
//! in for one) holding chunks in extents.
//!
//! The first MiB is the drive's own: a 4 KiB label at offset 0, then zeros.
//! Chunks follow, each in an extent of its encoded length rounded up to
//! 4 KiB, anywhere from 1 MiB to the capacity the label records. Which
//! extents are free is kept in memory only: the catalog names every chunk
//! in use and its place, so the pool rebuilds the free space when it opens
//! (a chunk written but never recorded, by a crash in between, is free
//! again). An extent is reused only after the catalog stops naming its
//! chunk (a rebuild's old copy), so a chunk is never overwritten while the
//! catalog names it.
//!
//! A chunk is written with one `pwrite` and made durable with `fdatasync`,
//! which on a block device also flushes the device's volatile write cache,
//! before the catalog names it.
//!
//! # Label (little-endian)
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `"STRDRV01"` |
//! | 8 | 2 | drive number, u16 |
//! | 10 | 6 | zero |
//! | 16 | 8 | capacity in bytes, u64 (the device's size when formatted) |
//! | 24 | 8 | xxh3-64 of bytes 0..24 |
//!
//! A device without a label is formatted only if its whole first MiB is
//! zero: anything else may be someone's data, and opening fails with an
//! error saying how to hand the device over. A damaged label, a label of
//! another drive number, or a capacity beyond the device's size also fail
//! the open.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use rangemap::RangeSet;
use xxhash_rust::xxh3::xxh3_64;

use super::{ChunkError, ChunkId};

const LABEL_MAGIC: &[u8; 8] = b"STRDRV01";
/// Bytes of the label.
pub const LABEL_LEN: usize = 32;
/// Where chunks start: the first MiB is the label's.
const DATA_START: u64 = 1 << 20;
/// Extents start and end on multiples of this.
const EXTENT_ALIGN: u64 = 4096;

/// What a device drive's label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveLabel {
    /// The drive's number in the pool's drive list.
    pub number: u16,
    /// Bytes of the device the pool uses.
    pub capacity: u64,
}

/// The label's bytes.
pub fn encode_label(label: &DriveLabel) -> [u8; LABEL_LEN] {
    let mut bytes = [0u8; LABEL_LEN];
    bytes[..8].copy_from_slice(LABEL_MAGIC);
    bytes[8..10].copy_from_slice(&label.number.to_le_bytes());
    bytes[16..24].copy_from_slice(&label.capacity.to_le_bytes());
    let checksum = xxh3_64(&bytes[..24]);
    bytes[24..].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Decodes a label: `Ok(None)` when `bytes` does not start with the
/// label's magic (no label), an error naming the failed check when it does
/// but is damaged. Never panics, whatever the bytes.
pub fn decode_label(bytes: &[u8]) -> Result<Option<DriveLabel>, &'static str> {
    if bytes.len() < LABEL_LEN {
        return Err("shorter than a label");
    }
    if &bytes[..8] != LABEL_MAGIC {
        return Ok(None);
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if word(24) != xxh3_64(&bytes[..24]) {
        return Err("label checksum mismatch");
    }
    if bytes[10..16].iter().any(|&b| b != 0) {
        return Err("label reserved bytes are not zero");
    }
    let capacity = word(16);
    if capacity < DATA_START || capacity % EXTENT_ALIGN != 0 {
        return Err("label capacity is not a whole number of extents past the label area");
    }
    Ok(Some(DriveLabel {
        number: u16::from_le_bytes([bytes[8], bytes[9]]),
        capacity,
    }))
}

/// The bytes of an extent holding an encoded chunk of `image_len` bytes.
pub fn extent_len(image_len: usize) -> u64 {
    (image_len as u64).div_ceil(EXTENT_ALIGN) * EXTENT_ALIGN
}

/// The opened device and the capacity its label gives.
#[derive(Debug)]
struct Opened {
    file: File,
    capacity: u64,
}

/// A drive that is a block device or a fixed-size file.
#[derive(Debug)]
pub struct DeviceDrive {
    number: usize,
    path: PathBuf,
    opened: RwLock<Arc<Opened>>,
    /// Free extents (byte ranges).
    free: Mutex<RangeSet<u64>>,
}

impl DeviceDrive {
    /// Opens `path` as drive `number`, formatting it if it is blank.
    pub fn open(number: usize, path: PathBuf) -> anyhow::Result<DeviceDrive> {
        let opened = open_device(number, &path)?;
        let free = all_free(&opened);
        Ok(DeviceDrive {
            number,
            path,
            opened: RwLock::new(Arc::new(opened)),
            free: Mutex::new(free),
        })
    }

    /// Opens the device at the drive's path again (a replaced one,
    /// formatting it if it is blank): every extent is free again except
    /// those of `in_use`, (place, payload length) of the chunks the
    /// catalog names on this drive. The drive must take no writes
    /// meanwhile (it is marked failed).
    pub fn reopen(&self, in_use: &[(u64, usize)]) -> anyhow::Result<()> {
        let opened = open_device(self.number, &self.path)?;
        let mut free = all_free(&opened);
        for &(place, len) in in_use {
            take_extent(&mut free, place, len)
                .with_context(|| format!("drive {} ({})", self.number, self.path.display()))?;
        }
        *self.opened.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(opened);
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) = free;
        Ok(())
    }

    fn opened(&self) -> Arc<Opened> {
        self.opened
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn free(&self) -> std::sync::MutexGuard<'_, RangeSet<u64>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the extent of a chunk of `len` payload bytes at `place` in
    /// use. Fails if any of it is in use already or off the drive.
    pub fn reserve(&self, place: u64, len: usize) -> anyhow::Result<()> {
        take_extent(&mut self.free(), place, len)
            .with_context(|| format!("drive {} ({})", self.number, self.path.display()))
    }

    /// Writes `image` (an encoded chunk) to a free extent, durably;
    /// returns the extent's place.
    pub fn write(&self, image: &[u8]) -> Result<u64, ChunkError> {
        let len = extent_len(image.len());
        let place = {
            let mut free = self.free();
            let Some(found) = free.iter().find(|r| r.end - r.start >= len).cloned() else {
                return Err(ChunkError::Full {
                    drive: self.number,
                    path: self.path.clone(),
                    len,
                });
            };
            free.remove(found.start..found.start + len);
            found.start
        };
        let opened = self.opened();
        let written = opened
            .file
            .write_all_at(image, place)
            .and_then(|()| opened.file.sync_data());
        if let Err(source) = written {
            self.free().insert(place..place + len);
            return Err(ChunkError::Io {
                drive: self.number,
                path: self.path.clone(),
                what: "writing a chunk",
                source,
            });
        }
        Ok(place)
    }

    /// The `len` bytes at `place` (unchecked), as `chunk`'s.
    pub fn read(&self, chunk: ChunkId, place: u64, len: usize) -> Result<Vec<u8>, ChunkError> {
        let opened = self.opened();
        let inside = place >= DATA_START
            && place
                .checked_add(len as u64)
                .is_some_and(|end| end <= opened.capacity);
        if !inside {
            return Err(ChunkError::Damaged {
                drive: self.number,
                chunk,
                why: "its place lies outside the drive",
            });
        }
        let mut bytes = vec![0u8; len];
        opened
            .file
            .read_exact_at(&mut bytes, place)
            .map_err(|source| ChunkError::Io {
                drive: self.number,
                path: self.path.clone(),
                what: "reading a chunk",
                source,
            })?;
        Ok(bytes)
    }

    /// Returns the extent of a chunk of `len` payload bytes at `place` to
    /// the free space.
    pub fn release(&self, place: u64, len: usize) {
        let end = place + extent_len(super::HEADER_LEN + len);
        self.free().insert(place..end);
    }
}

/// The free space of a drive holding no chunks: all of its chunk area.
fn all_free(opened: &Opened) -> RangeSet<u64> {
    let mut free = RangeSet::new();
    free.insert(DATA_START..opened.capacity);
    free
}

/// Removes the extent of a chunk of `len` payload bytes at `place` from
/// `free`; fails if it is not wholly free.
fn take_extent(free: &mut RangeSet<u64>, place: u64, len: usize) -> anyhow::Result<()> {
    let end = place.saturating_add(extent_len(super::HEADER_LEN + len));
    let whole = place % EXTENT_ALIGN == 0 && free.get(&place).is_some_and(|r| r.end >= end);
    anyhow::ensure!(
        whole,
        "the catalog places a chunk at bytes {place}..{end}, which overlap another chunk or lie off the drive's chunk area"
    );
    free.remove(place..end);
    Ok(())
}

/// Opens the device at `path` as drive `number`: checks its label, or
/// formats it if it is blank.
fn open_device(number: usize, path: &std::path::Path) -> anyhow::Result<Opened> {
    let shown = path.display();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open drive {number} ({shown})"))?;
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("cannot size drive {number} ({shown})"))?;
    anyhow::ensure!(
        size >= DATA_START + 16 * EXTENT_ALIGN,
        "drive {number} ({shown}) is {size} bytes: too small for a pool drive"
    );
    let mut head = vec![0u8; DATA_START as usize];
    file.read_exact_at(&mut head, 0)
        .with_context(|| format!("cannot read the label of drive {number} ({shown})"))?;
    let label = decode_label(&head)
        .map_err(|why| anyhow::anyhow!("drive {number} ({shown}) has a damaged label: {why}"))?;
    let capacity = match label {
        Some(label) => {
            anyhow::ensure!(
                usize::from(label.number) == number,
                "{shown} is labelled drive {} of a pool, not drive {number}: check the order of the --drive list",
                label.number
            );
            anyhow::ensure!(
                label.capacity <= size,
                "drive {number} ({shown}) is {size} bytes, smaller than the {} its label records",
                label.capacity
            );
            label.capacity
        }
        None => {
            anyhow::ensure!(
                head.iter().all(|&b| b == 0),
                "drive {number} ({shown}) is not a Strata drive and is not blank; if its contents may go, zero its first MiB (dd if=/dev/zero of={shown} bs=1M count=1) to give it to the pool"
            );
            let number16 = u16::try_from(number).context("too many drives")?;
            let label = DriveLabel {
                number: number16,
                capacity: size / EXTENT_ALIGN * EXTENT_ALIGN,
            };
            file.write_all_at(&encode_label(&label), 0)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot label drive {number} ({shown})"))?;
            tracing::info!(drive = number, path = %shown, capacity = label.capacity, "formatted a blank device drive");
            label.capacity
        }
    };
    Ok(Opened { file, capacity })
}
