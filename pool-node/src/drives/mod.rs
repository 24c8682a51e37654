//! The pool's drives and the chunks on them.
//!
//! A drive is either a **directory** (a mounted file system; the no-config
//! default makes six under the data directory), holding one file per chunk
//! ([`directory`]), or a **block device** (or a regular file of fixed size
//! standing in for one), holding chunks in extents it allocates
//! ([`device`]). The first time the pool sees a drive, `--drive PATH` picks
//! by what PATH is: an existing block device or regular file is a device
//! drive, anything else a directory; the catalog then remembers the kind,
//! and every drive carries a label naming the pool and its number
//! ([`label`]).
//!
//! A drive that cannot be opened as what it was (gone, not mounted, its
//! label damaged or another pool's, an I/O error) is **offline**: the pool
//! runs without it, reading its chunks from the others, and `strata drive
//! replace` tries it again. A drive whose last chunk write found no room
//! (a device without a long enough free extent, a directory on a full
//! file system) is **full**: read as usual, but left out of new stripes
//! until a chunk is removed from it or it is opened again.
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
mod label;

use std::fmt;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use strata_common::erasure::chunk_checksum;

pub use label::{decode_label, encode_label, DriveKind, DriveLabel, MIN_DEVICE_CAPACITY};

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
    /// There is no such chunk (or no such drive, or it is offline).
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
    /// The drive is offline.
    #[error("drive {drive} is offline: {why}")]
    Offline {
        /// The drive.
        drive: usize,
        /// Why.
        why: String,
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

/// One drive of the pool, as opened.
#[derive(Debug)]
enum Drive {
    Directory(DirectoryDrive),
    Device(DeviceDrive),
    /// Not usable; why.
    Offline(String),
}

impl Drive {
    fn offline_reason(&self) -> Option<String> {
        match self {
            Drive::Offline(why) => Some(why.clone()),
            Drive::Directory(_) | Drive::Device(_) => None,
        }
    }
}

/// When a drive without a label may be given one.
#[derive(Debug, Clone, Copy)]
enum Labelling {
    /// Never: the pool used this drive, and it had a label.
    Never,
    /// Yes: a drive the pool never used, or one the administrator replaced.
    Always,
    /// Only if it is a directory that holds this chunk the catalog places
    /// on it (a drive of a pool from before labels).
    IfHolding(ChunkSlot),
}

/// The pool's drives.
#[derive(Debug)]
pub struct Drives {
    pool: [u8; 16],
    paths: Vec<PathBuf>,
    drives: Vec<RwLock<Drive>>,
    /// Per drive, why it is offline (`None`: it is not); kept apart from
    /// the drives' locks, which I/O holds, so asking never waits for I/O.
    offline: Mutex<Vec<Option<String>>>,
    /// Per drive, whether its last chunk write found no room (until a
    /// chunk is removed from it or it is opened again).
    full: Mutex<Vec<bool>>,
}

impl Drives {
    /// Opens the drives `paths` of pool `pool`, in order (drive 0 first).
    /// `known[i]` is the kind the catalog recorded for drive `i`; one it
    /// never recorded may be labelled, unless the catalog places chunks on
    /// it (`used[i]`, one of them): a pool from before labels, whose
    /// directory is adopted only if it holds that chunk. A drive that
    /// cannot be opened is offline, not an error: the pool runs without it.
    pub fn open(
        pool: [u8; 16],
        paths: Vec<PathBuf>,
        known: &[Option<DriveKind>],
        used: &[Option<ChunkSlot>],
    ) -> Drives {
        let opened: Vec<Drive> = paths
            .iter()
            .enumerate()
            .map(|(number, path)| {
                let known = known.get(number).copied().flatten();
                let labelling = match (known, used.get(number).copied().flatten()) {
                    (Some(_), _) => Labelling::Never,
                    (None, None) => Labelling::Always,
                    (None, Some(slot)) => Labelling::IfHolding(slot),
                };
                open_drive(&pool, number, path, known, labelling)
            })
            .collect();
        let offline = opened.iter().map(Drive::offline_reason).collect();
        Drives {
            pool,
            full: Mutex::new(vec![false; opened.len()]),
            paths,
            drives: opened.into_iter().map(RwLock::new).collect(),
            offline: Mutex::new(offline),
        }
    }

    /// Puts `opened` in place of drive `drive`.
    fn install(&self, drive: usize, opened: Drive) {
        let why = opened.offline_reason();
        *self.drives[drive]
            .write()
            .unwrap_or_else(|p| p.into_inner()) = opened;
        self.offline.lock().unwrap_or_else(|p| p.into_inner())[drive] = why;
        self.set_full(drive, false);
    }

    fn set_full(&self, drive: usize, full: bool) {
        self.full.lock().unwrap_or_else(|p| p.into_inner())[drive] = full;
    }

    /// Per drive, whether it has no room for new chunks: its last chunk
    /// write found none, and no chunk was removed from it since.
    pub fn full(&self) -> Vec<bool> {
        self.full.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    fn drive(&self, drive: usize) -> Option<RwLockReadGuard<'_, Drive>> {
        self.drives
            .get(drive)
            .map(|d| d.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// What each drive is, `None` where it is offline.
    pub fn kinds(&self) -> Vec<Option<DriveKind>> {
        (0..self.len())
            .map(|d| match self.drive(d).as_deref() {
                Some(Drive::Directory(_)) => Some(DriveKind::Directory),
                Some(Drive::Device(_)) => Some(DriveKind::Device),
                Some(Drive::Offline(_)) | None => None,
            })
            .collect()
    }

    /// Why each drive is offline, `None` where it is not.
    pub fn offline(&self) -> Vec<Option<String>> {
        self.offline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the extents of `slots` (every chunk the catalog names) in use
    /// on their device drives, when the pool opens. A drive whose chunks
    /// overlap or lie off it (a smaller disk swapped in, say) goes offline.
    /// Slots on drives the pool no longer has are skipped: those count as
    /// failed.
    pub fn reserve_all(&self, slots: impl IntoIterator<Item = ChunkSlot>) {
        for slot in slots {
            let Some(lock) = self.drives.get(slot.drive) else {
                continue;
            };
            let result = match &*lock.read().unwrap_or_else(|p| p.into_inner()) {
                Drive::Device(device) => device.reserve(slot.place, slot.len),
                Drive::Directory(_) | Drive::Offline(_) => Ok(()),
            };
            if let Err(e) = result {
                tracing::error!(drive = slot.drive, error = %format!("{e:#}"), "drive taken offline");
                self.install(slot.drive, Drive::Offline(format!("{e:#}")));
            }
        }
    }

    /// Opens drive `drive` again (a replaced disk, or one back from being
    /// offline), labelling it if it has no label, as a drive of kind
    /// `known` (or whatever its path is, if `None`); the extents of
    /// `in_use`, the catalog's chunks, are marked in use. No chunk may be
    /// written meanwhile (the caller holds the pool's write gate). On
    /// failure the drive is offline.
    pub fn reopen(
        &self,
        drive: usize,
        known: Option<DriveKind>,
        in_use: &[ChunkSlot],
    ) -> anyhow::Result<()> {
        let Some(path) = self.paths.get(drive) else {
            anyhow::bail!("no drive {drive}");
        };
        // Close the old one first (once I/O in flight on it is done): the
        // new open locks the device. The open itself holds no lock.
        self.install(drive, Drive::Offline("being opened again".to_string()));
        let mut opened = open_drive(&self.pool, drive, path, known, Labelling::Always);
        if let Drive::Device(device) = &opened {
            let reserved = in_use
                .iter()
                .filter(|s| s.drive == drive)
                .try_for_each(|s| device.reserve(s.place, s.len));
            if let Err(e) = reserved {
                opened = Drive::Offline(format!("{e:#}"));
            }
        }
        let result = match opened.offline_reason() {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => Ok(()),
        };
        self.install(drive, opened);
        result
    }

    /// Writes `chunk` to `drive`, durably; returns its place. A drive the
    /// write fails on with an I/O error goes offline, so the stripes that
    /// follow are laid out around it (`strata drive replace` tries it
    /// again).
    pub fn write_chunk(
        &self,
        drive: usize,
        chunk: ChunkId,
        payload: &[u8],
    ) -> Result<u64, ChunkError> {
        let image = encode_chunk(chunk, payload);
        let written = match self.drive(drive).as_deref() {
            Some(Drive::Directory(dir)) => dir.write(chunk, &image).map(|()| 0),
            Some(Drive::Device(device)) => device.write(&image),
            Some(Drive::Offline(why)) => Err(ChunkError::Offline {
                drive,
                why: why.clone(),
            }),
            None => Err(ChunkError::Missing { drive, chunk }),
        };
        match &written {
            Err(e @ ChunkError::Io { .. }) => {
                tracing::error!(drive, error = %e, "a chunk write failed: drive taken offline");
                self.install(drive, Drive::Offline(format!("a chunk write failed: {e}")));
            }
            Err(e @ ChunkError::Full { .. }) => {
                tracing::warn!(drive, error = %e, "drive full: new stripes go around it");
                self.set_full(drive, true);
            }
            _ => {}
        }
        written
    }

    /// Reads and checks the chunk in `slot`.
    pub fn read_chunk(&self, slot: &ChunkSlot) -> Result<Vec<u8>, ChunkError> {
        let image = match self.drive(slot.drive).as_deref() {
            Some(Drive::Directory(dir)) => dir.read(slot.chunk)?,
            Some(Drive::Device(device)) => {
                device.read(slot.chunk, slot.place, HEADER_LEN + slot.len)?
            }
            Some(Drive::Offline(_)) | None => {
                return Err(ChunkError::Missing {
                    drive: slot.drive,
                    chunk: slot.chunk,
                })
            }
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
        match self.drive(slot.drive).as_deref() {
            Some(Drive::Directory(dir)) => dir.has(slot.chunk),
            Some(Drive::Device(device)) => device
                .read(slot.chunk, slot.place, HEADER_LEN)
                .is_ok_and(|header| check_header(&header, slot.chunk, slot.len).is_ok()),
            Some(Drive::Offline(_)) | None => false,
        }
    }

    /// Deletes the chunk in `slot` (one the catalog no longer names, or
    /// never did): its file, or its extent back to the free space. A
    /// missing chunk is not an error.
    pub fn remove_chunk(&self, slot: &ChunkSlot) {
        match self.drive(slot.drive).as_deref() {
            Some(Drive::Directory(dir)) => dir.remove(slot.chunk),
            Some(Drive::Device(device)) => device.release(slot.place, slot.len),
            Some(Drive::Offline(_)) | None => return,
        }
        // Room again, perhaps: the next write finds out.
        self.set_full(slot.drive, false);
    }
}

/// Opens `path` as drive `number` of pool `pool`: as a drive of kind
/// `known`, or, if the pool never used it, of the kind its path suggests.
/// Offline, with the reason logged, if that fails.
fn open_drive(
    pool: &[u8; 16],
    number: usize,
    path: &Path,
    known: Option<DriveKind>,
    labelling: Labelling,
) -> Drive {
    let kind = known.unwrap_or_else(|| match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() || m.is_file() => DriveKind::Device,
        _ => DriveKind::Directory,
    });
    let may_label = match labelling {
        Labelling::Never => false,
        Labelling::Always => true,
        Labelling::IfHolding(slot) => {
            kind == DriveKind::Directory && directory::chunk_file(path, slot.chunk).is_file()
        }
    };
    let opened = match kind {
        // A device path that is not there is not a directory to create.
        DriveKind::Directory if path.starts_with("/dev") && !path.exists() => Err(anyhow::anyhow!(
            "drive {number} ({}): no such device",
            path.display()
        )),
        DriveKind::Directory => {
            DirectoryDrive::open(number, path.to_path_buf(), pool, may_label).map(Drive::Directory)
        }
        DriveKind::Device => {
            DeviceDrive::open(number, path.to_path_buf(), pool, may_label).map(Drive::Device)
        }
    };
    opened.unwrap_or_else(|e| {
        tracing::error!(drive = number, path = %path.display(), error = %format!("{e:#}"), "drive offline");
        Drive::Offline(format!("{e:#}"))
    })
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
