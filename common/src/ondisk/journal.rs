//! Journal records: what the journal ring holds.
//!
//! A record is a 48-byte header and a body, padded with zeros to a whole
//! number of pages; every record starts on a page boundary of the ring, so
//! a record is [`record_len`]`(body length)` bytes. Two kinds of body:
//! a **batch** (frames and map updates, see [`BatchBuilder`] and
//! [`decode_batch`]) and a **checkpoint** (every vdisk's map root, see
//! [`Checkpoint`]).
//!
//! # Record header (version 1)
//!
//! All integers little-endian. `B` is the body length.
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! |      0 |    4 | magic `"STJR"` (`53 54 4a 52`)                                 |
//! |      4 |    1 | version, `1`                                                   |
//! |      5 |    1 | kind: `1` batch, `2` checkpoint                                |
//! |      6 |    2 | reserved, zero                                                 |
//! |      8 |    8 | record number, u64                                             |
//! |     16 |    4 | body length `B`, u32                                           |
//! |     20 |    4 | reserved, zero                                                 |
//! |     24 |   16 | store id                                                       |
//! |     40 |    8 | xxh3-64, seed 0, of header bytes `[0, 40)` then the body, u64  |
//! |     48 |  `B` | body                                                           |
//! | 48 + B |    … | zero up to the next page boundary (not covered by the xxh3)   |
//!
//! [`decode_record_header`] checks magic, version, kind, reserved bytes and
//! store id: enough to know how many bytes to read. [`verify_record`] also
//! checks that the body is there and the xxh3, in this order: magic,
//! version, kind, reserved, length, xxh3, store id.
//!
//! # Batch body
//!
//! A sequence of items, each a tag byte and fields, up to the end of the
//! body (an empty body is an empty batch):
//!
//! | tag | fields after the tag                                               | bytes       |
//! |----:|--------------------------------------------------------------------|-------------|
//! |   1 | frame: length `L` u32 (`1..=4168`), then the `L` frame bytes        | `4 + L`     |
//! |   2 | set: seq u64, vdisk u32, lba u64, count `C` u32 (`>= 1`), then `C` fingerprints of 32 bytes, for blocks `lba..lba + C` | `24 + 32 C` |
//! |   3 | unmap: seq u64, vdisk u32, lba u64, count u64 (`>= 1`)             | `28`        |
//! |   4 | vdisk: id u32, block count u64 (`>= 1`), name length `N` u8 (`1..=64`), name (`N` bytes UTF-8) | `14 + N` |
//! |   5 | adopt: seq u64, id u32, block count u64 (`>= 1`), root (32), name length `N` u8 (`1..=64`), name | `54 + N` |
//!
//! For set and unmap, `lba + count` must not exceed `2^64`. A vdisk item
//! records a vdisk's creation, so a log of batches alone (the pool's NVLOG)
//! can rebuild every vdisk it names. An adopt item records that a vdisk
//! taken over from another host holds the map `root` (in the pool) from
//! here on: it creates the vdisk, or replaces whatever it held.
//!
//! # Checkpoint body
//!
//! | size | field                                                                   |
//! |-----:|-------------------------------------------------------------------------|
//! |    8 | replay-from record number, u64                                          |
//! |    8 | next seq, u64                                                           |
//! |    4 | vdisk count `V`, u32                                                    |
//! |    … | `V` vdisks, each: id u32, block count u64, root (32), applied seq u64, name length `N` u8 (`1..=64`), name (`N` bytes UTF-8) |
//!
//! No two vdisks share an id or a name, and nothing follows the last one.

use std::collections::HashSet;

use xxhash_rust::xxh3::Xxh3;

use super::{
    check_checksum, check_name, check_store, read_name, round_up_page, write_name, OndiskError,
    Reader, CHECKSUM_LEN, ONDISK_VERSION, STORE_ID_LEN,
};
use crate::fingerprint::{Fingerprint, FINGERPRINT_LEN};
use crate::frame::MAX_FRAME_LEN;

/// Magic bytes at the start of every journal record.
pub const RECORD_MAGIC: [u8; 4] = *b"STJR";

/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 48;

/// Offset of the record checksum; header bytes before it are covered.
const CHECKSUM_OFF: usize = RECORD_HEADER_LEN - CHECKSUM_LEN;

