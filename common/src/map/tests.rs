use std::collections::BTreeMap;
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

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<(u64, u64)>),
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((any::<u64>(), 0u64..6), 1..20).prop_map(Op::Set),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
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
        // The final root equals that of a map written once with the model.
        let root = map.flush().unwrap();
        let (_, mut once) = fresh(size);
        once.set(&model.iter().map(|(l, f)| (*l, *f)).collect::<Vec<_>>()).unwrap();
        prop_assert_eq!(once.flush().unwrap(), root);
        prop_assert_eq!(root.is_zero(), model.is_empty());
    }
}
