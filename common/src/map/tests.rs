use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;

use super::store::mem::MemNodeStore;
use super::*;

const KEY: [u8; 32] = [0x42; 32];
const TIB_BLOCKS: u64 = 1 << 28;

fn fp(n: u64) -> Fingerprint {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[31] = 0xaa;
    Fingerprint::from_bytes(b)
}

fn open(
    store: &Arc<MemNodeStore>,
    block_count: u64,
    root: Fingerprint,
    budget: usize,
) -> VdiskMap<Arc<MemNodeStore>> {
    VdiskMap::open(
        Arc::clone(store),
        Arc::new(NodeCache::new(budget)),
        NodeIdKey::new(&KEY),
        block_count,
        root,
    )
}

fn fresh(block_count: u64) -> (Arc<MemNodeStore>, VdiskMap<Arc<MemNodeStore>>) {
    let store = Arc::new(MemNodeStore::default());
    let map = open(&store, block_count, Fingerprint::ZERO, 64 << 20);
    (store, map)
}

/// A deterministic xorshift stream for reproducible "random" LBAs.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn depth_follows_block_count() {
    assert_eq!(depth_for(0), 1);
    assert_eq!(depth_for(1), 1);
    assert_eq!(depth_for(256), 1);
    assert_eq!(depth_for(257), 2);
    assert_eq!(depth_for(1 << 16), 2);
    assert_eq!(depth_for((1 << 16) + 1), 3);
    assert_eq!(depth_for(TIB_BLOCKS), 4);
    assert_eq!(depth_for(1 << 32), 4);
    assert_eq!(depth_for((1 << 32) + 1), 5);
    assert_eq!(depth_for(u64::MAX), 8);
}

#[test]
fn empty_map_reads_zero_everywhere_without_io() {
    let (store, map) = fresh(TIB_BLOCKS);
    assert_eq!(map.depth(), 4);
    let mut r = rng(1);
    for lba in [0, 1, 255, 256, TIB_BLOCKS - 1] {
        assert_eq!(map.get(lba).unwrap(), Fingerprint::ZERO);
    }
    for _ in 0..1000 {
        assert_eq!(map.get(r() % TIB_BLOCKS).unwrap(), Fingerprint::ZERO);
    }
    assert_eq!(store.gets.load(Ordering::Relaxed), 0);
    let mut map = map;
    assert_eq!(map.flush().unwrap(), Fingerprint::ZERO);
    assert_eq!(store.len(), 0);
}

#[test]
fn first_and_last_blocks_round_trip() {
    for block_count in [1, 255, 256, 257, 65_537, TIB_BLOCKS, u64::MAX] {
        let (store, mut map) = fresh(block_count);
        let last = block_count - 1;
        map.set(&[(0, fp(1)), (last, fp(2))]).unwrap();
        let want0 = if last == 0 { fp(2) } else { fp(1) };
        assert_eq!(map.get(0).unwrap(), want0);
        assert_eq!(map.get(last).unwrap(), fp(2));
        let root = map.flush().unwrap();
        assert!(!root.is_zero());
        let map = open(&store, block_count, root, 1 << 20);
        assert_eq!(map.get(0).unwrap(), want0);
        assert_eq!(map.get(last).unwrap(), fp(2));
        if block_count > 2 {
            assert_eq!(map.get(last - 1).unwrap(), Fingerprint::ZERO);
            assert_eq!(map.get(1).unwrap(), Fingerprint::ZERO);
        }
    }
}

#[test]
fn out_of_range_is_a_typed_error_and_batches_are_atomic() {
    let (_, mut map) = fresh(1000);
    assert!(matches!(
        map.get(1000),
        Err(MapError::LbaOutOfRange {
            lba: 1000,
            block_count: 1000
        })
    ));
    assert!(matches!(
        map.set(&[(5, fp(5)), (u64::MAX, fp(6))]),
        Err(MapError::LbaOutOfRange { lba: u64::MAX, .. })
    ));
    assert_eq!(map.get(5).unwrap(), Fingerprint::ZERO);
    let (_, map) = fresh(0);
    assert!(matches!(map.get(0), Err(MapError::LbaOutOfRange { .. })));
}

#[test]
fn later_update_of_a_block_wins() {
    let (_, mut map) = fresh(TIB_BLOCKS);
    map.set(&[(7, fp(1)), (7, fp(2))]).unwrap();
    assert_eq!(map.get(7).unwrap(), fp(2));
    map.set(&[(7, Fingerprint::ZERO)]).unwrap();
    assert_eq!(map.get(7).unwrap(), Fingerprint::ZERO);
}

