//! The vdisk map: LBA block number -> block [`Fingerprint`], as a Merkle
//! radix tree of content-addressed nodes.
//!
//! # Shape
//!
//! Every node has 256 slots ([`FANOUT`]); each level resolves 8 bits of the
//! block number, leaf (level 0) first: block `lba` is slot `lba & 0xff` of
//! its leaf, which is slot `(lba >> 8) & 0xff` of its level-1 parent, and so
//! on up to the root at level `depth - 1`. The depth is the fewest levels
//! whose 256^depth blocks cover the vdisk ([`depth_for`]), at least 1: a
//! 1 TiB vdisk (2^28 blocks) has depth 4 (a root, two interior levels, the
//! leaves); a 2^64-block vdisk has the maximum, 8.
//!
//! Leaves hold block fingerprints; interior nodes hold child node ids. ZERO
//! in a slot means all zeros below: an all-ZERO subtree is never stored, and
//! writing ZERO to every block under a node collapses it back to ZERO in its
//! parent (up to the root: an empty map's root is ZERO). Node encoding is
//! canonical and ids are content hashes ([`node`]), so equal contents give
//! equal roots whatever the write order, and unchanged subtrees keep their
//! ids.
//!
//! # State, snapshots, clones
//!
//! A vdisk's state is one root id ([`VdiskMap::root`]). A snapshot is a saved
//! root; a clone is a new [`VdiskMap`] opened on a saved root. Updates copy
//! the touched paths on write, so a saved root keeps naming the old tree.
//!
//! # Memory
//!
//! [`VdiskMap::set`] loads the touched paths into memory as *dirty* nodes and
//! edits them there; [`VdiskMap::get`] sees them. [`VdiskMap::flush`] encodes
//! the dirty nodes bottom-up, puts the changed ones into the [`NodeStore`]
//! and returns the new root. Clean nodes are read through a shared
//! [`NodeCache`] with a byte budget, so the tree is never loaded whole: a
//! lookup costs at most `depth` node reads. Dirty nodes are not bounded by
//! the cache budget: callers flush when [`VdiskMap::dirty_bytes`] grows too
//! large.
//!
//! # Discards and walks
//!
//! [`VdiskMap::zero_range`] unmaps a block range in time proportional to
//! the tree depth, not the range: whole subtrees inside the range become
//! ZERO in their parent's slot, and only the (at most two per level) nodes
//! the range's ends cut through are loaded and edited slot by slot.
//!
//! [`VdiskMap::visit`] walks the current tree depth-first for space
//! accounting and garbage collection, reporting every node and every mapped
//! block in LBA order while holding at most one node per level.

pub mod cache;
pub mod node;
pub mod store;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use cache::{CacheStats, NodeCache, NODE_ENTRY_COST};
pub use node::{Node, NodeError, NodeIdKey, FANOUT, MAX_DEPTH, MAX_NODE_LEN};
pub use store::NodeStore;

