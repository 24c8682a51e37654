use super::*;
// The tests seal and open frames by hand with the RustCrypto implementation
// of the same RFC, so the format does not depend on the backend.
use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: FrameKeys = FrameKeys {
    data_key: [0x11; 32],
    dedupe_key: [0x22; 32],
};

fn codec() -> FrameCodec {
    FrameCodec::new(&KEYS)
}

/// Deterministic pseudo-random bytes.
fn random_block(seed: u64) -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    StdRng::seed_from_u64(seed).fill_bytes(&mut b);
    b
}

fn text_block(seed: u64) -> [u8; BLOCK_SIZE] {
    let words = [
        "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog ", "strata ",
        "block ", "frame ", "\n",
    ];
    let r = random_block(seed);
    let mut v = Vec::with_capacity(BLOCK_SIZE + 16);
    let mut i = 0;
    while v.len() < BLOCK_SIZE {
        v.extend_from_slice(words[r[i % BLOCK_SIZE] as usize % words.len()].as_bytes());
        i += 1;
    }
    let mut b = [0u8; BLOCK_SIZE];
    b.copy_from_slice(&v[..BLOCK_SIZE]);
    b
}

fn encode(c: &FrameCodec, block: &[u8; BLOCK_SIZE]) -> (Vec<u8>, Fingerprint) {
    let mut out = Vec::new();
    match c.encode(block, &mut out) {
        Ok(Encoded::Frame(fp)) => (out, fp),
        other => panic!("encode gave {other:?}"),
    }
}

fn decode(c: &FrameCodec, frame: &[u8], fp: &Fingerprint) -> Result<[u8; BLOCK_SIZE], FrameError> {
    let mut out = [0xaa; BLOCK_SIZE];
    match c.decode(frame, fp, &mut out) {
        Ok(()) => Ok(out),
        Err(e) => {
            assert!(out.iter().all(|&b| b == 0), "out not zeroed on error {e}");
            Err(e)
        }
    }
}

/// Recomputes the trailing checksum, as a forger would.
fn reseal(frame: &mut [u8]) {
    let n = frame.len() - CHECKSUM_LEN;
    let sum = xxh3_64(&frame[..n]);
    frame[n..].copy_from_slice(&sum.to_le_bytes());
}

/// Builds a correctly encrypted and checksummed frame around any body, to
/// reach the checks after the tag.
fn seal(fp: &Fingerprint, compressed: bool, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        compressed,
        fingerprint: *fp,
        payload_len: body.len() + TAG_LEN,
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(body);
    let (head, body) = out.split_at_mut(HEADER_LEN);
    let tag = Aes256GcmSiv::new(&KEYS.data_key.into())
        .encrypt_in_place_detached(&Nonce::from(nonce(fp)), head, body)
        .expect("encrypt");
    out.extend_from_slice(&tag);
    out.extend_from_slice(&[0; CHECKSUM_LEN]);
    reseal(&mut out);
    out
}

#[test]
fn round_trip_unique_blocks() {
    let c = codec();
    for seed in 0..32 {
        let b = random_block(seed);
        let (frame, fp) = encode(&c, &b);
        assert_eq!(fp, c.fingerprint(&b));
        assert_eq!(
            frame.len(),
            MAX_FRAME_LEN,
            "random data is stored uncompressed"
        );
        let h = verify_checksum(&frame).expect("checksum");
        assert!(!h.compressed);
        assert_eq!(h.fingerprint, fp);
        assert_eq!(decode(&c, &frame, &fp).expect("decode"), b);
    }
}

#[test]
fn round_trip_text_compresses() {
    let c = codec();
    for seed in 0..32 {
        let b = text_block(seed);
        let (frame, fp) = encode(&c, &b);
        let h = verify_checksum(&frame).expect("checksum");
        assert!(h.compressed);
        assert!(frame.len() < 3000, "text frame is {} bytes", frame.len());
        assert_eq!(decode(&c, &frame, &fp).expect("decode"), b);
    }
}

