//! A datastore's key file, read from disk at every start: any bytes give
//! the keys or a clear error, never a panic. The input is the file's bytes;
//! a file written by the key code itself, damaged where the input says (and
//! for half the inputs with its checksum recomputed, so the damage meets
//! the master key check and the wrapping tags), is the second case, and it
//! never yields keys other than the ones written.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_common::keys::{decode_key_file, encode_key_file, MasterKey, KEY_FILE_LEN};
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
    if bytes.len() % 2 == 1 {
        // The file ends with the first 16 bytes of the BLAKE3 of the rest.
        let at = KEY_FILE_LEN - 16;
        let sum = blake3::hash(&file[..at]);
        file[at..].copy_from_slice(&sum.as_bytes()[..16]);
    }
    if let Ok(found) = decode_key_file(&file, DATASTORE, &master, path) {
        assert!(
            found.data_key == keys.data_key && found.dedupe_key == keys.dedupe_key,
            "a damaged key file gave other keys"
        );
    }
});