#[test]
fn same_contents_same_root_whatever_the_order() {
    let block_count = 1 << 30;
    let mut r = rng(7);
    let final_contents: Vec<(u64, Fingerprint)> = (0..500)
        .map(|i| (r() % block_count, fp(i % 37 + 1)))
        .collect();
    // Dedupe LBAs: the last value wins in the model.
    let model: BTreeMap<u64, Fingerprint> = final_contents.iter().copied().collect();

    let (_, mut a) = fresh(block_count);
    a.set(&model.iter().map(|(l, f)| (*l, *f)).collect::<Vec<_>>())
        .unwrap();
    let root_a = a.flush().unwrap();

    // Reverse order, in small batches with flushes, junk written then
    // overwritten, and blocks elsewhere written then zeroed.
    let (_, mut b) = fresh(block_count);
    let entries: Vec<(u64, Fingerprint)> = model.iter().rev().map(|(l, f)| (*l, *f)).collect();
    let mut strays = Vec::new();
    for (i, chunk) in entries.chunks(50).enumerate() {
        let junk: Vec<_> = chunk.iter().map(|(l, _)| (*l, fp(999))).collect();
        b.set(&junk).unwrap();
        let stray = r() % block_count;
        strays.push(stray);
        b.set(&[(stray, fp(1234))]).unwrap();
        b.set(chunk).unwrap();
        if i % 3 == 0 {
            b.flush().unwrap();
        }
    }
    // Put the strays back: zero, or their final contents.
    let zeros: Vec<_> = strays
        .iter()
        .map(|l| (*l, model.get(l).copied().unwrap_or(Fingerprint::ZERO)))
        .collect();
    b.set(&zeros).unwrap();
    let root_b = b.flush().unwrap();
    assert_eq!(root_a, root_b);
}

#[test]
fn zeroing_everything_collapses_to_zero_root() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    let lbas = [0, 1, 300, 70_000, TIB_BLOCKS - 1];
    let writes: Vec<_> = lbas.iter().map(|l| (*l, fp(*l + 1))).collect();
    map.set(&writes).unwrap();
    let full = map.flush().unwrap();
    assert!(!full.is_zero());
    let zeros: Vec<_> = lbas.iter().map(|l| (*l, Fingerprint::ZERO)).collect();
    map.set(&zeros).unwrap();
    assert_eq!(map.flush().unwrap(), Fingerprint::ZERO);
    // The old root is still readable.
    let snap = open(&store, TIB_BLOCKS, full, 1 << 20);
    assert_eq!(snap.get(70_000).unwrap(), fp(70_001));

    // Partial: zeroing one of two subtrees gives the one-subtree root.
    let (_, mut one) = fresh(TIB_BLOCKS);
    one.set(&[(5, fp(5))]).unwrap();
    let want = one.flush().unwrap();
    let (_, mut two) = fresh(TIB_BLOCKS);
    two.set(&[(5, fp(5)), (TIB_BLOCKS - 1, fp(6))]).unwrap();
    two.flush().unwrap();
    two.set(&[(TIB_BLOCKS - 1, Fingerprint::ZERO)]).unwrap();
    assert_eq!(two.flush().unwrap(), want);
}

#[test]
fn copy_on_write_touches_only_the_path() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    let mut r = rng(3);
    let writes: Vec<_> = (0..200).map(|i| (r() % TIB_BLOCKS, fp(i + 1))).collect();
    map.set(&writes).unwrap();
    let r1 = map.flush().unwrap();
    let before = store.puts.load(Ordering::Relaxed);
    // One block: exactly depth nodes are new.
    map.set(&[(writes[0].0, fp(777))]).unwrap();
    let r2 = map.flush().unwrap();
    assert_ne!(r1, r2);
    assert_eq!(store.puts.load(Ordering::Relaxed) - before, 4);
    // Rewriting what is there changes nothing and writes nothing.
    map.set(&[(writes[1].0, map.get(writes[1].0).unwrap())])
        .unwrap();
    assert_eq!(map.flush().unwrap(), r2);
    assert_eq!(store.puts.load(Ordering::Relaxed) - before, 4);
    // An unflushed map keeps its last root.
    map.set(&[(1, fp(1))]).unwrap();
    assert_eq!(map.root(), r2);
    assert!(map.is_dirty());
}

#[test]
fn snapshots_and_clones_are_independent() {
    let (store, mut vdisk) = fresh(TIB_BLOCKS);
    vdisk.set(&[(10, fp(1)), (1 << 20, fp(2))]).unwrap();
    let snap = vdisk.flush().unwrap();
    vdisk.set(&[(10, fp(3)), (11, fp(4))]).unwrap();
    let later = vdisk.flush().unwrap();

    let old = open(&store, TIB_BLOCKS, snap, 1 << 20);
    assert_eq!(old.get(10).unwrap(), fp(1));
    assert_eq!(old.get(11).unwrap(), Fingerprint::ZERO);
    assert_eq!(old.get(1 << 20).unwrap(), fp(2));

    let mut clone = open(&store, TIB_BLOCKS, snap, 1 << 20);
    clone.set(&[(1 << 20, Fingerprint::ZERO)]).unwrap();
    clone.flush().unwrap();
    assert_eq!(clone.get(1 << 20).unwrap(), Fingerprint::ZERO);
    let now = open(&store, TIB_BLOCKS, later, 1 << 20);
    assert_eq!(now.get(10).unwrap(), fp(3));
    assert_eq!(now.get(1 << 20).unwrap(), fp(2));
    assert_eq!(old.get(1 << 20).unwrap(), fp(2));
}