#[test]
fn round_trip_edge_blocks() {
    let c = codec();
    let mut one = [0u8; BLOCK_SIZE];
    one[4095] = 1;
    for b in [one, [0xff; BLOCK_SIZE], [1; BLOCK_SIZE]] {
        let (frame, fp) = encode(&c, &b);
        assert_eq!(decode(&c, &frame, &fp).expect("decode"), b);
    }
}

#[test]
fn duplicates_give_identical_frames() {
    let c = codec();
    for b in [random_block(5), text_block(5)] {
        let (f1, fp1) = encode(&c, &b);
        let (f2, fp2) = encode(&FrameCodec::new(&KEYS), &b);
        assert_eq!(fp1, fp2);
        assert_eq!(f1, f2);
    }
    let (fa, _) = encode(&c, &random_block(1));
    let (fb, _) = encode(&c, &random_block(2));
    assert_ne!(fa, fb);
}

#[test]
fn keys_change_fingerprint_and_ciphertext() {
    let b = text_block(9);
    let (f0, fp0) = encode(&codec(), &b);
    let other_dedupe = FrameCodec::new(&FrameKeys {
        dedupe_key: [0x33; 32],
        ..KEYS
    });
    let (f1, fp1) = encode(&other_dedupe, &b);
    assert_ne!(fp0, fp1);
    assert_ne!(f0[HEADER_LEN..], f1[HEADER_LEN..]);
    let other_data = FrameCodec::new(&FrameKeys {
        data_key: [0x44; 32],
        ..KEYS
    });
    let (f2, fp2) = encode(&other_data, &b);
    assert_eq!(fp0, fp2);
    assert_eq!(f0[..HEADER_LEN], f2[..HEADER_LEN]);
    assert_ne!(f0[HEADER_LEN..], f2[HEADER_LEN..]);
    // Ciphertext is not the plaintext or the snappy stream.
    let (fu, _) = encode(&codec(), &random_block(3));
    assert_ne!(fu[HEADER_LEN..HEADER_LEN + BLOCK_SIZE], random_block(3));
}

#[test]
fn zero_block_is_never_encoded() {
    let c = codec();
    let mut out = vec![1, 2, 3];
    let e = c.encode(&[0; BLOCK_SIZE], &mut out).expect("encode");
    assert_eq!(e, Encoded::Zero);
    assert_eq!(e.fingerprint(), Fingerprint::ZERO);
    assert_eq!(out, [1, 2, 3]);
    let r = c.encode_fingerprinted(&[0; BLOCK_SIZE], &Fingerprint::ZERO, &mut out);
    assert!(matches!(r, Err(FrameError::ZeroBlock)));
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn encode_appends() {
    let c = codec();
    let (a, b) = (text_block(1), random_block(1));
    let mut out = vec![9; 5];
    let fa = c.encode(&a, &mut out).expect("a").fingerprint();
    let mid = out.len();
    let fb = c.encode(&b, &mut out).expect("b").fingerprint();
    assert_eq!(out[..5], [9; 5]);
    assert_eq!(decode(&c, &out[5..mid], &fa).expect("a"), a);
    assert_eq!(decode(&c, &out[mid..], &fb).expect("b"), b);
    let h = FrameHeader::parse(&out[5..]).expect("header inside a longer buffer");
    assert_eq!(h.frame_len(), mid - 5);
}

#[test]
fn encode_fingerprinted_with_wrong_fingerprint_fails_decode() {
    let c = codec();
    let b = text_block(2);
    let wrong = c.fingerprint(&text_block(3));
    let mut out = Vec::new();
    c.encode_fingerprinted(&b, &wrong, &mut out)
        .expect("encode");
    assert!(matches!(
        decode(&c, &out, &wrong),
        Err(FrameError::ContentMismatch { .. })
    ));
    // Sealed with the key, such a frame is authentic to the tag: only the
    // full decode, the one frames from outside the store get, catches it.
    let mut block = [0u8; BLOCK_SIZE];
    c.decode_authenticated(&out, &wrong, &mut block)
        .expect("authentic");
    assert_eq!(block, b);
}

#[test]
fn decode_authenticated_checks_everything_but_the_content_hash() {
    let c = codec();
    for b in [text_block(21), random_block(21)] {
        let (frame, fp) = encode(&c, &b);
        let mut block = [0u8; BLOCK_SIZE];
        c.decode_authenticated(&frame, &fp, &mut block)
            .expect("decode");
        assert_eq!(block, b);
        // Every flipped byte, and another expected fingerprint, fail, and
        // leave no plaintext behind.
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x04;
            let mut block = [0xaa; BLOCK_SIZE];
            assert!(
                c.decode_authenticated(&bad, &fp, &mut block).is_err(),
                "byte {at}"
            );
            assert_eq!(block, [0; BLOCK_SIZE]);
        }
        let other = c.fingerprint(&text_block(22));
        assert!(matches!(
            c.decode_authenticated(&frame, &other, &mut block),
            Err(FrameError::WrongFingerprint { .. })
        ));
        let wrong_data = FrameCodec::new(&FrameKeys {
            data_key: [0x55; 32],
            ..KEYS
        });
        assert!(matches!(
            wrong_data.decode_authenticated(&frame, &fp, &mut block),
            Err(FrameError::Decrypt)
        ));
    }
}

