//! The journal ring: where batches of new frames and map updates become
//! durable before the guest is told, and where checkpoints say how much of
//! it the segments and map roots already cover.
//!
//! Records (see `strata_common::ondisk::journal`) start on page boundaries
//! and are written in `rec_no` order, one at a time, each made durable
//! before the next. The live part runs from the oldest record a recovery
//! still needs to the write position; a checkpoint frees everything before
//! itself.

use std::collections::VecDeque;

use strata_common::ondisk::{
    decode_record_header, encode_record, record_len, verify_record, RecordHeader, RecordKind, PAGE,
};

use crate::engine::buffers::AlignedBuf;

/// Space kept free for a checkpoint, so one can always be written.
pub const CHECKPOINT_RESERVE: usize = 64 * 1024;

/// A record that recovery may still need.
#[derive(Debug, Clone, Copy)]
struct LiveRecord {
    pos: usize,
    rec_no: u64,
}

/// The ring's bookkeeping (the bytes are on flash).
#[derive(Debug)]
pub struct JournalRing {
    /// Ring length in bytes.
    len: usize,
    /// Next write position.
    tail: usize,
    live: VecDeque<LiveRecord>,
    /// The number the next record gets.
    next_rec_no: u64,
}

impl JournalRing {
    /// An empty ring of `len` bytes whose next record is `next_rec_no`.
    pub fn new(len: usize, next_rec_no: u64) -> JournalRing {
        JournalRing {
            len,
            tail: 0,
            live: VecDeque::new(),
            next_rec_no,
        }
    }

    /// The number the next record gets.
    pub fn next_rec_no(&self) -> u64 {
        self.next_rec_no
    }

    /// Bytes in use (live records and the gaps between them).
    pub fn used(&self) -> usize {
        match self.live.front() {
            None => 0,
            Some(head) if self.tail > head.pos => self.tail - head.pos,
            Some(head) => self.len - head.pos + self.tail,
        }
    }

    /// Ring length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Where a record of `len` bytes would go, keeping `reserve` bytes free
    /// after it; `None` if it does not fit now.
    pub fn place(&self, len: usize, reserve: usize) -> Option<usize> {
        let need = len + reserve;
        let Some(head) = self.live.front() else {
            return (need <= self.len).then_some(0);
        };
        if self.tail > head.pos {
            if self.tail + need <= self.len {
                Some(self.tail)
            } else if need <= head.pos {
                Some(0)
            } else {
                None
            }
        } else if self.tail < head.pos && self.tail + need <= head.pos {
            Some(self.tail)
        } else {
            None
        }
    }

    /// Notes that record `rec_no` of `len` bytes was written at `pos`.
    pub fn written(&mut self, pos: usize, len: usize) -> u64 {
        let rec_no = self.next_rec_no;
        self.live.push_back(LiveRecord { pos, rec_no });
        self.tail = pos + len;
        if self.tail == self.len {
            self.tail = 0;
        }
        self.next_rec_no += 1;
        rec_no
    }

    /// Frees every record before `rec_no` (a durable checkpoint).
    pub fn release_before(&mut self, rec_no: u64) {
        while self.live.front().is_some_and(|r| r.rec_no < rec_no) {
            self.live.pop_front();
        }
    }
}

/// Encodes one record into a page-aligned buffer ready for O_DIRECT.
pub fn record_image(kind: RecordKind, rec_no: u64, store_id: &[u8; 16], body: &[u8]) -> AlignedBuf {
    let len = record_len(body.len());
    let mut bytes = Vec::with_capacity(len);
    encode_record(kind, rec_no, store_id, body, &mut bytes);
    let mut image = AlignedBuf::new(len, PAGE);
    image.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
    image
}

/// A record found by [`scan`].
#[derive(Debug)]
pub struct FoundRecord {
    /// Its header.
    pub header: RecordHeader,
    /// Where it starts in the ring.
    pub pos: usize,
    /// Its length in the ring (page multiple).
    pub len: usize,
    /// Its body.
    pub body: Vec<u8>,
}

