use std::collections::HashSet;

use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::journal::{MAX_VDISK_NAME_LEN, TAG_ADOPT, TAG_FRAME, TAG_SET, TAG_UNMAP, TAG_VDISK};
use super::superblock::MAX_DATASTORE_LEN;
use super::*;
use crate::fingerprint::Fingerprint;
use crate::fingerprint::BLOCK_SIZE;
use crate::frame::{MAX_FRAME_LEN, SPLIT_TAIL_LEN};

const STORE: [u8; 16] = [0x5a; 16];
const OTHER: [u8; 16] = [0xa5; 16];

/// Tracks the largest single allocation made by the current thread, so the
/// hostile-count tests can show a decoder reserved nothing its input does
/// not justify. It only observes: every call goes straight to `System`.
mod alloc_track {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Tracking;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        // `try_with`: allocation can happen while thread locals are torn down.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: forwards every call unchanged to the system allocator.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's contract is passed on as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Tracking = Tracking;

    /// Runs `f` and returns its result and the largest allocation it made on
    /// this thread.
    pub fn largest_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
        LARGEST.with(|l| l.set(0));
        let r = f();
        (r, LARGEST.with(|l| l.get()))
    }
}

use alloc_track::largest_during;

#[test]
fn alloc_tracker_sees_allocations() {
    let (v, largest) = largest_during(|| vec![1u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(largest >= 1 << 20);
    let ((), largest) = largest_during(|| ());
    assert_eq!(largest, 0);
}

fn fp(i: u64) -> Fingerprint {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[31] = 0xfe;
    Fingerprint::from_bytes(b)
}

/// Every single-bit flip of `bytes` within `range`, passed to `check`.
fn each_bit_flip(bytes: &[u8], range: std::ops::Range<usize>, mut check: impl FnMut(&[u8], usize)) {
    let mut b = bytes.to_vec();
    for i in range {
        for bit in 0..8 {
            b[i] ^= 1 << bit;
            check(&b, i * 8 + bit);
            b[i] ^= 1 << bit;
        }
    }
}

// ---------------------------------------------------------------- helpers

#[test]
fn round_up_page_values() {
    assert_eq!(round_up_page(0), 0);
    assert_eq!(round_up_page(1), PAGE);
    assert_eq!(round_up_page(PAGE), PAGE);
    assert_eq!(round_up_page(PAGE + 1), 2 * PAGE);
    assert_eq!(round_up_page(usize::MAX - PAGE + 1), usize::MAX - PAGE + 1);
}

#[test]
fn errors_display_what_and_where() {
    let e = OndiskError::Truncated {
        what: "batch",
        at: 17,
        need: 32,
        have: 3,
    };
    assert_eq!(
        e.to_string(),
        "batch truncated at offset 17: needs 32 bytes there, 3 remain"
    );
}

// ------------------------------------------------------------- superblock

fn superblock() -> Superblock {
    Superblock {
        store_id: STORE,
        datastore: "tank".into(),
        journal_offset: PAGE as u64,
        journal_len: 64 * PAGE as u64,
        segments_offset: 65 * PAGE as u64,
        segment_size: 1 << 20,
        segment_count: 100,
    }
}

/// Recomputes a superblock page's checksum after an edit, as a forger
/// would, so the checks after the checksum are reached.
fn reseal_superblock(page: &mut [u8]) {
    let sum = xxh3_64(&page[..PAGE - 8]);
    page[PAGE - 8..PAGE].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn superblock_round_trip() {
    let sb = superblock();
    sb.validate().unwrap();
    let page = sb.encode();
    assert_eq!(page.len(), PAGE);
    assert_eq!(&page[..4], b"STSB");
    assert_eq!(page[4], 2);
    assert_eq!(&page[8..24], &STORE);
    assert_eq!(page[56], 4);
    assert_eq!(&page[57..61], b"tank");
    assert!(page[61..PAGE - 8].iter().all(|&b| b == 0));
    assert_eq!(
        u64::from_le_bytes(page[PAGE - 8..].try_into().unwrap()),
        xxh3_64(&page[..PAGE - 8])
    );
    assert_eq!(Superblock::decode(&page).unwrap(), sb);
    // A longer buffer: only the first page is read.
    let mut longer = page.clone();
    longer.extend_from_slice(&[0xff; 100]);
    assert_eq!(Superblock::decode(&longer).unwrap(), sb);
}

#[test]
fn superblock_names() {
    for name in ["a", "données-é", &"x".repeat(MAX_DATASTORE_LEN)] {
        let sb = Superblock {
            datastore: name.to_string(),
            ..superblock()
        };
        sb.validate().unwrap();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }
    for (name, reason) in [
        (String::new(), "empty"),
        ("x".repeat(MAX_DATASTORE_LEN + 1), "too long"),
        ("x".repeat(1000), "too long"),
    ] {
        let sb = Superblock {
            datastore: name,
            ..superblock()
        };
        let page = sb.encode();
        assert_eq!(page.len(), PAGE);
        for e in [
            sb.validate().unwrap_err(),
            Superblock::decode(&page).unwrap_err(),
        ] {
            assert!(
                matches!(e, OndiskError::BadName { what: "datastore", reason: r, .. } if r == reason),
                "{e}"
            );
        }
    }
    let mut page = superblock().encode();
    page[57] = 0xff;
    reseal_superblock(&mut page);
    assert_eq!(
        Superblock::decode(&page).unwrap_err(),
        OndiskError::BadName {
            what: "datastore",
            at: 56,
            reason: "not UTF-8"
        }
    );
}

#[test]
fn superblock_every_bit_flip_rejected() {
    let page = superblock().encode();
    each_bit_flip(&page, 0..PAGE, |b, bit| {
        assert!(Superblock::decode(b).is_err(), "flip of bit {bit} accepted");
    });
}

#[test]
fn superblock_truncations_rejected() {
    let page = superblock().encode();
    for len in 0..PAGE {
        assert_eq!(
            Superblock::decode(&page[..len]).unwrap_err(),
            OndiskError::Truncated {
                what: "superblock",
                at: 0,
                need: PAGE,
                have: len
            }
        );
    }
}

#[test]
fn superblock_magic_version_reserved_padding() {
    let good = superblock().encode();
    let mut page = good.clone();
    page[0] = b'X';
    assert!(matches!(
        Superblock::decode(&page),
        Err(OndiskError::BadMagic { what: "superblock", found }) if found == *b"XTSB"
    ));
    assert_eq!(good[4], SUPERBLOCK_VERSION);
    for version in [0, SUPERBLOCK_VERSION + 1, 0xff] {
        let mut page = good.clone();
        page[4] = version;
        reseal_superblock(&mut page);
        assert_eq!(
            Superblock::decode(&page).unwrap_err(),
            OndiskError::UnsupportedVersion {
                what: "superblock",
                found: version,
                newest: SUPERBLOCK_VERSION,
            }
        );
    }
    // A store from before split frames reads as it is, and says so.
    let mut page = good.clone();
    page[4] = 1;
    reseal_superblock(&mut page);
    assert_eq!(
        Superblock::decode_versioned(&page).unwrap(),
        (superblock(), 1)
    );
    for at in [5, 6, 7, 61, 1000, PAGE - 9] {
        let mut page = good.clone();
        page[at] = 0x40;
        reseal_superblock(&mut page);
        assert_eq!(
            Superblock::decode(&page).unwrap_err(),
            OndiskError::NonZeroReserved {
                what: "superblock",
                at,
                found: 0x40
            }
        );
    }
    // A zeroed page (never formatted) is not a superblock.
    assert!(matches!(
        Superblock::decode(&[0; PAGE]),
        Err(OndiskError::BadMagic { .. })
    ));
}

#[test]
fn superblock_geometry_checked() {
    let p = PAGE as u64;
    let cases: Vec<(Superblock, &str)> = vec![
        (
            Superblock {
                journal_offset: p + 512,
                ..superblock()
            },
            "misaligned journal_offset",
        ),
        (
            Superblock {
                journal_len: 3 * p - 1,
                ..superblock()
            },
            "misaligned journal_len",
        ),
        (
            Superblock {
                segments_offset: 100 * p + 1,
                ..superblock()
            },
            "misaligned segments_offset",
        ),
        (
            Superblock {
                segment_size: (1 << 20) + 512,
                ..superblock()
            },
            "misaligned segment_size",
        ),
        (
            Superblock {
                journal_len: 0,
                ..superblock()
            },
            "empty journal",
        ),
        (
            Superblock {
                segment_size: PAGE as u32,
                ..superblock()
            },
            "one-page slots",
        ),
        (
            Superblock {
                segment_count: 0,
                ..superblock()
            },
            "no slots",
        ),
        (
            Superblock {
                journal_offset: 0,
                ..superblock()
            },
            "journal over the superblock",
        ),
        (
            Superblock {
                journal_offset: 66 * p,
                journal_len: p,
                segments_offset: 0,
                segment_size: 2 * PAGE as u32,
                segment_count: 1,
                ..superblock()
            },
            "segments over the superblock",
        ),
        (
            Superblock {
                segments_offset: 64 * p,
                ..superblock()
            },
            "segments over the journal's last page",
        ),
        (
            Superblock {
                journal_offset: 200 * p,
                journal_len: 10 * p,
                segments_offset: p,
                segment_size: 1 << 20,
                segment_count: 1,
                ..superblock()
            },
            "journal inside the segment area",
        ),
        (
            Superblock {
                journal_offset: u64::MAX - p + 1,
                journal_len: 2 * p,
                ..superblock()
            },
            "journal past 2^64",
        ),
        (
            Superblock {
                segments_offset: u64::MAX - p + 1,
                ..superblock()
            },
            "segments past 2^64",
        ),
    ];
    for (sb, case) in cases {
        let e = sb.validate().expect_err(case);
        assert_eq!(Superblock::decode(&sb.encode()).unwrap_err(), e, "{case}");
        match e {
            OndiskError::Misaligned { .. }
            | OndiskError::BadGeometry { .. }
            | OndiskError::Overlap { .. } => {}
            other => panic!("{case}: {other}"),
        }
    }
    // Adjacent areas, in either order, are fine.
    let sb = Superblock {
        segments_offset: p,
        journal_offset: p + 100 * (1 << 20),
        ..superblock()
    };
    sb.validate().unwrap();
    assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    let sb = Superblock {
        segments_offset: 65 * p,
        ..superblock()
    };
    assert_eq!(sb.journal_range().unwrap().end, sb.segments_offset);
    sb.validate().unwrap();
}

#[test]
fn superblock_ranges() {
    let sb = superblock();
    let p = PAGE as u64;
    assert_eq!(sb.journal_range(), Some(p..65 * p));
    assert_eq!(sb.segments_range(), Some(65 * p..65 * p + 100 * (1 << 20)));
    assert_eq!(sb.slot_offset(0), Some(65 * p));
    assert_eq!(sb.slot_offset(99), Some(65 * p + 99 * (1 << 20)));
    assert_eq!(sb.slot_offset(100), None);
}

// --------------------------------------------------------------- segments

fn entries() -> Vec<SummaryEntry> {
    let mut off = PAGE as u32;
    let mut v = Vec::new();
    let frame = MAX_FRAME_LEN as u32;
    for (i, len) in [frame, 73, 1000, MAX_ENTRY_LEN, 51].into_iter().enumerate() {
        v.push(SummaryEntry {
            fingerprint: fp(i as u64),
            kind: if len > frame || len == 51 {
                EntryKind::MapNode
            } else {
                EntryKind::Frame
            },
            offset: off,
            len,
        });
        off += len;
    }
    v
}

/// A segment of `entries()`: header and summary bytes.
fn segment() -> (SegmentHeader, Vec<u8>) {
    let e = entries();
    let frames_len: u32 = e.iter().map(|e| e.len).sum();
    let mut summary = Vec::new();
    encode_summary(&e, &mut summary);
    let header = SegmentHeader {
        seq: 42,
        frames_len,
        entry_count: e.len() as u32,
        summary_checksum: xxh3_64(&summary),
    };
    (header, summary)
}

const SEG_SIZE: u32 = 1 << 20;

fn reseal_segment_header(h: &mut [u8]) {
    let sum = xxh3_64(&h[..48]);
    h[48..56].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn segment_constants() {
    assert_eq!(SEGMENT_HEADER_LEN, 56);
    assert_eq!(SUMMARY_ENTRY_LEN, 41);
    assert_eq!(
        MAX_ENTRY_LEN as usize,
        crate::map::MAX_NODE_LEN.max(MAX_FRAME_LEN)
    );
}

#[test]
fn segment_header_round_trip() {
    let (h, summary) = segment();
    let bytes = h.encode(&STORE);
    assert_eq!(&bytes[..4], b"STSG");
    assert_eq!(bytes[4], 1);
    assert_eq!(&bytes[8..24], &STORE);
    assert_eq!(u64::from_le_bytes(bytes[24..32].try_into().unwrap()), 42);
    assert_eq!(
        u64::from_le_bytes(bytes[48..56].try_into().unwrap()),
        xxh3_64(&bytes[..48])
    );
    assert_eq!(SegmentHeader::decode(&bytes, &STORE, SEG_SIZE).unwrap(), h);
    // The whole header page, as read from the slot.
    let mut page = vec![0u8; PAGE];
    page[..SEGMENT_HEADER_LEN].copy_from_slice(&bytes);
    assert_eq!(SegmentHeader::decode(&page, &STORE, SEG_SIZE).unwrap(), h);

    let start = PAGE + h.frames_len as usize;
    assert_eq!(h.frames_range(), PAGE..start);
    assert_eq!(h.summary_range(), start..start + summary.len());
    assert_eq!(h.used_len(), round_up_page(start + summary.len()));
    assert_eq!(h.used_len() % PAGE, 0);
    assert_eq!(decode_summary(&summary, &h).unwrap(), entries());
}

#[test]
fn empty_segment() {
    let h = SegmentHeader {
        seq: 0,
        frames_len: 0,
        entry_count: 0,
        summary_checksum: xxh3_64(&[]),
    };
    let d = SegmentHeader::decode(&h.encode(&STORE), &STORE, 2 * PAGE as u32).unwrap();
    assert_eq!(d, h);
    assert_eq!(h.used_len(), PAGE);
    assert_eq!(decode_summary(&[], &h).unwrap(), vec![]);
}

#[test]
fn segment_header_every_bit_flip_rejected() {
    let (h, _) = segment();
    let bytes = h.encode(&STORE);
    each_bit_flip(&bytes, 0..SEGMENT_HEADER_LEN, |b, bit| {
        assert!(
            SegmentHeader::decode(b, &STORE, SEG_SIZE).is_err(),
            "flip of bit {bit} accepted"
        );
    });
}

#[test]
fn segment_header_truncations_rejected() {
    let bytes = segment().0.encode(&STORE);
    for len in 0..SEGMENT_HEADER_LEN {
        assert!(matches!(
            SegmentHeader::decode(&bytes[..len], &STORE, SEG_SIZE),
            Err(OndiskError::Truncated { what: "segment header", have, .. }) if have == len
        ));
    }
}

#[test]
fn segment_header_wrong_store_magic_version() {
    let (h, _) = segment();
    assert_eq!(
        SegmentHeader::decode(&h.encode(&OTHER), &STORE, SEG_SIZE).unwrap_err(),
        OndiskError::WrongStore {
            what: "segment header",
            expected: STORE,
            found: OTHER
        }
    );
    let mut b = h.encode(&STORE);
    b[3] = b'R';
    reseal_segment_header(&mut b);
    assert!(matches!(
        SegmentHeader::decode(&b, &STORE, SEG_SIZE),
        Err(OndiskError::BadMagic {
            what: "segment header",
            ..
        })
    ));
    // Another structure's magic is not a segment.
    let sb = superblock().encode();
    assert!(matches!(
        SegmentHeader::decode(&sb, &STORE, SEG_SIZE),
        Err(OndiskError::BadMagic { .. })
    ));
    let mut b = h.encode(&STORE);
    b[4] = 0;
    reseal_segment_header(&mut b);
    assert_eq!(
        SegmentHeader::decode(&b, &STORE, SEG_SIZE).unwrap_err(),
        OndiskError::UnsupportedVersion {
            what: "segment header",
            found: 0,
            newest: ONDISK_VERSION,
        }
    );
    let mut b = h.encode(&STORE);
    b[6] = 1;
    reseal_segment_header(&mut b);
    assert_eq!(
        SegmentHeader::decode(&b, &STORE, SEG_SIZE).unwrap_err(),
        OndiskError::NonZeroReserved {
            what: "segment header",
            at: 6,
            found: 1
        }
    );
}

#[test]
fn segment_must_fit_its_slot() {
    let size = 4 * PAGE as u32;
    let fits = |frames_len: u32, entry_count: u32| {
        let h = SegmentHeader {
            seq: 1,
            frames_len,
            entry_count,
            summary_checksum: 0,
        };
        SegmentHeader::decode(&h.encode(&STORE), &STORE, size)
    };
    // Exactly full.
    assert!(fits(3 * PAGE as u32 - 41, 1).is_ok());
    assert!(fits(3 * PAGE as u32, 0).is_ok());
    assert_eq!(
        fits(3 * PAGE as u32 - 40, 1).unwrap_err(),
        OndiskError::SegmentOverflow {
            frames_len: 3 * PAGE as u32 - 40,
            entry_count: 1,
            segment_size: size
        }
    );
    assert!(fits(0, 300).is_err());
    // No overflow in the arithmetic, even at the extremes.
    assert!(fits(u32::MAX, u32::MAX).is_err());
    assert!(fits(u32::MAX, 0).is_err());
    assert!(fits(0, u32::MAX).is_err());
}

#[test]
fn summary_every_bit_flip_rejected() {
    let (h, summary) = segment();
    each_bit_flip(&summary, 0..summary.len(), |b, bit| {
        assert!(
            matches!(
                decode_summary(b, &h),
                Err(OndiskError::ChecksumMismatch {
                    what: "summary",
                    ..
                })
            ),
            "flip of bit {bit} accepted"
        );
    });
}

#[test]
fn summary_length_checked() {
    let (h, summary) = segment();
    for len in [0, 1, summary.len() - 41, summary.len() - 1] {
        assert_eq!(
            decode_summary(&summary[..len], &h).unwrap_err(),
            OndiskError::LengthMismatch {
                what: "summary",
                expected: summary.len(),
                actual: len
            }
        );
    }
    let mut longer = summary.clone();
    longer.push(0);
    assert!(matches!(
        decode_summary(&longer, &h),
        Err(OndiskError::LengthMismatch { .. })
    ));
}

#[test]
fn summary_hostile_count_allocates_nothing() {
    let (_, summary) = segment();
    let h = SegmentHeader {
        seq: 1,
        frames_len: u32::MAX,
        entry_count: u32::MAX,
        summary_checksum: xxh3_64(&summary),
    };
    let (r, largest) = largest_during(|| decode_summary(&summary, &h));
    assert!(matches!(r, Err(OndiskError::LengthMismatch { .. })));
    assert!(largest < 1024, "allocated {largest} bytes");
}

/// Decodes a summary holding the one entry `e`, in a segment whose frames
/// area is `frames_len` bytes, with a correct summary checksum.
fn decode_one(
    e: &SummaryEntry,
    kind_byte: Option<u8>,
    frames_len: u32,
) -> Result<Vec<SummaryEntry>, OndiskError> {
    let mut summary = Vec::new();
    encode_summary(std::slice::from_ref(e), &mut summary);
    if let Some(k) = kind_byte {
        summary[32] = k;
    }
    let h = SegmentHeader {
        seq: 1,
        frames_len,
        entry_count: 1,
        summary_checksum: xxh3_64(&summary),
    };
    decode_summary(&summary, &h)
}

#[test]
fn summary_entries_checked() {
    let good = SummaryEntry {
        fingerprint: fp(7),
        kind: EntryKind::Frame,
        offset: PAGE as u32,
        len: 100,
    };
    assert_eq!(decode_one(&good, None, 100).unwrap(), vec![good]);
    assert_eq!(
        decode_one(&good, Some(2), 100).unwrap()[0].kind,
        EntryKind::MapNode
    );
    for k in [0, 5, 0xff] {
        assert_eq!(
            decode_one(&good, Some(k), 100).unwrap_err(),
            OndiskError::UnknownEntryKind { index: 0, found: k }
        );
    }
    let reason = |e: SummaryEntry, frames_len: u32| match decode_one(&e, None, frames_len) {
        Err(OndiskError::BadEntry {
            index: 0, reason, ..
        }) => reason,
        other => panic!("{e:?}: {other:?}"),
    };
    assert_eq!(
        reason(
            SummaryEntry {
                fingerprint: Fingerprint::ZERO,
                ..good
            },
            100
        ),
        "zero fingerprint"
    );
    assert_eq!(
        reason(
            SummaryEntry {
                offset: PAGE as u32 - 1,
                ..good
            },
            100
        ),
        "offset inside the header page"
    );
    assert_eq!(
        reason(SummaryEntry { offset: 0, ..good }, 100),
        "offset inside the header page"
    );
    assert_eq!(reason(SummaryEntry { len: 0, ..good }, 100), "empty");
    assert_eq!(
        reason(
            SummaryEntry {
                len: MAX_ENTRY_LEN + 1,
                ..good
            },
            u32::MAX - PAGE as u32
        ),
        "longer than any frame or map node"
    );
    assert!(decode_one(
        &SummaryEntry {
            len: MAX_ENTRY_LEN,
            ..good
        },
        None,
        MAX_ENTRY_LEN
    )
    .is_ok());
    assert_eq!(reason(good, 99), "ends past the frames area");
    assert_eq!(
        reason(
            SummaryEntry {
                offset: PAGE as u32 + 1,
                ..good
            },
            100
        ),
        "ends past the frames area"
    );
    // offset + len overflows u32: caught, not wrapped.
    assert_eq!(
        reason(
            SummaryEntry {
                offset: u32::MAX - 10,
                len: 100,
                ..good
            },
            u32::MAX - PAGE as u32
        ),
        "ends past the frames area"
    );
    // The second entry is named when it is the bad one.
    let mut summary = Vec::new();
    encode_summary(&[good, SummaryEntry { len: 0, ..good }], &mut summary);
    let h = SegmentHeader {
        seq: 1,
        frames_len: 100,
        entry_count: 2,
        summary_checksum: xxh3_64(&summary),
    };
    assert!(matches!(
        decode_summary(&summary, &h),
        Err(OndiskError::BadEntry { index: 1, .. })
    ));
}

// ---------------------------------------------------------------- journal

fn record(kind: RecordKind, rec_no: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(kind, rec_no, &STORE, body, &mut out);
    out
}

/// Recomputes a record's checksum after an edit, over as much of the body
/// as `rec` holds.
fn reseal_record(rec: &mut [u8]) {
    let body_len = u32::from_le_bytes(rec[16..20].try_into().unwrap()) as usize;
    let body_len = body_len.min(rec.len() - 48);
    let mut covered = rec[..40].to_vec();
    covered.extend_from_slice(&rec[48..48 + body_len]);
    let sum = xxh3_64(&covered);
    rec[40..48].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn record_round_trip_and_padding() {
    for body_len in [0, 1, PAGE - 48, PAGE - 47, 3 * PAGE, 10_000] {
        let body: Vec<u8> = (0..body_len).map(|i| (i * 7 + 3) as u8).collect();
        for kind in [RecordKind::Batch, RecordKind::Checkpoint] {
            let mut out = vec![0xee; PAGE];
            encode_record(kind, 9, &STORE, &body, &mut out);
            assert_eq!(out.len() % PAGE, 0);
            assert_eq!(out.len() - PAGE, record_len(body_len));
            assert_eq!(record_len(body_len), round_up_page(48 + body_len));
            let rec = &out[PAGE..];
            assert!(rec[48 + body_len..].iter().all(|&b| b == 0));
            let want = RecordHeader {
                kind,
                rec_no: 9,
                body_len: body_len as u32,
            };
            assert_eq!(decode_record_header(rec, &STORE).unwrap(), want);
            assert_eq!(want.record_len(), rec.len());
            let (h, b) = verify_record(rec, &STORE).unwrap();
            assert_eq!(h, want);
            assert_eq!(b, &body[..]);
            // Longer input (the next record follows): same answer.
            let mut two = rec.to_vec();
            two.extend_from_slice(&record(RecordKind::Batch, 10, b"next"));
            assert_eq!(verify_record(&two, &STORE).unwrap(), (want, &body[..]));
            // Without the padding: still fine, padding is not read.
            assert_eq!(
                verify_record(&rec[..48 + body_len], &STORE).unwrap(),
                (want, &body[..])
            );
        }
    }
}

#[test]
fn record_layout() {
    let rec = record(RecordKind::Checkpoint, 0x0102, b"hello");
    assert_eq!(&rec[..4], b"STJR");
    assert_eq!(rec[4], 1);
    assert_eq!(rec[5], 2);
    assert_eq!(&rec[6..8], &[0, 0]);
    assert_eq!(u64::from_le_bytes(rec[8..16].try_into().unwrap()), 0x0102);
    assert_eq!(u32::from_le_bytes(rec[16..20].try_into().unwrap()), 5);
    assert_eq!(&rec[20..24], &[0; 4]);
    assert_eq!(&rec[24..40], &STORE);
    let mut covered = rec[..40].to_vec();
    covered.extend_from_slice(b"hello");
    assert_eq!(
        u64::from_le_bytes(rec[40..48].try_into().unwrap()),
        xxh3_64(&covered)
    );
    assert_eq!(&rec[48..53], b"hello");
    assert_eq!(rec.len(), PAGE);
}

#[test]
fn record_every_bit_flip_rejected() {
    let body: Vec<u8> = (0..300).map(|i| i as u8).collect();
    let rec = record(RecordKind::Batch, 77, &body);
    each_bit_flip(&rec, 0..48 + body.len(), |b, bit| {
        assert!(
            verify_record(b, &STORE).is_err(),
            "flip of bit {bit} accepted"
        );
    });
}

#[test]
fn record_truncations_rejected() {
    let body = [0x33u8; 300];
    let rec = record(RecordKind::Batch, 77, &body);
    for len in 0..48 {
        let t = OndiskError::Truncated {
            what: "record",
            at: 0,
            need: 48,
            have: len,
        };
        assert_eq!(decode_record_header(&rec[..len], &STORE).unwrap_err(), t);
        assert_eq!(verify_record(&rec[..len], &STORE).unwrap_err(), t);
    }
    for len in 48..48 + body.len() {
        assert!(decode_record_header(&rec[..len], &STORE).is_ok());
        assert_eq!(
            verify_record(&rec[..len], &STORE).unwrap_err(),
            OndiskError::Truncated {
                what: "record",
                at: 48,
                need: 300,
                have: len - 48
            }
        );
    }
}

#[test]
fn record_wrong_store_magic_version_kind() {
    let rec = record(RecordKind::Batch, 1, b"body");
    let wrong = OndiskError::WrongStore {
        what: "record",
        expected: OTHER,
        found: STORE,
    };
    assert_eq!(decode_record_header(&rec, &OTHER).unwrap_err(), wrong);
    assert_eq!(verify_record(&rec, &OTHER).unwrap_err(), wrong);

    let edit = |at: usize, v: u8| {
        let mut r = rec.clone();
        r[at] = v;
        reseal_record(&mut r);
        (
            decode_record_header(&r, &STORE).unwrap_err(),
            verify_record(&r, &STORE).unwrap_err(),
        )
    };
    let (a, b) = edit(0, b'X');
    assert_eq!(a, b);
    assert!(matches!(a, OndiskError::BadMagic { what: "record", found } if found == *b"XTJR"));
    let (a, b) = edit(4, 2);
    assert_eq!(a, b);
    assert_eq!(
        a,
        OndiskError::UnsupportedVersion {
            what: "record",
            found: 2,
            newest: ONDISK_VERSION,
        }
    );
    for k in [0, 3, 0xff] {
        let (a, b) = edit(5, k);
        assert_eq!(a, b);
        assert_eq!(a, OndiskError::UnknownRecordKind { found: k });
    }
    for at in [6, 7, 20, 21, 22, 23] {
        let (a, b) = edit(at, 9);
        assert_eq!(a, b);
        assert_eq!(
            a,
            OndiskError::NonZeroReserved {
                what: "record",
                at,
                found: 9
            }
        );
    }
    // A segment header or superblock is not a record.
    assert!(matches!(
        verify_record(&superblock().encode(), &STORE),
        Err(OndiskError::BadMagic { .. })
    ));
    // A zeroed ring (never written) is not a record.
    assert!(matches!(
        decode_record_header(&[0; PAGE], &STORE),
        Err(OndiskError::BadMagic { .. })
    ));
}

#[test]
fn record_hostile_body_len_allocates_nothing() {
    let mut rec = record(RecordKind::Batch, 1, b"short");
    rec[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_record_header_only(&mut rec);
    assert_eq!(
        decode_record_header(&rec, &STORE).unwrap().body_len,
        u32::MAX
    );
    let (r, largest) = largest_during(|| verify_record(&rec, &STORE));
    assert!(matches!(r, Err(OndiskError::Truncated { need, .. }) if need == u32::MAX as usize));
    assert!(largest < 1024, "allocated {largest} bytes");
}

/// A checksum over header bytes only, for records whose body_len is a lie.
fn reseal_record_header_only(rec: &mut [u8]) {
    let sum = xxh3_64(&rec[..40]);
    rec[40..48].copy_from_slice(&sum.to_le_bytes());
}

// ------------------------------------------------------------------ batch

fn sample_batch() -> (BatchBuilder, Vec<BatchItem<'static>>) {
    static FRAME_A: [u8; 73] = [0xa1; 73];
    static FRAME_B: [u8; MAX_FRAME_LEN] = [0xb2; MAX_FRAME_LEN];
    let items = vec![
        BatchItem::Frame(&FRAME_A),
        BatchItem::Set {
            seq: 1,
            vdisk: 3,
            lba: 1000,
            fps: vec![fp(1), Fingerprint::ZERO, fp(2)],
        },
        BatchItem::Frame(&FRAME_B),
        BatchItem::Unmap {
            seq: 2,
            vdisk: 3,
            lba: 0,
            count: u64::MAX,
        },
        BatchItem::Set {
            seq: u64::MAX,
            vdisk: u32::MAX,
            lba: u64::MAX - 1,
            fps: vec![fp(9)],
        },
        BatchItem::Frame(&FRAME_A[..1]),
        BatchItem::Vdisk {
            id: 7,
            block_count: u64::MAX,
            name: "vm1-disk0".into(),
        },
        BatchItem::Adopt {
            seq: 3,
            id: 8,
            block_count: 1,
            root: fp(4),
            name: "moved".into(),
        },
    ];
    let mut b = BatchBuilder::new();
    for item in &items {
        b.push_item(item);
    }
    (b, items)
}

#[test]
fn batch_round_trip() {
    let (b, items) = sample_batch();
    assert!(!b.is_empty());
    assert_eq!(b.len(), b.body().len());
    assert_eq!(b.vdisks(), &[3, u32::MAX, 7, 8]);
    let changed: Vec<_> = items.iter().map(BatchItem::vdisk).collect();
    assert_eq!(
        changed,
        [
            None,
            Some(3),
            None,
            Some(3),
            Some(u32::MAX),
            None,
            Some(7),
            Some(8)
        ]
    );
    assert_eq!(decode_batch(b.body()).unwrap(), items);
    // Through a record.
    let rec = record(RecordKind::Batch, 5, b.body());
    let (h, body) = verify_record(&rec, &STORE).unwrap();
    assert_eq!(h.kind, RecordKind::Batch);
    assert_eq!(decode_batch(body).unwrap(), items);

    let mut b = b;
    b.clear();
    assert!(b.is_empty());
    assert_eq!(b.len(), 0);
    assert!(b.vdisks().is_empty());
    assert_eq!(decode_batch(b.body()).unwrap(), vec![]);
    assert_eq!(BatchBuilder::default(), BatchBuilder::new());
}

#[test]
fn batch_item_layout() {
    let mut b = BatchBuilder::new();
    b.push_frame(b"xyz");
    assert_eq!(b.body(), &[TAG_FRAME, 3, 0, 0, 0, b'x', b'y', b'z']);
    let mut b = BatchBuilder::new();
    b.push_unmap(1, 2, 3, 4);
    let mut want = vec![TAG_UNMAP];
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&3u64.to_le_bytes());
    want.extend_from_slice(&4u64.to_le_bytes());
    assert_eq!(b.body(), &want[..]);
    let mut b = BatchBuilder::new();
    b.push_set(1, 2, 3, &[fp(5)]);
    let mut want = vec![TAG_SET];
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&3u64.to_le_bytes());
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(fp(5).as_bytes());
    assert_eq!(b.body(), &want[..]);
    let mut b = BatchBuilder::new();
    b.push_vdisk(6, 7, "ab");
    let mut want = vec![TAG_VDISK];
    want.extend_from_slice(&6u32.to_le_bytes());
    want.extend_from_slice(&7u64.to_le_bytes());
    want.extend_from_slice(&[2, b'a', b'b']);
    assert_eq!(b.body(), &want[..]);
    let mut b = BatchBuilder::new();
    b.push_adopt(1, 6, 7, fp(3), "ab");
    let mut want = vec![TAG_ADOPT];
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&6u32.to_le_bytes());
    want.extend_from_slice(&7u64.to_le_bytes());
    want.extend_from_slice(fp(3).as_bytes());
    want.extend_from_slice(&[2, b'a', b'b']);
    assert_eq!(b.body(), &want[..]);
    // An adopt of no blocks, or with an empty name, is refused.
    let mut b = BatchBuilder::new();
    b.push_adopt(1, 6, 0, fp(3), "ab");
    assert!(decode_batch(b.body()).is_err());
    let mut b = BatchBuilder::new();
    b.push_adopt(1, 6, 1, fp(3), "");
    assert!(decode_batch(b.body()).is_err());
}

#[test]
fn batch_truncations_rejected() {
    let (b, items) = sample_batch();
    let body = b.body();
    // Item boundaries: a prefix ending on one decodes to the first items.
    let mut bounds = vec![0];
    let mut one = BatchBuilder::new();
    for item in &items {
        one.push_item(item);
        bounds.push(one.len());
    }
    for len in 0..body.len() {
        let r = decode_batch(&body[..len]);
        match bounds.iter().position(|&e| e == len) {
            Some(n) => assert_eq!(r.unwrap(), items[..n]),
            None => assert!(
                matches!(r, Err(OndiskError::Truncated { what: "batch", .. })),
                "prefix {len}: {r:?}"
            ),
        }
    }
}

#[test]
fn batch_items_checked() {
    let bad = |body: &[u8]| decode_batch(body).unwrap_err();
    // Unknown tags, named with their offset.
    let mut b = BatchBuilder::new();
    b.push_frame(b"f");
    let at = b.len();
    let mut body = b.body().to_vec();
    for tag in [0u8, 6, 0xff] {
        body.truncate(at);
        body.push(tag);
        assert_eq!(bad(&body), OndiskError::UnknownBatchTag { at, found: tag });
    }
    // Frame lengths.
    let mut b = BatchBuilder::new();
    b.push_frame(&[]);
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem {
            at: 0,
            value: 0,
            ..
        }
    ));
    let mut b = BatchBuilder::new();
    b.push_frame(&[1; MAX_FRAME_LEN + 1]);
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem { at: 0, value, .. } if value == MAX_FRAME_LEN as u64 + 1
    ));
    // Counts and ranges.
    let mut b = BatchBuilder::new();
    b.push_set(1, 1, 1, &[]);
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem {
            at: 0,
            reason: "set of zero blocks",
            ..
        }
    ));
    let mut b = BatchBuilder::new();
    b.push_set(1, 1, u64::MAX, &[fp(1)]);
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem {
            reason: "set range ends past 2^64",
            ..
        }
    ));
    let mut b = BatchBuilder::new();
    b.push_unmap(1, 1, 5, 0);
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem {
            reason: "unmap of zero blocks",
            ..
        }
    ));
    let mut b = BatchBuilder::new();
    b.push_unmap(1, 1, 5, u64::MAX - 4);
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem {
            reason: "unmap range ends past 2^64",
            ..
        }
    ));
    let mut b = BatchBuilder::new();
    b.push_unmap(1, 1, 5, u64::MAX - 5);
    assert!(decode_batch(b.body()).is_ok());
    // Vdisk items: a size and a name within bounds.
    let mut b = BatchBuilder::new();
    b.push_vdisk(1, 0, "v");
    assert!(matches!(
        bad(b.body()),
        OndiskError::BadBatchItem {
            reason: "vdisk of zero blocks",
            ..
        }
    ));
    for name in [String::new(), "x".repeat(MAX_VDISK_NAME_LEN + 1)] {
        let mut b = BatchBuilder::new();
        b.push_vdisk(1, 1, &name);
        assert!(
            matches!(bad(b.body()), OndiskError::BadName { what: "vdisk", .. }),
            "name of {} bytes",
            name.len()
        );
    }
    let mut body = vec![TAG_VDISK];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&[2, 0xff, 0xfe]);
    assert!(matches!(
        bad(&body),
        OndiskError::BadName { what: "vdisk", .. }
    ));
}