#[test]
fn truncated_and_extended_frames_fail() {
    let c = codec();
    for b in [text_block(4), random_block(4)] {
        let (frame, fp) = encode(&c, &b);
        for n in 0..frame.len() {
            let e = decode(&c, &frame[..n], &fp).expect_err("truncated");
            assert!(verify_checksum(&frame[..n]).is_err());
            if n < HEADER_LEN {
                assert!(matches!(e, FrameError::Truncated { .. }), "{n}: {e}");
            } else {
                assert!(matches!(e, FrameError::LengthMismatch { .. }), "{n}: {e}");
            }
        }
        let mut longer = frame.clone();
        longer.push(0);
        assert!(matches!(
            decode(&c, &longer, &fp),
            Err(FrameError::LengthMismatch { .. })
        ));
    }
}

/// Which error a flipped bit at `i` must give when the checksum is not
/// recomputed.
fn check_flip(i: usize, len: usize, e: &FrameError) {
    let ok = match i {
        0..=3 => matches!(e, FrameError::BadMagic { .. }),
        4 => matches!(e, FrameError::UnsupportedVersion { .. }),
        // Bit 0 of the flags is the compressed flag, which the payload
        // length then contradicts.
        5 => matches!(
            e,
            FrameError::BadFlags { .. } | FrameError::BadPayloadLen { .. }
        ),
        6..=7 => matches!(e, FrameError::BadFlags { .. }),
        40..=43 => matches!(e, FrameError::BadPlaintextLen { .. }),
        44..=47 => matches!(
            e,
            FrameError::BadPayloadLen { .. } | FrameError::LengthMismatch { .. }
        ),
        _ if i < len => matches!(e, FrameError::ChecksumMismatch { .. }),
        _ => false,
    };
    assert!(ok, "byte {i}: {e}");
}

#[test]
fn every_flipped_bit_is_caught() {
    let c = codec();
    for b in [text_block(6), random_block(6)] {
        let (frame, fp) = encode(&c, &b);
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[i] ^= 1 << bit;
                let e = decode(&c, &f, &fp).expect_err("flipped");
                check_flip(i, frame.len(), &e);
                let k = verify_checksum(&f).expect_err("flipped");
                check_flip(i, frame.len(), &k);
            }
        }
    }
}

