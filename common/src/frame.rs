//! The frame codec: how a 4 KiB block is stored anywhere (RAM buffer, NVLOG,
//! flash, pool).
//!
//! Encoding a block, in order:
//!
//! 1. **Fingerprint**: keyed BLAKE3 of the plaintext under the dedupe key
//!    ([`Fingerprint::of_block`]). The all-zero block has the reserved
//!    fingerprint [`Fingerprint::ZERO`] and is never encoded:
//!    [`FrameCodec::encode`] returns [`Encoded::Zero`] and writes nothing.
//! 2. **Compression**: snappy raw format (`snap::raw`, no framing). If the
//!    result does not save at least an eighth of the block (is longer than
//!    [`MAX_COMPRESSED_BODY`], 3584 bytes) the block is stored as is and the
//!    `COMPRESSED` flag is clear. The bytes that go into the cipher are called
//!    the *body*: the snappy stream, or the 4096 plaintext bytes.
//! 3. **Encryption**: AES-256-GCM-SIV under the data key. The 12-byte nonce
//!    is the first 12 bytes of the fingerprint, so the same plaintext always
//!    gives the same frame (dedupe works on encrypted data; GCM-SIV stays
//!    safe when a nonce repeats, and here it repeats only for equal
//!    plaintexts, which the fingerprint already reveals). The 48 header bytes
//!    are the associated data, so a header cannot be swapped, edited or moved
//!    onto another payload without failing the tag.
//! 4. **Checksum**: xxh3-64 (seed 0) over every byte before it, so the pool
//!    and the scrubber can check a frame without any key
//!    ([`verify_checksum`]).
//!
//! # Byte layout (version 1)
//!
//! All integers little-endian. `P` is the payload length.
//!
//! | offset | size | field                                                            |
//! |-------:|-----:|------------------------------------------------------------------|
//! |      0 |    4 | magic `"STFR"` (`53 54 46 52`)                                   |
//! |      4 |    1 | version, `1`                                                     |
//! |      5 |    1 | flags: bit 0 `COMPRESSED` (body is snappy raw); bits 1-7 zero    |
//! |      6 |    2 | reserved, zero                                                   |
//! |      8 |   32 | fingerprint (never all-zero)                                     |
//! |     40 |    4 | plaintext length, u32, `4096`                                    |
//! |     44 |    4 | payload length `P`, u32: body length + 16                        |
//! |     48 |  `P` | payload: AES-256-GCM-SIV ciphertext of the body, then 16-byte tag |
//! | 48 + P |    8 | xxh3-64, seed 0, of bytes `[0, 48 + P)`, u64                     |
//!
//! A frame is `56 + P` bytes. `P` is `16 + 4096` when stored uncompressed,
//! and between `16 + 1` and `16 + 4095` when compressed (the encoder writes
//! at most `16 + `[`MAX_COMPRESSED_BODY`]), so a frame is at
//! most [`MAX_FRAME_LEN`] (4168) bytes. Bytes 0..48 are the header and the
//! associated data of the cipher; the nonce is fingerprint bytes 0..12.
//!
//! Decoding ([`FrameCodec::decode`]) checks, in order: the frame is at least
//! a header long; magic; version; flags and reserved bits; the fingerprint is
//! not the reserved zero; plaintext length; payload length against the
//! flags; the frame length equals `56 + P`; the xxh3; the header fingerprint
//! equals the one the caller expects; the GCM tag; the snappy stream and its
//! decompressed length; and finally that the keyed BLAKE3 of the result
//! equals the expected fingerprint. Any failure is a [`FrameError`] naming
//! what failed; no input makes it panic.
//! [`FrameCodec::decode_authenticated`] does all but the last check, for
//! frames that had the full one when they entered a store.

use std::cell::RefCell;
use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use crate::siv::{self, SivCipher, NONCE_LEN};

pub use crate::fingerprint::{Fingerprint, BLOCK_SIZE};