#[test]
fn corrupt_missing_and_misplaced_nodes_are_named() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    map.set(&[(0, fp(1))]).unwrap();
    let root = map.flush().unwrap();
    let root_bytes = store.get(&root).unwrap().unwrap();
    let root_node = Node::decode(&root_bytes).unwrap();
    let child = root_node.slot(0);

    // A flipped bit: the id no longer matches.
    let mut bad = root_bytes.to_vec();
    bad[20] ^= 1;
    store.overwrite(&root, &bad);
    let m = open(&store, TIB_BLOCKS, root, 1 << 20);
    match m.get(0) {
        Err(MapError::NodeCorrupt {
            id,
            reason: NodeError::IdMismatch { .. },
        }) => assert_eq!(id, root),
        other => panic!("{other:?}"),
    }
    store.overwrite(&root, &root_bytes);

    // Missing child.
    let child_bytes = store.get(&child).unwrap().unwrap();
    store.remove(&child);
    let m = open(&store, TIB_BLOCKS, root, 1 << 20);
    match m.get(0) {
        Err(e @ MapError::NodeMissing { .. }) => {
            assert!(e.to_string().contains(&child.to_string()))
        }
        other => panic!("{other:?}"),
    }
    // Reads elsewhere still work: the root is fine and the slot is ZERO.
    assert_eq!(m.get(1 << 24).unwrap(), Fingerprint::ZERO);
    store.overwrite(&child, &child_bytes);

    // A valid node under its own id but at the wrong level: open a depth-3
    // map on a depth-4 root.
    let m = open(&store, 1 << 24, root, 1 << 20);
    match m.get(0) {
        Err(MapError::NodeCorrupt {
            id,
            reason:
                NodeError::WrongLevel {
                    expected: 2,
                    found: 3,
                },
        }) => assert_eq!(id, root),
        other => panic!("{other:?}"),
    }

    // Garbage stored under a valid id fails the id check before decoding;
    // a bad node that does hash to its id is caught by the decoder.
    let ids = NodeIdKey::new(&KEY);
    let junk = b"STMN junk".to_vec();
    let junk_id = ids.id_of(&junk);
    store.overwrite(&junk_id, &junk);
    let m = open(&store, TIB_BLOCKS, junk_id, 1 << 20);
    match m.get(0) {
        Err(MapError::NodeCorrupt {
            id,
            reason: NodeError::Truncated { len: 9 },
        }) => assert_eq!(id, junk_id),
        other => panic!("{other:?}"),
    }
}

#[test]
fn store_failures_are_typed_and_flush_is_retryable() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    map.set(&[(0, fp(1)), (1 << 27, fp(2))]).unwrap();
    store.fail.store(true, Ordering::Relaxed);
    assert!(matches!(map.flush(), Err(MapError::Store { .. })));
    assert!(map.is_dirty());
    assert_eq!(map.root(), Fingerprint::ZERO);
    assert_eq!(map.get(1 << 27).unwrap(), fp(2));
    store.fail.store(false, Ordering::Relaxed);
    let root = map.flush().unwrap();
    let m = open(&store, TIB_BLOCKS, root, 0);
    assert_eq!(m.get(0).unwrap(), fp(1));
    store.fail.store(true, Ordering::Relaxed);
    assert!(matches!(m.get(0), Err(MapError::Store { id, .. }) if id == root));
}

