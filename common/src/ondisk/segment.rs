//! Segments: what one segment slot holds.
//!
//! A slot is written once, in one write of [`SegmentHeader::used_len`]
//! bytes (the used part rounded up to a page), and read back in place:
//!
//! ```text
//! 0        PAGE                 PAGE + F               PAGE + F + 41 E     used_len   slot end
//! | header | frames and nodes   | summary: E entries   | zero padding      | unused   |
//! ```
//!
//! `F` is the header's frames length, `E` its entry count. The frames area
//! holds frames ([`crate::frame`]) and map nodes ([`crate::map`]) packed one
//! after another; the summary names each of them with its fingerprint (or
//! node id), kind and place, so the store can rebuild its index from the
//! slots alone, and so a reader can check a frame without parsing the area.
//!
//! # Header (version 1)
//!
//! The first page of the slot; bytes after [`SEGMENT_HEADER_LEN`] are zero
//! when written and not read. All integers little-endian.
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! |      0 |    4 | magic `"STSG"` (`53 54 53 47`)                         |
//! |      4 |    1 | version, `1`                                           |
//! |      5 |    3 | reserved, zero                                         |
//! |      8 |   16 | store id                                               |
//! |     24 |    8 | sequence number, u64                                   |
//! |     32 |    4 | frames length `F`, u32                                 |
//! |     36 |    4 | entry count `E`, u32                                   |
//! |     40 |    8 | xxh3-64, seed 0, of the summary's `41 E` bytes, u64    |
//! |     48 |    8 | xxh3-64, seed 0, of header bytes `[0, 48)`, u64        |
//!
//! [`SegmentHeader::decode`] checks, in order: length; magic; version;
//! reserved bytes; the header xxh3; the store id; that
//! `PAGE + F + 41 E <= segment size`.
//!
//! # Summary entry
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |   32 | fingerprint of the frame, or id of the map node (never zero)  |
//! |     32 |    1 | kind: `1` frame, `2` map node, `3` frame body, `4` frame tail  |
//! |     33 |    4 | offset from the start of the slot, u32, `>= PAGE`              |
//! |     37 |    4 | length, u32, `1..=`[`MAX_ENTRY_LEN`]                           |
//!
//! An uncompressed frame is stored split, so that reading its block is one
//! aligned page: a *body* entry (kind 3) holds its 4096 ciphertext bytes
//! at a page-aligned offset, and a *tail* entry (kind 4) of the same
//! fingerprint its tag and checksum (24 bytes). Its header is not stored:
//! it follows from the fingerprint ([`crate::frame::join_split`]).
//!
//! [`decode_summary`] checks the length (`41 E`) and the header's summary
//! xxh3 first, then every entry: kind, fingerprint not zero, that
//! `[offset, offset + length)` lies within the frames area, that a body is
//! 4096 bytes on a page boundary and that a tail is 24 bytes. Whether every
//! body has its tail is for the reader to check.
//! Entries need not be sorted and are not checked for overlap: the frames
//! and nodes they point to carry their own checksums.

use xxhash_rust::xxh3::xxh3_64;

use super::{
    check_checksum, check_store, check_trailing_checksum, OndiskError, Reader, ONDISK_VERSION,
    PAGE, STORE_ID_LEN,
};
use crate::fingerprint::{Fingerprint, BLOCK_SIZE, FINGERPRINT_LEN};
use crate::frame::SPLIT_TAIL_LEN;

/// Magic bytes at the start of every segment header.
pub const SEGMENT_MAGIC: [u8; 4] = *b"STSG";

/// Bytes of the header page the header uses.
pub const SEGMENT_HEADER_LEN: usize = 56;

/// Length of one summary entry: fingerprint, kind, offset, length.
pub const SUMMARY_ENTRY_LEN: usize = FINGERPRINT_LEN + 1 + 4 + 4;

/// The longest thing a summary entry may point to: the longer of a frame
/// ([`crate::frame::MAX_FRAME_LEN`]) and a map node
/// ([`crate::map::MAX_NODE_LEN`]).
pub const MAX_ENTRY_LEN: u32 = {
    let frame = crate::frame::MAX_FRAME_LEN;
    let node = crate::map::MAX_NODE_LEN;
    let max = if frame > node { frame } else { node };
    assert!(max <= u32::MAX as usize);
    max as u32
};

