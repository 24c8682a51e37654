//! The byte-level format of the host's flash store: what every page of the
//! flash device holds, and the codecs that write and check it.
//!
//! The flash is split into three areas, each a whole number of [`PAGE`]s:
//!
//! ```text
//! 0          PAGE                                               device end
//! | superblock | ... | journal ring | ... | slot 0 | slot 1 | ... | slot N-1 |
//! ```
//!
//! * **Superblock** ([`superblock`]): page 0. The store's random id, its
//!   datastore name and where the other two areas are.
//! * **Journal ring** ([`journal`]): a ring of *records*, each starting on a
//!   page boundary: *batch* records (frames and map updates, written before
//!   a write is acknowledged) and *checkpoint* records (every vdisk's map
//!   root, after which older batches need no replay).
//! * **Segment slots** ([`segment`]): equal-sized slots, each holding one
//!   *segment* written in one go: a header page, the frames and map nodes
//!   packed one after another, and a summary naming each of them.
//!
//! All integers are little-endian, every checksum is xxh3-64 with seed 0,
//! every structure carries a magic, a version (1) and, except the superblock
//! that defines it, the store id, so a stale record or segment left by an
//! earlier format of the same device is never taken for a live one.
//!
//! Every decoder here is total: any byte input gives a value or an
//! [`OndiskError`] saying what is wrong and where, never a panic; and no
//! decoder allocates more than its input's length justifies (counts are
//! checked against the bytes remaining before anything is reserved).

pub mod journal;
pub mod segment;
pub mod superblock;

#[cfg(test)]
mod tests;

pub use journal::{
    decode_batch, decode_record_header, encode_record, record_len, verify_record, BatchBuilder,
    BatchItem, Checkpoint, RecordHeader, RecordKind, VdiskRoot, RECORD_HEADER_LEN, RECORD_MAGIC,
};
pub use segment::{
    decode_summary, encode_summary, EntryKind, SegmentHeader, SummaryEntry, MAX_ENTRY_LEN,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SUMMARY_ENTRY_LEN,
};
pub use superblock::{Superblock, SUPERBLOCK_MAGIC, SUPERBLOCK_VERSION};

/// The alignment unit of everything on flash: every area, slot, record and
/// write starts on a multiple of it and is a multiple of it long.
pub const PAGE: usize = 4096;

/// The on-flash format version every structure here writes and reads.
pub const ONDISK_VERSION: u8 = 1;

/// Length of every xxh3-64 checksum.
pub const CHECKSUM_LEN: usize = 8;

/// Length of the store id.
pub const STORE_ID_LEN: usize = 16;

/// `n` rounded up to the next multiple of [`PAGE`] (`n` itself if it is one).
///
/// `n` must be at most `usize::MAX - (PAGE - 1)`; every length on flash is
/// far below that (they are bounded by `u32` fields), and the decoders here
/// only call it on such lengths.
pub fn round_up_page(n: usize) -> usize {
    n.next_multiple_of(PAGE)
}

