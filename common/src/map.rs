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
/// level.
fn load<S: NodeStore>(
    store: &S,
    cache: &NodeCache,
    ids: &NodeIdKey,
    id: &Fingerprint,
    level: u8,
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
    cache.insert(*id, Arc::clone(&node));
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