#[test]
fn large_sparse_map_with_tiny_cache() {
    // 4 PiB of 4 KiB blocks: depth 5; a cache of three nodes.
    let block_count = 1u64 << 40;
    let budget = 3 * NODE_ENTRY_COST;
    let store = Arc::new(MemNodeStore::default());
    let cache = Arc::new(NodeCache::new(budget));
    let mut map = VdiskMap::open(
        Arc::clone(&store),
        Arc::clone(&cache),
        NodeIdKey::new(&KEY),
        block_count,
        Fingerprint::ZERO,
    );
    assert_eq!(map.depth(), 5);
    let mut r = rng(11);
    let mut model = BTreeMap::new();
    for round in 0..4 {
        let batch: Vec<_> = (0..100)
            .map(|i| (r() % block_count, fp(round * 1000 + i + 1)))
            .collect();
        map.set(&batch).unwrap();
        model.extend(batch);
        // Flush keeps dirty memory bounded by the batch, not the map.
        map.flush().unwrap();
        assert!(cache.used_bytes() <= budget);
    }
    let root = map.root();
    let m = VdiskMap::open(
        Arc::clone(&store),
        Arc::clone(&cache),
        NodeIdKey::new(&KEY),
        block_count,
        root,
    );
    for (lba, want) in &model {
        assert_eq!(m.get(*lba).unwrap(), *want);
        assert_eq!(
            m.get(lba ^ 1).unwrap(),
            *model.get(&(lba ^ 1)).unwrap_or(&Fingerprint::ZERO)
        );
        assert!(cache.used_bytes() <= budget);
    }
    assert!(cache.peak_bytes() <= budget);
    assert!(cache.len() <= 3);
    assert!(store.len() > 400, "the tree is bigger than the cache");
    // A cache too small for one node still answers correctly.
    let m = open(&store, block_count, root, 100);
    let (lba, want) = model.iter().next().unwrap();
    assert_eq!(m.get(*lba).unwrap(), *want);
}

#[test]
fn tib_vdisk_memory_is_bounded_by_the_budget() {
    // A 1 TiB vdisk with 1% of its leaves touched and a 256-node (~2 MiB)
    // cache: lookups stay correct and memory stays in budget.
    let budget = 256 * NODE_ENTRY_COST;
    let store = Arc::new(MemNodeStore::default());
    let mut map = open(&store, TIB_BLOCKS, Fingerprint::ZERO, budget);
    let mut r = rng(5);
    let writes: Vec<_> = (0..10_000).map(|i| (r() % TIB_BLOCKS, fp(i + 1))).collect();
    for chunk in writes.chunks(1000) {
        map.set(chunk).unwrap();
        map.flush().unwrap();
    }
    let model: BTreeMap<_, _> = writes.iter().copied().collect();
    let store_nodes = store.ids().len();
    let root = map.root();
    let cache = Arc::new(NodeCache::new(budget));
    let m = VdiskMap::open(
        Arc::clone(&store),
        Arc::clone(&cache),
        NodeIdKey::new(&KEY),
        TIB_BLOCKS,
        root,
    );
    for (lba, want) in &model {
        assert_eq!(m.get(*lba).unwrap(), *want);
    }
    assert!(cache.peak_bytes() <= budget);
    assert!(store_nodes > 256);
}

#[test]
fn zero_range_discards_a_tib_vdisk_in_one_node() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    let mut r = rng(21);
    let writes: Vec<_> = (0..10_000).map(|i| (r() % TIB_BLOCKS, fp(i + 1))).collect();
    map.set(&writes).unwrap();
    let full = map.flush().unwrap();
    // Some unflushed writes too: their dirty nodes are dropped.
    let more: Vec<_> = (0..1_000).map(|i| (r() % TIB_BLOCKS, fp(i + 1))).collect();
    map.set(&more).unwrap();
    assert!(map.dirty_nodes() > 1_000);
    let cache = Arc::new(NodeCache::new(0));
    let mut map = VdiskMap {
        cache: Arc::clone(&cache),
        ..map
    };
    let gets = store.gets.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    map.zero_range(0, TIB_BLOCKS).unwrap();
    let took = started.elapsed();
    // 2^28 blocks, yet nothing is read (not even through an empty cache)
    // and only an empty root is held dirty.
    assert_eq!(store.gets.load(Ordering::Relaxed), gets);
    assert_eq!(map.dirty_nodes(), 1);
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    for (lba, _) in writes.iter().chain(&more).step_by(97) {
        assert_eq!(map.get(*lba).unwrap(), Fingerprint::ZERO);
    }
    assert_eq!(walk_all(&map).unwrap().1, vec![]);
    let puts = store.puts.load(Ordering::Relaxed);
    assert_eq!(map.flush().unwrap(), Fingerprint::ZERO);
    assert_eq!(store.puts.load(Ordering::Relaxed), puts);
    assert!(!map.is_dirty());
    // The snapshot before the discard still reads.
    let snap = open(&store, TIB_BLOCKS, full, 1 << 20);
    assert_eq!(snap.get(writes[0].0).unwrap(), writes[0].1);

    // Nearly all of it, unaligned at both ends: only the two edge paths.
    let mut map = open(&store, TIB_BLOCKS, full, 0);
    let gets = store.gets.load(Ordering::Relaxed);
    map.zero_range(1, TIB_BLOCKS - 2).unwrap();
    // The root, and below it the two ends' paths of 3 nodes each.
    assert!(store.gets.load(Ordering::Relaxed) - gets <= 1 + 2 * 3);
    assert!(map.dirty_nodes() <= 1 + 2 * 3);
    map.set(&[(0, Fingerprint::ZERO), (TIB_BLOCKS - 1, Fingerprint::ZERO)])
        .unwrap();
    assert_eq!(map.flush().unwrap(), Fingerprint::ZERO);

    // Already empty: nothing to do, nothing dirty.
    let (_, mut empty) = fresh(TIB_BLOCKS);
    empty.zero_range(0, TIB_BLOCKS).unwrap();
    empty.zero_range(5, 1000).unwrap();
    assert!(!empty.is_dirty());

    // The largest vdisk: 2^64 - 1 blocks, depth 8, whose root is never
    // covered whole.
    let (_, mut huge) = fresh(u64::MAX);
    huge.set(&[(0, fp(1)), (1 << 63, fp(2)), (u64::MAX - 1, fp(3))])
        .unwrap();
    huge.flush().unwrap();
    huge.zero_range(0, u64::MAX).unwrap();
    assert!(huge.dirty_nodes() <= 8);
    assert_eq!(huge.get(u64::MAX - 1).unwrap(), Fingerprint::ZERO);
    assert_eq!(huge.flush().unwrap(), Fingerprint::ZERO);
}

