//! Code shared by Strata's daemons and tools.
//!
//! The host daemon's configuration schema ([`config`]), block fingerprints
//! ([`fingerprint`]), the frame codec ([`frame`]) that stores every block,
//! the per-datastore keys it uses ([`keys`]) and their cipher ([`siv`]), the
//! vdisk map ([`map`]), the byte format of the host's flash store
//! ([`ondisk`]), and the pool's side: cluster certificates ([`pki`]), TLS
//! setup ([`tls`]) and the host-to-pool protocol ([`wire`]).

pub mod config;
pub mod erasure;
pub mod fingerprint;
pub mod frame;
pub mod keys;
pub mod map;
pub mod ondisk;
pub mod pki;
pub mod siv;
pub mod tls;
pub mod wire;

pub use fingerprint::{Fingerprint, BLOCK_SIZE};
pub use frame::{verify_checksum, Encoded, FrameCodec, FrameError, FrameHeader, FrameKeys};
pub use keys::{DatastoreKeys, KeyError, MasterKey};
pub use map::{MapError, NodeCache, NodeIdKey, NodeStore, VdiskMap};
