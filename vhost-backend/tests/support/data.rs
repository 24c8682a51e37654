//! Deterministic test data, and byte comparisons that say where data differs.

/// SplitMix64: reproducible pseudo-random data and choices, so that data
/// checks compare something more telling than a constant fill and a failing
/// run can be repeated exactly.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// The next `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
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
