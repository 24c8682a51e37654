//! Code shared by Strata's daemons and tools.
//!
//! The host daemon's configuration schema ([`config`]), block fingerprints
//! ([`fingerprint`]) and the frame codec ([`frame`]) that stores every block;
//! the wire protocol and TLS setup join them as the pool arrives.

pub mod config;
pub mod fingerprint;
pub mod frame;

pub use fingerprint::{Fingerprint, BLOCK_SIZE};
pub use frame::{verify_checksum, Encoded, FrameCodec, FrameError, FrameHeader, FrameKeys};
