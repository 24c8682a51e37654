//! Segments in RAM: the open segment frames are appended to, and sealed
//! segments waiting for their one write to flash.
//!
//! A segment fills a slot of the flash: header page, frames from offset
//! [`PAGE`], then the summary (see `strata_common::ondisk::segment`). It is
//! built whole in an aligned buffer so the flash sees one sequential write.

use std::ops::Range;

use strata_common::fingerprint::Fingerprint;
use strata_common::frame::{
    join_split, split_uncompressed, SplitTail, MAX_FRAME_LEN, SPLIT_TAIL_LEN,
};
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
    /// Length in bytes of what is stored there.
    pub len: u32,
    /// For an uncompressed frame stored split, its tag and checksum: the
    /// range then holds only the frame's 4096 ciphertext bytes, on a page
    /// boundary (see `strata_common::ondisk::segment`).
    pub tail: Option<SplitTail>,
}

impl Location {
    /// The whole entry, from the bytes stored at this location: the frame
    /// rejoined when it is stored split.
    pub fn entry_from(&self, fingerprint: &Fingerprint, stored: &[u8]) -> Vec<u8> {
        match &self.tail {
            Some(tail) => join_split(fingerprint, stored, tail),
            None => stored.to_vec(),
        }
    }

    /// Length of the whole entry.
    pub fn entry_len(&self) -> usize {
        match self.tail {
            Some(_) => MAX_FRAME_LEN,
            None => self.len as usize,
        }
    }

    /// Bytes the entry takes in its segment, its summary entries (and tail)
    /// included; not the alignment a body may have skipped.
    pub fn flash_len(&self) -> u64 {
        let tail = match self.tail {
            Some(_) => SPLIT_TAIL_LEN + SUMMARY_ENTRY_LEN,
            None => 0,
        };
        u64::from(self.len) + (SUMMARY_ENTRY_LEN + tail) as u64
    }
}

/// The most room an entry of `len` bytes can take in an open segment: with
/// its summary entry and, for an uncompressed frame, which is stored split,
/// its tail and what its body may skip to a page boundary.
pub fn worst_case_room(len: usize) -> usize {
    let split = match len {
        MAX_FRAME_LEN => MAX_SPLIT_SKIP + SPLIT_TAIL_LEN + SUMMARY_ENTRY_LEN,
        _ => 0,
    };
    len + SUMMARY_ENTRY_LEN + split
}

/// The most bytes a split frame's body skips to reach a page boundary:
/// when more would be skipped (small entries came before it), the frame is
/// stored whole, taking no more flash than before split frames existed.
/// Whole frames shift the end by 72 bytes each, so frames are split again
/// within a few dozen. A split frame thus costs at most a quarter page of
/// flash more than a whole one, and later small entries may fill even that.
pub const MAX_SPLIT_SKIP: usize = PAGE / 4;

/// Where an entry goes in the open segment.
enum Placement<'a> {
    /// An uncompressed frame, split: its body at `offset`, a page boundary.
    Split {
        offset: usize,
        body: &'a [u8],
        tail: SplitTail,
    },
    /// Whole, in the hole a body's alignment left.
    Hole,
    /// Whole, at the end.
    End,
}

/// The segment being filled.
///
/// Small entries are packed one after another; the body of a split frame
/// goes on the next page boundary, and the bytes that skips are kept as a
/// hole later small entries fill. Tails are written at sealing, just
/// before the summary.
pub struct OpenSegment {
    slot: u32,
    seq: u64,
    buf: AlignedBuf,
    frames_end: usize,
    /// Free bytes below `frames_end` that the last body's alignment left.
    hole: Range<usize>,
    entries: Vec<SummaryEntry>,
    /// Split frames whose tails are still to be written.
    tails: Vec<(Fingerprint, SplitTail)>,
}

impl OpenSegment {
    /// An empty segment for `slot`, numbered `seq`, of `size` bytes.
    pub fn new(slot: u32, seq: u64, size: usize) -> OpenSegment {
        OpenSegment {
            slot,
            seq,
            buf: AlignedBuf::new(size, PAGE),
            frames_end: PAGE,
            hole: PAGE..PAGE,
            entries: Vec::new(),
            tails: Vec::new(),
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

    /// Whether `bytes`, appended as an entry of `kind`, still fit, with
    /// their summary entries and tail.
    pub fn fits(&self, kind: EntryKind, bytes: &[u8]) -> bool {
        match self.placement(kind, bytes) {
            Placement::Split { offset, body, .. } => self.ends_within(offset + body.len(), 1),
            Placement::Hole => self.ends_within(self.frames_end, 0),
            Placement::End => self.ends_within(self.frames_end + bytes.len(), 0),
        }
    }

    /// Where `bytes`, an entry of `kind`, go. An uncompressed frame is split
    /// if its body skips at most [`MAX_SPLIT_SKIP`] bytes to the next page
    /// boundary, else stored whole like any other entry: in the hole if it
    /// fits there, else at the end.
    fn placement<'a>(&self, kind: EntryKind, bytes: &'a [u8]) -> Placement<'a> {
        let offset = round_up_page(self.frames_end);
        match split(kind, bytes) {
            Some((body, tail)) if offset - self.frames_end <= MAX_SPLIT_SKIP => {
                Placement::Split { offset, body, tail }
            }
            _ if bytes.len() <= self.hole.len() => Placement::Hole,
            _ => Placement::End,
        }
    }

