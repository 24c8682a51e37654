//! Map nodes: 256 fingerprint slots, their byte format and their ids.
//!
//! A node at level 0 (a *leaf*) holds the fingerprints of 256 consecutive
//! blocks; a node at level `l > 0` (an *interior* node) holds the ids of 256
//! child nodes at level `l - 1`. A slot holding [`Fingerprint::ZERO`] means
//! "all zeros below": an unmapped block in a leaf, an absent (never stored)
//! subtree in an interior node. A node whose slots are all ZERO is never
//! encoded or stored; its parent holds ZERO instead.
//!
//! # Byte layout (version 1)
//!
//! All integers little-endian. `C` is the number of non-ZERO slots
//! (`1..=256`).
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |    4 | magic `"STMN"` (`53 54 4d 4e`)                                |
//! |      4 |    1 | version, `1`                                                  |
//! |      5 |    1 | level, `0..=7` (0 = leaf)                                     |
//! |      6 |    1 | slot format: `0` sparse, `1` dense                            |
//! |      7 |    1 | reserved, zero                                                |
//! |      8 |    2 | `C`, u16, number of non-ZERO slots, `1..=256`                 |
//! |     10 |    B | body, see below                                               |
//! | 10 + B |    8 | xxh3-64, seed 0, of bytes `[0, 10 + B)`, u64                  |
//!
//! Body, **sparse** (format 0): `C` entries of 33 bytes, each a slot index
//! (u8) then that slot's 32-byte fingerprint; indexes strictly increasing,
//! fingerprints never ZERO. `B = 33 * C`.
//!
//! Body, **dense** (format 1): the 256 slots' fingerprints in slot order,
//! ZERO included. `B = 8192`; exactly `C` of them are non-ZERO.
//!
//! The format is canonical, so equal nodes have equal bytes and therefore
//! equal ids: sparse if and only if `C <= 248` ([`SPARSE_MAX`], the largest
//! count for which sparse is shorter than dense). A node is between 51
//! (one slot) and [`MAX_NODE_LEN`] (8210) bytes.
//!
//! # Ids
//!
//! A node's id is the keyed BLAKE3 of its encoded bytes ([`NodeIdKey`]), under
//! a key derived from the datastore's dedupe key with
//! `blake3::derive_key("strata vdisk map node id v1", dedupe_key)`. Keyed, so
//! ids reveal only equality, like block fingerprints; derived rather than the
//! dedupe key itself, so a node id can never equal a data block's fingerprint
//! even if a node's bytes happened to be a 4 KiB block's. Nodes hold only
//! keyed fingerprints, so they are stored unencrypted; the xxh3 lets the
//! pool and the scrubber check them without any key.
//!
//! [`Node::decode`] checks, in order: length at least header plus checksum;
//! magic; version; level; format and reserved byte; `C`; that the format is
//! the canonical one for `C`; the exact length; the xxh3; then the body
//! (sparse: increasing indexes and no ZERO; dense: exactly `C` non-ZERO).
//! Any failure is a [`NodeError`]; no input makes it panic.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;
use zeroize::Zeroize;

use crate::fingerprint::{Fingerprint, FINGERPRINT_LEN};

/// Slots per node.
pub const FANOUT: usize = 256;
/// LBA bits each level resolves.
pub const BITS_PER_LEVEL: u32 = 8;
/// The deepest tree there is: 8 levels of 8 bits cover every u64 LBA.
pub const MAX_DEPTH: u8 = 8;
/// Magic bytes at the start of every encoded node.
pub const NODE_MAGIC: [u8; 4] = *b"STMN";
/// The node format version this module writes and reads.
pub const NODE_VERSION: u8 = 1;
/// Length of the node header.
pub const NODE_HEADER_LEN: usize = 10;
/// Length of the trailing xxh3-64 checksum.
pub const NODE_CHECKSUM_LEN: usize = 8;
/// Length of one sparse entry: slot index and fingerprint.
pub const SPARSE_ENTRY_LEN: usize = 1 + FINGERPRINT_LEN;
/// Length of a dense body: every slot's fingerprint.
pub const DENSE_BODY_LEN: usize = FANOUT * FINGERPRINT_LEN;
/// The most non-ZERO slots a node is encoded sparse with.
pub const SPARSE_MAX: usize = (DENSE_BODY_LEN - 1) / SPARSE_ENTRY_LEN;
/// Length of the longest encoded node (dense).
pub const MAX_NODE_LEN: usize = NODE_HEADER_LEN + DENSE_BODY_LEN + NODE_CHECKSUM_LEN;