/// Magic bytes at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"STFR";
/// The frame format version this codec writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Flag bit: the body is a snappy raw stream (clear: the plaintext as is).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Length of the header, which is also the cipher's associated data.
pub const HEADER_LEN: usize = 48;
/// Length of the GCM-SIV tag at the end of the payload.
pub const TAG_LEN: usize = siv::TAG_LEN;
/// Length of the trailing xxh3-64 checksum.
pub const CHECKSUM_LEN: usize = 8;
/// Bytes a frame adds around its body: header, tag and checksum.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + TAG_LEN + CHECKSUM_LEN;
/// Length of a frame holding an uncompressed block, the longest there is.
pub const MAX_FRAME_LEN: usize = FRAME_OVERHEAD + BLOCK_SIZE;
/// Length of the shortest valid frame (a one-byte body).
pub const MIN_FRAME_LEN: usize = FRAME_OVERHEAD + 1;
/// The longest snappy stream [`FrameCodec::encode`] stores: compression
/// must save at least an eighth of the block, or the block is stored as is
/// (ZFS keeps the same rule). A frame that saves less is still over a page
/// long, so a read of it costs two pages where an uncompressed frame,
/// stored split, costs one (`ondisk::segment`), for a few dozen bytes of
/// flash. Decoding takes any shorter stream, as frames written before the
/// rule have.
pub const MAX_COMPRESSED_BODY: usize = BLOCK_SIZE - BLOCK_SIZE / 8;

/// The two secret keys a codec needs. `Debug` prints neither.
#[derive(Clone)]
pub struct FrameKeys {
    /// The AES-256-GCM-SIV key that encrypts frame bodies.
    pub data_key: [u8; 32],
    /// The BLAKE3 key that fingerprints plaintext blocks.
    pub dedupe_key: [u8; 32],
}

impl fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKeys { .. }")
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame truncated: {len} bytes, a header alone is {HEADER_LEN}")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// The magic bytes are wrong: not a frame.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version this codec does not read.
    #[error("unsupported frame version {found} (this codec reads {FRAME_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// Unknown flag bits, or non-zero reserved bytes.
    #[error("unknown frame flags {flags:#04x} or reserved bytes {reserved:#06x}")]
    BadFlags {
        /// The flags byte.
        flags: u8,
        /// The reserved field.
        reserved: u16,
    },
    /// The header carries the zero block's fingerprint, which is never stored.
    #[error("frame header carries the reserved zero-block fingerprint")]
    ReservedFingerprint,
    /// The plaintext length is not the block size.
    #[error("frame plaintext length {len}, expected {BLOCK_SIZE}")]
    BadPlaintextLen {
        /// The length found.
        len: u32,
    },
    /// The payload length is impossible for the flags.
    #[error("frame payload length {len} impossible (compressed: {compressed})")]
    BadPayloadLen {
        /// The length found.
        len: u32,
        /// Whether the compressed flag is set.
        compressed: bool,
    },
    /// The bytes given are not exactly as long as the header says.
    #[error("frame is {actual} bytes, its header says {expected}")]
    LengthMismatch {
        /// Length from the header.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The xxh3 checksum does not match: the stored bytes are damaged.
    #[error("frame checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChecksumMismatch {
        /// Checksum in the frame.
        stored: u64,
        /// Checksum of the bytes.
        computed: u64,
    },
    /// The header names another block than the one asked for.
    #[error("frame holds {found}, expected {expected}")]
    WrongFingerprint {
        /// What the caller asked for.
        expected: Fingerprint,
        /// What the header says.
        found: Fingerprint,
    },
    /// The GCM-SIV tag did not verify: wrong data key or tampered frame.
    #[error("frame authentication failed (wrong data key or tampered frame)")]
    Decrypt,
    /// The decrypted body is not a valid snappy stream.
    #[error("frame body does not decompress: {0}")]
    Decompress(#[source] snap::Error),
    /// The body decompressed to a length other than the block size.
    #[error("frame body decompresses to {len} bytes, expected {BLOCK_SIZE}")]
    DecompressedLen {
        /// Decompressed length.
        len: usize,
    },
    /// The decoded block does not hash to the expected fingerprint: wrong
    /// dedupe key, or a forged frame.
    #[error("decoded block fingerprints to {computed}, expected {expected}")]
    ContentMismatch {
        /// What the caller asked for.
        expected: Fingerprint,
        /// Fingerprint of the decoded block.
        computed: Fingerprint,
    },
    /// Asked to encode the all-zero block, which is never stored.
    #[error("the all-zero block is never stored as a frame")]
    ZeroBlock,
    /// Compression failed (cannot happen for a 4 KiB block).
    #[error("compression failed: {0}")]
    Compress(#[source] snap::Error),
    /// Encryption failed (cannot happen for a 4 KiB block).
    #[error("encryption failed")]
    Encrypt,
}

/// A parsed and bounds-checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whether the body is snappy-compressed.
    pub compressed: bool,
    /// The fingerprint of the block the frame holds (never zero).
    pub fingerprint: Fingerprint,
    /// Length of the payload: the encrypted body plus the tag.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Parses and checks the header at the start of `bytes` (which may be
    /// longer than the header, e.g. a frame inside a segment). Checks magic,
    /// version, flags, reserved bits, fingerprint and both lengths, but not
    /// the checksum: see [`verify_checksum`].
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Truncated { len: bytes.len() })?;
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if h[4] != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: h[4] });
        }
        let flags = h[5];
        let reserved = u16::from_le_bytes([h[6], h[7]]);
        if flags & !FLAG_COMPRESSED != 0 || reserved != 0 {
            return Err(FrameError::BadFlags { flags, reserved });
        }
        let compressed = flags & FLAG_COMPRESSED != 0;
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&h[8..40]);
        let fingerprint = Fingerprint::from_bytes(fp);
        if fingerprint.is_zero() {
            return Err(FrameError::ReservedFingerprint);
        }
        let plain_len = u32::from_le_bytes([h[40], h[41], h[42], h[43]]);
        if plain_len as usize != BLOCK_SIZE {
            return Err(FrameError::BadPlaintextLen { len: plain_len });
        }
        let len = u32::from_le_bytes([h[44], h[45], h[46], h[47]]);
        let body = (len as usize).checked_sub(TAG_LEN);
        let ok = match body {
            None => false,
            Some(body) if compressed => (1..BLOCK_SIZE).contains(&body),
            Some(body) => body == BLOCK_SIZE,
        };
        if !ok {
            return Err(FrameError::BadPayloadLen { len, compressed });
        }
        Ok(FrameHeader {
            compressed,
            fingerprint,
            payload_len: len as usize,
        })
    }

    /// Length of the whole frame this header starts: header, payload and
    /// checksum.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len + CHECKSUM_LEN
    }

    /// The 48 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4] = FRAME_VERSION;
        h[5] = if self.compressed { FLAG_COMPRESSED } else { 0 };
        h[8..40].copy_from_slice(self.fingerprint.as_bytes());
        h[40..44].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        h[44..48].copy_from_slice(&(self.payload_len as u32).to_le_bytes());
        h
    }
}

