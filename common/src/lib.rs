//! Code shared by Strata's daemons and tools.
//!
//! The host daemon's configuration schema ([`config`]), block fingerprints
//! ([`fingerprint`]), the frame codec ([`frame`]) that stores every block and
//! the per-datastore keys it uses ([`keys`]) with their cipher ([`siv`]), the vdisk map ([`map`]), the
//! byte format of the host's flash store ([`ondisk`]); the wire protocol
//! and TLS setup join them as the pool arrives.

pub mod config;
pub mod fingerprint;
pub mod frame;
pub mod keys;
pub mod map;
pub mod ondisk;
pub mod siv;

pub use fingerprint::{Fingerprint, BLOCK_SIZE};
pub use frame::{verify_checksum, Encoded, FrameCodec, FrameError, FrameHeader, FrameKeys};
pub use keys::{DatastoreKeys, KeyError, MasterKey};
pub use map::{MapError, NodeCache, NodeIdKey, NodeStore, VdiskMap};