const FORMAT_SPARSE: u8 = 0;
const FORMAT_DENSE: u8 = 1;

/// The derivation context of the node id key.
const NODE_ID_CONTEXT: &str = "strata vdisk map node id v1";

/// Why bytes are not a valid map node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Fewer bytes than a header and a checksum.
    #[error("node truncated: {len} bytes")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// The magic bytes are wrong: not a map node.
    #[error("bad node magic {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version this module does not read.
    #[error("unsupported node version {found} (this code reads {NODE_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A level no tree has.
    #[error("node level {found} out of range (max {})", MAX_DEPTH - 1)]
    BadLevel {
        /// The level found.
        found: u8,
    },
    /// An unknown slot format, or a non-zero reserved byte.
    #[error("unknown node format {format} or reserved byte {reserved:#04x}")]
    BadFormat {
        /// The format byte.
        format: u8,
        /// The reserved byte.
        reserved: u8,
    },
    /// A slot count outside `1..=256`.
    #[error("node slot count {count} outside 1..=256")]
    BadCount {
        /// The count found.
        count: u16,
    },
    /// The format is not the canonical one for the count.
    #[error("node with {count} slots encoded {}, canonical is the other", if *.dense { "dense" } else { "sparse" })]
    NonCanonical {
        /// The count.
        count: u16,
        /// Whether the node was encoded dense.
        dense: bool,
    },
    /// The bytes are not exactly as long as the header says.
    #[error("node is {actual} bytes, its header says {expected}")]
    LengthMismatch {
        /// Length from the header.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The xxh3 does not match: the bytes are damaged.
    #[error("node checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChecksumMismatch {
        /// Checksum in the node.
        stored: u64,
        /// Checksum of the bytes.
        computed: u64,
    },
    /// Sparse entries out of order or repeated.
    #[error("sparse node slot index {index} not after {previous}")]
    UnsortedSlots {
        /// The previous entry's index.
        previous: u8,
        /// The offending index.
        index: u8,
    },
    /// A sparse entry holds ZERO, which sparse nodes leave out.
    #[error("sparse node entry for slot {index} holds the zero fingerprint")]
    ZeroEntry {
        /// The slot.
        index: u8,
    },
    /// A dense node's non-ZERO slots disagree with its count.
    #[error("dense node has {found} non-zero slots, its header says {count}")]
    CountMismatch {
        /// Count from the header.
        count: u16,
        /// Non-ZERO slots found.
        found: usize,
    },
    /// The bytes do not hash to the id they were fetched by.
    #[error("node bytes hash to {computed}")]
    IdMismatch {
        /// The id of the bytes.
        computed: Fingerprint,
    },
    /// A valid node, but at another level than its place in the tree.
    #[error("node at level {found}, expected level {expected}")]
    WrongLevel {
        /// The level its parent implies.
        expected: u8,
        /// The level it says.
        found: u8,
    },
}

/// One node of the vdisk map: a level and 256 slots.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    level: u8,
    slots: Box<[Fingerprint; FANOUT]>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("level", &self.level)
            .field("occupied", &self.occupied())
            .finish()
    }
}

impl Node {
    /// An all-ZERO node at `level`, or `BadLevel` if no tree has that level.
    pub fn new(level: u8) -> Result<Node, NodeError> {
        if level >= MAX_DEPTH {
            return Err(NodeError::BadLevel { found: level });
        }
        Ok(Node {
            level,
            slots: Box::new([Fingerprint::ZERO; FANOUT]),
        })
    }

    /// The node's level: 0 for a leaf.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// The fingerprint in slot `index`.
    pub fn slot(&self, index: u8) -> Fingerprint {
        self.slots[usize::from(index)]
    }

    /// Sets slot `index` to `fp`.
    pub fn set_slot(&mut self, index: u8, fp: Fingerprint) {
        self.slots[usize::from(index)] = fp;
    }

    /// All 256 slots, in order.
    pub fn slots(&self) -> &[Fingerprint; FANOUT] {
        &self.slots
    }