#[test]
fn zero_range_edges_match_zeroing_block_by_block() {
    // 2^18 blocks: depth 3, leaves of 256 blocks under level-1 nodes of
    // 65,536.
    let size = 1u64 << 18;
    let mut data: BTreeMap<u64, Fingerprint> = BTreeMap::new();
    for lba in (0..1_100).chain(65_000..71_000).chain(size - 700..size) {
        data.insert(lba, fp(lba % 5 + 1));
    }
    let mut r = rng(9);
    for i in 0..2_000 {
        data.insert(r() % size, fp(i % 7 + 1));
    }
    let entries: Vec<_> = data.iter().map(|(l, f)| (*l, *f)).collect();
    let (half_a, half_b) = entries.split_at(entries.len() / 2);
    let ranges = [
        (300, 70_005 - 300),   // unaligned both ends, across subtrees
        (256, 256),            // exactly one leaf
        (257, 1),              // one block
        (100, 100),            // inside one leaf
        (255, 2),              // across two leaves
        (0, 65_536),           // one aligned level-1 subtree
        (65_535, 65_538),      // just around one
        (1_000, size - 1_000), // to the end
        (0, size - 1),         // all but the last block
        (1, size - 1),         // all but the first
        (size - 256, 256),     // the last leaf
        (0, size),             // everything
    ];
    for (start, count) in ranges {
        for flushed_first in [false, true] {
            // Half the data flushed, half dirty (or all dirty), then zeroed.
            let (store, mut a) = fresh(size);
            a.set(half_a).unwrap();
            if flushed_first {
                a.flush().unwrap();
            }
            a.set(half_b).unwrap();
            let gets = store.gets.load(Ordering::Relaxed);
            let dirty = a.dirty_nodes();
            a.zero_range(start, count).unwrap();
            assert!(store.gets.load(Ordering::Relaxed) - gets <= 2 * 3);
            assert!(a.dirty_nodes() <= dirty + 2 * 3);
            let mut b = open(&store, size, Fingerprint::ZERO, 1 << 20);
            b.set(&entries).unwrap();
            let zeros: Vec<_> = (start..start + count)
                .map(|l| (l, Fingerprint::ZERO))
                .collect();
            b.set(&zeros).unwrap();
            let end = start + count;
            for probe in [start.saturating_sub(1), start, end - 1, end, end + 1] {
                if probe < size {
                    assert_eq!(a.get(probe).unwrap(), b.get(probe).unwrap(), "{probe}");
                }
            }
            let want: Vec<_> = entries
                .iter()
                .copied()
                .filter(|(l, _)| *l < start || *l >= end)
                .collect();
            assert_eq!(walk_all(&a).unwrap().1, want, "{start}+{count}");
            let root = a.flush().unwrap();
            assert_eq!(root, b.flush().unwrap(), "{start}+{count}");
            let model: BTreeMap<_, _> = want.iter().copied().collect();
            assert_eq!(walked_ids(&a), model_node_ids(size, &model));
        }
    }
}