#[test]
fn batch_hostile_counts_allocate_nothing() {
    // A set claiming u32::MAX fingerprints, with one present.
    let mut b = BatchBuilder::new();
    b.push_set(1, 1, 0, &[fp(1)]);
    let mut body = b.body().to_vec();
    body[21..25].copy_from_slice(&u32::MAX.to_le_bytes());
    let (r, largest) = largest_during(|| decode_batch(&body));
    assert!(matches!(
        r,
        Err(OndiskError::Truncated { what: "batch", at: 25, need, have: 32 }) if need == u32::MAX as usize * 32
    ));
    assert!(largest < 1024, "allocated {largest} bytes");
    // A frame claiming more bytes than remain.
    let mut body = vec![TAG_FRAME];
    body.extend_from_slice(&4000u32.to_le_bytes());
    body.extend_from_slice(&[1; 10]);
    let (r, largest) = largest_during(|| decode_batch(&body));
    assert!(matches!(
        r,
        Err(OndiskError::Truncated {
            at: 5,
            need: 4000,
            have: 10,
            ..
        })
    ));
    assert!(largest < 1024, "allocated {largest} bytes");
}

// ------------------------------------------------------------- checkpoint

fn checkpoint() -> Checkpoint {
    Checkpoint {
        replay_from_rec: 1234,
        next_seq: 99,
        vdisks: vec![
            VdiskRoot {
                id: 1,
                name: "boot".into(),
                block_count: 1 << 28,
                root: fp(77),
                applied_seq: 98,
            },
            VdiskRoot {
                id: 7,
                name: "données".into(),
                block_count: 0,
                root: Fingerprint::ZERO,
                applied_seq: 0,
            },
            VdiskRoot {
                id: u32::MAX,
                name: "z".repeat(MAX_VDISK_NAME_LEN),
                block_count: u64::MAX,
                root: fp(1),
                applied_seq: u64::MAX,
            },
        ],
    }
}