    /// Whether entries needing `room` bytes at most (the sum of their
    /// [`worst_case_room`]) still fit.
    pub fn has_room(&self, room: usize) -> bool {
        self.ends_within(self.frames_end + room, 0)
    }

    /// Whether a segment whose entries end at `end`, with `new_tails` more
    /// split frames and one more summary entry, fits its slot.
    fn ends_within(&self, end: usize, new_tails: usize) -> bool {
        let tails = self.tails.len() + new_tails;
        end + tails * (SPLIT_TAIL_LEN + SUMMARY_ENTRY_LEN)
            + (self.entries.len() + 1) * SUMMARY_ENTRY_LEN
            <= self.buf.as_slice().len()
    }

    /// Appends `bytes` as an entry of `kind` named `fingerprint`: an
    /// uncompressed frame split, anything else whole. The caller checked
    /// [`OpenSegment::fits`].
    pub fn append(&mut self, fingerprint: Fingerprint, kind: EntryKind, bytes: &[u8]) -> Location {
        match self.placement(kind, bytes) {
            Placement::Split { offset, body, tail } => {
                if offset > self.frames_end {
                    self.hole = self.frames_end..offset;
                }
                self.frames_end = offset;
                let mut location = self.place(fingerprint, EntryKind::FrameBody, body);
                self.tails.push((fingerprint, tail));
                location.tail = Some(tail);
                location
            }
            Placement::Hole => {
                let offset = self.hole.start;
                self.hole.start += bytes.len();
                self.put(offset, fingerprint, kind, bytes)
            }
            Placement::End => self.place(fingerprint, kind, bytes),
        }
    }

    /// Appends `bytes` at the end as an entry of `kind`.
    fn place(&mut self, fingerprint: Fingerprint, kind: EntryKind, bytes: &[u8]) -> Location {
        let offset = self.frames_end;
        self.frames_end += bytes.len();
        self.put(offset, fingerprint, kind, bytes)
    }

    /// Writes `bytes` at `offset` as an entry of `kind`.
    fn put(
        &mut self,
        offset: usize,
        fingerprint: Fingerprint,
        kind: EntryKind,
        bytes: &[u8],
    ) -> Location {
        self.buf.as_mut_slice()[offset..offset + bytes.len()].copy_from_slice(bytes);
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
            tail: None,
        }
    }

    /// The whole entry `fingerprint` at `location`, if it is in this segment.
    pub fn entry(&self, fingerprint: &Fingerprint, location: &Location) -> Option<Vec<u8>> {
        (location.slot == self.slot).then(|| entry(self.buf.as_slice(), fingerprint, location))
    }

    /// Writes the tails, the summary and the header into the buffer: the
    /// segment is ready for its one write.
    pub fn seal(mut self, store_id: &[u8; 16]) -> SealedSegment {
        for (fingerprint, tail) in std::mem::take(&mut self.tails) {
            self.place(fingerprint, EntryKind::FrameTail, &tail);
        }
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

    /// The whole entry `fingerprint` at `location` (which must be in this
    /// segment).
    pub fn entry(&self, fingerprint: &Fingerprint, location: &Location) -> Vec<u8> {
        entry(self.buf.as_slice(), fingerprint, location)
    }
}

/// An uncompressed frame appended as a frame, taken apart for storing split.
fn split(kind: EntryKind, bytes: &[u8]) -> Option<(&[u8], SplitTail)> {
    (kind == EntryKind::Frame)
        .then(|| split_uncompressed(bytes))
        .flatten()
}