/// The bytes of an uncompressed frame that its fingerprint does not give:
/// the GCM-SIV tag and the checksum, in that order.
pub const SPLIT_TAIL_LEN: usize = TAG_LEN + CHECKSUM_LEN;

/// The tag and checksum of an uncompressed frame stored split.
pub type SplitTail = [u8; SPLIT_TAIL_LEN];

/// An uncompressed frame taken apart for storing split: its 4096
/// ciphertext bytes (the body) and its tail. The header is left out: it
/// follows from the fingerprint ([`split_header`]). `None` for a compressed
/// frame or bytes that are not a frame; checks the header only (joining
/// gives back these very bytes, which decoding then checks in full).
pub fn split_uncompressed(frame: &[u8]) -> Option<(&[u8], SplitTail)> {
    let header = FrameHeader::parse(frame).ok()?;
    if header.compressed || frame.len() != MAX_FRAME_LEN {
        return None;
    }
    let (body, tail) = frame[HEADER_LEN..].split_at(BLOCK_SIZE);
    Some((body, tail.try_into().ok()?))
}

/// The header of the uncompressed frame of `fingerprint`: the same 48
/// bytes [`FrameCodec::encode`] writes for it.
pub fn split_header(fingerprint: &Fingerprint) -> [u8; HEADER_LEN] {
    FrameHeader {
        compressed: false,
        fingerprint: *fingerprint,
        payload_len: BLOCK_SIZE + TAG_LEN,
    }
    .to_bytes()
}

/// The frame [`split_uncompressed`] took apart, from its fingerprint, body
/// and tail. A body of the wrong length gives bytes that fail to decode.
pub fn join_split(fingerprint: &Fingerprint, body: &[u8], tail: &SplitTail) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MAX_FRAME_LEN);
    frame.extend_from_slice(&split_header(fingerprint));
    frame.extend_from_slice(body);
    frame.extend_from_slice(tail);
    frame
}