#[test]
fn forged_flips_with_recomputed_checksum_are_caught() {
    let c = codec();
    for b in [text_block(7), random_block(7)] {
        let (frame, fp) = encode(&c, &b);
        let tail = frame.len() - CHECKSUM_LEN;
        for i in 0..tail {
            let mut f = frame.clone();
            f[i] ^= 0x04;
            reseal(&mut f);
            let e = decode(&c, &f, &fp).expect_err("forged");
            let ok = match i {
                0..=7 | 40..=47 => !matches!(e, FrameError::ChecksumMismatch { .. }),
                8..=39 => matches!(e, FrameError::WrongFingerprint { .. }),
                _ => matches!(e, FrameError::Decrypt),
            };
            assert!(ok, "byte {i}: {e}");
            if (8..40).contains(&i) {
                // Even asking for the forged fingerprint fails the tag.
                let forged = FrameHeader::parse(&f).expect("header").fingerprint;
                assert!(matches!(decode(&c, &f, &forged), Err(FrameError::Decrypt)));
            }
        }
    }
}

#[test]
fn swapped_headers_fail() {
    let c = codec();
    let (fa, pa) = encode(&c, &random_block(10));
    let (fb, pb) = encode(&c, &random_block(11));
    let mut f = fb.clone();
    f[..HEADER_LEN].copy_from_slice(&fa[..HEADER_LEN]);
    reseal(&mut f);
    assert!(matches!(decode(&c, &f, &pa), Err(FrameError::Decrypt)));
    assert!(matches!(
        decode(&c, &f, &pb),
        Err(FrameError::WrongFingerprint { .. })
    ));
}

#[test]
fn wrong_keys_and_fingerprints_fail() {
    let b = text_block(12);
    let (frame, fp) = encode(&codec(), &b);
    let wrong_data = FrameCodec::new(&FrameKeys {
        data_key: [0x55; 32],
        ..KEYS
    });
    assert!(matches!(
        decode(&wrong_data, &frame, &fp),
        Err(FrameError::Decrypt)
    ));
    let wrong_dedupe = FrameCodec::new(&FrameKeys {
        dedupe_key: [0x55; 32],
        ..KEYS
    });
    assert!(matches!(
        decode(&wrong_dedupe, &frame, &fp),
        Err(FrameError::ContentMismatch { .. })
    ));
    let other = codec().fingerprint(&text_block(13));
    assert!(matches!(
        decode(&codec(), &frame, &other),
        Err(FrameError::WrongFingerprint { .. })
    ));
    assert!(matches!(
        decode(&codec(), &frame, &Fingerprint::ZERO),
        Err(FrameError::WrongFingerprint { .. })
    ));
    // The key-less check passes whatever the keys.
    assert_eq!(verify_checksum(&frame).expect("checksum").fingerprint, fp);
}

#[test]
fn bad_header_fields_are_named() {
    let c = codec();
    let (frame, fp) = encode(&c, &text_block(14));
    let with = |at: usize, bytes: &[u8]| {
        let mut f = frame.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        reseal(&mut f);
        (
            decode(&c, &f, &fp).expect_err("bad header"),
            verify_checksum(&f).expect_err("bad header"),
        )
    };
    for (at, bytes) in [
        (44, u32::MAX.to_le_bytes()),
        (44, 0u32.to_le_bytes()),
        (44, 16u32.to_le_bytes()),
        (44, 4112u32.to_le_bytes()),
    ] {
        let (e, k) = with(at, &bytes);
        assert!(matches!(e, FrameError::BadPayloadLen { .. }), "{e}");
        assert!(matches!(k, FrameError::BadPayloadLen { .. }), "{k}");
    }
    for v in [0u8, 2, 255] {
        let (e, _) = with(4, &[v]);
        assert!(
            matches!(e, FrameError::UnsupportedVersion { found } if found == v),
            "{e}"
        );
    }
    let (e, _) = with(40, &u32::MAX.to_le_bytes());
    assert!(
        matches!(e, FrameError::BadPlaintextLen { len: u32::MAX }),
        "{e}"
    );
    let (e, _) = with(0, b"XXXX");
    assert!(
        matches!(e, FrameError::BadMagic { found } if &found == b"XXXX"),
        "{e}"
    );
    let (e, _) = with(5, &[0x80]);
    assert!(matches!(e, FrameError::BadFlags { flags: 0x80, .. }), "{e}");
    let (e, _) = with(6, &[0, 1]);
    assert!(
        matches!(
            e,
            FrameError::BadFlags {
                reserved: 0x100,
                ..
            }
        ),
        "{e}"
    );
    let (e, _) = with(8, &[0; 32]);
    assert!(matches!(e, FrameError::ReservedFingerprint), "{e}");
    // Clearing the compressed flag of a compressed frame.
    let (e, _) = with(5, &[0]);
    assert!(
        matches!(
            e,
            FrameError::BadPayloadLen {
                compressed: false,
                ..
            }
        ),
        "{e}"
    );
    // Huge payload length on a stored frame too.
    let (sf, sfp) = encode(&c, &random_block(14));
    let mut f = sf.clone();
    f[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut f);
    assert!(matches!(
        decode(&c, &f, &sfp),
        Err(FrameError::BadPayloadLen { .. })
    ));
}