/// Longest vdisk name a checkpoint holds, in bytes.
pub const MAX_VDISK_NAME_LEN: usize = 64;

/// Batch item tag: a frame.
pub const TAG_FRAME: u8 = 1;
/// Batch item tag: map updates (set).
pub const TAG_SET: u8 = 2;
/// Batch item tag: an unmapped range (unmap).
pub const TAG_UNMAP: u8 = 3;
/// Batch item tag: a vdisk was created (vdisk).
pub const TAG_VDISK: u8 = 4;
/// Batch item tag: a vdisk was adopted from another host (adopt).
pub const TAG_ADOPT: u8 = 5;

/// Bytes of a frame item before the frame, tag included.
const FRAME_FIXED_LEN: usize = 1 + 4;
/// Bytes of a set item before its fingerprints, tag included.
const SET_FIXED_LEN: usize = 1 + 8 + 4 + 8 + 4;
/// Bytes of an unmap item, tag included.
const UNMAP_LEN: usize = 1 + 8 + 4 + 8 + 8;
/// Bytes of a checkpoint vdisk entry with a one-byte name, the shortest.
const MIN_VDISK_LEN: usize = 4 + 8 + FINGERPRINT_LEN + 8 + 1 + 1;

const RECORD: &str = "record";
const BATCH: &str = "batch";
const CHECKPOINT: &str = "checkpoint";

/// What a record's body is.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A batch of frames and map updates ([`decode_batch`]).
    Batch = 1,
    /// A checkpoint of every vdisk's root ([`Checkpoint`]).
    Checkpoint = 2,
}

impl RecordKind {
    /// The kind a byte names, if any.
    pub fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Batch),
            2 => Some(RecordKind::Checkpoint),
            _ => None,
        }
    }
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the body is.
    pub kind: RecordKind,
    /// The record's number: each record written has the next one.
    pub rec_no: u64,
    /// Length of the body, which follows the header.
    pub body_len: u32,
}

impl RecordHeader {
    /// Bytes the whole record takes in the ring: [`record_len`] of the
    /// body length.
    pub fn record_len(&self) -> usize {
        record_len(self.body_len as usize)
    }
}

/// Bytes a record with a `body_len`-byte body takes in the ring: header and
/// body rounded up to a page.
pub fn record_len(body_len: usize) -> usize {
    round_up_page(RECORD_HEADER_LEN + body_len)
}

/// Appends a record (header, `body`, zero padding to a page boundary) to
/// `out`: [`record_len`]`(body.len())` bytes, so `out.len()` stays a page
/// multiple if it was one. A body longer than `u32::MAX` bytes cannot be
/// described; its length is written as `u32::MAX`, which
/// [`verify_record`] rejects.
pub fn encode_record(
    kind: RecordKind,
    rec_no: u64,
    store_id: &[u8; STORE_ID_LEN],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4] = ONDISK_VERSION;
    h[5] = kind as u8;
    h[8..16].copy_from_slice(&rec_no.to_le_bytes());
    h[16..20].copy_from_slice(&body_len.to_le_bytes());
    h[24..40].copy_from_slice(store_id);
    let sum = record_checksum(&h, body);
    h[CHECKSUM_OFF..].copy_from_slice(&sum.to_le_bytes());
    let len = record_len(body.len());
    out.reserve(len);
    let start = out.len();
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out.resize(start + len, 0);
}

/// The xxh3-64 of header bytes `[0, 40)` followed by the body.
fn record_checksum(header: &[u8; RECORD_HEADER_LEN], body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&header[..CHECKSUM_OFF]);
    h.update(body);
    h.digest()
}

/// A record header's fields, with magic, version, kind and reserved bytes
/// checked, and its raw bytes; the store id and checksum in them are not
/// checked.
struct RawHeader {
    header: RecordHeader,
    bytes: [u8; RECORD_HEADER_LEN],
    store_id: [u8; STORE_ID_LEN],
    checksum: u64,
}