    /// How many slots are not ZERO.
    pub fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| !s.is_zero()).count()
    }

    /// Whether every slot is ZERO (such a node is never stored).
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Fingerprint::is_zero)
    }

    /// The canonical encoding, or `None` for an empty node, which is
    /// represented by ZERO in its parent and never stored.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let count = self.occupied();
        if count == 0 {
            return None;
        }
        let dense = count > SPARSE_MAX;
        let body = if dense {
            DENSE_BODY_LEN
        } else {
            count * SPARSE_ENTRY_LEN
        };
        let mut out = Vec::with_capacity(NODE_HEADER_LEN + body + NODE_CHECKSUM_LEN);
        out.extend_from_slice(&NODE_MAGIC);
        out.push(NODE_VERSION);
        out.push(self.level);
        out.push(if dense { FORMAT_DENSE } else { FORMAT_SPARSE });
        out.push(0);
        // count <= 256 always fits.
        out.extend_from_slice(&(count as u16).to_le_bytes());
        if dense {
            for s in self.slots.iter() {
                out.extend_from_slice(s.as_bytes());
            }
        } else {
            for (i, s) in (0..=u8::MAX).zip(self.slots.iter()) {
                if !s.is_zero() {
                    out.push(i);
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Some(out)
    }

    /// Decodes and checks untrusted bytes. Total: every input gives a node
    /// or a [`NodeError`].
    pub fn decode(bytes: &[u8]) -> Result<Node, NodeError> {
        let len = bytes.len();
        if len < NODE_HEADER_LEN + NODE_CHECKSUM_LEN {
            return Err(NodeError::Truncated { len });
        }
        let (header, rest) = bytes.split_at(NODE_HEADER_LEN);
        let magic = [header[0], header[1], header[2], header[3]];
        if magic != NODE_MAGIC {
            return Err(NodeError::BadMagic { found: magic });
        }
        if header[4] != NODE_VERSION {
            return Err(NodeError::UnsupportedVersion { found: header[4] });
        }
        let level = header[5];
        if level >= MAX_DEPTH {
            return Err(NodeError::BadLevel { found: level });
        }
        let (format, reserved) = (header[6], header[7]);
        if (format != FORMAT_SPARSE && format != FORMAT_DENSE) || reserved != 0 {
            return Err(NodeError::BadFormat { format, reserved });
        }
        let count = u16::from_le_bytes([header[8], header[9]]);
        if count == 0 || usize::from(count) > FANOUT {
            return Err(NodeError::BadCount { count });
        }
        let dense = format == FORMAT_DENSE;
        if dense != (usize::from(count) > SPARSE_MAX) {
            return Err(NodeError::NonCanonical { count, dense });
        }
        let body_len = if dense {
            DENSE_BODY_LEN
        } else {
            usize::from(count) * SPARSE_ENTRY_LEN
        };
        let expected = NODE_HEADER_LEN + body_len + NODE_CHECKSUM_LEN;
        if len != expected {
            return Err(NodeError::LengthMismatch {
                expected,
                actual: len,
            });
        }
        let (body, sum) = rest.split_at(body_len);
        let mut s = [0u8; NODE_CHECKSUM_LEN];
        s.copy_from_slice(sum);
        let stored = u64::from_le_bytes(s);
        let computed = xxh3_64(&bytes[..NODE_HEADER_LEN + body_len]);
        if stored != computed {
            return Err(NodeError::ChecksumMismatch { stored, computed });
        }
        let mut node = Node::new(level)?;
        if dense {
            for (slot, chunk) in node
                .slots
                .iter_mut()
                .zip(body.chunks_exact(FINGERPRINT_LEN))
            {
                *slot = fingerprint_at(chunk);
            }
            let found = node.occupied();
            if found != usize::from(count) {
                return Err(NodeError::CountMismatch { count, found });
            }
        } else {
            let mut previous: Option<u8> = None;
            for entry in body.chunks_exact(SPARSE_ENTRY_LEN) {
                let index = entry[0];
                if let Some(p) = previous {
                    if index <= p {
                        return Err(NodeError::UnsortedSlots { previous: p, index });
                    }
                }
                let fp = fingerprint_at(&entry[1..]);
                if fp.is_zero() {
                    return Err(NodeError::ZeroEntry { index });
                }
                node.set_slot(index, fp);
                previous = Some(index);
            }
        }
        Ok(node)
    }
}

/// The fingerprint in the first 32 bytes of `chunk` (callers pass exactly 32;
/// anything shorter is padded with zeros rather than panicking).
fn fingerprint_at(chunk: &[u8]) -> Fingerprint {
    let mut fp = [0u8; FINGERPRINT_LEN];
    for (d, s) in fp.iter_mut().zip(chunk) {
        *d = *s;
    }
    Fingerprint::from_bytes(fp)
}

/// The key that names map nodes: derived from the datastore's dedupe key (see
/// the module doc). `Debug` does not print it; it is wiped on drop.
#[derive(Clone)]
pub struct NodeIdKey([u8; 32]);

impl NodeIdKey {
    /// Derives the node id key from the datastore's dedupe key.
    pub fn new(dedupe_key: &[u8; 32]) -> NodeIdKey {
        NodeIdKey(blake3::derive_key(NODE_ID_CONTEXT, dedupe_key))
    }

    /// The id of an encoded node: keyed BLAKE3 of its bytes.
    pub fn id_of(&self, bytes: &[u8]) -> Fingerprint {
        Fingerprint::of_bytes(&self.0, bytes)
    }
}

impl fmt::Debug for NodeIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeIdKey { .. }")
    }
}

