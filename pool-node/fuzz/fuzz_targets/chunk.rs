//! Chunk files read back from the pool's drives: any bytes are either the
//! asked-for chunk's payload or an error, never a panic; and a real chunk
//! damaged where the input says never reads back as other bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_pool::drives::{decode_chunk, encode_chunk, ChunkId};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let chunk = ChunkId {
        stripe: u64::from(mode) * 977,
        gen: u16::from(mode % 3),
        index: usize::from(mode % 6),
    };
    if mode % 2 == 0 {
        if let Ok(payload) = decode_chunk(rest, chunk, rest.len().saturating_sub(32)) {
            assert!(
                encode_chunk(chunk, payload) == rest,
                "an accepted chunk is not canonical"
            );
        }
        return;
    }
    let (payload, edits) = rest.split_at(rest.len() / 2);
    let mut image = encode_chunk(chunk, payload);
    assert_eq!(decode_chunk(&image, chunk, payload.len()), Ok(payload));
    for edit in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % image.len();
        image[at] ^= edit[2];
    }
    if let Ok(found) = decode_chunk(&image, chunk, payload.len()) {
        assert!(found == payload, "a damaged chunk read back as other bytes");
    }
});