use crate::fingerprint::Fingerprint;

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The block number is not below the vdisk's block count.
    #[error("block {lba} out of range: the vdisk has {block_count} blocks")]
    LbaOutOfRange {
        /// The block asked for.
        lba: u64,
        /// The vdisk's block count.
        block_count: u64,
    },
    /// The store has no node with this id.
    #[error("map node {id} missing from the store")]
    NodeMissing {
        /// The node's id.
        id: Fingerprint,
    },
    /// The store's bytes for this id are not a valid node at its place.
    #[error("map node {id} corrupt: {reason}")]
    NodeCorrupt {
        /// The node's id.
        id: Fingerprint,
        /// What is wrong with it.
        #[source]
        reason: NodeError,
    },
    /// The store failed reading or writing this node.
    #[error("map node store failed on {id}: {source}")]
    Store {
        /// The node's id.
        id: Fingerprint,
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A broken internal invariant (a bug, never bad input).
    #[error("vdisk map internal error: {0}")]
    Internal(&'static str),
}

/// The tree depth for a vdisk of `block_count` blocks: the fewest levels
/// (at least 1, at most [`MAX_DEPTH`]) whose 256^depth blocks cover it.
pub fn depth_for(block_count: u64) -> u8 {
    let mut depth = 1u8;
    while depth < MAX_DEPTH && (1u128 << (8 * u32::from(depth))) < u128::from(block_count) {
        depth += 1;
    }
    depth
}

/// Key of the node at `level` on `lba`'s path: the bits above that level.
fn node_key(lba: u64, level: u8) -> (u8, u64) {
    (
        level,
        lba.checked_shr(8 * (u32::from(level) + 1)).unwrap_or(0),
    )
}

/// Slot of `lba`'s path in its node at `level`.
fn slot_index(lba: u64, level: u8) -> u8 {
    // level < 8, so the shift is at most 56; the mask makes it a u8.
    ((lba >> (8 * u32::from(level))) & 0xff) as u8
}

/// Blocks covered by a node at `level`: 256^(level + 1).
fn node_span(level: u8) -> u128 {
    1u128 << (8 * (u32::from(level) + 1))
}

/// The key bits of the child in slot `slot` of the node keyed `bits`.
fn child_bits(bits: u64, slot: u8) -> u64 {
    // A node's bits have its level's 8 * (level + 1) low bits shifted out,
    // so shifting 8 back in cannot lose any.
    (bits << 8) | u64::from(slot)
}

/// The slots of the node at `(level, bits)` that blocks `[start, end)`
/// touch; the range must intersect the node.
struct Touched {
    /// The first slot touched.
    first: u8,
    /// The last slot touched.
    last: u8,
    /// The touched slots only partly covered (always interior-node slots):
    /// at most `first` and `last`, since every slot between them is covered
    /// whole.
    edges: [Option<u8>; 2],
}

impl Touched {
    fn new(level: u8, bits: u64, start: u128, end: u128) -> Touched {
        let base = u128::from(bits) * node_span(level);
        let child_span = node_span(level) >> 8;
        // Both below 256: the range intersects the node.
        let first = ((start.max(base) - base) / child_span) as u8;
        let last = ((end.min(base + node_span(level)) - 1 - base) / child_span) as u8;
        let partial = |slot: u8| {
            let lo = base + u128::from(slot) * child_span;
            level > 0 && (lo < start || lo + child_span > end)
        };
        let mut edges = [None; 2];
        if partial(first) {
            edges[0] = Some(first);
        }
        if last != first && partial(last) {
            edges[1] = Some(last);
        }
        Touched { first, last, edges }
    }
}

/// One thing [`VdiskMap::visit`] reports. The walk is depth-first and
/// pre-order: a node comes before everything below it and siblings come in
/// slot order, so blocks come in increasing LBA order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// A node of the current tree, reported before it is read.
    Node {
        /// The id the store holds the node under, or `None` for a dirty
        /// node, which has no id until [`VdiskMap::flush`]. A dirty node is
        /// reported even if flushing would collapse it to ZERO.
        id: Option<Fingerprint>,
        /// The node's level: 0 for a leaf, `depth - 1` for the root.
        level: u8,
        /// The first block the node covers; it covers 256^(level + 1).
        first_lba: u64,
    },
    /// A mapped block: a leaf slot that is not ZERO.
    Block {
        /// The block number.
        lba: u64,
        /// The block's fingerprint.
        fingerprint: Fingerprint,
    },
}

/// What a [`VdiskMap::visit`] visitor tells the walk to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Go on, below the node just reported too.
    Continue,
    /// Skip everything below the node just reported, without reading it:
    /// for example a garbage collector that has already marked this node
    /// from another root. After a [`Visit::Block`], the same as `Continue`.
    SkipChildren,
}

/// Where [`VdiskMap::visit`] finds a node: dirty in memory, or clean under
/// an id.
#[derive(Clone, Copy)]
enum At<'a> {
    Dirty(&'a Node),
    Clean(Fingerprint),
}

/// A node loaded for editing, and the id it was loaded from (ZERO if new).
struct DirtyNode {
    orig: Fingerprint,
    node: Node,
}

