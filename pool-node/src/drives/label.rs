//! The label that makes a directory or a device a drive of one pool.
//!
//! A device drive has it at byte 0; a directory drive in its file
//! `drive-label`. It names the pool (a random id the catalog keeps), the
//! drive's number in the pool's drive list, and its kind, so a disk of
//! another pool, a reordered `--drive` list, or a directory whose disk is
//! not mounted is noticed instead of written to.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `"STRDRV01"` |
//! | 8 | 16 | pool id |
//! | 24 | 2 | drive number, u16 LE |
//! | 26 | 1 | kind: 1 directory, 2 device |
//! | 27 | 5 | zero |
//! | 32 | 8 | capacity in bytes, u64 LE (a device's size when labelled; 0 for a directory) |
//! | 40 | 8 | xxh3-64 of bytes 0..40, LE |

use xxhash_rust::xxh3::xxh3_64;

const MAGIC: &[u8; 8] = b"STRDRV01";
/// Bytes of a label.
pub const LABEL_LEN: usize = 48;
/// The smallest capacity a device label may give: its label area (1 MiB)
/// and 16 extents of 4 KiB.
pub const MIN_DEVICE_CAPACITY: u64 = (1 << 20) + 16 * 4096;

/// What a drive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveKind {
    /// A directory holding a file per chunk.
    Directory,
    /// A block device (or a fixed-size file) holding chunks in extents.
    Device,
}

impl DriveKind {
    /// Its byte in labels and the catalog.
    pub fn code(self) -> u8 {
        match self {
            DriveKind::Directory => 1,
            DriveKind::Device => 2,
        }
    }

    /// The kind a byte names, if any.
    pub fn from_code(code: u8) -> Option<DriveKind> {
        match code {
            1 => Some(DriveKind::Directory),
            2 => Some(DriveKind::Device),
            _ => None,
        }
    }
}

/// What a drive's label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveLabel {
    /// The pool the drive belongs to.
    pub pool: [u8; 16],
    /// The drive's number in the pool's drive list.
    pub number: u16,
    /// What it is.
    pub kind: DriveKind,
    /// Bytes of a device the pool uses (0 for a directory).
    pub capacity: u64,
}

/// The label's bytes.
pub fn encode_label(label: &DriveLabel) -> [u8; LABEL_LEN] {
    let mut bytes = [0u8; LABEL_LEN];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..24].copy_from_slice(&label.pool);
    bytes[24..26].copy_from_slice(&label.number.to_le_bytes());
    bytes[26] = label.kind.code();
    bytes[32..40].copy_from_slice(&label.capacity.to_le_bytes());
    let checksum = xxh3_64(&bytes[..40]);
    bytes[40..].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Decodes the label at the start of `bytes`: `Ok(None)` when they do not
/// start with the label's magic (no label), an error naming the failed
/// check when they do but the label is damaged or impossible. Never
/// panics, whatever the bytes.
pub fn decode_label(bytes: &[u8]) -> Result<Option<DriveLabel>, &'static str> {
    if bytes.len() < LABEL_LEN {
        return Err("shorter than a label");
    }
    if &bytes[..8] != MAGIC {
        return Ok(None);
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if word(40) != xxh3_64(&bytes[..40]) {
        return Err("label checksum mismatch");
    }
    if bytes[27..32].iter().any(|&b| b != 0) {
        return Err("label reserved bytes are not zero");
    }
    let kind = DriveKind::from_code(bytes[26]).ok_or("label names no known drive kind")?;
    let capacity = word(32);
    let capacity_fits = match kind {
        DriveKind::Directory => capacity == 0,
        DriveKind::Device => capacity >= MIN_DEVICE_CAPACITY && capacity % 4096 == 0,
    };
    if !capacity_fits {
        return Err("label capacity does not fit its kind");
    }
    let mut pool = [0u8; 16];
    pool.copy_from_slice(&bytes[8..24]);
    Ok(Some(DriveLabel {
        pool,
        number: u16::from_le_bytes([bytes[24], bytes[25]]),
        kind,
        capacity,
    }))
}

/// Checks that `label` is drive `number` of pool `pool`, of kind `kind`.
pub fn check_label(
    label: &DriveLabel,
    pool: &[u8; 16],
    number: usize,
    kind: DriveKind,
) -> Result<(), String> {
    if label.pool != *pool {
        return Err("it is labelled as a drive of another pool".to_string());
    }
    if usize::from(label.number) != number {
        return Err(format!(
            "it is labelled drive {} of this pool, not drive {number}: check the order of the --drive list",
            label.number
        ));
    }
    if label.kind != kind {
        return Err(format!("it is labelled as a {:?} drive", label.kind));
    }
    Ok(())
}
