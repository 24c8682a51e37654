//! Deterministic test data, and byte comparisons that say where data differs.

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

/// Reproducible pseudo-random data and choices (`rand`'s seeded `StdRng`),
/// so that data checks compare something more telling than a constant fill
/// and a failing run can be repeated exactly.
pub struct TestRng(StdRng);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(StdRng::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0.random_range(0..bound)
    }

    /// The next `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.0.fill_bytes(&mut out);
        out
    }
}

/// `len` pseudo-random bytes determined by `seed` alone: the first `len`
/// bytes of [`TestRng::new(seed)`](TestRng::new)'s stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    TestRng::new(seed).bytes(len)
}

/// Panics with the first differing byte (as a disk offset) if `got` and
/// `want` differ; never dumps megabytes of bytes.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], disk_offset: u64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        let differing = got.iter().zip(want).filter(|(g, w)| g != w).count();
        panic!(
            "{what}: first difference at disk offset {} (byte {i} of the range at {disk_offset}): \
             got {:#04x}, want {:#04x}; {differing} of {} bytes differ",
            disk_offset + i as u64,
            got[i],
            want[i],
            got.len()
        );
    }
}
