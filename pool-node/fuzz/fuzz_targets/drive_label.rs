//! Labels read from the first bytes of a device drive or a directory
//! drive's label file, which may hold anything (a disk that was never the
//! pool's, damage): any bytes decode to a label, to "no label", or to an
//! error, never a panic; an accepted label is exactly what encoding it
//! gives. Inputs whose first byte is odd get the label's magic and a right
//! checksum first, so the fuzzer reaches the field checks behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_pool::drives::{decode_label, encode_label};
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode % 2 == 1 && bytes.len() >= 48 {
        bytes[..8].copy_from_slice(b"STRDRV01");
        let checksum = xxh3_64(&bytes[..40]);
        bytes[40..48].copy_from_slice(&checksum.to_le_bytes());
    }
    if let Ok(Some(label)) = decode_label(&bytes) {
        let again = encode_label(&label);
        assert!(
            bytes[..again.len()] == again,
            "an accepted label is not canonical"
        );
    }
});
