//! The superblock: page 0 of the flash, which says what the store is and
//! where its journal ring and segment slots are.
//!
//! # Byte layout (version 2)
//!
//! All integers little-endian. `N` is the datastore name's length.
//!
//! | offset | size | field                                                             |
//! |-------:|-----:|-------------------------------------------------------------------|
//! |      0 |    4 | magic `"STSB"` (`53 54 53 42`)                                    |
//! |      4 |    1 | version, `2` (or `1`, see below)                                  |
//! |      5 |    3 | reserved, zero                                                    |
//! |      8 |   16 | store id, random at format                                        |
//! |     24 |    8 | journal offset, u64, page aligned, `>= 4096`                      |
//! |     32 |    8 | journal length, u64, a non-zero page multiple                     |
//! |     40 |    8 | segments offset (slot 0), u64, page aligned, `>= 4096`            |
//! |     48 |    4 | segment size, u32, a page multiple, `>= 8192`                     |
//! |     52 |    4 | segment count, u32, `>= 1`                                        |
//! |     56 |    1 | `N`, `1..=128`                                                    |
//! |     57 |  `N` | datastore name, UTF-8                                             |
//! | 57 + N |    … | zero up to byte 4088                                              |
//! |   4088 |    8 | xxh3-64, seed 0, of bytes `[0, 4088)`, u64                        |
//!
//! The journal ring is `[journal offset, + journal length)`; slot `i` is
//! `[segments offset + i * segment size, + segment size)`. Neither may
//! overlap page 0 or the other, and both must end within the 64-bit address
//! space. The device's size is not recorded: the store checks that the
//! areas fit the device it opened.
//!
//! **Versions.** 2: segments may hold uncompressed frames stored split
//! (summary entry kinds 3 and 4, `ondisk::segment`). 1: they do not; a
//! version 1 store is read as it is and, before anything else is written to
//! it, its superblock rewritten as version 2, so a strata-host that does
//! not know split frames refuses the store instead of taking their
//! segments for free slots. The layout is otherwise the same.
//!
//! [`Superblock::decode`] checks, in order: length; magic; version; reserved
//! bytes; the xxh3; the name (length, UTF-8) and the zero padding after it;
//! alignment and ranges of the geometry fields; that the areas do not
//! overlap.

use super::{
    check_name, check_trailing_checksum, check_zero, read_name, write_name, OndiskError, Reader,
    CHECKSUM_LEN, PAGE, STORE_ID_LEN,
};

/// Magic bytes at the start of the superblock.
pub const SUPERBLOCK_MAGIC: [u8; 4] = *b"STSB";

/// The superblock version this code writes, and the newest it reads.
pub const SUPERBLOCK_VERSION: u8 = 2;

/// Longest datastore name a superblock holds, in bytes.
pub const MAX_DATASTORE_LEN: usize = crate::keys::MAX_DATASTORE_NAME_LEN;

/// Offset of the datastore name's length byte.
const NAME_LEN_OFF: usize = 56;

/// Offset of the trailing checksum.
const CHECKSUM_OFF: usize = PAGE - CHECKSUM_LEN;

const WHAT: &str = "superblock";

/// The contents of page 0: the store's identity and geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Random at format; stamped into every segment header and journal
    /// record, so stale ones from an earlier format are never read as live.
    pub store_id: [u8; STORE_ID_LEN],
    /// Name of the datastore the store belongs to, `1..=128` bytes of UTF-8.
    pub datastore: String,
    /// Byte offset of the journal ring (page aligned).
    pub journal_offset: u64,
    /// Length of the journal ring in bytes (a non-zero page multiple).
    pub journal_len: u64,
    /// Byte offset of segment slot 0 (page aligned).
    pub segments_offset: u64,
    /// Bytes per segment slot (a page multiple, at least two pages).
    pub segment_size: u32,
    /// Number of segment slots (at least one).
    pub segment_count: u32,
}

