//! A device drive: a block device (or a regular file of fixed size standing
//! in for one) holding chunks in extents.
//!
//! The first MiB is the drive's own: its label (see [`super::label`]) at
//! offset 0, then zeros. Chunks follow, each in an extent of its encoded
//! length rounded up to 4 KiB, anywhere from 1 MiB to the capacity the
//! label records. Which extents are free is kept in memory only: the
//! catalog names every chunk in use and its place, so the pool rebuilds the
//! free space when it opens (a chunk written but never recorded, by a crash
//! in between, is free again). An extent is reused only after the catalog
//! stops naming its chunk (a rebuild's old copy), so a chunk is never
//! overwritten while the catalog names it.
//!
//! A chunk is written with one `pwrite` and made durable with `fdatasync`,
//! which on a block device also flushes the device's volatile write cache,
//! before the catalog names it.
//!
//! The device is opened exclusively (`O_EXCL` for a block device, so it
//! cannot be mounted or opened so by another pool meanwhile; an advisory
//! lock for a regular file). A device without a label is labelled only
//! when that is allowed (a drive the pool has never used, or one the
//! administrator replaced) and only if its whole first MiB is zero:
//! anything else may be someone's data.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use rangemap::RangeSet;

use super::label::{
    check_label, decode_label, encode_label, DriveKind, DriveLabel, MIN_DEVICE_CAPACITY,
};
use super::{ChunkError, ChunkId, HEADER_LEN};

/// Where chunks start: the first MiB is the label's.
const DATA_START: u64 = 1 << 20;
/// Extents start and end on multiples of this.
const EXTENT_ALIGN: u64 = 4096;

/// The bytes of an extent holding an encoded chunk of `image_len` bytes.
pub fn extent_len(image_len: usize) -> u64 {
    (image_len as u64).div_ceil(EXTENT_ALIGN) * EXTENT_ALIGN
}

/// A drive that is a block device or a fixed-size file.
#[derive(Debug)]
pub struct DeviceDrive {
    number: usize,
    path: PathBuf,
    file: File,
    capacity: u64,
    /// Free extents (byte ranges).
    free: Mutex<RangeSet<u64>>,
}

impl DeviceDrive {
    /// Opens `path` as drive `number` of pool `pool`, labelling it if it
    /// is blank and `may_label`. Every extent starts free; the caller
    /// reserves those the catalog names.
    pub fn open(
        number: usize,
        path: PathBuf,
        pool: &[u8; 16],
        may_label: bool,
    ) -> anyhow::Result<DeviceDrive> {
        let (file, capacity) = open_device(number, &path, pool, may_label)
            .with_context(|| format!("drive {number} ({})", path.display()))?;
        let mut free = RangeSet::new();
        free.insert(DATA_START..capacity);
        Ok(DeviceDrive {
            number,
            path,
            file,
            capacity,
            free: Mutex::new(free),
        })
    }

    fn free(&self) -> std::sync::MutexGuard<'_, RangeSet<u64>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the extent of a chunk of `len` payload bytes at `place` in
    /// use. Fails if any of it is in use already or off the drive.
    pub fn reserve(&self, place: u64, len: usize) -> anyhow::Result<()> {
        let end = place.saturating_add(extent_len(HEADER_LEN + len));
        let mut free = self.free();
        let whole = place % EXTENT_ALIGN == 0 && free.get(&place).is_some_and(|r| r.end >= end);
        anyhow::ensure!(
            whole,
            "drive {} ({}): the catalog places a chunk at bytes {place}..{end}, which overlap another chunk or lie off the drive's chunk area",
            self.number,
            self.path.display()
        );
        free.remove(place..end);
        Ok(())
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
        let written = self
            .file
            .write_all_at(image, place)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Never recorded: the extent is free again.
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
        let inside = place >= DATA_START
            && place
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.capacity);
        if !inside {
            return Err(ChunkError::Damaged {
                drive: self.number,
                chunk,
                why: "its place lies outside the drive",
            });
        }
        let mut bytes = vec![0u8; len];
        self.file
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
        let end = place.saturating_add(extent_len(HEADER_LEN + len));
        if place < end {
            self.free().insert(place..end);
        }
    }
}

/// Opens the device at `path` as drive `number` of pool `pool`, checks its
/// label or labels a blank one (if `may_label`); returns it and its
/// capacity.
fn open_device(
    number: usize,
    path: &Path,
    pool: &[u8; 16],
    may_label: bool,
) -> anyhow::Result<(File, u64)> {
    let shown = path.display();
    let metadata = std::fs::metadata(path).context("cannot find it")?;
    let block_device = metadata.file_type().is_block_device();
    anyhow::ensure!(
        block_device || metadata.is_file(),
        "it is neither a block device nor a regular file"
    );
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if block_device {
        // Exclusive: fails while it is mounted or opened so elsewhere.
        options.custom_flags(libc::O_EXCL);
    }
    let mut file = options
        .open(path)
        .context("cannot open it (in use elsewhere?)")?;
    if !block_device {
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .context("cannot lock it: another process uses it")?;
    }
    let size = file.seek(SeekFrom::End(0)).context("cannot size it")?;
    anyhow::ensure!(
        size >= MIN_DEVICE_CAPACITY,
        "it is {size} bytes: too small for a pool drive"
    );
    let mut head = vec![0u8; DATA_START as usize];
    file.read_exact_at(&mut head, 0)
        .context("cannot read its label")?;
    let label = decode_label(&head).map_err(|why| anyhow::anyhow!("damaged label: {why}"))?;
    if let Some(label) = label {
        check_label(&label, pool, number, DriveKind::Device).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            label.capacity <= size,
            "it is {size} bytes, smaller than the {} its label records",
            label.capacity
        );
        return Ok((file, label.capacity));
    }
    anyhow::ensure!(
        may_label,
        "it has no label: the drive the pool used is not there (a replaced disk is taken into use by 'strata drive replace {number}')"
    );
    anyhow::ensure!(
        head.iter().all(|&b| b == 0),
        "it is not a Strata drive and is not blank; if its contents may go, zero its first MiB (dd if=/dev/zero of={shown} bs=1M count=1) to give it to the pool"
    );
    let label = DriveLabel {
        pool: *pool,
        number: u16::try_from(number).context("too many drives")?,
        kind: DriveKind::Device,
        capacity: size / EXTENT_ALIGN * EXTENT_ALIGN,
    };
    file.write_all_at(&encode_label(&label), 0)
        .and_then(|()| file.sync_data())
        .context("cannot write its label")?;
    tracing::info!(drive = number, path = %shown, capacity = label.capacity, "labelled a blank device drive");
    Ok((file, label.capacity))
}
