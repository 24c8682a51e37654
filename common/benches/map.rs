//! Map lookups, the part of every guest read before any flash I/O: a
//! block's fingerprint from a 2 GiB vdisk's map (three levels) whose nodes
//! are all in the node cache, at random blocks, from one thread and from
//! two at once (two queues of one datastore share the cache).
//!
//! `cargo bench -p strata-common --bench map`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use strata_common::map::{NodeCache, NodeIdKey, NodeStore, VdiskMap};
use strata_common::Fingerprint;

/// Blocks of a 2 GiB vdisk.
const BLOCKS: u64 = 512 * 1024;
/// Lookups per measured batch of one thread.
const LOOKUPS: usize = 4096;

/// Nodes by id, in RAM.
#[derive(Default)]
struct MemStore(RwLock<HashMap<Fingerprint, Arc<[u8]>>>);

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

impl NodeStore for MemStore {
    type Error = Never;

    fn get(&self, id: &Fingerprint) -> Result<Option<Arc<[u8]>>, Never> {
        Ok(self.0.read().map_err(|_| Never)?.get(id).cloned())
    }

    fn put(&self, id: &Fingerprint, bytes: &[u8]) -> Result<(), Never> {
        self.0
            .write()
            .map_err(|_| Never)?
            .insert(*id, Arc::from(bytes));
        Ok(())
    }
}

/// A flushed map with every block written, its cache holding every node.
fn full_map() -> VdiskMap<Arc<MemStore>> {
    let cache = Arc::new(NodeCache::new(64 << 20));
    let ids = NodeIdKey::new(&[0x33; 32]);
    let mut map = VdiskMap::open(
        Arc::new(MemStore::default()),
        cache,
        ids,
        BLOCKS,
        Fingerprint::ZERO,
    );
    let updates: Vec<(u64, Fingerprint)> = (0..BLOCKS)
        .map(|lba| {
            let mut fp = [0u8; 32];
            fp[..8].copy_from_slice(&lba.to_le_bytes());
            fp[31] = 0xff;
            (lba, Fingerprint::from_bytes(fp))
        })
        .collect();
    map.set(&updates).expect("in-memory map");
    map.flush().expect("in-memory map");
    // Warm the cache: one lookup per leaf.
    for lba in (0..BLOCKS).step_by(256) {
        black_box(map.get(lba).expect("in-memory map"));
    }
    map
}

fn random_blocks(seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..LOOKUPS).map(|_| rng.random_range(0..BLOCKS)).collect()
}

fn lookups(c: &mut Criterion) {
    let map = Arc::new(full_map());
    let mut group = c.benchmark_group("map");
    group.throughput(Throughput::Elements(LOOKUPS as u64));

    let blocks = random_blocks(1);
    group.bench_function("get/one_thread", |b| {
        b.iter(|| {
            for &lba in &blocks {
                black_box(map.get(lba).expect("in-memory map"));
            }
        })
    });

    // Two threads look up at once; the time is the slower one's, per
    // batch of LOOKUPS each (so elements per second are per thread).
    group.bench_function("get/two_threads", |b| {
        b.iter_custom(|iters| {
            let start = Arc::new(Barrier::new(2));
            let workers: Vec<_> = (0..2)
                .map(|t| {
                    let map = Arc::clone(&map);
                    let start = Arc::clone(&start);
                    let blocks = random_blocks(t + 2);
                    std::thread::spawn(move || {
                        start.wait();
                        let began = Instant::now();
                        for _ in 0..iters {
                            for &lba in &blocks {
                                black_box(map.get(lba).expect("in-memory map"));
                            }
                        }
                        began.elapsed()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or(Duration::MAX))
                .max()
                .unwrap_or_default()
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
