//! Segments in RAM: the open segment frames are appended to, and sealed
//! segments waiting for their one write to flash.
//!
//! A segment fills a slot of the flash: header page, frames from offset
//! [`PAGE`], then the summary (see `strata_common::ondisk::segment`). It is
//! built whole in an aligned buffer so the flash sees one sequential write.

use strata_common::fingerprint::Fingerprint;
use strata_common::ondisk::{
    encode_summary, round_up_page, EntryKind, SegmentHeader, SummaryEntry, PAGE, SUMMARY_ENTRY_LEN,
};

use crate::engine::buffers::AlignedBuf;

/// Where a frame or map node lives: a slot and a byte range in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    /// The segment slot.
    pub slot: u32,
    /// Byte offset from the slot's start.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// The segment being filled.
pub struct OpenSegment {
    slot: u32,
    seq: u64,
    buf: AlignedBuf,
    frames_end: usize,
    entries: Vec<SummaryEntry>,
}

impl OpenSegment {
    /// An empty segment for `slot`, numbered `seq`, of `size` bytes.
    pub fn new(slot: u32, seq: u64, size: usize) -> OpenSegment {
        OpenSegment {
            slot,
            seq,
            buf: AlignedBuf::new(size, PAGE),
            frames_end: PAGE,
            entries: Vec::new(),
        }
    }

    /// The segment's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether nothing has been appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an entry of `len` bytes still fits, with its summary entry.
    pub fn fits(&self, len: usize) -> bool {
        self.frames_end + len + (self.entries.len() + 1) * SUMMARY_ENTRY_LEN
            <= self.buf.as_slice().len()
    }

    /// Appends `bytes` as an entry of `kind` named `fingerprint`. The caller
    /// checked [`OpenSegment::fits`].
    pub fn append(&mut self, fingerprint: Fingerprint, kind: EntryKind, bytes: &[u8]) -> Location {
        let offset = self.frames_end;
        self.buf.as_mut_slice()[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.frames_end += bytes.len();
        // Offsets and lengths fit u32: a slot is at most u32::MAX bytes.
        let entry = SummaryEntry {
            fingerprint,
            kind,
            offset: offset as u32,
            len: bytes.len() as u32,
        };
        self.entries.push(entry);
        Location {
            slot: self.slot,
            offset: entry.offset,
            len: entry.len,
        }
    }

    /// The bytes at `location`, if it is in this segment.
    pub fn bytes(&self, location: &Location) -> Option<&[u8]> {
        (location.slot == self.slot).then(|| range(self.buf.as_slice(), location))
    }

    /// Writes the summary and header into the buffer: the segment is ready
    /// for its one write.
    pub fn seal(mut self, store_id: &[u8; 16]) -> SealedSegment {
        let mut summary = Vec::with_capacity(self.entries.len() * SUMMARY_ENTRY_LEN);
        encode_summary(&self.entries, &mut summary);
        let header = SegmentHeader {
            seq: self.seq,
            frames_len: (self.frames_end - PAGE) as u32,
            entry_count: self.entries.len() as u32,
            summary_checksum: xxhash_rust::xxh3::xxh3_64(&summary),
        };
        let buf = self.buf.as_mut_slice();
        buf[self.frames_end..self.frames_end + summary.len()].copy_from_slice(&summary);
        let head = header.encode(store_id);
        buf[..head.len()].copy_from_slice(&head);
        let used = round_up_page(self.frames_end + summary.len());
        SealedSegment {
            slot: self.slot,
            buf: self.buf,
            used,
        }
    }
}

/// A full segment waiting to be written; reads are served from it meanwhile.
pub struct SealedSegment {
    /// Its slot.
    pub slot: u32,
    buf: AlignedBuf,
    used: usize,
}

impl SealedSegment {
    /// What goes to flash: the used part, rounded up to a page.
    pub fn image(&self) -> &[u8] {
        &self.buf.as_slice()[..self.used]
    }

    /// The bytes at `location` (which must be in this segment).
    pub fn bytes(&self, location: &Location) -> &[u8] {
        range(self.buf.as_slice(), location)
    }
}

fn range<'a>(buf: &'a [u8], location: &Location) -> &'a [u8] {
    let start = location.offset as usize;
    &buf[start..start + location.len as usize]
}