#[test]
fn checkpoint_round_trip() {
    let c = checkpoint();
    c.validate().unwrap();
    let body = c.encode();
    assert_eq!(Checkpoint::decode(&body).unwrap(), c);
    let rec = record(RecordKind::Checkpoint, 3, &body);
    let (h, b) = verify_record(&rec, &STORE).unwrap();
    assert_eq!(h.kind, RecordKind::Checkpoint);
    assert_eq!(Checkpoint::decode(b).unwrap(), c);

    let empty = Checkpoint {
        replay_from_rec: 0,
        next_seq: 0,
        vdisks: vec![],
    };
    assert_eq!(empty.encode().len(), 20);
    assert_eq!(Checkpoint::decode(&empty.encode()).unwrap(), empty);
}

#[test]
fn checkpoint_layout() {
    let c = Checkpoint {
        replay_from_rec: 5,
        next_seq: 6,
        vdisks: vec![VdiskRoot {
            id: 7,
            name: "ab".into(),
            block_count: 8,
            root: fp(3),
            applied_seq: 9,
        }],
    };
    let mut want = Vec::new();
    want.extend_from_slice(&5u64.to_le_bytes());
    want.extend_from_slice(&6u64.to_le_bytes());
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&7u32.to_le_bytes());
    want.extend_from_slice(&8u64.to_le_bytes());
    want.extend_from_slice(fp(3).as_bytes());
    want.extend_from_slice(&9u64.to_le_bytes());
    want.push(2);
    want.extend_from_slice(b"ab");
    assert_eq!(c.encode(), want);
}