/// Offset of the header checksum (it covers the bytes before it).
const HEADER_CHECKSUM_OFF: usize = SEGMENT_HEADER_LEN - super::CHECKSUM_LEN;

const WHAT: &str = "segment header";
const SUMMARY: &str = "summary";

/// What a summary entry points to.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A frame ([`crate::frame`]), named by its block's fingerprint.
    Frame = 1,
    /// A map node ([`crate::map`]), named by its node id.
    MapNode = 2,
    /// The 4096 ciphertext bytes of an uncompressed frame stored split
    /// ([`crate::frame::split_uncompressed`]), page-aligned, named by its
    /// block's fingerprint; its tail is a [`EntryKind::FrameTail`] entry of
    /// the same segment and fingerprint.
    FrameBody = 3,
    /// The tag and checksum of a split frame
    /// ([`crate::frame::SPLIT_TAIL_LEN`] bytes).
    FrameTail = 4,
}

impl EntryKind {
    /// The kind a byte names, if any.
    pub fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            1 => Some(EntryKind::Frame),
            2 => Some(EntryKind::MapNode),
            3 => Some(EntryKind::FrameBody),
            4 => Some(EntryKind::FrameTail),
            _ => None,
        }
    }
}

/// One entry of a segment's summary: a frame or map node in the frames area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryEntry {
    /// The frame's block fingerprint, or the map node's id. Never zero.
    pub fingerprint: Fingerprint,
    /// Frame or map node.
    pub kind: EntryKind,
    /// Offset from the start of the slot (so at least [`PAGE`]).
    pub offset: u32,
    /// Length in bytes, `1..=`[`MAX_ENTRY_LEN`].
    pub len: u32,
}

/// A segment's header: the first page of its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number: segments written later have higher ones.
    pub seq: u64,
    /// Length of the frames area, which starts at offset [`PAGE`].
    pub frames_len: u32,
    /// Number of summary entries.
    pub entry_count: u32,
    /// xxh3-64 of the summary bytes.
    pub summary_checksum: u64,
}

impl SegmentHeader {
    /// The header's bytes for the store `store_id`. Write them at the start
    /// of the slot's first page, the rest of which is zero.
    pub fn encode(&self, store_id: &[u8; STORE_ID_LEN]) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0..4].copy_from_slice(&SEGMENT_MAGIC);
        h[4] = ONDISK_VERSION;
        h[8..24].copy_from_slice(store_id);
        h[24..32].copy_from_slice(&self.seq.to_le_bytes());
        h[32..36].copy_from_slice(&self.frames_len.to_le_bytes());
        h[36..40].copy_from_slice(&self.entry_count.to_le_bytes());
        h[40..48].copy_from_slice(&self.summary_checksum.to_le_bytes());
        let sum = xxh3_64(&h[..HEADER_CHECKSUM_OFF]);
        h[HEADER_CHECKSUM_OFF..].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Parses and checks a header (see the [module docs](self)) of the store
    /// `store_id` in a slot of `segment_size` bytes. `bytes` starts at the
    /// slot and may be longer than the header (the whole page, say).
    pub fn decode(
        bytes: &[u8],
        store_id: &[u8; STORE_ID_LEN],
        segment_size: u32,
    ) -> Result<SegmentHeader, OndiskError> {
        let h = bytes
            .get(..SEGMENT_HEADER_LEN)
            .ok_or(OndiskError::Truncated {
                what: WHAT,
                at: 0,
                need: SEGMENT_HEADER_LEN,
                have: bytes.len(),
            })?;
        let mut r = Reader::new(h, WHAT);
        super::check_magic_version(&mut r, SEGMENT_MAGIC, ONDISK_VERSION)?;
        r.zeros(3)?;
        check_trailing_checksum(WHAT, h)?;
        check_store(WHAT, store_id, r.array()?)?;
        let header = SegmentHeader {
            seq: r.u64()?,
            frames_len: r.u32()?,
            entry_count: r.u32()?,
            summary_checksum: r.u64()?,
        };
        let end = (PAGE as u64)
            + u64::from(header.frames_len)
            + u64::from(header.entry_count) * SUMMARY_ENTRY_LEN as u64;
        if end > u64::from(segment_size) {
            return Err(OndiskError::SegmentOverflow {
                frames_len: header.frames_len,
                entry_count: header.entry_count,
                segment_size,
            });
        }
        Ok(header)
    }

    /// The byte range of the frames area within the slot.
    pub fn frames_range(&self) -> std::ops::Range<usize> {
        PAGE..PAGE + self.frames_len as usize
    }

    /// The byte range of the summary within the slot.
    pub fn summary_range(&self) -> std::ops::Range<usize> {
        let start = PAGE + self.frames_len as usize;
        start..start + self.entry_count as usize * SUMMARY_ENTRY_LEN
    }

    /// Bytes of the slot the segment uses: the end of the summary rounded up
    /// to a page. The segment is written as one write of this length.
    pub fn used_len(&self) -> usize {
        super::round_up_page(self.summary_range().end)
    }
}