/// Every valid record of `store_id` in the ring image `ring`, in ring order.
/// Invalid pages (torn, stale from another store, never written) are
/// skipped a page at a time.
pub fn scan(ring: &[u8], store_id: &[u8; 16]) -> Vec<FoundRecord> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos + PAGE <= ring.len() {
        let rest = &ring[pos..];
        if decode_record_header(rest, store_id).is_err() {
            pos += PAGE;
            continue;
        }
        match verify_record(rest, store_id) {
            Ok((header, body)) => {
                let len = record_len(body.len());
                found.push(FoundRecord {
                    header,
                    pos,
                    len,
                    body: body.to_vec(),
                });
                pos += len;
            }
            Err(e) => {
                tracing::debug!(pos, error = %e, "journal: skipping an invalid record");
                pos += PAGE;
            }
        }
    }
    found
}

/// The ring after recovery: the records from `first` on (in `rec_no` order)
/// are live; the next write goes after the last of them.
pub fn recovered_ring(len: usize, live: &[&FoundRecord]) -> JournalRing {
    let next = live.last().map_or(0, |r| r.header.rec_no + 1);
    let mut ring = JournalRing::new(len, next);
    for r in live {
        ring.live.push_back(LiveRecord {
            pos: r.pos,
            rec_no: r.header.rec_no,
        });
    }
    if let Some(last) = live.last() {
        ring.tail = (last.pos + last.len) % len;
    }
    ring
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::ondisk::RECORD_HEADER_LEN;

    #[test]
    fn placement_wraps_and_respects_live_records() {
        let mut ring = JournalRing::new(10 * PAGE, 0);
        assert_eq!(ring.place(4 * PAGE, 0), Some(0));
        ring.written(0, 4 * PAGE);
        assert_eq!(ring.place(4 * PAGE, 0), Some(4 * PAGE));
        ring.written(4 * PAGE, 4 * PAGE);
        assert_eq!(ring.used(), 8 * PAGE);
        // 2 pages left at the end, none at the start: a 3-page record waits.
        assert_eq!(ring.place(3 * PAGE, 0), None);
        ring.release_before(1);
        assert_eq!(ring.used(), 4 * PAGE);
        // Wraps to the start, in front of the live record at page 4.
        assert_eq!(ring.place(3 * PAGE, 0), Some(0));
        ring.written(0, 3 * PAGE);
        assert_eq!(ring.used(), 10 * PAGE - PAGE);
        assert_eq!(ring.place(PAGE, 0), Some(3 * PAGE));
        assert_eq!(ring.place(2 * PAGE, 0), None);
        assert_eq!(ring.place(PAGE, PAGE), None, "the reserve counts");
        ring.release_before(3);
        assert_eq!(ring.used(), 0);
        assert_eq!(ring.next_rec_no(), 3);
    }

    #[test]
    fn scan_finds_written_records_and_skips_garbage() {
        let id = [7u8; 16];
        let mut ring = vec![0xa5u8; 16 * PAGE];
        let first = record_image(RecordKind::Batch, 5, &id, b"hello");
        let second = record_image(RecordKind::Checkpoint, 6, &id, &[1u8; 5000]);
        let other_store = record_image(RecordKind::Batch, 7, &[8u8; 16], b"x");
        ring[PAGE..2 * PAGE].copy_from_slice(first.as_slice());
        ring[4 * PAGE..6 * PAGE].copy_from_slice(second.as_slice());
        ring[8 * PAGE..9 * PAGE].copy_from_slice(other_store.as_slice());
        // A torn copy: the header survives, the body does not.
        ring[10 * PAGE..11 * PAGE].copy_from_slice(first.as_slice());
        ring[10 * PAGE + RECORD_HEADER_LEN + 1] ^= 1;
        let found = scan(&ring, &id);
        let got: Vec<_> = found.iter().map(|r| (r.pos, r.header.rec_no)).collect();
        assert_eq!(got, vec![(PAGE, 5), (4 * PAGE, 6)]);
        assert_eq!(found[0].body, b"hello");
        let ring = recovered_ring(16 * PAGE, &[&found[0], &found[1]]);
        assert_eq!(ring.next_rec_no(), 7);
        assert_eq!(ring.place(PAGE, 0), Some(6 * PAGE));
    }
}