#[test]
fn authenticated_but_bad_bodies_fail() {
    let c = codec();
    let b = text_block(15);
    let fp = c.fingerprint(&b);
    // Not a snappy stream.
    let f = seal(&fp, true, &[0xff; 20]);
    assert!(matches!(
        decode(&c, &f, &fp),
        Err(FrameError::Decompress(_))
    ));
    // A valid snappy stream of the wrong length.
    let short = snap::raw::Encoder::new()
        .compress_vec(&b[..100])
        .expect("snappy");
    let f = seal(&fp, true, &short);
    assert!(matches!(
        decode(&c, &f, &fp),
        Err(FrameError::DecompressedLen { len: 100 })
    ));
    // A stream whose length prefix says 4096 but whose data is short.
    let mut lying = short.clone();
    lying[0] = 0x80;
    lying.insert(1, 0x20);
    let f = seal(&fp, true, &lying);
    assert!(matches!(
        decode(&c, &f, &fp),
        Err(FrameError::Decompress(_))
    ));
    // Another block under this fingerprint, compressed and stored.
    let other = snap::raw::Encoder::new()
        .compress_vec(&text_block(16))
        .expect("snappy");
    let f = seal(&fp, true, &other);
    assert!(matches!(
        decode(&c, &f, &fp),
        Err(FrameError::ContentMismatch { .. })
    ));
    let f = seal(&fp, false, &[0; BLOCK_SIZE]);
    assert!(matches!(
        decode(&c, &f, &fp),
        Err(FrameError::ContentMismatch { .. })
    ));
    // The genuine body sealed by hand decodes: the helper is faithful.
    let good = snap::raw::Encoder::new().compress_vec(&b).expect("snappy");
    assert_eq!(decode(&c, &seal(&fp, true, &good), &fp).expect("decode"), b);
}

#[test]
fn debug_never_shows_keys() {
    let s = format!("{KEYS:?} {:?}", codec());
    assert!(
        !s.contains("17") && !s.contains("34") && !s.contains("11"),
        "{s}"
    );
}

#[test]
fn layout_is_as_documented() {
    let c = codec();
    let b = text_block(17);
    let (f, fp) = encode(&c, &b);
    assert_eq!(&f[0..4], b"STFR");
    assert_eq!(f[4], 1);
    assert_eq!(f[5], FLAG_COMPRESSED);
    assert_eq!(&f[6..8], &[0, 0]);
    assert_eq!(&f[8..40], fp.as_bytes());
    assert_eq!(&f[40..44], &4096u32.to_le_bytes());
    let p = u32::from_le_bytes([f[44], f[45], f[46], f[47]]) as usize;
    assert_eq!(f.len(), 48 + p + 8);
    let sum = u64::from_le_bytes(f[48 + p..].try_into().expect("8 bytes"));
    assert_eq!(sum, xxh3_64(&f[..48 + p]));
    // The payload is the GCM-SIV of the snappy stream with nonce = fp[..12]
    // and the header as associated data.
    let mut body = f[48..48 + p - 16].to_vec();
    Aes256GcmSiv::new(&KEYS.data_key.into())
        .decrypt_in_place_detached(
            Nonce::from_slice(&fp.as_bytes()[..12]),
            &f[..48],
            &mut body,
            Tag::from_slice(&f[48 + p - 16..48 + p]),
        )
        .expect("decrypt by hand");
    assert_eq!(
        snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy"),
        b
    );
}

