//! Frame codec throughput, one core: each stage alone (fingerprint, compress,
//! decompress, encrypt, decrypt, checksum) and whole encode and decode, on
//! unique (random, incompressible) and text (compressible) 4 KiB blocks.
//! The cipher stages run twice: `encrypt`/`decrypt` with Strata's cipher
//! (AWS-LC's GCM-SIV) and `encrypt_rustcrypto`/`decrypt_rustcrypto` with the
//! `aes-gcm-siv` crate, the comparison behind that choice.
//!
//! `cargo bench -p strata-common --bench frame`

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_common::frame::{Encoded, FrameCodec, FrameKeys, BLOCK_SIZE, MAX_FRAME_LEN};
use strata_common::siv::SivCipher;
use strata_common::Fingerprint;

const KEYS: FrameKeys = FrameKeys {
    data_key: [0x11; 32],
    dedupe_key: [0x22; 32],
};

/// Pseudo-random bytes: neither compressible nor repeated.
fn unique_block() -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    StdRng::seed_from_u64(0x1234_5678).fill_bytes(&mut b);
    b
}

/// English-like text from a small vocabulary (about 2:1 or better with snappy).
fn text_block() -> [u8; BLOCK_SIZE] {
    let words = [
        "the ", "storage ", "of ", "blocks ", "in ", "a ", "log ", "is ", "written ", "once ",
        "and ", "read ", "many ", "times, ", "by ", "every ", "host.\n",
    ];
    let r = unique_block();
    let mut v = Vec::new();
    let mut i = 0;
    while v.len() < BLOCK_SIZE {
        v.extend_from_slice(words[r[i] as usize % words.len()].as_bytes());
        i += 1;
    }
    let mut b = [0u8; BLOCK_SIZE];
    b.copy_from_slice(&v[..BLOCK_SIZE]);
    b
}

fn bench(c: &mut Criterion) {
    let codec = FrameCodec::new(&KEYS);
    let cipher = SivCipher::new(&KEYS.data_key);
    let rustcrypto = Aes256GcmSiv::new(&KEYS.data_key.into());
    for (name, block) in [("unique", unique_block()), ("text", text_block())] {
        let mut g = c.benchmark_group(format!("frame/{name}"));
        g.throughput(Throughput::Bytes(BLOCK_SIZE as u64));

        g.bench_function("fingerprint", |b| {
            b.iter(|| Fingerprint::of_block(&KEYS.dedupe_key, black_box(&block)))
        });

        let mut enc = snap::raw::Encoder::new();
        let mut comp = vec![0u8; snap::raw::max_compress_len(BLOCK_SIZE)];
        g.bench_function("compress", |b| {
            b.iter(|| {
                enc.compress(black_box(&block), &mut comp)
                    .expect("compress")
            })
        });
        let n = enc.compress(&block, &mut comp).expect("compress");
        let mut plain = [0u8; BLOCK_SIZE];
        g.bench_function("decompress", |b| {
            b.iter(|| {
                snap::raw::Decoder::new()
                    .decompress(black_box(&comp[..n]), &mut plain)
                    .expect("decompress")
            })
        });

        // Encrypt what encode would: the snappy stream if it shrank, else the block.
        let body: Vec<u8> = if n < BLOCK_SIZE {
            comp[..n].to_vec()
        } else {
            block.to_vec()
        };
        let nonce = [7u8; 12];
        let aad = [0u8; 48];
        let mut buf = body.clone();
        g.bench_function("encrypt", |b| {
            b.iter(|| {
                buf.copy_from_slice(&body);
                cipher
                    .seal(&nonce, &aad, black_box(&mut buf))
                    .expect("encrypt")
            })
        });
        let mut sealed = body.clone();
        let tag = cipher.seal(&nonce, &aad, &mut sealed).expect("encrypt");
        g.bench_function("decrypt", |b| {
            b.iter(|| {
                cipher
                    .open(&nonce, &aad, black_box(&sealed), &tag, &mut buf)
                    .expect("decrypt")
            })
        });
        let rc_nonce = Nonce::from(nonce);
        g.bench_function("encrypt_rustcrypto", |b| {
            b.iter(|| {
                buf.copy_from_slice(&body);
                rustcrypto
                    .encrypt_in_place_detached(&rc_nonce, &aad, black_box(&mut buf))
                    .expect("encrypt")
            })
        });
        g.bench_function("decrypt_rustcrypto", |b| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                rustcrypto
                    .decrypt_in_place_detached(&rc_nonce, &aad, black_box(&mut buf), &tag.into())
                    .expect("decrypt")
            })
        });

        let mut frame = Vec::with_capacity(MAX_FRAME_LEN);
        let fp = match codec.encode(&block, &mut frame).expect("encode") {
            Encoded::Frame(fp) => fp,
            Encoded::Zero => unreachable!("bench blocks are not zero"),
        };
        let covered = frame.len() - 8;
        g.bench_function("checksum", |b| {
            b.iter(|| xxhash_rust::xxh3::xxh3_64(black_box(&frame[..covered])))
        });
        g.bench_function("verify_checksum", |b| {
            b.iter(|| strata_common::verify_checksum(black_box(&frame)).expect("verify"))
        });

        let mut out = Vec::with_capacity(MAX_FRAME_LEN);
        g.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                codec.encode(black_box(&block), &mut out).expect("encode")
            })
        });
        g.bench_function("decode", |b| {
            b.iter(|| {
                codec
                    .decode(black_box(&frame), &fp, &mut plain)
                    .expect("decode")
            })
        });
        g.bench_function("decode_authenticated", |b| {
            b.iter(|| {
                codec
                    .decode_authenticated(black_box(&frame), &fp, &mut plain)
                    .expect("decode")
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