/// The map of one vdisk (or snapshot, or clone): a root, a store to read
/// nodes from and flush them to, a shared node cache, and the dirty nodes
/// not yet flushed.
pub struct VdiskMap<S: NodeStore> {
    store: S,
    cache: Arc<NodeCache>,
    ids: NodeIdKey,
    block_count: u64,
    depth: u8,
    root: Fingerprint,
    /// Dirty nodes by (level, lba bits above the level). Invariant: every
    /// dirty node's parent is dirty. BTreeMap order is bottom-up.
    dirty: BTreeMap<(u8, u64), DirtyNode>,
}

impl<S: NodeStore> std::fmt::Debug for VdiskMap<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiskMap")
            .field("root", &self.root)
            .field("block_count", &self.block_count)
            .field("depth", &self.depth)
            .field("dirty_nodes", &self.dirty.len())
            .finish()
    }
}

impl<S: NodeStore> VdiskMap<S> {
    /// A map of `block_count` blocks starting at `root`: ZERO for an empty
    /// vdisk, a saved root for a reopened vdisk, a snapshot or a clone. Does
    /// no I/O; a root that is not a node of the right depth is reported by
    /// the first lookup that reads it.
    pub fn open(
        store: S,
        cache: Arc<NodeCache>,
        ids: NodeIdKey,
        block_count: u64,
        root: Fingerprint,
    ) -> VdiskMap<S> {
        VdiskMap {
            store,
            cache,
            ids,
            block_count,
            depth: depth_for(block_count),
            root,
            dirty: BTreeMap::new(),
        }
    }

    /// The root as of the last flush (or open). Unflushed updates are not
    /// in it: see [`VdiskMap::flush`].
    pub fn root(&self) -> Fingerprint {
        self.root
    }

    /// The vdisk's size in blocks.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// Levels in the tree, leaves included.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The store nodes are read from and flushed to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether there are updates not yet flushed.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Nodes held dirty in memory.
    pub fn dirty_nodes(&self) -> usize {
        self.dirty.len()
    }