/// Parses the record header at the start of `bytes` into a [`RawHeader`].
fn parse_header(bytes: &[u8]) -> Result<RawHeader, OndiskError> {
    let raw: [u8; RECORD_HEADER_LEN] = bytes
        .get(..RECORD_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(OndiskError::Truncated {
            what: RECORD,
            at: 0,
            need: RECORD_HEADER_LEN,
            have: bytes.len(),
        })?;
    let mut r = Reader::new(&raw, RECORD);
    super::check_magic_version(&mut r, RECORD_MAGIC, ONDISK_VERSION)?;
    let kind_byte = r.u8()?;
    let kind = RecordKind::from_u8(kind_byte)
        .ok_or(OndiskError::UnknownRecordKind { found: kind_byte })?;
    r.zeros(2)?;
    let rec_no = r.u64()?;
    let body_len = r.u32()?;
    r.zeros(4)?;
    let store_id = r.array()?;
    let checksum = r.u64()?;
    Ok(RawHeader {
        header: RecordHeader {
            kind,
            rec_no,
            body_len,
        },
        bytes: raw,
        store_id,
        checksum,
    })
}

/// Parses the record header at the start of `bytes` and checks magic,
/// version, kind, reserved bytes and store id; not the checksum, which needs
/// the body ([`verify_record`]). `bytes` may be longer than the header.
pub fn decode_record_header(
    bytes: &[u8],
    store_id: &[u8; STORE_ID_LEN],
) -> Result<RecordHeader, OndiskError> {
    let raw = parse_header(bytes)?;
    check_store(RECORD, store_id, raw.store_id)?;
    Ok(raw.header)
}

/// Checks the whole record at the start of `bytes` (see the
/// [module docs](self)) and returns its header and body. `bytes` may be
/// longer than the record; the padding after the body is not read.
pub fn verify_record<'a>(
    bytes: &'a [u8],
    store_id: &[u8; STORE_ID_LEN],
) -> Result<(RecordHeader, &'a [u8]), OndiskError> {
    let raw = parse_header(bytes)?;
    let body_len = raw.header.body_len as usize;
    let have = bytes.len().saturating_sub(RECORD_HEADER_LEN);
    let body = bytes
        .get(RECORD_HEADER_LEN..)
        .and_then(|b| b.get(..body_len))
        .ok_or(OndiskError::Truncated {
            what: RECORD,
            at: RECORD_HEADER_LEN,
            need: body_len,
            have,
        })?;
    check_checksum(RECORD, raw.checksum, record_checksum(&raw.bytes, body))?;
    check_store(RECORD, store_id, raw.store_id)?;
    Ok((raw.header, body))
}