impl Drop for NodeIdKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(n: u32) -> Fingerprint {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[31] = 0xee;
        Fingerprint::from_bytes(b)
    }

    fn node_with(level: u8, n: usize) -> Node {
        let mut node = Node::new(level).unwrap();
        for i in 0..n {
            let slot = ((i * 7) % FANOUT) as u8;
            node.set_slot(slot, fp(i as u32 + 1));
        }
        node
    }

    /// Rewrites the checksum so a test reaches the check after it.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - NODE_CHECKSUM_LEN;
        let sum = xxh3_64(&bytes[..n]);
        bytes[n..].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn sparse_max_is_the_crossover() {
        assert_eq!(SPARSE_MAX, 248);
        const { assert!(SPARSE_MAX * SPARSE_ENTRY_LEN < DENSE_BODY_LEN) };
        const { assert!((SPARSE_MAX + 1) * SPARSE_ENTRY_LEN >= DENSE_BODY_LEN) };
        assert_eq!(MAX_NODE_LEN, 8210);
    }

    #[test]
    fn round_trips_sparse_and_dense() {
        for n in [1, 2, 100, SPARSE_MAX, SPARSE_MAX + 1, FANOUT] {
            for level in [0, 3, 7] {
                let node = node_with(level, n);
                let bytes = node.encode().unwrap();
                let dense = n > SPARSE_MAX;
                assert_eq!(bytes[6], u8::from(dense));
                let body = if dense { DENSE_BODY_LEN } else { n * 33 };
                assert_eq!(bytes.len(), NODE_HEADER_LEN + body + NODE_CHECKSUM_LEN);
                assert_eq!(Node::decode(&bytes).unwrap(), node);
            }
        }
    }

    #[test]
    fn empty_node_is_not_encoded() {
        assert!(Node::new(0).unwrap().encode().is_none());
        assert_eq!(Node::new(8), Err(NodeError::BadLevel { found: 8 }));
    }

    #[test]
    fn layout_is_as_documented() {
        let mut node = Node::new(2).unwrap();
        node.set_slot(5, fp(9));
        let b = node.encode().unwrap();
        assert_eq!(&b[0..4], b"STMN");
        assert_eq!(b[4..10], [1, 2, 0, 0, 1, 0]);
        assert_eq!(b[10], 5);
        assert_eq!(&b[11..43], fp(9).as_bytes());
        assert_eq!(b.len(), 51);
        assert_eq!(b[43..], xxh3_64(&b[..43]).to_le_bytes());
    }

    #[test]
    fn ids_are_keyed_and_content_addressed() {
        let a = NodeIdKey::new(&[1; 32]);
        let b = NodeIdKey::new(&[2; 32]);
        let bytes = node_with(0, 3).encode().unwrap();
        assert_eq!(a.id_of(&bytes), a.id_of(&bytes.clone()));
        assert_ne!(a.id_of(&bytes), b.id_of(&bytes));
        // Not the dedupe key itself.
        assert_ne!(a.id_of(&bytes), Fingerprint::of_bytes(&[1; 32], &bytes));
        assert_eq!(format!("{a:?}"), "NodeIdKey { .. }");
    }

    #[test]
    fn adversarial_headers() {
        let good = node_with(1, 3).encode().unwrap();
        let dense = node_with(1, 255).encode().unwrap();
        let cases: Vec<(Vec<u8>, NodeError)> = vec![
            (vec![], NodeError::Truncated { len: 0 }),
            (good[..17].to_vec(), NodeError::Truncated { len: 17 }),
            (
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                NodeError::BadMagic { found: *b"XTMN" },
            ),
            (
                {
                    let mut b = good.clone();
                    b[4] = 2;
                    b
                },
                NodeError::UnsupportedVersion { found: 2 },
            ),
            (
                {
                    let mut b = good.clone();
                    b[5] = 8;
                    b
                },
                NodeError::BadLevel { found: 8 },
            ),
            (
                {
                    let mut b = good.clone();
                    b[6] = 2;
                    b
                },
                NodeError::BadFormat {
                    format: 2,
                    reserved: 0,
                },
            ),
            (
                {
                    let mut b = good.clone();
                    b[7] = 1;
                    b
                },
                NodeError::BadFormat {
                    format: 0,
                    reserved: 1,
                },
            ),
            (
                {
                    let mut b = good.clone();
                    b[8] = 0;
                    b
                },
                NodeError::BadCount { count: 0 },
            ),
            (
                {
                    let mut b = dense.clone();
                    b[8..10].copy_from_slice(&257u16.to_le_bytes());
                    b
                },
                NodeError::BadCount { count: 257 },
            ),
            (
                {
                    let mut b = good.clone();
                    b[6] = 1;
                    b
                },
                NodeError::NonCanonical {
                    count: 3,
                    dense: true,
                },
            ),
            (
                {
                    let mut b = dense.clone();
                    b[6] = 0;
                    b
                },
                NodeError::NonCanonical {
                    count: 255,
                    dense: false,
                },
            ),
            (
                {
                    let mut b = good.clone();
                    b.push(0);
                    b
                },
                NodeError::LengthMismatch {
                    expected: good.len(),
                    actual: good.len() + 1,
                },
            ),
            (
                {
                    let mut b = good.clone();
                    b[8] = 2;
                    b
                },
                NodeError::LengthMismatch {
                    expected: good.len() - 33,
                    actual: good.len(),
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(Node::decode(&bytes), Err(want));
        }
    }

    #[test]
    fn adversarial_bodies() {
        let good = node_with(0, 3).encode().unwrap();
        // A flipped body bit fails the checksum.
        let mut b = good.clone();
        b[20] ^= 1;
        assert!(matches!(
            Node::decode(&b),
            Err(NodeError::ChecksumMismatch { .. })
        ));
        // Resealed checksums reach the body checks.
        let mut b = good.clone();
        b[NODE_HEADER_LEN + 33] = b[NODE_HEADER_LEN];
        reseal(&mut b);
        assert!(matches!(
            Node::decode(&b),
            Err(NodeError::UnsortedSlots { .. })
        ));
        let mut b = good.clone();
        b[NODE_HEADER_LEN + 1..NODE_HEADER_LEN + 33].fill(0);
        reseal(&mut b);
        assert_eq!(Node::decode(&b), Err(NodeError::ZeroEntry { index: 0 }));
        let mut b = node_with(0, 250).encode().unwrap();
        b[NODE_HEADER_LEN..NODE_HEADER_LEN + 32].fill(0);
        reseal(&mut b);
        assert_eq!(
            Node::decode(&b),
            Err(NodeError::CountMismatch {
                count: 250,
                found: 249
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = Node::decode(&bytes);
        }

        #[test]
        fn mutated_nodes_never_panic(
            n in 1usize..=256,
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
            fix_sum in any::<bool>(),
        ) {
            let mut b = node_with(0, n).encode().unwrap();
            for (at, v) in edits {
                let i = usize::from(at) % b.len();
                b[i] = v;
            }
            if fix_sum {
                reseal(&mut b);
            }
            if let Ok(node) = Node::decode(&b) {
                // Whatever decodes re-encodes to the same bytes: canonical.
                prop_assert_eq!(node.encode().unwrap(), b);
            }
        }

        #[test]
        fn round_trip(slots in proptest::collection::btree_map(any::<u8>(), 1u32.., 1..256), level in 0u8..8) {
            let mut node = Node::new(level).unwrap();
            for (i, v) in &slots {
                node.set_slot(*i, fp(*v));
            }
            let bytes = node.encode().unwrap();
            prop_assert_eq!(Node::decode(&bytes).unwrap(), node);
        }
    }
}
