//! Journal records read back from the host's flash at restart. Never a
//! panic for any bytes, and what decodes re-encodes to the same thing:
//! record framing (header, checksum, store id), batch bodies and
//! checkpoint bodies. The first byte is a mode: with an odd one the
//! record's checksum is recomputed before framing is checked, so the fuzzer
//! gets past it; with an even one the bytes are checked as they are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::ondisk::{
    decode_batch, decode_record_header, encode_record, verify_record, BatchBuilder, Checkpoint,
    RECORD_HEADER_LEN,
};
use xxhash_rust::xxh3::Xxh3;

const STORE: [u8; 16] = [3; 16];
/// Where a record header keeps its body length and its checksum (of the
/// header before it and the body).
const BODY_LEN_AT: usize = 16;
const CHECKSUM_AT: usize = RECORD_HEADER_LEN - 8;

/// `bytes` with the record checksum recomputed over what the header claims.
fn resealed(bytes: &[u8]) -> Vec<u8> {
    let mut record = bytes.to_vec();
    if record.len() >= RECORD_HEADER_LEN {
        let claimed = u32::from_le_bytes(record[BODY_LEN_AT..BODY_LEN_AT + 4].try_into().unwrap());
        let body_end = (RECORD_HEADER_LEN + claimed as usize).min(record.len());
        let mut sum = Xxh3::new();
        sum.update(&record[..CHECKSUM_AT]);
        sum.update(&record[RECORD_HEADER_LEN..body_end]);
        record[CHECKSUM_AT..RECORD_HEADER_LEN].copy_from_slice(&sum.digest().to_le_bytes());
    }
    record
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, bytes)) = bytes.split_first() else {
        return;
    };
    let record = if mode % 2 == 1 {
        resealed(bytes)
    } else {
        bytes.to_vec()
    };
    let _ = decode_record_header(&record, &STORE);
    if let Ok((header, body)) = verify_record(&record, &STORE) {
        let mut again = Vec::new();
        encode_record(header.kind, header.rec_no, &STORE, body, &mut again);
        let (header_again, body_again) =
            verify_record(&again, &STORE).expect("a re-encoded record verifies");
        assert_eq!(
            (header_again, body_again),
            (header, body),
            "a record changed"
        );
    }

    if let Ok(items) = decode_batch(bytes) {
        let mut builder = BatchBuilder::new();
        for item in &items {
            builder.push_item(item);
        }
        let again = decode_batch(builder.body()).expect("a rebuilt batch decodes");
        assert_eq!(again, items, "a batch changed across encode and decode");
    }

    if let Ok(checkpoint) = Checkpoint::decode(bytes) {
        checkpoint
            .validate()
            .expect("a decoded checkpoint is valid");
        let again = Checkpoint::decode(&checkpoint.encode()).expect("a checkpoint re-decodes");
        assert_eq!(
            again, checkpoint,
            "a checkpoint changed across encode and decode"
        );
    }
});