fn block_strategy() -> impl Strategy<Value = [u8; BLOCK_SIZE]> {
    let anything = proptest::collection::vec(any::<u8>(), BLOCK_SIZE);
    let small_alphabet = proptest::collection::vec(0u8..4, BLOCK_SIZE);
    let sparse = proptest::collection::vec((0usize..BLOCK_SIZE, any::<u8>()), 0..8).prop_map(|w| {
        let mut v = vec![0u8; BLOCK_SIZE];
        for (i, x) in w {
            v[i] = x;
        }
        v
    });
    prop_oneof![anything, small_alphabet, sparse].prop_map(|v| {
        let mut b = [0u8; BLOCK_SIZE];
        b.copy_from_slice(&v);
        b
    })
}

proptest! {
    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let c = codec();
        let fp = c.fingerprint(&random_block(1));
        let _ = verify_checksum(&bytes);
        let _ = FrameHeader::parse(&bytes);
        prop_assert!(decode(&c, &bytes, &fp).is_err());
    }

    #[test]
    fn prop_arbitrary_after_valid_header_never_panic(
        compressed in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 1..=BLOCK_SIZE),
        reseal_it in any::<bool>(),
    ) {
        // A well-formed header on random payload, checksum right or wrong.
        let c = codec();
        let fp = c.fingerprint(&random_block(2));
        let h = FrameHeader { compressed, fingerprint: fp, payload_len: body.len() + TAG_LEN };
        let mut f = h.to_bytes().to_vec();
        f.extend_from_slice(&body);
        f.extend_from_slice(&[0; TAG_LEN + CHECKSUM_LEN]);
        if reseal_it {
            reseal(&mut f);
        }
        let _ = verify_checksum(&f);
        prop_assert!(decode(&c, &f, &fp).is_err());
    }

    #[test]
    fn prop_mutated_frames_never_decode(
        block in block_strategy(),
        edits in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
        reseal_it in any::<bool>(),
    ) {
        let c = codec();
        let mut out = Vec::new();
        let Encoded::Frame(fp) = c.encode(&block, &mut out).expect("encode") else {
            return Ok(());
        };
        let original = out.clone();
        for (i, x) in edits {
            let i = i % out.len();
            out[i] ^= x;
        }
        if reseal_it {
            reseal(&mut out);
        }
        let _ = verify_checksum(&out);
        match decode(&c, &out, &fp) {
            Ok(b) => {
                prop_assert_eq!(&out, &original);
                prop_assert_eq!(b, block);
            }
            Err(_) => prop_assert_ne!(&out, &original),
        }
    }

    #[test]
    fn prop_blocks_round_trip(block in block_strategy()) {
        let c = codec();
        let mut out = Vec::new();
        match c.encode(&block, &mut out).expect("encode") {
            Encoded::Zero => {
                prop_assert!(block.iter().all(|&b| b == 0));
                prop_assert!(out.is_empty());
            }
            Encoded::Frame(fp) => {
                prop_assert!(out.len() <= MAX_FRAME_LEN && out.len() >= MIN_FRAME_LEN);
                prop_assert_eq!(verify_checksum(&out).expect("checksum").fingerprint, fp);
                prop_assert_eq!(decode(&c, &out, &fp).expect("decode"), block);
            }
        }
    }
}

