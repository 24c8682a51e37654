//! Block fingerprints: the name of a 4 KiB block's content.
//!
//! A fingerprint is the keyed BLAKE3 hash (`blake3::keyed_hash`, keyed with
//! the datastore's 32-byte dedupe key) of the 4 KiB plaintext block. Keyed,
//! so a fingerprint reveals nothing about the block except equality with
//! another block hashed under the same key.
//!
//! The all-zero block is special: it is never hashed and never stored. Its
//! fingerprint is the reserved value [`Fingerprint::ZERO`] (32 zero bytes),
//! which maps use for unmapped, discarded and zeroed blocks. A real block
//! whose keyed hash came out as 32 zero bytes would be read back as zeros;
//! the odds are 2^-256, i.e. it does not happen.

use std::fmt;

/// Size of a block, the unit of fingerprinting, dedupe and compression.
pub const BLOCK_SIZE: usize = 4096;

/// Size of a fingerprint in bytes.
pub const FINGERPRINT_LEN: usize = 32;

/// The keyed BLAKE3 hash of a block's plaintext, or [`Fingerprint::ZERO`] for
/// the all-zero block (also its `Default`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// The reserved fingerprint of the all-zero block: 32 zero bytes. Never
    /// stored as a frame.
    pub const ZERO: Fingerprint = Fingerprint([0; FINGERPRINT_LEN]);

    /// Fingerprints `block` under `dedupe_key`: [`Fingerprint::ZERO`] if the
    /// block is all zeros, its keyed BLAKE3 hash otherwise.
    pub fn of_block(dedupe_key: &[u8; 32], block: &[u8; BLOCK_SIZE]) -> Fingerprint {
        if is_zero_block(block) {
            Fingerprint::ZERO
        } else {
            Fingerprint(*blake3::keyed_hash(dedupe_key, block).as_bytes())
        }
    }

    /// Keyed BLAKE3 of arbitrary bytes under `key`, with no special case for
    /// zeros: the content address of things other than data blocks (the
    /// vdisk map's nodes, for one). A result equal to [`Fingerprint::ZERO`]
    /// has odds of 2^-256.
    pub fn of_bytes(key: &[u8; 32], bytes: &[u8]) -> Fingerprint {
        Fingerprint(*blake3::keyed_hash(key, bytes).as_bytes())
    }

    /// Wraps raw bytes (as read from a map node, an index or a frame header).
    pub const fn from_bytes(bytes: [u8; FINGERPRINT_LEN]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }

    /// Whether this is the reserved fingerprint of the all-zero block.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; FINGERPRINT_LEN]
    }
}

/// Whether every byte of `block` is zero.
pub fn is_zero_block(block: &[u8; BLOCK_SIZE]) -> bool {
    // Compare in u64 words; the compiler vectorises this loop.
    block
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_has_reserved_fingerprint() {
        let fp = Fingerprint::of_block(&[7; 32], &[0; BLOCK_SIZE]);
        assert_eq!(fp, Fingerprint::ZERO);
        assert!(fp.is_zero());
    }

    #[test]
    fn one_nonzero_byte_anywhere_is_not_zero() {
        for i in [0, 1, 7, 8, 2047, 4095] {
            let mut b = [0u8; BLOCK_SIZE];
            b[i] = 1;
            assert!(!is_zero_block(&b));
            assert!(!Fingerprint::of_block(&[7; 32], &b).is_zero());
        }
    }

    #[test]
    fn keyed_and_deterministic() {
        let b = [0x5a; BLOCK_SIZE];
        let a1 = Fingerprint::of_block(&[1; 32], &b);
        assert_eq!(a1, Fingerprint::of_block(&[1; 32], &b));
        assert_ne!(a1, Fingerprint::of_block(&[2; 32], &b));
        assert_eq!(a1.as_bytes(), blake3::keyed_hash(&[1; 32], &b).as_bytes());
    }

    #[test]
    fn of_bytes_is_plain_keyed_blake3() {
        let b = [0x5a; BLOCK_SIZE];
        assert_eq!(
            Fingerprint::of_bytes(&[1; 32], &b),
            Fingerprint::of_block(&[1; 32], &b)
        );
        // No zero special case.
        assert!(!Fingerprint::of_bytes(&[1; 32], &[0; BLOCK_SIZE]).is_zero());
        assert_ne!(
            Fingerprint::of_bytes(&[1; 32], b"node"),
            Fingerprint::of_bytes(&[2; 32], b"node")
        );
    }

    #[test]
    fn display_is_hex() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0xab;
        bytes[31] = 0x01;
        let s = Fingerprint::from_bytes(bytes).to_string();
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("ab00"));
        assert!(s.ends_with("01"));
    }
}