#[test]
fn zero_range_checks_its_range_and_is_atomic() {
    let (store, mut map) = fresh(1000);
    let lba_of = |e: MapError| match e {
        MapError::LbaOutOfRange { lba, block_count } => {
            assert_eq!(block_count, 1000);
            lba
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(lba_of(map.zero_range(1000, 1).unwrap_err()), 1000);
    assert_eq!(lba_of(map.zero_range(5, 996).unwrap_err()), 1000);
    assert_eq!(lba_of(map.zero_range(2000, 5).unwrap_err()), 2000);
    assert_eq!(lba_of(map.zero_range(u64::MAX, 2).unwrap_err()), u64::MAX);
    assert_eq!(lba_of(map.zero_range(1, u64::MAX).unwrap_err()), 1000);
    // An empty range is a no-op wherever it is.
    map.zero_range(5000, 0).unwrap();
    map.zero_range(1000, 0).unwrap();

    map.set(&[(0, fp(1)), (300, fp(2)), (999, fp(3))]).unwrap();
    let root = map.flush().unwrap();
    // The store fails while the edge nodes load: nothing changes.
    let mut map = open(&store, 1000, root, 0);
    store.fail.store(true, Ordering::Relaxed);
    assert!(matches!(
        map.zero_range(1, 998),
        Err(MapError::Store { .. })
    ));
    store.fail.store(false, Ordering::Relaxed);
    assert_eq!(map.get(0).unwrap(), fp(1));
    assert_eq!(map.get(300).unwrap(), fp(2));
    assert_eq!(map.get(999).unwrap(), fp(3));
    assert_eq!(map.flush().unwrap(), root);
    // A missing edge node: also nothing changes.
    let leaf = Node::decode(&store.get(&root).unwrap().unwrap())
        .unwrap()
        .slot(3);
    let leaf_bytes = store.get(&leaf).unwrap().unwrap();
    store.remove(&leaf);
    let mut map = open(&store, 1000, root, 0);
    assert!(matches!(
        map.zero_range(0, 998),
        Err(MapError::NodeMissing { id }) if id == leaf
    ));
    store.overwrite(&leaf, &leaf_bytes);
    assert_eq!(map.get(999).unwrap(), fp(3));
    assert_eq!(map.get(300).unwrap(), fp(2));
    map.zero_range(0, 998).unwrap();
    assert_eq!(map.get(999).unwrap(), fp(3));
    let (_, mut want) = fresh(1000);
    want.set(&[(999, fp(3))]).unwrap();
    assert_eq!(map.flush().unwrap(), want.flush().unwrap());
}

#[test]
fn visit_reports_every_node_and_block_in_order_with_a_tiny_cache() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    let mut r = rng(33);
    let mut model = BTreeMap::new();
    for i in 0..3_000 {
        let lba = if i % 3 == 0 {
            r() % 5_000
        } else {
            r() % TIB_BLOCKS
        };
        model.insert(lba, fp(i + 1));
    }
    map.set(&model.iter().map(|(l, f)| (*l, *f)).collect::<Vec<_>>())
        .unwrap();
    let root = map.flush().unwrap();

    // A one-node cache: the walk reads through it and never fills it.
    let budget = NODE_ENTRY_COST;
    let cache = Arc::new(NodeCache::new(budget));
    let m = VdiskMap::open(
        Arc::clone(&store),
        Arc::clone(&cache),
        NodeIdKey::new(&KEY),
        TIB_BLOCKS,
        root,
    );
    let gets = store.gets.load(Ordering::Relaxed);
    let (nodes, blocks) = walk_all(&m).unwrap();
    assert_eq!(
        blocks,
        model.iter().map(|(l, f)| (*l, *f)).collect::<Vec<_>>()
    );
    // Every node the fresh store holds, each once, each read once.
    let ids: BTreeSet<_> = nodes.iter().map(|(id, _, _)| id.unwrap()).collect();
    assert_eq!(ids.len(), nodes.len());
    assert_eq!(ids, store.ids().into_iter().collect::<BTreeSet<_>>());
    assert_eq!(store.gets.load(Ordering::Relaxed) - gets, nodes.len());
    assert!(cache.peak_bytes() <= budget);
    assert!(cache.is_empty());
    // Pre-order: the root first, every node after its parent, at the
    // first block of its slot.
    assert_eq!(nodes[0], (Some(root), 3, 0));
    let mut path: Vec<(u8, u64)> = Vec::new();
    for (_, level, first_lba) in &nodes {
        while path.last().is_some_and(|(l, _)| l <= level) {
            path.pop();
        }
        if let Some((parent_level, parent_first)) = path.last() {
            assert_eq!(*parent_level, level + 1);
            let parent_span = 1u64 << (8 * (u32::from(*level) + 2));
            assert!(*first_lba >= *parent_first && *first_lba - *parent_first < parent_span);
            assert_eq!(first_lba % (parent_span >> 8), 0);
        }
        path.push((*level, *first_lba));
    }
    // The same from a 0-byte cache.
    let m0 = open(&store, TIB_BLOCKS, root, 0);
    assert_eq!(walk_all(&m0).unwrap(), (nodes, blocks));
}

#[test]
fn visit_sees_dirty_nodes_and_can_skip_and_stop() {
    let (store, mut map) = fresh(TIB_BLOCKS);
    let writes: Vec<_> = (0..600u64).map(|i| (i * 1_000, fp(i + 1))).collect();
    map.set(&writes).unwrap();
    let root = map.flush().unwrap();
    let stored = store.len();

    // Unflushed: one new block far away, one zeroed range.
    map.set(&[(TIB_BLOCKS - 1, fp(9))]).unwrap();
    map.zero_range(1_500, 100_000).unwrap();
    let mut model: BTreeMap<_, _> = writes.iter().copied().collect();
    model.retain(|l, _| *l < 1_500 || *l >= 101_500);
    model.insert(TIB_BLOCKS - 1, fp(9));
    let (nodes, blocks) = walk_all(&map).unwrap();
    assert_eq!(
        blocks,
        model.iter().map(|(l, f)| (*l, *f)).collect::<Vec<_>>()
    );
    // The root and the edited paths are dirty; the untouched subtrees
    // below them are reported under their stored ids.
    assert_eq!(nodes[0], (None, 3, 0));
    let dirty = nodes.iter().filter(|(id, _, _)| id.is_none()).count();
    assert_eq!(dirty, map.dirty_nodes());
    assert!(nodes.iter().any(|(id, _, _)| id.is_some()));
    assert_eq!(map.root(), root);
    assert_eq!(store.len(), stored);
    map.flush().unwrap();
    assert_eq!(walked_ids(&map), model_node_ids(TIB_BLOCKS, &model));

    // SkipChildren at the root reads nothing.
    let m = open(&store, TIB_BLOCKS, map.root(), 0);
    let gets = store.gets.load(Ordering::Relaxed);
    let mut seen = 0;
    m.visit(|_| -> Result<Walk, MapError> {
        seen += 1;
        Ok(Walk::SkipChildren)
    })
    .unwrap();
    assert_eq!(seen, 1);
    assert_eq!(store.gets.load(Ordering::Relaxed), gets);
    // Skipping the level-1 nodes: no leaves, no blocks, and only the
    // nodes above them read.
    let mut levels = Vec::new();
    m.visit(|v| -> Result<Walk, MapError> {
        match v {
            Visit::Node { level: 1, .. } => {
                levels.push(1);
                Ok(Walk::SkipChildren)
            }
            Visit::Node { level, .. } => {
                levels.push(level);
                Ok(Walk::Continue)
            }
            Visit::Block { .. } => panic!("a skipped block"),
        }
    })
    .unwrap();
    assert!(levels.iter().all(|l| *l >= 1));
    let above = levels.iter().filter(|l| **l > 1).count();
    assert_eq!(store.gets.load(Ordering::Relaxed) - gets, above);

    // A visitor error stops the walk and comes back, in the visitor's own
    // error type.
    #[derive(Debug)]
    enum GcError {
        Enough,
        Map(MapError),
    }
    impl From<MapError> for GcError {
        fn from(e: MapError) -> GcError {
            GcError::Map(e)
        }
    }
    let mut taken = 0;
    let r = m.visit(|v| {
        if matches!(v, Visit::Block { .. }) {
            taken += 1;
            if taken == 5 {
                return Err(GcError::Enough);
            }
        }
        Ok(Walk::Continue)
    });
    assert!(matches!(r, Err(GcError::Enough)));
    assert_eq!(taken, 5);

    // A missing node is the map's error.
    let root_node = Node::decode(&store.get(&m.root()).unwrap().unwrap()).unwrap();
    let child = root_node.slot(0);
    store.remove(&child);
    let r = m.visit(|_| Ok::<_, GcError>(Walk::Continue));
    assert!(matches!(r, Err(GcError::Map(MapError::NodeMissing { id })) if id == child));

    // An empty map reports nothing.
    let (_, empty) = fresh(TIB_BLOCKS);
    assert_eq!(walk_all(&empty).unwrap(), (vec![], vec![]));
}

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<(u64, u64)>),
    Zero(u64, u64, u8),
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((any::<u64>(), 0u64..6), 1..20).prop_map(Op::Set),
        2 => (any::<u64>(), any::<u64>(), 0u8..4).prop_map(|(a, b, k)| Op::Zero(a, b, k)),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