#[test]
fn checkpoint_truncations_rejected() {
    let body = checkpoint().encode();
    for len in 0..body.len() {
        let r = Checkpoint::decode(&body[..len]);
        assert!(
            matches!(
                r,
                Err(OndiskError::Truncated {
                    what: "checkpoint",
                    ..
                }) | Err(OndiskError::BadVdiskCount { .. })
            ),
            "prefix {len}: {r:?}"
        );
    }
}

#[test]
fn checkpoint_checked() {
    let c = checkpoint();
    // Trailing bytes.
    let mut body = c.encode();
    let n = body.len();
    body.push(0);
    assert_eq!(
        Checkpoint::decode(&body).unwrap_err(),
        OndiskError::TrailingBytes {
            what: "checkpoint",
            at: n,
            extra: 1
        }
    );
    // Duplicate id, duplicate name.
    let mut dup = c.clone();
    dup.vdisks[2].id = 1;
    assert!(matches!(
        dup.validate(),
        Err(OndiskError::DuplicateVdiskId { id: 1, .. })
    ));
    let second_at = 20 + (4 + 8 + 32 + 8 + 1 + 4) + (4 + 8 + 32 + 8 + 1 + "données".len());
    assert_eq!(
        Checkpoint::decode(&dup.encode()).unwrap_err(),
        OndiskError::DuplicateVdiskId {
            id: 1,
            at: second_at
        }
    );
    let mut dup = c.clone();
    dup.vdisks[2].name = "boot".into();
    assert!(matches!(
        dup.validate(),
        Err(OndiskError::DuplicateVdiskName { .. })
    ));
    assert_eq!(
        Checkpoint::decode(&dup.encode()).unwrap_err(),
        OndiskError::DuplicateVdiskName {
            name: "boot".into(),
            at: second_at
        }
    );
    // Names.
    for (name, reason) in [
        (String::new(), "empty"),
        ("n".repeat(MAX_VDISK_NAME_LEN + 1), "too long"),
        ("n".repeat(300), "too long"),
    ] {
        let mut bad = c.clone();
        bad.vdisks[0].name = name;
        assert!(
            matches!(bad.validate(), Err(OndiskError::BadName { what: "vdisk", reason: r, .. }) if r == reason)
        );
        assert!(matches!(
            Checkpoint::decode(&bad.encode()),
            Err(OndiskError::BadName { what: "vdisk", at: 72, reason: r }) if r == reason
        ));
    }
    let mut body = c.encode();
    body[20 + 53] = 0xc3; // 'b' of "boot" becomes a lone UTF-8 lead byte
    body[20 + 54] = b'(';
    assert_eq!(
        Checkpoint::decode(&body).unwrap_err(),
        OndiskError::BadName {
            what: "vdisk",
            at: 72,
            reason: "not UTF-8"
        }
    );
}

