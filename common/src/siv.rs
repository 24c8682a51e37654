//! AES-256-GCM-SIV (RFC 8452) with detached tags: the one cipher Strata uses,
//! for frames ([`crate::frame`]) and for wrapping datastore keys
//! ([`crate::keys`]).
//!
//! Backed by AWS-LC (`aws-lc-rs`), whose GCM-SIV runs AES-NI and CLMUL
//! assembly: a 4 KiB block opens in about 1.1 µs on this project's machines
//! against 4.3 µs for the RustCrypto `aes-gcm-siv` crate, whose POLYVAL
//! multiplies one 16-byte block per call (measured in `docs/BENCHMARKS.md`).
//! Both implement the same RFC, so bytes written by either open with the
//! other; the frame tests check that against `aes-gcm-siv`.

use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};

/// Length of a key.
pub const KEY_LEN: usize = 32;
/// Length of a nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a tag.
pub const TAG_LEN: usize = 16;

/// The cipher refused: a tag did not verify (wrong key, nonce, associated
/// data, or damaged bytes), or a length was out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SivError;

/// An AES-256-GCM-SIV key, ready to seal and open. Shareable between threads.
pub struct SivCipher {
    key: LessSafeKey,
}

impl fmt::Debug for SivCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SivCipher { .. }")
    }
}

impl SivCipher {
    /// A cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> SivCipher {
        let unbound = match UnboundKey::new(&AES_256_GCM_SIV, key) {
            Ok(k) => k,
            // A 32-byte key is always the right length for AES-256.
            Err(_) => unreachable!("AES-256-GCM-SIV rejected a 32-byte key"),
        };
        SivCipher {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `in_out` in place and returns the tag over it and `aad`.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SivError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .map_err(|_| SivError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` over `ciphertext` and `aad` and decrypts into `out`
    /// (exactly `ciphertext.len()` bytes). On error `out` holds nothing of
    /// the plaintext.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<(), SivError> {
        if out.len() != ciphertext.len() {
            return Err(SivError);
        }
        self.key
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                ciphertext,
                tag,
                out,
            )
            .map_err(|_| {
                out.fill(0);
                SivError
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let c = SivCipher::new(&[3; KEY_LEN]);
        let plain: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut buf = plain.clone();
        let tag = c.seal(&[9; NONCE_LEN], b"aad", &mut buf).expect("seal");
        assert_ne!(buf, plain);
        let mut out = vec![0u8; buf.len()];
        c.open(&[9; NONCE_LEN], b"aad", &buf, &tag, &mut out)
            .expect("open");
        assert_eq!(out, plain);

        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        let mut bad_ct = buf.clone();
        bad_ct[4000] ^= 0x80;
        for (nonce, aad, ct, tag) in [
            ([9; NONCE_LEN], &b"aad"[..], &bad_ct[..], tag),
            ([9; NONCE_LEN], &b"aad"[..], &buf[..], bad_tag),
            ([8; NONCE_LEN], &b"aad"[..], &buf[..], tag),
            ([9; NONCE_LEN], &b"aae"[..], &buf[..], tag),
        ] {
            let mut out = vec![0xAAu8; buf.len()];
            assert_eq!(c.open(&nonce, aad, ct, &tag, &mut out), Err(SivError));
            assert!(out.iter().all(|&b| b == 0), "no plaintext on failure");
        }
        let mut short = vec![0u8; buf.len() - 1];
        assert_eq!(
            c.open(&[9; NONCE_LEN], b"aad", &buf, &tag, &mut short),
            Err(SivError)
        );
        let other = SivCipher::new(&[4; KEY_LEN]);
        assert_eq!(
            other.open(&[9; NONCE_LEN], b"aad", &buf, &tag, &mut out),
            Err(SivError)
        );
    }

    /// RFC 8452 appendix C.2, the AES-256 vector with 8 bytes of plaintext
    /// and 1 byte of associated data.
    #[test]
    fn rfc_8452_vector() {
        let mut key = [0u8; KEY_LEN];
        key[0] = 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = 3;
        let mut buf = [2u8, 0, 0, 0, 0, 0, 0, 0];
        let tag = SivCipher::new(&key)
            .seal(&nonce, &[1], &mut buf)
            .expect("seal");
        assert_eq!(buf, [0x1d, 0xe2, 0x29, 0x67, 0x23, 0x7a, 0x81, 0x32]);
        assert_eq!(
            tag,
            [
                0x91, 0x21, 0x3f, 0x26, 0x7e, 0x3b, 0x45, 0x2f, 0x02, 0xd0, 0x1a, 0xe3, 0x3e, 0x4e,
                0xc8, 0x54
            ]
        );
    }
}