/// A block range `(start, count)` inside a vdisk of `size` blocks from raw
/// proptest values: clustered near the start where the writes cluster,
/// anywhere, aligned to a subtree, or the whole vdisk.
fn zero_range_of(size: u64, a: u64, b: u64, kind: u8) -> (u64, u64) {
    let (start, count) = match kind {
        0 => (a % 600 % size, b % 600),
        1 => {
            let start = a % size;
            (start, b % (size - start) + 1)
        }
        2 => {
            let align = 1u64 << (8 * (b % 4));
            let count = 1u64 << (8 * ((b >> 8) % 4));
            ((a % size) & !(align - 1), count)
        }
        _ => (0, size),
    };
    (start, count.min(size - start))
}

/// Everything a walk of `map` reports: its nodes, then its blocks.
#[allow(clippy::type_complexity)]
fn walk_all<S: NodeStore>(
    map: &VdiskMap<S>,
) -> Result<(Vec<(Option<Fingerprint>, u8, u64)>, Vec<(u64, Fingerprint)>), MapError> {
    let mut nodes = Vec::new();
    let mut blocks = Vec::new();
    map.visit(|v| -> Result<Walk, MapError> {
        match v {
            Visit::Node {
                id,
                level,
                first_lba,
            } => nodes.push((id, level, first_lba)),
            Visit::Block { lba, fingerprint } => blocks.push((lba, fingerprint)),
        }
        Ok(Walk::Continue)
    })?;
    Ok((nodes, blocks))
}