#[test]
fn checkpoint_hostile_count_allocates_nothing() {
    let mut body = checkpoint().encode();
    body[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let have = body.len() - 20;
    let (r, largest) = largest_during(|| Checkpoint::decode(&body));
    assert_eq!(
        r.unwrap_err(),
        OndiskError::BadVdiskCount {
            count: u32::MAX,
            have,
            max: have / 54
        }
    );
    assert!(largest < 1024, "allocated {largest} bytes");
    // A count the bytes could hold by size, but not by content.
    let mut body = checkpoint().encode();
    body[16..20].copy_from_slice(&4u32.to_le_bytes());
    body.extend_from_slice(&[0; 54]);
    assert!(Checkpoint::decode(&body).is_err());
}

// ------------------------------------------------------------- proptests

fn item_strategy() -> impl Strategy<Value = OwnedItem> {
    prop_oneof![
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..300),
            proptest::collection::vec(any::<u8>(), MAX_FRAME_LEN - 2..=MAX_FRAME_LEN),
        ]
        .prop_map(OwnedItem::Frame),
        (
            any::<u64>(),
            any::<u32>(),
            0..u64::MAX - 64,
            proptest::collection::vec(any::<[u8; 32]>(), 1..40)
        )
            .prop_map(|(seq, vdisk, lba, fps)| OwnedItem::Set {
                seq,
                vdisk,
                lba,
                fps: fps.into_iter().map(Fingerprint::from_bytes).collect(),
            }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(seq, vdisk, lba, count)| {
                let count = count % (u64::MAX - lba).max(1) + 1;
                let lba = lba.min(u64::MAX - count);
                OwnedItem::Unmap {
                    seq,
                    vdisk,
                    lba,
                    count,
                }
            }
        ),
        (any::<u32>(), 1..=u64::MAX, "[a-z0-9-]{1,64}").prop_map(|(id, block_count, name)| {
            OwnedItem::Vdisk {
                id,
                block_count,
                name,
            }
        }),
    ]
}