/// Why bytes read from flash are not a valid on-flash structure. `what`
/// fields name the structure ("superblock", "segment header", "summary",
/// "record", "batch", "checkpoint"); `at` fields are byte offsets within the
/// input given to the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OndiskError {
    /// The input ends before the structure does.
    #[error("{what} truncated at offset {at}: needs {need} bytes there, {have} remain")]
    Truncated {
        /// The structure or field being read.
        what: &'static str,
        /// Offset where the field starts.
        at: usize,
        /// Bytes the field needs from there.
        need: usize,
        /// Bytes the input has from there.
        have: usize,
    },
    /// The input is not exactly as long as the structure says.
    #[error("{what} is {actual} bytes, expected {expected}")]
    LengthMismatch {
        /// The structure.
        what: &'static str,
        /// The length it should have.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The magic bytes are wrong: not this kind of structure.
    #[error("bad {what} magic {found:02x?}")]
    BadMagic {
        /// The structure.
        what: &'static str,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A format version this code does not read.
    #[error("unsupported {what} version {found} (this code reads 1 to {newest})")]
    UnsupportedVersion {
        /// The structure.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The newest version of the structure this code reads.
        newest: u8,
    },
    /// A reserved or padding byte that must be zero is not.
    #[error("{what} byte at offset {at} is {found:#04x}, must be zero")]
    NonZeroReserved {
        /// The structure.
        what: &'static str,
        /// Offset of the first non-zero byte.
        at: usize,
        /// Its value.
        found: u8,
    },
    /// The xxh3 does not match: the bytes are damaged (or torn).
    #[error("{what} checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChecksumMismatch {
        /// The structure (or, for a summary, the bytes it covers).
        what: &'static str,
        /// The checksum stored.
        stored: u64,
        /// The checksum of the bytes.
        computed: u64,
    },
    /// The structure is intact but belongs to another store (a stale one
    /// from an earlier format of the device, or another device).
    #[error("{what} belongs to store {found:02x?}, this store is {expected:02x?}")]
    WrongStore {
        /// The structure.
        what: &'static str,
        /// This store's id.
        expected: [u8; STORE_ID_LEN],
        /// The id it carries.
        found: [u8; STORE_ID_LEN],
    },
    /// A superblock field that must be a multiple of [`PAGE`] is not.
    #[error("superblock {field} = {value} is not a multiple of {PAGE}")]
    Misaligned {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A superblock field is out of range.
    #[error("superblock {field} = {value} invalid: {reason}")]
    BadGeometry {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two areas of the flash overlap.
    #[error("superblock areas overlap: {first} [{first_start}, {first_end}) and {second} [{second_start}, {second_end})")]
    Overlap {
        /// The first area.
        first: &'static str,
        /// Its first byte.
        first_start: u64,
        /// One past its last byte.
        first_end: u64,
        /// The second area.
        second: &'static str,
        /// Its first byte.
        second_start: u64,
        /// One past its last byte.
        second_end: u64,
    },
    /// A name (datastore or vdisk) is empty, too long or not UTF-8.
    #[error("{what} name at offset {at} invalid: {reason}")]
    BadName {
        /// Whose name.
        what: &'static str,
        /// Offset of its length byte (0 when found by a `validate`).
        at: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A segment header's frames and summary do not fit in its slot.
    #[error(
        "segment with {frames_len} frame bytes and {entry_count} summary entries does not fit \
         a {segment_size}-byte slot"
    )]
    SegmentOverflow {
        /// Frames area length from the header.
        frames_len: u32,
        /// Entry count from the header.
        entry_count: u32,
        /// The slot size.
        segment_size: u32,
    },
    /// A summary entry of an unknown kind.
    #[error("summary entry {index} has unknown kind {found}")]
    UnknownEntryKind {
        /// Index of the entry.
        index: usize,
        /// The kind byte found.
        found: u8,
    },
    /// A summary entry whose place is impossible.
    #[error("summary entry {index} (offset {offset}, len {len}) invalid: {reason}")]
    BadEntry {
        /// Index of the entry.
        index: usize,
        /// Its offset from the start of the slot.
        offset: u32,
        /// Its length.
        len: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A journal record of an unknown kind.
    #[error("record has unknown kind {found}")]
    UnknownRecordKind {
        /// The kind byte found.
        found: u8,
    },
    /// A batch item with an unknown tag.
    #[error("batch item at offset {at} has unknown tag {found}")]
    UnknownBatchTag {
        /// Offset of the tag byte in the body.
        at: usize,
        /// The tag found.
        found: u8,
    },
    /// A batch item whose fields are impossible.
    #[error("batch item at offset {at} invalid: {reason} ({value})")]
    BadBatchItem {
        /// Offset of the item's tag byte in the body.
        at: usize,
        /// What is wrong with it.
        reason: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A checkpoint's vdisk count exceeds what its bytes can hold.
    #[error("checkpoint claims {count} vdisks, its {have} remaining bytes hold at most {max}")]
    BadVdiskCount {
        /// The count found.
        count: u32,
        /// Bytes after the count.
        have: usize,
        /// The most vdisks those bytes could hold.
        max: usize,
    },
    /// Two vdisks of a checkpoint share an id.
    #[error("checkpoint lists vdisk id {id} twice (second at offset {at})")]
    DuplicateVdiskId {
        /// The id.
        id: u32,
        /// Offset of the second entry (0 when found by `validate`).
        at: usize,
    },
    /// Two vdisks of a checkpoint share a name.
    #[error("checkpoint lists vdisk name {name:?} twice (second at offset {at})")]
    DuplicateVdiskName {
        /// The name.
        name: String,
        /// Offset of the second entry (0 when found by `validate`).
        at: usize,
    },
    /// Bytes left after the last item of a structure that must end there.
    #[error("{what} has {extra} trailing bytes at offset {at}")]
    TrailingBytes {
        /// The structure.
        what: &'static str,
        /// Offset of the first extra byte.
        at: usize,
        /// How many there are.
        extra: usize,
    },
}

/// A bounds-checked little-endian reader over an input slice: every read
/// either returns the bytes or a [`OndiskError::Truncated`] naming `what`
/// and the offset, never panics.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`, reporting errors as `what`.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    /// Offset of the next byte to read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], OndiskError> {
        let have = self.remaining();
        if n > have {
            return Err(OndiskError::Truncated {
                what: self.what,
                at: self.pos,
                need: n,
                have,
            });
        }
        let start = self.pos;
        self.pos += n;
        self.buf.get(start..self.pos).ok_or(OndiskError::Truncated {
            what: self.what,
            at: start,
            need: n,
            have,
        })
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], OndiskError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// The next byte.
    pub(crate) fn u8(&mut self) -> Result<u8, OndiskError> {
        Ok(self.array::<1>()?[0])
    }

    /// The next little-endian u32.
    pub(crate) fn u32(&mut self) -> Result<u32, OndiskError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The next little-endian u64.
    pub(crate) fn u64(&mut self) -> Result<u64, OndiskError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads `n` bytes that must all be zero.
    pub(crate) fn zeros(&mut self, n: usize) -> Result<(), OndiskError> {
        let at = self.pos;
        let b = self.bytes(n)?;
        check_zero(self.what, at, b)
    }
}

/// Checks that every byte of `bytes` (found at offset `at` of a `what`) is
/// zero.
pub(crate) fn check_zero(what: &'static str, at: usize, bytes: &[u8]) -> Result<(), OndiskError> {
    match bytes.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(OndiskError::NonZeroReserved {
            what,
            at: at + i,
            found: bytes[i],
        }),
    }
}

