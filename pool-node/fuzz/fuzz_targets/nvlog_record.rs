//! NVLOG records read back from the pool's log at start-up and replay: any
//! bytes parse as a record or an error, never a panic, and an accepted
//! record is exactly what encoding its number and payload gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_pool::nvlog::{encode_record, parse_record, record_bytes};

fuzz_target!(|bytes: &[u8]| {
    if let Ok((seq, len)) = parse_record(bytes) {
        let header = (record_bytes(0)) as usize;
        let payload = &bytes[header..header + len as usize];
        let mut again = Vec::new();
        encode_record(seq, payload, &mut again);
        assert!(
            again == bytes[..again.len()],
            "an accepted record is not canonical"
        );
    }
});