/// Builds the body of a batch record, item by item, and notes which
/// vdisks its items change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchBuilder {
    body: Vec<u8>,
    vdisks: Vec<u32>,
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        BatchBuilder::default()
    }

    /// Whether no item was pushed.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Length of the body so far, in bytes.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Appends a frame item. `frame` must be `1..=`[`MAX_FRAME_LEN`] bytes
    /// (any encoded frame is), or [`decode_batch`] rejects the batch.
    pub fn push_frame(&mut self, frame: &[u8]) {
        self.body.reserve(FRAME_FIXED_LEN + frame.len());
        self.body.push(TAG_FRAME);
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.body.extend_from_slice(&len.to_le_bytes());
        self.body.extend_from_slice(frame);
    }

    /// Appends a set item: blocks `lba..lba + fps.len()` of vdisk `vdisk` now
    /// hold `fps`, as of write sequence number `seq`. `fps` must not be
    /// empty (nor longer than `u32::MAX`), or [`decode_batch`] rejects the
    /// batch.
    pub fn push_set(&mut self, seq: u64, vdisk: u32, lba: u64, fps: &[Fingerprint]) {
        self.touch(vdisk);
        self.body
            .reserve(SET_FIXED_LEN + fps.len() * FINGERPRINT_LEN);
        self.body.push(TAG_SET);
        self.body.extend_from_slice(&seq.to_le_bytes());
        self.body.extend_from_slice(&vdisk.to_le_bytes());
        self.body.extend_from_slice(&lba.to_le_bytes());
        let count = u32::try_from(fps.len()).unwrap_or(u32::MAX);
        self.body.extend_from_slice(&count.to_le_bytes());
        for fp in fps {
            self.body.extend_from_slice(fp.as_bytes());
        }
    }

    /// Appends an unmap item: blocks `lba..lba + count` of vdisk `vdisk` are
    /// now zero, as of write sequence number `seq`. `count` must be at
    /// least 1, or [`decode_batch`] rejects the batch.
    pub fn push_unmap(&mut self, seq: u64, vdisk: u32, lba: u64, count: u64) {
        self.touch(vdisk);
        self.body.reserve(UNMAP_LEN);
        self.body.push(TAG_UNMAP);
        self.body.extend_from_slice(&seq.to_le_bytes());
        self.body.extend_from_slice(&vdisk.to_le_bytes());
        self.body.extend_from_slice(&lba.to_le_bytes());
        self.body.extend_from_slice(&count.to_le_bytes());
    }

    /// Appends a vdisk item: vdisk `id` named `name` (`1..=64` bytes) of
    /// `block_count` (`>= 1`) blocks exists from here on. A name or count
    /// outside those bounds makes [`decode_batch`] reject the batch.
    pub fn push_vdisk(&mut self, id: u32, block_count: u64, name: &str) {
        self.touch(id);
        self.body.push(TAG_VDISK);
        self.body.extend_from_slice(&id.to_le_bytes());
        self.body.extend_from_slice(&block_count.to_le_bytes());
        write_name(&mut self.body, name);
    }

    /// Appends an adopt item: vdisk `id` named `name` (`1..=64` bytes) of
    /// `block_count` (`>= 1`) blocks holds map `root` from here on, as of
    /// write sequence number `seq`, whatever it held before.
    pub fn push_adopt(
        &mut self,
        seq: u64,
        id: u32,
        block_count: u64,
        root: Fingerprint,
        name: &str,
    ) {
        self.touch(id);
        self.body.push(TAG_ADOPT);
        self.body.extend_from_slice(&seq.to_le_bytes());
        self.body.extend_from_slice(&id.to_le_bytes());
        self.body.extend_from_slice(&block_count.to_le_bytes());
        self.body.extend_from_slice(root.as_bytes());
        write_name(&mut self.body, name);
    }

    /// Appends `item` as it was decoded.
    pub fn push_item(&mut self, item: &BatchItem<'_>) {
        match item {
            BatchItem::Frame(frame) => self.push_frame(frame),
            BatchItem::Set {
                seq,
                vdisk,
                lba,
                fps,
            } => self.push_set(*seq, *vdisk, *lba, fps),
            BatchItem::Unmap {
                seq,
                vdisk,
                lba,
                count,
            } => self.push_unmap(*seq, *vdisk, *lba, *count),
            BatchItem::Vdisk {
                id,
                block_count,
                name,
            } => self.push_vdisk(*id, *block_count, name),
            BatchItem::Adopt {
                seq,
                id,
                block_count,
                root,
                name,
            } => self.push_adopt(*seq, *id, *block_count, *root, name),
        }
    }

    fn touch(&mut self, vdisk: u32) {
        if !self.vdisks.contains(&vdisk) {
            self.vdisks.push(vdisk);
        }
    }

    /// The vdisks the items change (set, unmap, vdisk and adopt items), in
    /// the order first named.
    pub fn vdisks(&self) -> &[u32] {
        &self.vdisks
    }

    /// The body built so far.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken out of the builder.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Removes every item, keeping the allocation.
    pub fn clear(&mut self) {
        self.body.clear();
        self.vdisks.clear();
    }
}

impl BatchItem<'_> {
    /// The vdisk the item changes (`None` for a frame, which belongs to
    /// no vdisk).
    pub fn vdisk(&self) -> Option<u32> {
        match self {
            BatchItem::Frame(_) => None,
            BatchItem::Set { vdisk, .. } | BatchItem::Unmap { vdisk, .. } => Some(*vdisk),
            BatchItem::Vdisk { id, .. } | BatchItem::Adopt { id, .. } => Some(*id),
        }
    }
}

