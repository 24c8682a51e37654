//! A byte-budgeted LRU cache of decoded map nodes, keyed by node id.
//!
//! Nodes are content-addressed, so one cache can serve every vdisk, snapshot
//! and clone of a datastore: share it behind an `Arc`. Every entry is charged
//! [`NODE_ENTRY_COST`] bytes (the decoded node plus bookkeeping); the cache
//! never holds more than its budget, and a budget below one entry caches
//! nothing (reads still work, from the store).

use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use super::node::{Node, FANOUT};
use crate::fingerprint::Fingerprint;

/// Bytes charged per cached node: the node, its 256 slots, and an estimate of
/// the LRU entry and the `Arc` header.
pub const NODE_ENTRY_COST: usize =
    size_of::<Node>() + FANOUT * size_of::<Fingerprint>() + 2 * size_of::<Fingerprint>() + 96;

/// Hit and miss counters of a [`NodeCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found the node.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
}

struct Inner {
    /// Every node costs the same, so the byte budget is an entry count;
    /// `None` when the budget is below one node.
    entries: Option<LruCache<Fingerprint, Arc<Node>>>,
    peak: usize,
    stats: CacheStats,
}

/// A thread-safe LRU cache of decoded nodes with a byte budget.
pub struct NodeCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache")
            .field("budget", &self.budget)
            .field("used", &self.used_bytes())
            .field("entries", &self.len())
            .finish()
    }
}

impl Default for NodeCache {
    fn default() -> Self {
        NodeCache::new(0)
    }
}

impl NodeCache {
    /// A cache that holds at most `budget_bytes` of nodes.
    pub fn new(budget_bytes: usize) -> NodeCache {
        let entries =
            std::num::NonZeroUsize::new(budget_bytes / NODE_ENTRY_COST).map(LruCache::new);
        NodeCache {
            budget: budget_bytes,
            inner: Mutex::new(Inner {
                entries,
                peak: 0,
                stats: CacheStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the cache inconsistent in a way that
        // matters: entries are immutable and the counters are advisory.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes charged for the nodes held now.
    pub fn used_bytes(&self) -> usize {
        self.len() * NODE_ENTRY_COST
    }

    /// The most bytes ever charged at once.
    pub fn peak_bytes(&self) -> usize {
        self.lock().peak
    }

    /// Nodes held now.
    pub fn len(&self) -> usize {
        self.lock().entries.as_ref().map_or(0, LruCache::len)
    }

    /// Whether no node is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// The node with id `id`, if held; marks it most recently used.
    pub fn get(&self, id: &Fingerprint) -> Option<Arc<Node>> {
        let mut g = self.lock();
        let inner = &mut *g;
        let found = inner.entries.as_mut().and_then(|e| e.get(id)).cloned();
        if found.is_some() {
            inner.stats.hits += 1;
        } else {
            inner.stats.misses += 1;
        }
        found
    }

    /// Holds `node` under `id`, evicting least recently used nodes to stay
    /// within the budget. Does nothing if one node exceeds the budget.
    pub fn insert(&self, id: Fingerprint, node: Arc<Node>) {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(entries) = inner.entries.as_mut() {
            entries.put(id, node);
            inner.peak = inner.peak.max(entries.len() * NODE_ENTRY_COST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let cache = NodeCache::new(3 * NODE_ENTRY_COST);
        let node = Arc::new(Node::new(0).unwrap());
        for n in 1..=3 {
            cache.insert(id(n), Arc::clone(&node));
        }
        assert!(cache.get(&id(1)).is_some()); // 2 is now the oldest
        cache.insert(id(4), Arc::clone(&node));
        assert!(cache.get(&id(2)).is_none());
        assert!(cache.get(&id(1)).is_some());
        assert!(cache.get(&id(3)).is_some());
        assert!(cache.get(&id(4)).is_some());
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.used_bytes(), 3 * NODE_ENTRY_COST);
        assert_eq!(cache.peak_bytes(), 3 * NODE_ENTRY_COST);
        assert_eq!(cache.stats(), CacheStats { hits: 4, misses: 1 });
    }

    #[test]
    fn budget_below_one_node_caches_nothing() {
        let cache = NodeCache::new(NODE_ENTRY_COST - 1);
        cache.insert(id(1), Arc::new(Node::new(0).unwrap()));
        assert!(cache.is_empty());
        assert_eq!(cache.peak_bytes(), 0);
    }
}