/// A batch item owning its frame bytes, for strategies.
#[derive(Debug, Clone)]
enum OwnedItem {
    Frame(Vec<u8>),
    Set {
        seq: u64,
        vdisk: u32,
        lba: u64,
        fps: Vec<Fingerprint>,
    },
    Unmap {
        seq: u64,
        vdisk: u32,
        lba: u64,
        count: u64,
    },
    Vdisk {
        id: u32,
        block_count: u64,
        name: String,
    },
}

impl OwnedItem {
    fn borrow(&self) -> BatchItem<'_> {
        match self {
            OwnedItem::Frame(f) => BatchItem::Frame(f),
            OwnedItem::Set {
                seq,
                vdisk,
                lba,
                fps,
            } => BatchItem::Set {
                seq: *seq,
                vdisk: *vdisk,
                lba: *lba,
                fps: fps.clone(),
            },
            OwnedItem::Unmap {
                seq,
                vdisk,
                lba,
                count,
            } => BatchItem::Unmap {
                seq: *seq,
                vdisk: *vdisk,
                lba: *lba,
                count: *count,
            },
            OwnedItem::Vdisk {
                id,
                block_count,
                name,
            } => BatchItem::Vdisk {
                id: *id,
                block_count: *block_count,
                name: name.clone(),
            },
        }
    }
}

