//! A datastore's key file, read from disk at every start: any bytes give
//! the keys or a clear error, never a panic. The input is the file's bytes;
//! a file written by the key code itself, damaged where the input says, is
//! the second case, and it never yields keys other than the ones written.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_common::keys::{decode_key_file, encode_key_file, MasterKey};
use strata_common::FrameKeys;

const DATASTORE: &str = "fuzz";

fuzz_target!(|input: &[u8]| {
    let master = MasterKey::from_bytes([1; 32]);
    let path = Path::new("fuzz.key");
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = decode_key_file(bytes, DATASTORE, &master, path);
        return;
    }
    let keys = FrameKeys {
        data_key: [2; 32],
        dedupe_key: [4; 32],
    };
    let nonces = [6; 24];
    let mut file = encode_key_file(
        &keys.data_key,
        &keys.dedupe_key,
        &nonces,
        DATASTORE,
        &master,
        path,
    )
    .expect("keys encode");
    for edit in bytes.chunks_exact(2) {
        let at = usize::from(edit[0]) % file.len();
        file[at] ^= edit[1];
    }
    if let Ok(found) = decode_key_file(&file, DATASTORE, &master, path) {
        assert!(
            found.data_key == keys.data_key && found.dedupe_key == keys.dedupe_key,
            "a damaged key file gave other keys"
        );
    }
});