impl Superblock {
    /// The superblock as page 0: exactly [`PAGE`] bytes. Does not validate
    /// (see [`Superblock::validate`]): an invalid superblock gives a page
    /// that [`Superblock::decode`] rejects. A name longer than 255 bytes is
    /// cut to 255.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAGE);
        out.extend_from_slice(&SUPERBLOCK_MAGIC);
        out.push(SUPERBLOCK_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.store_id);
        out.extend_from_slice(&self.journal_offset.to_le_bytes());
        out.extend_from_slice(&self.journal_len.to_le_bytes());
        out.extend_from_slice(&self.segments_offset.to_le_bytes());
        out.extend_from_slice(&self.segment_size.to_le_bytes());
        out.extend_from_slice(&self.segment_count.to_le_bytes());
        debug_assert_eq!(out.len(), NAME_LEN_OFF);
        write_name(&mut out, &self.datastore);
        out.resize(CHECKSUM_OFF, 0);
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses and checks page 0 (everything listed in the
    /// [module docs](self)). `page` must hold at least [`PAGE`] bytes; only
    /// the first [`PAGE`] are read.
    pub fn decode(page: &[u8]) -> Result<Superblock, OndiskError> {
        Superblock::decode_versioned(page).map(|(sb, _)| sb)
    }

    /// [`Superblock::decode`], and the version page 0 has: below
    /// [`SUPERBLOCK_VERSION`], the store must be rewritten with
    /// [`Superblock::encode`] before anything newer is written to it.
    pub fn decode_versioned(page: &[u8]) -> Result<(Superblock, u8), OndiskError> {
        let page = page.get(..PAGE).ok_or(OndiskError::Truncated {
            what: WHAT,
            at: 0,
            need: PAGE,
            have: page.len(),
        })?;
        let mut r = Reader::new(page, WHAT);
        let version = super::check_magic_version(&mut r, SUPERBLOCK_MAGIC, SUPERBLOCK_VERSION)?;
        r.zeros(3)?;
        check_trailing_checksum(WHAT, page)?;
        let store_id: [u8; STORE_ID_LEN] = r.array()?;
        let journal_offset = r.u64()?;
        let journal_len = r.u64()?;
        let segments_offset = r.u64()?;
        let segment_size = r.u32()?;
        let segment_count = r.u32()?;
        let datastore = read_name(&mut r, "datastore", MAX_DATASTORE_LEN)?;
        let pad_at = r.pos();
        let pad = r.bytes(CHECKSUM_OFF.saturating_sub(pad_at))?;
        check_zero(WHAT, pad_at, pad)?;
        let sb = Superblock {
            store_id,
            datastore,
            journal_offset,
            journal_len,
            segments_offset,
            segment_size,
            segment_count,
        };
        sb.check_geometry()?;
        Ok((sb, version))
    }

    /// Checks everything [`Superblock::decode`] would check of the fields:
    /// the name and the geometry. Call before [`Superblock::encode`] when
    /// formatting.
    pub fn validate(&self) -> Result<(), OndiskError> {
        check_name("datastore", &self.datastore, MAX_DATASTORE_LEN)?;
        self.check_geometry()
    }

    /// The journal ring's byte range on the device, or `None` if it does not
    /// fit in 64 bits.
    pub fn journal_range(&self) -> Option<std::ops::Range<u64>> {
        let end = self.journal_offset.checked_add(self.journal_len)?;
        Some(self.journal_offset..end)
    }

    /// The byte range of all segment slots on the device, or `None` if it
    /// does not fit in 64 bits.
    pub fn segments_range(&self) -> Option<std::ops::Range<u64>> {
        let len = u64::from(self.segment_size).checked_mul(u64::from(self.segment_count))?;
        let end = self.segments_offset.checked_add(len)?;
        Some(self.segments_offset..end)
    }

    /// Byte offset on the device of segment slot `slot`, or `None` if
    /// `slot >= segment_count`.
    pub fn slot_offset(&self, slot: u32) -> Option<u64> {
        if slot >= self.segment_count {
            return None;
        }
        u64::from(slot)
            .checked_mul(u64::from(self.segment_size))?
            .checked_add(self.segments_offset)
    }

    /// Alignment, ranges and overlaps of the geometry fields.
    fn check_geometry(&self) -> Result<(), OndiskError> {
        let page = PAGE as u64;
        let aligned = [
            ("journal_offset", self.journal_offset),
            ("journal_len", self.journal_len),
            ("segments_offset", self.segments_offset),
            ("segment_size", u64::from(self.segment_size)),
        ];
        for (field, value) in aligned {
            if value % page != 0 {
                return Err(OndiskError::Misaligned { field, value });
            }
        }
        if self.journal_len == 0 {
            return Err(OndiskError::BadGeometry {
                field: "journal_len",
                value: 0,
                reason: "the journal ring is empty",
            });
        }
        if u64::from(self.segment_size) < 2 * page {
            return Err(OndiskError::BadGeometry {
                field: "segment_size",
                value: u64::from(self.segment_size),
                reason: "a slot needs at least two pages",
            });
        }
        if self.segment_count == 0 {
            return Err(OndiskError::BadGeometry {
                field: "segment_count",
                value: 0,
                reason: "there are no segment slots",
            });
        }
        let journal = self.journal_range().ok_or(OndiskError::BadGeometry {
            field: "journal_len",
            value: self.journal_len,
            reason: "the journal ring ends past 2^64",
        })?;
        let segments = self.segments_range().ok_or(OndiskError::BadGeometry {
            field: "segment_count",
            value: u64::from(self.segment_count),
            reason: "the segment slots end past 2^64",
        })?;
        let superblock = 0..page;
        let overlaps =
            |a: &std::ops::Range<u64>, b: &std::ops::Range<u64>| a.start < b.end && b.start < a.end;
        for (first, a, second, b) in [
            ("superblock", &superblock, "journal", &journal),
            ("superblock", &superblock, "segments", &segments),
            ("journal", &journal, "segments", &segments),
        ] {
            if overlaps(a, b) {
                return Err(OndiskError::Overlap {
                    first,
                    first_start: a.start,
                    first_end: a.end,
                    second,
                    second_start: b.start,
                    second_end: b.end,
                });
            }
        }
        Ok(())
    }
}