/// Checks a frame without keys: header sanity, exact length and the xxh3
/// checksum. `frame` must be exactly one frame. Returns its header. This
/// catches damage, not forgery; only [`FrameCodec::decode`] authenticates.
pub fn verify_checksum(frame: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = FrameHeader::parse(frame)?;
    let expected = header.frame_len();
    if frame.len() != expected {
        return Err(FrameError::LengthMismatch {
            expected,
            actual: frame.len(),
        });
    }
    let (covered, sum) = frame.split_at(expected - CHECKSUM_LEN);
    let mut s = [0u8; CHECKSUM_LEN];
    s.copy_from_slice(sum);
    let stored = u64::from_le_bytes(s);
    let computed = xxh3_64(covered);
    if stored != computed {
        return Err(FrameError::ChecksumMismatch { stored, computed });
    }
    Ok(header)
}

/// What [`FrameCodec::encode`] did with a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// The block is all zeros: nothing was written; map it to
    /// [`Fingerprint::ZERO`].
    Zero,
    /// A frame for the block with this fingerprint was appended.
    Frame(Fingerprint),
}

impl Encoded {
    /// The block's fingerprint ([`Fingerprint::ZERO`] for the zero block).
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Encoded::Zero => Fingerprint::ZERO,
            Encoded::Frame(fp) => *fp,
        }
    }
}

thread_local! {
    /// A snappy encoder per thread: it owns a 32 KiB hash table that would
    /// otherwise be allocated and zeroed for every block.
    static SNAP_ENCODER: RefCell<snap::raw::Encoder> = RefCell::new(snap::raw::Encoder::new());
}

/// Encodes blocks into frames and decodes them back, under one pair of keys.
/// Shareable between threads (`&self` everywhere).
pub struct FrameCodec {
    cipher: SivCipher,
    dedupe_key: [u8; 32],
}

impl fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameCodec { .. }")
    }
}

impl FrameCodec {
    /// A codec using `keys`.
    pub fn new(keys: &FrameKeys) -> FrameCodec {
        FrameCodec {
            cipher: SivCipher::new(&keys.data_key),
            dedupe_key: keys.dedupe_key,
        }
    }

    /// The fingerprint of `block` ([`Fingerprint::ZERO`] if all zeros).
    pub fn fingerprint(&self, block: &[u8; BLOCK_SIZE]) -> Fingerprint {
        Fingerprint::of_block(&self.dedupe_key, block)
    }

    /// Fingerprints `block` and, unless it is all zeros, appends its frame to
    /// `out` (whatever `out` held before stays). The all-zero block gives
    /// [`Encoded::Zero`] and leaves `out` untouched.
    pub fn encode(
        &self,
        block: &[u8; BLOCK_SIZE],
        out: &mut Vec<u8>,
    ) -> Result<Encoded, FrameError> {
        let fp = self.fingerprint(block);
        if fp.is_zero() {
            return Ok(Encoded::Zero);
        }
        self.encode_fingerprinted(block, &fp, out)?;
        Ok(Encoded::Frame(fp))
    }