/// Appends the summary of `entries` to `out` (`entries.len() *`
/// [`SUMMARY_ENTRY_LEN`] bytes). Its xxh3-64 is the header's
/// `summary_checksum`.
pub fn encode_summary(entries: &[SummaryEntry], out: &mut Vec<u8>) {
    out.reserve(entries.len() * SUMMARY_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(e.fingerprint.as_bytes());
        out.push(e.kind as u8);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
}

/// Parses and checks the summary of the segment whose header is `header`
/// (see the [module docs](self)). `bytes` must be exactly the summary: the
/// slot's bytes in [`SegmentHeader::summary_range`].
pub fn decode_summary(
    bytes: &[u8],
    header: &SegmentHeader,
) -> Result<Vec<SummaryEntry>, OndiskError> {
    let expected = (header.entry_count as usize).checked_mul(SUMMARY_ENTRY_LEN);
    if expected != Some(bytes.len()) {
        return Err(OndiskError::LengthMismatch {
            what: SUMMARY,
            expected: expected.unwrap_or(usize::MAX),
            actual: bytes.len(),
        });
    }
    check_checksum(SUMMARY, header.summary_checksum, xxh3_64(bytes))?;
    let frames_end = PAGE as u64 + u64::from(header.frames_len);
    // The length was checked against the count: this reserves no more than
    // the input justifies.
    let mut entries = Vec::with_capacity(bytes.len() / SUMMARY_ENTRY_LEN);
    let mut r = Reader::new(bytes, SUMMARY);
    for index in 0..header.entry_count as usize {
        let fingerprint = Fingerprint::from_bytes(r.array()?);
        let kind_byte = r.u8()?;
        let offset = r.u32()?;
        let len = r.u32()?;
        let kind = EntryKind::from_u8(kind_byte).ok_or(OndiskError::UnknownEntryKind {
            index,
            found: kind_byte,
        })?;
        let bad = |reason| OndiskError::BadEntry {
            index,
            offset,
            len,
            reason,
        };
        if fingerprint.is_zero() {
            return Err(bad("zero fingerprint"));
        }
        if (offset as usize) < PAGE {
            return Err(bad("offset inside the header page"));
        }
        if len == 0 {
            return Err(bad("empty"));
        }
        if len > MAX_ENTRY_LEN {
            return Err(bad("longer than any frame or map node"));
        }
        if u64::from(offset) + u64::from(len) > frames_end {
            return Err(bad("ends past the frames area"));
        }
        match kind {
            EntryKind::FrameBody if len as usize != BLOCK_SIZE => {
                return Err(bad("a frame body is not one block long"))
            }
            EntryKind::FrameBody if !(offset as usize).is_multiple_of(PAGE) => {
                return Err(bad("a frame body not on a page boundary"))
            }
            EntryKind::FrameTail if len as usize != SPLIT_TAIL_LEN => {
                return Err(bad("a frame tail of the wrong length"))
            }
            _ => {}
        }
        entries.push(SummaryEntry {
            fingerprint,
            kind,
            offset,
            len,
        });
    }
    Ok(entries)
}
