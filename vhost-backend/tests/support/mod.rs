//! Shared helpers for strata-host's integration tests; each test binary
//! includes this module with `mod support;` and uses a subset of it.
//!
//! - [`daemon`]: starting the vhost-user-blk daemon under test on scratch
//!   images (one or more vdisks, with queues, block size, read-only, size and
//!   initial content, and extra strata-host flags), signalling it and waiting
//!   for its exit, and running strata-host to its exit.
//! - [`preset`]: writing initial content through a running daemon (for
//!   `strata` vdisks, which have no image file to prepare).
//! - [`pool`]: a `strata-pool` strata-host writes through, when
//!   `STRATA_TEST_POOL=1`.
//! - [`data`]: deterministic pseudo-random test data and byte comparisons.
//! - [`vhost_frontend`]: a scriptable vhost-user-blk frontend that can put
//!   arbitrary (including malformed) descriptor chains on a virtqueue.
//!
//! By default the daemon under test is the `strata-host` binary built by cargo.
//! Setting `STRATA_TEST_DAEMON=qsd` runs the same tests against
//! `qemu-storage-daemon`'s vhost-user-blk export instead, which is how the
//! tests themselves (and the frontend in [`vhost_frontend`]) were validated.
//! Tests encode where qsd's answers differ from strata-host's, and skip what
//! only strata-host does.

pub mod daemon;
pub mod data;
pub mod pool;
pub mod preset;
pub mod vhost_frontend;