    /// Appends the frame of `block` to `out`, given its fingerprint from
    /// [`FrameCodec::fingerprint`] (the write path fingerprints first and
    /// encodes only on a dedupe miss). A wrong fingerprint gives a frame that
    /// fails to decode. [`FrameError::ZeroBlock`] if `fingerprint` is the
    /// zero one. On error `out` is left as it was.
    pub fn encode_fingerprinted(
        &self,
        block: &[u8; BLOCK_SIZE],
        fingerprint: &Fingerprint,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if fingerprint.is_zero() {
            return Err(FrameError::ZeroBlock);
        }
        let start = out.len();
        let r = self.encode_at(block, fingerprint, out, start);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_at(
        &self,
        block: &[u8; BLOCK_SIZE],
        fingerprint: &Fingerprint,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), FrameError> {
        let body_at = start + HEADER_LEN;
        out.resize(body_at + snap::raw::max_compress_len(BLOCK_SIZE), 0);
        let n = compress(block, &mut out[body_at..]).map_err(FrameError::Compress)?;
        let compressed = n <= MAX_COMPRESSED_BODY;
        if compressed {
            out.truncate(body_at + n);
        } else {
            out.truncate(body_at);
            out.extend_from_slice(block);
        }
        let body_len = out.len() - body_at;
        let header = FrameHeader {
            compressed,
            fingerprint: *fingerprint,
            payload_len: body_len + TAG_LEN,
        };
        let (head, body) = out[start..].split_at_mut(HEADER_LEN);
        head.copy_from_slice(&header.to_bytes());
        let tag = self
            .cipher
            .seal(&nonce(fingerprint), head, body)
            .map_err(|_| FrameError::Encrypt)?;
        out.extend_from_slice(&tag);
        let sum = xxh3_64(&out[start..]);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// Decodes `frame` (exactly one frame) into `out`, verifying everything
    /// listed in the [module docs](self), ending with the fingerprint of the
    /// result against `expected`. On error `out` is zeroed, never left with
    /// partial or unauthenticated data.
    pub fn decode(
        &self,
        frame: &[u8],
        expected: &Fingerprint,
        out: &mut [u8; BLOCK_SIZE],
    ) -> Result<(), FrameError> {
        self.decode_or_zero(frame, expected, out, true)
    }

    /// Decodes `frame` as [`decode`](Self::decode) does, except the last
    /// step: the keyed BLAKE3 of the result is not computed again. The
    /// checked GCM-SIV tag already authenticates the plaintext together
    /// with the header (its associated data), whose fingerprint must equal
    /// `expected`; what this skips would only catch a frame sealed, with
    /// the datastore's key, under a fingerprint that is not its content's.
    /// For frames verified in full when they entered the store (its own
    /// writes; frames from the pool, checked with [`decode`](Self::decode)
    /// on arrival): the flash store's reads.
    pub fn decode_authenticated(
        &self,
        frame: &[u8],
        expected: &Fingerprint,
        out: &mut [u8; BLOCK_SIZE],
    ) -> Result<(), FrameError> {
        self.decode_or_zero(frame, expected, out, false)
    }

    /// Decodes, zeroing `out` on any error.
    fn decode_or_zero(
        &self,
        frame: &[u8],
        expected: &Fingerprint,
        out: &mut [u8; BLOCK_SIZE],
        check_content: bool,
    ) -> Result<(), FrameError> {
        let r = self.decode_inner(frame, expected, out, check_content);
        if r.is_err() {
            out.fill(0);
        }
        r
    }

    fn decode_inner(
        &self,
        frame: &[u8],
        expected: &Fingerprint,
        out: &mut [u8; BLOCK_SIZE],
        check_content: bool,
    ) -> Result<(), FrameError> {
        let header = verify_checksum(frame)?;
        if header.fingerprint != *expected {
            return Err(FrameError::WrongFingerprint {
                expected: *expected,
                found: header.fingerprint,
            });
        }
        let (head, rest) = frame.split_at(HEADER_LEN);
        let (body, rest) = rest.split_at(header.payload_len - TAG_LEN);
        let tag: &[u8; TAG_LEN] = rest
            .get(..TAG_LEN)
            .and_then(|t| t.try_into().ok())
            .ok_or(FrameError::Truncated { len: frame.len() })?;
        let nonce = nonce(expected);
        if header.compressed {
            let mut scratch = [0u8; BLOCK_SIZE];
            let buf = &mut scratch[..body.len()];
            self.cipher
                .open(&nonce, head, body, tag, buf)
                .map_err(|_| FrameError::Decrypt)?;
            let len = snap::raw::decompress_len(buf).map_err(FrameError::Decompress)?;
            if len != BLOCK_SIZE {
                return Err(FrameError::DecompressedLen { len });
            }
            let len = snap::raw::Decoder::new()
                .decompress(buf, out)
                .map_err(FrameError::Decompress)?;
            if len != BLOCK_SIZE {
                return Err(FrameError::DecompressedLen { len });
            }
        } else {
            self.cipher
                .open(&nonce, head, body, tag, out)
                .map_err(|_| FrameError::Decrypt)?;
        }
        if check_content {
            let computed = self.fingerprint(out);
            if computed != *expected {
                return Err(FrameError::ContentMismatch {
                    expected: *expected,
                    computed,
                });
            }
        }
        Ok(())
    }
}

/// Snappy-compresses `block` into `dst` with this thread's encoder (or a
/// fresh one if that is unavailable, e.g. during thread teardown).
fn compress(block: &[u8; BLOCK_SIZE], dst: &mut [u8]) -> Result<usize, snap::Error> {
    SNAP_ENCODER
        .try_with(|e| {
            e.try_borrow_mut()
                .map(|mut e| e.compress(block, &mut *dst))
                .ok()
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| snap::raw::Encoder::new().compress(block, dst))
}

/// The nonce of a block: the first [`NONCE_LEN`] bytes of its fingerprint.
fn nonce(fp: &Fingerprint) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&fp.as_bytes()[..NONCE_LEN]);
    n
}

#[cfg(test)]
mod tests;