fn checkpoint_strategy() -> impl Strategy<Value = Checkpoint> {
    (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(
            (
                any::<u32>(),
                "\\PC{1,16}",
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<u64>(),
            ),
            0..20,
        ),
    )
        .prop_map(|(replay_from_rec, next_seq, raw)| {
            let mut ids = HashSet::new();
            let mut names = HashSet::new();
            let vdisks = raw
                .into_iter()
                .filter(|(id, name, ..)| ids.insert(*id) && names.insert(name.clone()))
                .map(|(id, name, block_count, root, applied_seq)| VdiskRoot {
                    id,
                    name,
                    block_count,
                    root: Fingerprint::from_bytes(root),
                    applied_seq,
                })
                .collect();
            Checkpoint {
                replay_from_rec,
                next_seq,
                vdisks,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..5000),
        segment_size in any::<u32>(),
        frames_len in any::<u32>(),
        entry_count in any::<u32>(),
        summary_checksum in any::<u64>(),
    ) {
        let _ = Superblock::decode(&bytes);
        let _ = SegmentHeader::decode(&bytes, &STORE, segment_size);
        let h = SegmentHeader { seq: 0, frames_len, entry_count, summary_checksum };
        let _ = decode_summary(&bytes, &h);
        // With a count and checksum that match, to reach the entry checks.
        let h = SegmentHeader {
            seq: 0,
            frames_len,
            entry_count: (bytes.len() / SUMMARY_ENTRY_LEN) as u32,
            summary_checksum: xxh3_64(&bytes[..bytes.len() / SUMMARY_ENTRY_LEN * SUMMARY_ENTRY_LEN]),
        };
        let _ = decode_summary(&bytes[..bytes.len() / SUMMARY_ENTRY_LEN * SUMMARY_ENTRY_LEN], &h);
        let _ = decode_record_header(&bytes, &STORE);
        let _ = verify_record(&bytes, &STORE);
        let _ = decode_batch(&bytes);
        let _ = Checkpoint::decode(&bytes);
    }

    #[test]
    fn prop_tagged_bytes_never_panic(
        tag in 0u8..5,
        count in any::<u32>(),
        rest in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        // Plausible starts, so the decoders get past the first field.
        let mut body = vec![tag];
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&rest);
        if let Ok(items) = decode_batch(&body) {
            let mut b = BatchBuilder::new();
            for item in &items {
                b.push_item(item);
            }
            prop_assert_eq!(b.body(), &body[..]);
        }
        let mut cp = vec![0u8; 16];
        cp.extend_from_slice(&(count % 8).to_le_bytes());
        cp.extend_from_slice(&rest);
        if let Ok(c) = Checkpoint::decode(&cp) {
            prop_assert_eq!(c.encode(), cp);
        }
    }

    #[test]
    fn prop_resealed_superblock_edits(
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6),
    ) {
        let mut page = superblock().encode();
        for (at, v) in edits {
            page[at] = v;
        }
        reseal_superblock(&mut page);
        // Decoding is total, and canonical: what it accepts re-encodes to
        // the same page.
        if let Ok(sb) = Superblock::decode(&page) {
            prop_assert_eq!(sb.encode(), page);
        }
    }

    #[test]
    fn prop_resealed_segment_header_edits(
        edits in proptest::collection::vec((0usize..48, any::<u8>()), 1..6),
        segment_size in any::<u32>(),
    ) {
        let mut b = segment().0.encode(&STORE);
        for (at, v) in edits {
            b[at] = v;
        }
        reseal_segment_header(&mut b);
        if let Ok(h) = SegmentHeader::decode(&b, &STORE, segment_size) {
            prop_assert_eq!(h.encode(&STORE), b);
            prop_assert!(h.summary_range().end <= segment_size as usize);
            prop_assert!(h.used_len() <= round_up_page(segment_size as usize));
        }
    }

    #[test]
    fn prop_resealed_record_edits(
        edits in proptest::collection::vec((0usize..60, any::<u8>()), 1..6),
    ) {
        let mut rec = record(RecordKind::Batch, 3, b"a body of some bytes");
        for (at, v) in edits {
            rec[at] = v;
        }
        reseal_record(&mut rec);
        let _ = decode_record_header(&rec, &STORE);
        if let Ok((h, body)) = verify_record(&rec, &STORE) {
            let again = record(h.kind, h.rec_no, body);
            prop_assert_eq!(&again[..48 + body.len()], &rec[..48 + body.len()]);
        }
    }

    #[test]
    fn prop_batches_round_trip(
        items in proptest::collection::vec(item_strategy(), 0..30),
        rec_no in any::<u64>(),
    ) {
        let mut b = BatchBuilder::new();
        let want: Vec<BatchItem<'_>> = items.iter().map(OwnedItem::borrow).collect();
        for item in &want {
            b.push_item(item);
        }
        prop_assert_eq!(&decode_batch(b.body()).unwrap(), &want);
        let mut out = Vec::new();
        encode_record(RecordKind::Batch, rec_no, &STORE, b.body(), &mut out);
        prop_assert_eq!(out.len(), record_len(b.len()));
        let (h, body) = verify_record(&out, &STORE).unwrap();
        prop_assert_eq!(h, RecordHeader { kind: RecordKind::Batch, rec_no, body_len: b.len() as u32 });
        prop_assert_eq!(decode_batch(body).unwrap(), want);
    }

    #[test]
    fn prop_checkpoints_round_trip(c in checkpoint_strategy()) {
        c.validate().unwrap();
        let body = c.encode();
        prop_assert_eq!(&Checkpoint::decode(&body).unwrap(), &c);
        let rec = record(RecordKind::Checkpoint, 1, &body);
        let (_, b) = verify_record(&rec, &STORE).unwrap();
        prop_assert_eq!(Checkpoint::decode(b).unwrap(), c);
    }

    #[test]
    fn prop_summaries_round_trip(
        raw in proptest::collection::vec(
            (any::<[u8; 32]>(), any::<bool>(), 1..=MAX_ENTRY_LEN),
            0..50,
        ),
        seq in any::<u64>(),
    ) {
        let mut off = PAGE as u32;
        let mut entries = Vec::new();
        for (f, node, len) in raw {
            let mut f = f;
            f[0] |= 1; // never the zero fingerprint
            entries.push(SummaryEntry {
                fingerprint: Fingerprint::from_bytes(f),
                kind: if node { EntryKind::MapNode } else { EntryKind::Frame },
                offset: off,
                len,
            });
            off += len;
        }
        let mut summary = Vec::new();
        encode_summary(&entries, &mut summary);
        let h = SegmentHeader {
            seq,
            frames_len: off - PAGE as u32,
            entry_count: entries.len() as u32,
            summary_checksum: xxh3_64(&summary),
        };
        let size = h.used_len() as u32;
        let d = SegmentHeader::decode(&h.encode(&STORE), &STORE, size).unwrap();
        prop_assert_eq!(d, h);
        prop_assert_eq!(decode_summary(&summary, &d).unwrap(), entries);
    }
}