/// The ids of the nodes a walk of `map` reports (clean ones only).
fn walked_ids<S: NodeStore>(map: &VdiskMap<S>) -> BTreeSet<Fingerprint> {
    let (nodes, _) = walk_all(map).unwrap();
    nodes.iter().filter_map(|(id, _, _)| *id).collect()
}

/// The ids of every node of the tree holding `model`: written once into a
/// fresh store and flushed, the store holds exactly those.
fn model_node_ids(size: u64, model: &BTreeMap<u64, Fingerprint>) -> BTreeSet<Fingerprint> {
    let (store, mut map) = fresh(size);
    map.set(&model.iter().map(|(l, f)| (*l, *f)).collect::<Vec<_>>())
        .unwrap();
    map.flush().unwrap();
    store.ids().into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn matches_a_btreemap_model(
        size in prop_oneof![Just(1u64), Just(256), Just(300), Just(70_000), Just(TIB_BLOCKS), Just(u64::MAX)],
        ops in proptest::collection::vec(op(), 1..20),
        probes in proptest::collection::vec(any::<u64>(), 0..20),
        budget_nodes in 0usize..4,
    ) {
        let store = Arc::new(MemNodeStore::default());
        let budget = budget_nodes * NODE_ENTRY_COST;
        let mut map = open(&store, size, Fingerprint::ZERO, budget);
        let mut model: BTreeMap<u64, Fingerprint> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Set(raw) => {
                    // Few distinct values (0 = ZERO) and clustered LBAs so
                    // updates share leaves and zeroing collapses nodes.
                    let batch: Vec<_> = raw
                        .iter()
                        .map(|(l, v)| {
                            let lba = if l % 2 == 0 { l % 600 % size } else { l % size };
                            let f = if *v == 0 { Fingerprint::ZERO } else { fp(*v) };
                            (lba, f)
                        })
                        .collect();
                    map.set(&batch).unwrap();
                    for (l, f) in batch {
                        if f.is_zero() { model.remove(&l); } else { model.insert(l, f); }
                    }
                }
                Op::Zero(a, b, kind) => {
                    let (start, count) = zero_range_of(size, a, b, kind);
                    let before = map.dirty_nodes();
                    map.zero_range(start, count).unwrap();
                    // O(depth) nodes, whatever the count.
                    prop_assert!(map.dirty_nodes() <= before + 2 * usize::from(map.depth()));
                    let end = start + count;
                    model.retain(|l, _| *l < start || *l >= end);
                    if count > 0 {
                        prop_assert_eq!(map.get(start).unwrap(), Fingerprint::ZERO);
                        prop_assert_eq!(map.get(end - 1).unwrap(), Fingerprint::ZERO);
                    }
                }
                Op::Flush => { map.flush().unwrap(); }
                Op::Reopen => {
                    let root = map.flush().unwrap();
                    map = open(&store, size, root, budget);
                }
            }
            for (l, f) in &model {
                prop_assert_eq!(map.get(*l).unwrap(), *f);
            }
        }
        for p in probes {
            let l = p % size;
            prop_assert_eq!(map.get(l).unwrap(), model.get(&l).copied().unwrap_or(Fingerprint::ZERO));
        }
        // A walk, dirty nodes and all, reports exactly the model's blocks.
        let want: Vec<_> = model.iter().map(|(l, f)| (*l, *f)).collect();
        let (nodes, blocks) = walk_all(&map).unwrap();
        prop_assert_eq!(&blocks, &want);
        prop_assert_eq!(nodes.is_empty(), map.root().is_zero() && !map.is_dirty());
        // The final root equals that of a map written once with the model.
        let root = map.flush().unwrap();
        let (once_store, mut once) = fresh(size);
        once.set(&want).unwrap();
        prop_assert_eq!(once.flush().unwrap(), root);
        prop_assert_eq!(root.is_zero(), model.is_empty());
        // After a flush, a walk reports every node of that root, all clean:
        // exactly what a fresh store holds for it.
        let (nodes, blocks) = walk_all(&map).unwrap();
        prop_assert_eq!(blocks, want);
        prop_assert!(nodes.iter().all(|(id, _, _)| id.is_some()));
        let ids: BTreeSet<_> = nodes.iter().filter_map(|(id, _, _)| *id).collect();
        prop_assert_eq!(ids, once_store.ids().into_iter().collect::<BTreeSet<_>>());
    }
}