/// One item of a batch body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchItem<'a> {
    /// An encoded frame ([`crate::frame`]), borrowed from the body.
    Frame(&'a [u8]),
    /// Blocks `lba..lba + fps.len()` of vdisk `vdisk` hold `fps` (never
    /// empty), as of write sequence number `seq`.
    Set {
        /// Write sequence number.
        seq: u64,
        /// The vdisk's id.
        vdisk: u32,
        /// First block.
        lba: u64,
        /// The blocks' fingerprints, in block order.
        fps: Vec<Fingerprint>,
    },
    /// Blocks `lba..lba + count` (`count >= 1`) of vdisk `vdisk` are zero,
    /// as of write sequence number `seq`.
    Unmap {
        /// Write sequence number.
        seq: u64,
        /// The vdisk's id.
        vdisk: u32,
        /// First block.
        lba: u64,
        /// Number of blocks.
        count: u64,
    },
    /// Vdisk `id` named `name` of `block_count` blocks was created.
    Vdisk {
        /// The vdisk's id, as set and unmap items name it.
        id: u32,
        /// Its size in blocks (`>= 1`).
        block_count: u64,
        /// Its name, `1..=64` bytes of UTF-8.
        name: String,
    },
    /// Vdisk `id` named `name` of `block_count` blocks holds the map
    /// `root` from here on (a vdisk adopted from another host).
    Adopt {
        /// Write sequence number.
        seq: u64,
        /// The vdisk's id, as set and unmap items name it.
        id: u32,
        /// Its size in blocks (`>= 1`).
        block_count: u64,
        /// Its map's root.
        root: Fingerprint,
        /// Its name, `1..=64` bytes of UTF-8.
        name: String,
    },
}

/// Parses a batch body into its items (see the [module docs](self)).
/// Frames are borrowed from `body`; their contents are not checked here
/// ([`crate::frame::verify_checksum`] does that).
pub fn decode_batch(body: &[u8]) -> Result<Vec<BatchItem<'_>>, OndiskError> {
    let mut r = Reader::new(body, BATCH);
    let mut items = Vec::new();
    while r.remaining() > 0 {
        let at = r.pos();
        let bad = |reason, value| OndiskError::BadBatchItem { at, reason, value };
        let tag = r.u8()?;
        let item = match tag {
            TAG_FRAME => {
                let len = r.u32()?;
                if len == 0 || len as usize > MAX_FRAME_LEN {
                    return Err(bad(
                        "frame length outside 1..=MAX_FRAME_LEN",
                        u64::from(len),
                    ));
                }
                BatchItem::Frame(r.bytes(len as usize)?)
            }
            TAG_SET => {
                let seq = r.u64()?;
                let vdisk = r.u32()?;
                let lba = r.u64()?;
                let count = r.u32()?;
                if count == 0 {
                    return Err(bad("set of zero blocks", 0));
                }
                if lba.checked_add(u64::from(count)).is_none() {
                    return Err(bad("set range ends past 2^64", lba));
                }
                // Take the bytes before allocating: a hostile count fails
                // here, on the length, and reserves nothing.
                let need = (count as usize).saturating_mul(FINGERPRINT_LEN);
                let raw = r.bytes(need)?;
                let fps = raw
                    .chunks_exact(FINGERPRINT_LEN)
                    .map(|c| {
                        let mut fp = [0u8; FINGERPRINT_LEN];
                        fp.copy_from_slice(c);
                        Fingerprint::from_bytes(fp)
                    })
                    .collect();
                BatchItem::Set {
                    seq,
                    vdisk,
                    lba,
                    fps,
                }
            }
            TAG_UNMAP => {
                let seq = r.u64()?;
                let vdisk = r.u32()?;
                let lba = r.u64()?;
                let count = r.u64()?;
                if count == 0 {
                    return Err(bad("unmap of zero blocks", 0));
                }
                if lba.checked_add(count).is_none() {
                    return Err(bad("unmap range ends past 2^64", lba));
                }
                BatchItem::Unmap {
                    seq,
                    vdisk,
                    lba,
                    count,
                }
            }
            TAG_VDISK => {
                let id = r.u32()?;
                let block_count = r.u64()?;
                if block_count == 0 {
                    return Err(bad("vdisk of zero blocks", 0));
                }
                let name = read_name(&mut r, "vdisk", MAX_VDISK_NAME_LEN)?;
                BatchItem::Vdisk {
                    id,
                    block_count,
                    name,
                }
            }
            TAG_ADOPT => {
                let seq = r.u64()?;
                let id = r.u32()?;
                let block_count = r.u64()?;
                if block_count == 0 {
                    return Err(bad("vdisk of zero blocks", 0));
                }
                let root = Fingerprint::from_bytes(r.array()?);
                let name = read_name(&mut r, "vdisk", MAX_VDISK_NAME_LEN)?;
                BatchItem::Adopt {
                    seq,
                    id,
                    block_count,
                    root,
                    name,
                }
            }
            found => return Err(OndiskError::UnknownBatchTag { at, found }),
        };
        items.push(item);
    }
    Ok(items)
}

