//! The host flash store's superblock (page 0), read at every start: never
//! a panic, and a superblock that decodes is valid and re-encodes to one
//! that decodes the same. With an odd mode byte the page's checksum is
//! recomputed first, so the fuzzer reaches the checks of every field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::ondisk::{Superblock, PAGE};
use xxhash_rust::xxh3::xxh3_64;

/// The page's checksum: its last 8 bytes, over the rest.
const CHECKSUM_AT: usize = PAGE - 8;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut page = bytes.to_vec();
    if mode % 2 == 1 {
        page.resize(PAGE, 0);
        let sum = xxh3_64(&page[..CHECKSUM_AT]);
        page[CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
    }
    if let Ok(superblock) = Superblock::decode(&page) {
        superblock
            .validate()
            .expect("a decoded superblock is valid");
        let again =
            Superblock::decode(&superblock.encode()).expect("a re-encoded superblock decodes");
        assert_eq!(
            again, superblock,
            "a superblock changed across encode and decode"
        );
    }
});
