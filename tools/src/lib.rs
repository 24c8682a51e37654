//! Strata's host-side command-line tools.
//!
//! The library holds the logic; the binaries under `src/bin/` are thin
//! wrappers around it so that the pieces can be unit-tested.

#![warn(missing_docs)]

pub mod bench;
