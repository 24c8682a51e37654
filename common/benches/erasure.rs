//! Erasure coding of one pool stripe, one core, side by side: Strata's
//! coder (`strata_common::erasure`, reed-solomon-simd) against
//! reed-solomon-novelpoly, the crate the brief names. Each encodes a 4 MiB
//! stripe as 4 data + 2 parity shards, then restores it with two data
//! shards lost (the worst case Strata survives). Throughput is stripe bytes
//! per second. This is the measurement behind the choice of
//! reed-solomon-simd (docs/ARCHITECTURE.md, "Departures from the brief").
//!
//! `cargo bench -p strata-common --bench erasure`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reed_solomon_novelpoly::{CodeParams, WrappedShard};
use strata_common::erasure::{self, PARITY_CHUNKS};

/// Bytes of one stripe.
const STRIPE: usize = 4 << 20;
/// Data shards.
const K: usize = 4;

fn bench(c: &mut Criterion) {
    let mut data = vec![0u8; STRIPE];
    StdRng::seed_from_u64(0xec).fill_bytes(&mut data);
    let mut g = c.benchmark_group("erasure/4+2 of 4 MiB");
    g.throughput(Throughput::Bytes(STRIPE as u64));
    g.sample_size(10);

    g.bench_function("encode/reed-solomon-simd", |b| {
        b.iter(|| erasure::encode(black_box(&data), K).expect("encode"))
    });
    let chunks = erasure::encode(&data, K).expect("encode");
    let damaged = || {
        let mut damaged: Vec<Option<Vec<u8>>> = chunks.iter().cloned().map(Some).collect();
        damaged[0] = None;
        damaged[1] = None;
        damaged
    };
    g.bench_function("restore 2 lost/reed-solomon-simd", |b| {
        b.iter(|| {
            let mut chunks = damaged();
            erasure::restore(black_box(&mut chunks), K).expect("restore");
            chunks
        })
    });

    let novelpoly = CodeParams::derive_parameters(K + PARITY_CHUNKS, K)
        .expect("4 + 2 shards")
        .make_encoder();
    g.bench_function("encode/reed-solomon-novelpoly", |b| {
        b.iter(|| {
            novelpoly
                .encode::<WrappedShard>(black_box(&data))
                .expect("encode")
        })
    });
    let shards = novelpoly.encode::<WrappedShard>(&data).expect("encode");
    let damaged = || {
        let mut damaged: Vec<Option<WrappedShard>> = shards.iter().cloned().map(Some).collect();
        damaged[0] = None;
        damaged[1] = None;
        damaged
    };
    let restored = novelpoly.reconstruct(damaged()).expect("restore");
    assert_eq!(
        &restored[..STRIPE],
        &data[..],
        "novelpoly restored other bytes"
    );
    g.bench_function("restore 2 lost/reed-solomon-novelpoly", |b| {
        b.iter(|| {
            novelpoly
                .reconstruct(black_box(damaged()))
                .expect("restore")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