/// One vdisk's state in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiskRoot {
    /// The vdisk's id, as batch items name it.
    pub id: u32,
    /// The vdisk's name, `1..=64` bytes of UTF-8.
    pub name: String,
    /// Size of the vdisk in blocks.
    pub block_count: u64,
    /// Root of its map ([`crate::map`]); [`Fingerprint::ZERO`] if all zero.
    pub root: Fingerprint,
    /// Highest write sequence number reflected in `root`.
    pub applied_seq: u64,
}

/// The body of a checkpoint record: every vdisk's map root at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Number of the first record replay must start from.
    pub replay_from_rec: u64,
    /// The next write sequence number to hand out.
    pub next_seq: u64,
    /// Every vdisk, ids and names unique.
    pub vdisks: Vec<VdiskRoot>,
}

impl Checkpoint {
    /// The checkpoint's body bytes. Does not validate (see
    /// [`Checkpoint::validate`]): an invalid checkpoint gives bytes
    /// [`Checkpoint::decode`] rejects. A name longer than 255 bytes is cut
    /// to 255.
    pub fn encode(&self) -> Vec<u8> {
        let names: usize = self.vdisks.iter().map(|v| v.name.len().min(255)).sum();
        let mut out = Vec::with_capacity(20 + self.vdisks.len() * (MIN_VDISK_LEN - 1) + names);
        out.extend_from_slice(&self.replay_from_rec.to_le_bytes());
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        let count = u32::try_from(self.vdisks.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for v in &self.vdisks {
            out.extend_from_slice(&v.id.to_le_bytes());
            out.extend_from_slice(&v.block_count.to_le_bytes());
            out.extend_from_slice(v.root.as_bytes());
            out.extend_from_slice(&v.applied_seq.to_le_bytes());
            write_name(&mut out, &v.name);
        }
        out
    }

    /// Parses and checks a checkpoint body (see the [module docs](self)).
    pub fn decode(body: &[u8]) -> Result<Checkpoint, OndiskError> {
        let mut r = Reader::new(body, CHECKPOINT);
        let replay_from_rec = r.u64()?;
        let next_seq = r.u64()?;
        let count = r.u32()?;
        let max = r.remaining() / MIN_VDISK_LEN;
        if count as usize > max {
            return Err(OndiskError::BadVdiskCount {
                count,
                have: r.remaining(),
                max,
            });
        }
        let mut vdisks = Vec::with_capacity(count as usize);
        let mut ids = HashSet::with_capacity(count as usize);
        let mut names = HashSet::with_capacity(count as usize);
        for _ in 0..count {
            let at = r.pos();
            let id = r.u32()?;
            let block_count = r.u64()?;
            let root = Fingerprint::from_bytes(r.array()?);
            let applied_seq = r.u64()?;
            let name = read_name(&mut r, "vdisk", MAX_VDISK_NAME_LEN)?;
            if !ids.insert(id) {
                return Err(OndiskError::DuplicateVdiskId { id, at });
            }
            if !names.insert(name.clone()) {
                return Err(OndiskError::DuplicateVdiskName { name, at });
            }
            vdisks.push(VdiskRoot {
                id,
                name,
                block_count,
                root,
                applied_seq,
            });
        }
        if r.remaining() > 0 {
            return Err(OndiskError::TrailingBytes {
                what: CHECKPOINT,
                at: r.pos(),
                extra: r.remaining(),
            });
        }
        Ok(Checkpoint {
            replay_from_rec,
            next_seq,
            vdisks,
        })
    }

    /// Checks everything [`Checkpoint::decode`] would check of the fields:
    /// names, unique ids and names, the count.
    pub fn validate(&self) -> Result<(), OndiskError> {
        if u32::try_from(self.vdisks.len()).is_err() {
            return Err(OndiskError::BadVdiskCount {
                count: u32::MAX,
                have: 0,
                max: u32::MAX as usize,
            });
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for v in &self.vdisks {
            check_name("vdisk", &v.name, MAX_VDISK_NAME_LEN)?;
            if !ids.insert(v.id) {
                return Err(OndiskError::DuplicateVdiskId { id: v.id, at: 0 });
            }
            if !names.insert(v.name.as_str()) {
                return Err(OndiskError::DuplicateVdiskName {
                    name: v.name.clone(),
                    at: 0,
                });
            }
        }
        Ok(())
    }
}