fn entry(buf: &[u8], fingerprint: &Fingerprint, location: &Location) -> Vec<u8> {
    let start = location.offset as usize;
    location.entry_from(fingerprint, &buf[start..start + location.len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strata_common::fingerprint::BLOCK_SIZE;
    use strata_common::frame::{Encoded, FrameCodec, FrameKeys};
    use strata_common::ondisk::{decode_summary, SEGMENT_HEADER_LEN};

    const STORE: [u8; 16] = [7; 16];
    const SIZE: usize = 16 * PAGE;

    /// A frame of a block that compresses (`text`) or does not.
    fn frame(codec: &FrameCodec, seed: u32, text: bool) -> (Fingerprint, Vec<u8>) {
        let mut block = [0u8; BLOCK_SIZE];
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        for (i, b) in block.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = if text {
                b"strata "[i % 7] ^ (seed as u8 & 1)
            } else {
                x as u8
            };
        }
        if text {
            block[..4].copy_from_slice(&seed.to_le_bytes());
        }
        let mut out = Vec::new();
        match codec.encode(&block, &mut out) {
            Ok(Encoded::Frame(fp)) => (fp, out),
            other => panic!("not a frame: {other:?}"),
        }
    }

    /// Appends while they fit, seals, and checks that the sealed image
    /// decodes and gives every entry back, whole, from RAM and from its
    /// stored bytes.
    fn fill_and_check(kinds: &[u8]) {
        let codec = FrameCodec::new(&FrameKeys {
            data_key: [1; 32],
            dedupe_key: [2; 32],
        });
        let mut open = OpenSegment::new(3, 9, SIZE);
        let mut placed = Vec::new();
        for (i, k) in kinds.iter().cycle().take(200).enumerate() {
            let (fp, bytes, kind) = match k % 3 {
                0 => {
                    let (fp, f) = frame(&codec, i as u32, false);
                    (fp, f, EntryKind::Frame)
                }
                1 => {
                    let (fp, f) = frame(&codec, i as u32, true);
                    (fp, f, EntryKind::Frame)
                }
                _ => {
                    let len = 100 + usize::from(*k) * 13;
                    let mut id = [0u8; 32];
                    id[..4].copy_from_slice(&(i as u32).to_le_bytes());
                    id[31] = 0xaa;
                    (
                        Fingerprint::from_bytes(id),
                        vec![*k; len],
                        EntryKind::MapNode,
                    )
                }
            };
            if !open.fits(kind, &bytes) {
                break;
            }
            let location = open.append(fp, kind, &bytes);
            let uncompressed = kind == EntryKind::Frame && bytes.len() == MAX_FRAME_LEN;
            if location.tail.is_some() {
                assert!(uncompressed, "only uncompressed frames split");
                assert_eq!(
                    location.offset as usize % PAGE,
                    0,
                    "a body off a page boundary"
                );
                assert_eq!(location.len as usize, BLOCK_SIZE);
            } else if kinds.iter().all(|k| k % 3 == 0) {
                panic!("uncompressed frames back to back must all split");
            }
            assert_eq!(open.entry(&fp, &location).as_deref(), Some(&bytes[..]));
            placed.push((fp, bytes, location));
        }
        assert!(!placed.is_empty());
        let sealed = open.seal(&STORE);
        let image = sealed.image();
        assert!(image.len() <= SIZE);
        let header = SegmentHeader::decode(&image[..SEGMENT_HEADER_LEN], &STORE, SIZE as u32)
            .expect("the sealed header decodes");
        let entries = decode_summary(&image[header.summary_range()], &header)
            .expect("the sealed summary decodes");
        // No two entries overlap.
        let mut ranges: Vec<_> = entries
            .iter()
            .map(|e| (e.offset, e.offset + e.len))
            .collect();
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].1 <= w[1].0),
            "entries overlap"
        );
        for (fp, bytes, location) in &placed {
            assert_eq!(&sealed.entry(fp, location), bytes);
            let at = location.offset as usize;
            let stored = &image[at..at + location.len as usize];
            assert_eq!(&location.entry_from(fp, stored), bytes);
            if let Some(tail) = location.tail {
                let tail_entry = entries
                    .iter()
                    .find(|e| e.kind == EntryKind::FrameTail && e.fingerprint == *fp)
                    .expect("every body has its tail in the summary");
                let t = tail_entry.offset as usize;
                assert_eq!(&image[t..t + SPLIT_TAIL_LEN], &tail[..]);
            }
        }
        let splits = placed.iter().filter(|p| p.2.tail.is_some()).count();
        assert_eq!(entries.len(), placed.len() + splits);
        // Against the same entries stored whole, splitting costs at most a
        // quarter page per split frame.
        let whole: usize = placed.iter().map(|p| p.1.len() + SUMMARY_ENTRY_LEN).sum();
        let used = header.frames_len as usize + entries.len() * SUMMARY_ENTRY_LEN;
        assert!(
            used <= whole + splits * (PAGE / 4),
            "{used} bytes where whole entries take {whole}, with {splits} split"
        );
    }

    #[test]
    fn split_frames_pack_with_whole_entries_and_seal_within_the_slot() {
        fill_and_check(&[0]);
        fill_and_check(&[1]);
        fill_and_check(&[0, 1]);
        fill_and_check(&[1, 2, 0, 0, 1]);
        fill_and_check(&[2, 0, 2, 1, 1, 0]);
    }

    proptest! {
        #[test]
        fn any_mix_of_entries_fills_and_seals_soundly(kinds in proptest::collection::vec(any::<u8>(), 1..40)) {
            fill_and_check(&kinds);
        }
    }
}
