//! Segment headers and summaries read back from the host's flash at
//! restart or by the cleaner: never a panic, and what decodes re-encodes
//! to the same thing. The input is a mode byte, then a header page followed
//! by a summary. With an odd mode the header's checksum and the summary
//! checksum it holds are recomputed first, so the fuzzer reaches the checks
//! of every field behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::ondisk::{decode_summary, encode_summary, SegmentHeader, SEGMENT_HEADER_LEN};
use xxhash_rust::xxh3::xxh3_64;

const STORE: [u8; 16] = [5; 16];
const SEGMENT_SIZE: u32 = 4 << 20;
/// Where the header's own checksum starts, and where its summary checksum
/// is (docs/ARCHITECTURE.md, "Segment").
const HEADER_CHECKSUM_AT: usize = SEGMENT_HEADER_LEN - 8;
const SUMMARY_CHECKSUM_AT: usize = 40;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode % 2 == 1 && bytes.len() >= SEGMENT_HEADER_LEN {
        let summary_sum = xxh3_64(&bytes[SEGMENT_HEADER_LEN..]);
        bytes[SUMMARY_CHECKSUM_AT..HEADER_CHECKSUM_AT].copy_from_slice(&summary_sum.to_le_bytes());
        let sum = xxh3_64(&bytes[..HEADER_CHECKSUM_AT]);
        bytes[HEADER_CHECKSUM_AT..SEGMENT_HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    }
    let Ok(header) = SegmentHeader::decode(&bytes, &STORE, SEGMENT_SIZE) else {
        return;
    };
    let again = SegmentHeader::decode(&header.encode(&STORE), &STORE, SEGMENT_SIZE)
        .expect("a re-encoded header decodes");
    assert_eq!(again, header, "a segment header changed");
    let summary = &bytes[SEGMENT_HEADER_LEN..];
    if let Ok(entries) = decode_summary(summary, &header) {
        let mut encoded = Vec::new();
        encode_summary(&entries, &mut encoded);
        let again = decode_summary(&encoded, &header).expect("a re-encoded summary decodes");
        assert_eq!(again, entries, "a summary changed across encode and decode");
    }
});