#[test]
fn split_frame_entries_checked() {
    let area = 3 * PAGE as u32;
    let body = SummaryEntry {
        fingerprint: fp(9),
        kind: EntryKind::FrameBody,
        offset: 2 * PAGE as u32,
        len: BLOCK_SIZE as u32,
    };
    let tail = SummaryEntry {
        kind: EntryKind::FrameTail,
        offset: PAGE as u32 + 7,
        len: SPLIT_TAIL_LEN as u32,
        ..body
    };
    assert_eq!(decode_one(&body, None, area).unwrap(), vec![body]);
    assert_eq!(decode_one(&tail, None, area).unwrap(), vec![tail]);
    let reason = |e: SummaryEntry| match decode_one(&e, None, area) {
        Err(OndiskError::BadEntry { reason, .. }) => reason,
        other => panic!("{e:?}: {other:?}"),
    };
    for len in [BLOCK_SIZE as u32 - 1, BLOCK_SIZE as u32 + 1, 100] {
        assert_eq!(
            reason(SummaryEntry { len, ..body }),
            "a frame body is not one block long"
        );
    }
    for offset in [PAGE as u32 + 512, 2 * PAGE as u32 - 1] {
        assert_eq!(
            reason(SummaryEntry { offset, ..body }),
            "a frame body not on a page boundary"
        );
    }
    for len in [1, SPLIT_TAIL_LEN as u32 - 1, SPLIT_TAIL_LEN as u32 + 1] {
        assert_eq!(
            reason(SummaryEntry { len, ..tail }),
            "a frame tail of the wrong length"
        );
    }
}
