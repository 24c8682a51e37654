//! Frames read back from flash or fetched from the pool. Two inputs:
//!
//! * arbitrary bytes as a frame, with the fingerprint the map expects taken
//!   from the input too: decoding never panics, and a failed decode leaves
//!   the output block zeroed;
//! * a real frame of a block made from the input, then damaged at offsets
//!   and with values the input chooses (and, for a third of the inputs,
//!   its xxh3 recomputed, so the damage meets the header, tag and
//!   fingerprint checks behind it): decoding either fails or returns
//!   exactly the original block, never other bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::{Encoded, Fingerprint, FrameCodec, FrameHeader, FrameKeys, BLOCK_SIZE};
use xxhash_rust::xxh3::xxh3_64;

const KEYS: FrameKeys = FrameKeys {
    data_key: [7; 32],
    dedupe_key: [9; 32],
};

fuzz_target!(|input: &[u8]| {
    let codec = FrameCodec::new(&KEYS);
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut out = [0u8; BLOCK_SIZE];
    if mode % 2 == 0 {
        let Some((fp, frame)) = rest.split_first_chunk::<32>() else {
            return;
        };
        let _ = FrameHeader::parse(frame);
        let _ = strata_common::verify_checksum(frame);
        if codec
            .decode(frame, &Fingerprint::from_bytes(*fp), &mut out)
            .is_err()
        {
            assert!(
                out.iter().all(|&b| b == 0),
                "a failed decode left bytes behind"
            );
        }
        return;
    }
    // The block: a short pattern from the input, repeated (so both
    // compressible and incompressible blocks occur), then edits.
    let (pattern, edits) = rest.split_at(rest.len().min(64));
    let mut block = [0u8; BLOCK_SIZE];
    if !pattern.is_empty() {
        for (i, b) in block.iter_mut().enumerate() {
            *b = pattern[i % pattern.len()].wrapping_add((i / pattern.len()) as u8 & mode);
        }
    }
    let mut frame = Vec::new();
    let fp = match codec.encode(&block, &mut frame) {
        Ok(Encoded::Frame(fp)) => fp,
        Ok(Encoded::Zero) => return,
        Err(e) => panic!("encoding a block failed: {e}"),
    };
    codec
        .decode(&frame, &fp, &mut out)
        .expect("an undamaged frame decodes");
    assert!(out == block, "an undamaged frame decoded to other bytes");
    // Each edit: two bytes of offset, one byte to XOR in.
    for edit in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % frame.len();
        frame[at] ^= edit[2];
    }
    match edits.len() % 3 {
        1 => frame.truncate(frame.len() - 1),
        2 => {
            // The frame's last 8 bytes are the xxh3 of the rest.
            let at = frame.len() - 8;
            let sum = xxh3_64(&frame[..at]);
            frame[at..].copy_from_slice(&sum.to_le_bytes());
        }
        _ => {}
    }
    if codec.decode(&frame, &fp, &mut out).is_ok() {
        assert!(out == block, "a damaged frame decoded to other bytes");
    } else {
        assert!(
            out.iter().all(|&b| b == 0),
            "a failed decode left bytes behind"
        );
    }
});