/// Checks the magic and version at the start of a structure whose
/// versions run from 1 to `newest`; returns the version.
pub(crate) fn check_magic_version(
    r: &mut Reader<'_>,
    magic: [u8; 4],
    newest: u8,
) -> Result<u8, OndiskError> {
    let found: [u8; 4] = r.array()?;
    if found != magic {
        return Err(OndiskError::BadMagic {
            what: r.what,
            found,
        });
    }
    let version = r.u8()?;
    if !(1..=newest).contains(&version) {
        return Err(OndiskError::UnsupportedVersion {
            what: r.what,
            found: version,
            newest,
        });
    }
    Ok(version)
}

/// The xxh3 stored in the last [`CHECKSUM_LEN`] bytes of `bytes`, checked
/// against the xxh3 of the bytes before it.
pub(crate) fn check_trailing_checksum(what: &'static str, bytes: &[u8]) -> Result<(), OndiskError> {
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
        return Err(OndiskError::Truncated {
            what,
            at: 0,
            need: CHECKSUM_LEN,
            have: bytes.len(),
        });
    };
    let (covered, sum) = bytes.split_at(split);
    let mut s = [0u8; CHECKSUM_LEN];
    s.copy_from_slice(sum);
    check_checksum(
        what,
        u64::from_le_bytes(s),
        xxhash_rust::xxh3::xxh3_64(covered),
    )
}

/// [`OndiskError::ChecksumMismatch`] unless `stored == computed`.
pub(crate) fn check_checksum(
    what: &'static str,
    stored: u64,
    computed: u64,
) -> Result<(), OndiskError> {
    if stored == computed {
        Ok(())
    } else {
        Err(OndiskError::ChecksumMismatch {
            what,
            stored,
            computed,
        })
    }
}

/// Checks that a store id read from a `what` is this store's.
pub(crate) fn check_store(
    what: &'static str,
    expected: &[u8; STORE_ID_LEN],
    found: [u8; STORE_ID_LEN],
) -> Result<(), OndiskError> {
    if found == *expected {
        Ok(())
    } else {
        Err(OndiskError::WrongStore {
            what,
            expected: *expected,
            found,
        })
    }
}

/// Reads a name: a length byte then that many bytes of UTF-8, the length in
/// `1..=max`.
pub(crate) fn read_name(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<String, OndiskError> {
    let at = r.pos();
    let len = usize::from(r.u8()?);
    if len == 0 {
        return Err(OndiskError::BadName {
            what,
            at,
            reason: "empty",
        });
    }
    if len > max {
        return Err(OndiskError::BadName {
            what,
            at,
            reason: "too long",
        });
    }
    let bytes = r.bytes(len)?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(OndiskError::BadName {
            what,
            at,
            reason: "not UTF-8",
        }),
    }
}

/// Appends a name as [`read_name`] reads it. A name longer than 255 bytes is
/// cut to 255 (which every reader rejects as too long): encoders do not
/// fail, callers validate first.
pub(crate) fn write_name(out: &mut Vec<u8>, name: &str) {
    let bytes = name.as_bytes();
    let len = bytes.len().min(usize::from(u8::MAX));
    out.push(len as u8);
    out.extend_from_slice(&bytes[..len]);
}

/// Checks a name the way [`read_name`] will, for `validate` helpers.
pub(crate) fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), OndiskError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > max {
        "too long"
    } else {
        return Ok(());
    };
    Err(OndiskError::BadName {
        what,
        at: 0,
        reason,
    })
}
