//! Labels read from the first bytes of a device drive, which may hold
//! anything (a disk that was never the pool's, damage): any bytes decode
//! to a label, to "no label", or to an error, never a panic; an accepted
//! label is exactly what encoding it gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_pool::drives::{decode_label, encode_label};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some(label)) = decode_label(bytes) {
        let again = encode_label(&label);
        assert!(
            bytes[..again.len()] == again,
            "an accepted label is not canonical"
        );
    }
});
