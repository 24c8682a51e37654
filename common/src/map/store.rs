//! Where encoded map nodes live: the [`NodeStore`] trait.
//!
//! The real store is the host's flash store (nodes are frames in the same
//! log as data blocks); tests use the in-memory `MemNodeStore` here.

use std::sync::Arc;

use crate::fingerprint::Fingerprint;

/// A content-addressed store of encoded map nodes.
///
/// `put` must be idempotent (the same id always comes with the same bytes)
/// and durable by the time the caller persists a root naming the node.
pub trait NodeStore {
    /// What a failed `get` or `put` returns.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The bytes stored under `id`, or `None` if there are none. The caller
    /// verifies them (id and node format); the store need not.
    fn get(&self, id: &Fingerprint) -> Result<Option<Arc<[u8]>>, Self::Error>;

    /// Stores `bytes` under `id`.
    fn put(&self, id: &Fingerprint, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl<T: NodeStore + ?Sized> NodeStore for Arc<T> {
    type Error = T::Error;

    fn get(&self, id: &Fingerprint) -> Result<Option<Arc<[u8]>>, Self::Error> {
        (**self).get(id)
    }

    fn put(&self, id: &Fingerprint, bytes: &[u8]) -> Result<(), Self::Error> {
        (**self).put(id, bytes)
    }
}

impl<T: NodeStore + ?Sized> NodeStore for &T {
    type Error = T::Error;

    fn get(&self, id: &Fingerprint) -> Result<Option<Arc<[u8]>>, Self::Error> {
        (**self).get(id)
    }

    fn put(&self, id: &Fingerprint, bytes: &[u8]) -> Result<(), Self::Error> {
        (**self).put(id, bytes)
    }
}

/// Test support: an in-memory [`NodeStore`] that counts operations and can
/// be told to fail or to hold corrupt bytes.
#[cfg(test)]
pub(crate) mod mem {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::NodeStore;
    use crate::fingerprint::Fingerprint;

    /// The error of a [`MemNodeStore`] told to fail.
    #[derive(Debug, thiserror::Error)]
    #[error("injected store failure")]
    pub(crate) struct Injected;

    /// An in-memory node store for tests.
    #[derive(Default)]
    pub(crate) struct MemNodeStore {
        nodes: Mutex<HashMap<Fingerprint, Arc<[u8]>>>,
        pub(crate) gets: AtomicUsize,
        pub(crate) puts: AtomicUsize,
        pub(crate) fail: AtomicBool,
    }

    impl MemNodeStore {
        pub(crate) fn len(&self) -> usize {
            self.nodes.lock().unwrap().len()
        }

        /// Replaces the bytes under `id` without checking anything.
        pub(crate) fn overwrite(&self, id: &Fingerprint, bytes: &[u8]) {
            self.nodes.lock().unwrap().insert(*id, Arc::from(bytes));
        }

        pub(crate) fn remove(&self, id: &Fingerprint) {
            self.nodes.lock().unwrap().remove(id);
        }

        pub(crate) fn ids(&self) -> Vec<Fingerprint> {
            self.nodes.lock().unwrap().keys().copied().collect()
        }
    }

    impl NodeStore for MemNodeStore {
        type Error = Injected;

        fn get(&self, id: &Fingerprint) -> Result<Option<Arc<[u8]>>, Injected> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(Injected);
            }
            self.gets.fetch_add(1, Ordering::Relaxed);
            Ok(self.nodes.lock().unwrap().get(id).cloned())
        }

        fn put(&self, id: &Fingerprint, bytes: &[u8]) -> Result<(), Injected> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(Injected);
            }
            self.puts.fetch_add(1, Ordering::Relaxed);
            self.nodes.lock().unwrap().insert(*id, Arc::from(bytes));
            Ok(())
        }
    }
}