    /// Approximate memory held by dirty nodes, charged like cache entries.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.len() * NODE_ENTRY_COST
    }

    fn check(&self, lba: u64) -> Result<(), MapError> {
        if lba < self.block_count {
            Ok(())
        } else {
            Err(MapError::LbaOutOfRange {
                lba,
                block_count: self.block_count,
            })
        }
    }

    /// The fingerprint of block `lba`, unflushed updates included;
    /// [`Fingerprint::ZERO`] if it was never written or was zeroed.
    pub fn get(&self, lba: u64) -> Result<Fingerprint, MapError> {
        self.check(lba)?;
        let mut id = self.root;
        let mut level = self.depth - 1;
        loop {
            let slot = slot_index(lba, level);
            let fp = match self.dirty.get(&node_key(lba, level)) {
                Some(d) => d.node.slot(slot),
                None if id.is_zero() => return Ok(Fingerprint::ZERO),
                None => load(&self.store, &self.cache, &self.ids, &id, level)?.slot(slot),
            };
            if level == 0 {
                return Ok(fp);
            }
            id = fp;
            level -= 1;
        }
    }

    /// Applies `updates` (block, fingerprint) in order, a later update of
    /// the same block winning; ZERO unmaps a block. Either every update is
    /// applied or, on error, none is: all block numbers are checked and all
    /// touched nodes loaded before any slot changes.
    pub fn set(&mut self, updates: &[(u64, Fingerprint)]) -> Result<(), MapError> {
        for (lba, _) in updates {
            self.check(*lba)?;
        }
        for (lba, _) in updates {
            self.leaf_mut(*lba)?;
        }
        for (lba, fp) in updates {
            // Loaded above: no I/O, cannot fail.
            self.leaf_mut(*lba)?.set_slot(slot_index(*lba, 0), *fp);
        }
        Ok(())
    }

    /// The dirty leaf holding `lba`, loading (copying) its path first.
    fn leaf_mut(&mut self, lba: u64) -> Result<&mut Node, MapError> {
        let mut id = self.root;
        let mut level = self.depth - 1;
        while level > 0 {
            let node = match self.dirty.entry(node_key(lba, level)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    v.insert(load_dirty(&self.store, &self.cache, &self.ids, id, level)?)
                }
            };
            id = node.node.slot(slot_index(lba, level));
            level -= 1;
        }
        let leaf = match self.dirty.entry(node_key(lba, 0)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(load_dirty(&self.store, &self.cache, &self.ids, id, 0)?),
        };
        Ok(&mut leaf.node)
    }

    /// Unmaps blocks `[start, start + count)`: afterwards each reads as
    /// [`Fingerprint::ZERO`], and [`VdiskMap::flush`] gives the same root as
    /// setting each to ZERO with [`VdiskMap::set`] would. A `count` of 0
    /// does nothing.
    ///
    /// Costs O(depth) node loads and edits, whatever `count`: a subtree
    /// wholly inside the range becomes ZERO in its parent's slot (its dirty
    /// nodes are dropped, nothing below it is read), and only the nodes the
    /// range's two ends cut through, at most two per level, are loaded and
    /// edited slot by slot. Discarding a whole vdisk touches just the root.
    /// Dropping dirty nodes inside the range costs in proportion to them,
    /// and frees their memory.
    ///
    /// Either the whole range is unmapped or, on error, nothing changes:
    /// the range is checked and every node to edit loaded before any slot
    /// changes. A range reaching past the vdisk is `LbaOutOfRange` with its
    /// first block past the end.
    pub fn zero_range(&mut self, start: u64, count: u64) -> Result<(), MapError> {
        if count == 0 {
            return Ok(());
        }
        let end = match start.checked_add(count) {
            Some(end) if end <= self.block_count => end,
            _ => {
                return Err(MapError::LbaOutOfRange {
                    lba: start.max(self.block_count),
                    block_count: self.block_count,
                })
            }
        };
        let top = self.depth - 1;
        let root_key = (top, 0);
        if self.root.is_zero() && !self.dirty.contains_key(&root_key) {
            // Nothing is mapped.
            return Ok(());
        }
        let (start, end) = (u128::from(start), u128::from(end));
        if start == 0 && end == node_span(top) {
            // The whole tree: an empty dirty root, which flushes to ZERO.
            let node = Node::new(top).map_err(|_| MapError::Internal("map depth out of range"))?;
            self.dirty.clear();
            self.dirty.insert(
                root_key,
                DirtyNode {
                    orig: self.root,
                    node,
                },
            );
            return Ok(());
        }
        // Load first, so that nothing below can fail half way.
        self.zero_load(top, 0, self.root, start, end)?;
        // Drop the dirty nodes wholly inside the range (not the root, which
        // is not: that case is above). Their parents stay, so every dirty
        // node's parent is still dirty, and the parents' slots are zeroed
        // below.
        for level in 0..top {
            let span = node_span(level);
            // Key bits of the first node wholly inside, and of the first
            // after those; at most 2^56, as the span is at least 2^8.
            let first = start.div_ceil(span) as u64;
            let past = (end / span) as u64;
            if first < past {
                let doomed: Vec<(u8, u64)> = self
                    .dirty
                    .range((level, first)..(level, past))
                    .map(|(key, _)| *key)
                    .collect();
                for key in doomed {
                    self.dirty.remove(&key);
                }
            }
        }
        self.zero_apply(top, 0, self.root, start, end)
    }

    /// [`VdiskMap::zero_range`]'s first pass: makes dirty every node at or
    /// below `(level, bits)` that `[start, end)` covers only in part and
    /// that is not ZERO. `id` is the node's id if it is not dirty already.
    fn zero_load(
        &mut self,
        level: u8,
        bits: u64,
        id: Fingerprint,
        start: u128,
        end: u128,
    ) -> Result<(), MapError> {
        let node = match self.dirty.entry((level, bits)) {
            Entry::Occupied(e) => &e.into_mut().node,
            // All zeros below: nothing to unmap.
            Entry::Vacant(_) if id.is_zero() => return Ok(()),
            Entry::Vacant(v) => {
                &v.insert(load_dirty(&self.store, &self.cache, &self.ids, id, level)?)
                    .node
            }
        };
        let edges = Touched::new(level, bits, start, end)
            .edges
            .map(|edge| edge.map(|slot| (slot, node.slot(slot))));
        for (slot, child) in edges.into_iter().flatten() {
            self.zero_load(level - 1, child_bits(bits, slot), child, start, end)?;
        }
        Ok(())
    }

    /// [`VdiskMap::zero_range`]'s second pass: zeroes the slots of dirty
    /// node `(level, bits)` that `[start, end)` covers whole and recurses
    /// into the ones it covers in part. The first pass loaded every such
    /// node that is not ZERO; `id` is the node's id if it is not dirty.
    fn zero_apply(
        &mut self,
        level: u8,
        bits: u64,
        id: Fingerprint,
        start: u128,
        end: u128,
    ) -> Result<(), MapError> {
        let Some(d) = self.dirty.get_mut(&(level, bits)) else {
            return if id.is_zero() {
                Ok(())
            } else {
                Err(MapError::Internal("zero_range edge node not loaded"))
            };
        };
        let touched = Touched::new(level, bits, start, end);
        for slot in touched.first..=touched.last {
            if !touched.edges.contains(&Some(slot)) {
                d.node.set_slot(slot, Fingerprint::ZERO);
            }
        }
        let node = &d.node;
        let edges = touched
            .edges
            .map(|edge| edge.map(|slot| (slot, node.slot(slot))));
        for (slot, child) in edges.into_iter().flatten() {
            self.zero_apply(level - 1, child_bits(bits, slot), child, start, end)?;
        }
        Ok(())
    }

    /// Walks the current tree, unflushed updates included, for space
    /// accounting and garbage collection: calls `visitor` with every node
    /// (a stored node with its id, a dirty one without) and every mapped
    /// block, depth-first, blocks in LBA order (see [`Visit`]). ZERO
    /// subtrees are skipped; the visitor can skip others ([`Walk`]) and stop
    /// the walk by returning an error, which `visit` returns.
    ///
    /// Clean nodes are read like [`VdiskMap::get`] reads them, checked, from
    /// the cache or else the store, but a node read from the store is not
    /// added to the cache, so a walk does not evict the working set. At most
    /// one node per level is held at a time.
    ///
    /// The nodes of [`VdiskMap::root`] that dirty nodes replace are not
    /// reported: to account for a saved root, walk a map opened on it.
    pub fn visit<E, F>(&self, mut visitor: F) -> Result<(), E>
    where
        E: From<MapError>,
        F: FnMut(Visit) -> Result<Walk, E>,
    {
        let top = self.depth - 1;
        let at = match self.dirty.get(&(top, 0)) {
            Some(d) => At::Dirty(&d.node),
            None if self.root.is_zero() => return Ok(()),
            None => At::Clean(self.root),
        };
        self.walk(top, 0, at, &mut visitor)
    }

    /// [`VdiskMap::visit`] from node `(level, bits)`.
    fn walk<E, F>(&self, level: u8, bits: u64, at: At<'_>, visitor: &mut F) -> Result<(), E>
    where
        E: From<MapError>,
        F: FnMut(Visit) -> Result<Walk, E>,
    {
        // Fits: `bits` came from a u64 LBA inside this node.
        let first_lba = (u128::from(bits) * node_span(level)) as u64;
        let id = match at {
            At::Dirty(_) => None,
            At::Clean(id) => Some(id),
        };
        if visitor(Visit::Node {
            id,
            level,
            first_lba,
        })? == Walk::SkipChildren
        {
            return Ok(());
        }
        let clean;
        let (node, dirty) = match at {
            At::Dirty(node) => (node, true),
            At::Clean(id) => {
                clean = load_with(&self.store, &self.cache, &self.ids, &id, level, false)?;
                (&*clean, false)
            }
        };
        for (slot, fp) in (0..=u8::MAX).zip(node.slots().iter()) {
            if level == 0 {
                if !fp.is_zero() {
                    visitor(Visit::Block {
                        lba: first_lba | u64::from(slot),
                        fingerprint: *fp,
                    })?;
                }
                continue;
            }
            let child = child_bits(bits, slot);
            // Every dirty node's parent is dirty, so below a clean node
            // everything is clean.
            let at = match dirty.then(|| self.dirty.get(&(level - 1, child))).flatten() {
                Some(d) => At::Dirty(&d.node),
                None if fp.is_zero() => continue,
                None => At::Clean(*fp),
            };
            self.walk(level - 1, child, at, visitor)?;
        }
        Ok(())
    }

    /// Writes the dirty nodes bottom-up (only those whose content changed;
    /// empty ones collapse to ZERO and are not written), makes the result
    /// the root and returns it. On error the map is unchanged: the dirty
    /// nodes stay and a later flush retries.
    pub fn flush(&mut self) -> Result<Fingerprint, MapError> {
        if self.dirty.is_empty() {
            return Ok(self.root);
        }
        let top = self.depth - 1;
        let keys: Vec<(u8, u64)> = self.dirty.keys().copied().collect();
        let mut new_ids = Vec::with_capacity(keys.len());
        let mut new_root = self.root;
        for key in keys {
            let (level, bits) = key;
            let d = self
                .dirty
                .get(&key)
                .ok_or(MapError::Internal("dirty node vanished during flush"))?;
            let id = match d.node.encode() {
                None => Fingerprint::ZERO,
                Some(bytes) => {
                    let id = self.ids.id_of(&bytes);
                    if id != d.orig {
                        self.store.put(&id, &bytes).map_err(|e| MapError::Store {
                            id,
                            source: Box::new(e),
                        })?;
                    }
                    id
                }
            };
            if level == top {
                new_root = id;
            } else {
                // Patching the parent in place is safe even if a later put
                // fails: the child stays dirty and reads prefer it.
                let parent = self
                    .dirty
                    .get_mut(&(level + 1, bits >> 8))
                    .ok_or(MapError::Internal("dirty node without dirty parent"))?;
                parent.node.set_slot((bits & 0xff) as u8, id);
            }
            new_ids.push(id);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for (d, id) in dirty.into_values().zip(new_ids) {
            if !id.is_zero() {
                self.cache.insert(id, Arc::new(d.node));
            }
        }
        self.root = new_root;
        Ok(new_root)
    }
}

/// A clean node from the cache or the store, checked against its id and its
/// level; a node read from the store is added to the cache.
fn load<S: NodeStore>(
    store: &S,
    cache: &NodeCache,
    ids: &NodeIdKey,
    id: &Fingerprint,
    level: u8,
) -> Result<Arc<Node>, MapError> {
    load_with(store, cache, ids, id, level, true)
}

/// [`load`], adding a node read from the store to the cache only if `fill`.
fn load_with<S: NodeStore>(
    store: &S,
    cache: &NodeCache,
    ids: &NodeIdKey,
    id: &Fingerprint,
    level: u8,
    fill: bool,
) -> Result<Arc<Node>, MapError> {
    let corrupt = |reason| MapError::NodeCorrupt { id: *id, reason };
    if let Some(node) = cache.get(id) {
        if node.level() != level {
            return Err(corrupt(NodeError::WrongLevel {
                expected: level,
                found: node.level(),
            }));
        }
        return Ok(node);
    }
    let bytes = store
        .get(id)
        .map_err(|e| MapError::Store {
            id: *id,
            source: Box::new(e),
        })?
        .ok_or(MapError::NodeMissing { id: *id })?;
    let computed = ids.id_of(&bytes);
    if computed != *id {
        return Err(corrupt(NodeError::IdMismatch { computed }));
    }
    let node = Node::decode(&bytes).map_err(corrupt)?;
    if node.level() != level {
        return Err(corrupt(NodeError::WrongLevel {
            expected: level,
            found: node.level(),
        }));
    }
    let node = Arc::new(node);
    if fill {
        cache.insert(*id, Arc::clone(&node));
    }
    Ok(node)
}

/// A node to edit: a copy of node `id`, or a new empty node if `id` is ZERO.
fn load_dirty<S: NodeStore>(
    store: &S,
    cache: &NodeCache,
    ids: &NodeIdKey,
    id: Fingerprint,
    level: u8,
) -> Result<DirtyNode, MapError> {
    let node = if id.is_zero() {
        Node::new(level).map_err(|reason| MapError::NodeCorrupt { id, reason })?
    } else {
        Node::clone(&*load(store, cache, ids, &id, level)?)
    };
    Ok(DirtyNode { orig: id, node })
}

#[cfg(test)]
mod tests;