#[test]
fn an_uncompressed_frame_splits_and_joins_to_the_same_bytes() {
    let c = codec();
    let block = random_block(41);
    let (frame, fp) = encode(&c, &block);
    let (body, tail) = split_uncompressed(&frame).expect("an uncompressed frame splits");
    assert_eq!(body.len(), BLOCK_SIZE);
    assert_eq!(&frame[..HEADER_LEN], &split_header(&fp));
    assert_eq!(&tail[..], &frame[HEADER_LEN + BLOCK_SIZE..]);
    let joined = join_split(&fp, body, &tail);
    assert_eq!(joined, frame);
    assert_eq!(decode(&c, &joined, &fp).expect("decodes"), block);
}

#[test]
fn only_uncompressed_frames_split_and_a_damaged_part_fails_to_decode() {
    let c = codec();
    let (text, _) = encode(&c, &text_block(5));
    assert!(
        split_uncompressed(&text).is_none(),
        "compressed frames stay whole"
    );
    assert!(split_uncompressed(&[0u8; MAX_FRAME_LEN]).is_none());
    let block = random_block(42);
    let (frame, fp) = encode(&c, &block);
    assert!(split_uncompressed(&frame[..MAX_FRAME_LEN - 1]).is_none());
    let (body, tail) = split_uncompressed(&frame).expect("splits");
    let mut bad_body = body.to_vec();
    bad_body[100] ^= 1;
    assert!(decode(&c, &join_split(&fp, &bad_body, &tail), &fp).is_err());
    for at in [0, TAG_LEN, SPLIT_TAIL_LEN - 1] {
        let mut bad_tail = tail;
        bad_tail[at] ^= 0x80;
        assert!(decode(&c, &join_split(&fp, body, &bad_tail), &fp).is_err());
    }
    // Joined under another fingerprint: the header (the cipher's
    // associated data) no longer matches.
    let other = c.fingerprint(&random_block(43));
    assert!(decode(&c, &join_split(&other, body, &tail), &other).is_err());
    // A short body gives a frame of the wrong length.
    assert!(decode(&c, &join_split(&fp, &body[1..], &tail), &fp).is_err());
}

#[test]
fn compression_is_kept_only_when_it_saves_an_eighth() {
    let c = codec();
    // A run of zeros at the start of random bytes: snappy saves about
    // the run's length.
    let with_zero_run = |run: usize| {
        let mut block = random_block(77);
        block[..run].fill(0);
        block
    };
    for (run, compressed) in [(64, false), (400, false), (700, true), (2000, true)] {
        let block = with_zero_run(run);
        let (frame, fp) = encode(&c, &block);
        let header = FrameHeader::parse(&frame).unwrap();
        assert_eq!(header.compressed, compressed, "a run of {run} zero bytes");
        if compressed {
            assert!(header.payload_len - TAG_LEN <= MAX_COMPRESSED_BODY);
        } else {
            assert_eq!(frame.len(), MAX_FRAME_LEN);
        }
        assert_eq!(decode(&c, &frame, &fp).unwrap(), block);
    }
}

#[test]
fn frames_compressed_under_the_old_rule_still_decode() {
    // Before the rule, a stream of up to 4095 bytes was stored: such
    // frames are on flash, in NVLOGs and in stripes, and must read back.
    let c = codec();
    let mut block = random_block(78);
    block[..64].fill(0);
    let mut body = vec![0u8; snap::raw::max_compress_len(BLOCK_SIZE)];
    let n = snap::raw::Encoder::new()
        .compress(&block, &mut body)
        .unwrap();
    assert!(n > MAX_COMPRESSED_BODY && n < BLOCK_SIZE, "{n} bytes");
    body.truncate(n);
    let fp = c.fingerprint(&block);
    let frame = seal(&fp, true, &body);
    assert_eq!(decode(&c, &frame, &fp).unwrap(), block);
}
