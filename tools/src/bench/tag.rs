//! The self-describing verification pattern.
//!
//! Every 512-byte sector written by `--verify` starts with a header (magic,
//! the sector's own byte offset on the device, the run's generation) and is
//! filled with bytes derived from offset and generation. Reading it back
//! therefore tells apart data that is corrupt, data that belongs elsewhere
//! (misplaced) and data from an older run (stale).

use std::fmt;

use super::rng::mix64;

/// The tagging granularity: the smallest virtio-blk sector.
pub const SECTOR: usize = 512;

/// Marks a tagged sector ("STRATAVB", little-endian).
const MAGIC: u64 = u64::from_le_bytes(*b"STRATAVB");

/// Header words per sector: magic, offset, generation.
const HEADER_WORDS: usize = 3;

/// The 64-bit word `index` of the sector at `offset` for `generation`.
fn expected_word(offset: u64, generation: u64, index: usize) -> u64 {
    match index {
        0 => MAGIC,
        1 => offset,
        2 => generation,
        _ => mix64(generation ^ mix64(offset) ^ index as u64),
    }
}

/// Fills `buf` (a multiple of [`SECTOR`] bytes) with the tagged pattern for
/// data at device byte offset `offset`.
pub fn fill(buf: &mut [u8], offset: u64, generation: u64) {
    for (s, sector) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let sector_offset = offset + (s * SECTOR) as u64;
        for (i, word) in sector.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&expected_word(sector_offset, generation, i).to_le_bytes());
        }
    }
}

/// Checks that `buf` holds exactly the tagged pattern for device byte offset
/// `offset`; on failure returns the first mismatching byte.
pub fn check(buf: &[u8], offset: u64, generation: u64) -> Result<(), Mismatch> {
    for (s, sector) in buf.chunks_exact(SECTOR).enumerate() {
        let sector_offset = offset + (s * SECTOR) as u64;
        for (i, word) in sector.chunks_exact(8).enumerate() {
            let expected = expected_word(sector_offset, generation, i).to_le_bytes();
            if word != expected {
                let byte = word
                    .iter()
                    .zip(expected)
                    .position(|(found, want)| *found != want)
                    .unwrap_or(0);
                return Err(Mismatch {
                    offset: sector_offset + (i * 8 + byte) as u64,
                    sector_offset,
                    expected: expected[byte],
                    found: word[byte],
                    generation,
                    found_header: SectorHeader::parse(sector),
                });
            }
        }
    }
    Ok(())
}

/// What the header of a mismatching sector says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorHeader {
    /// The whole sector is zero (never written, discarded, or lost).
    Zeros,
    /// A tagged header: the data was written for `offset` by `generation`.
    Tagged {
        /// The offset the data was written for.
        offset: u64,
        /// The generation that wrote it.
        generation: u64,
    },
    /// Neither zeros nor a tag: foreign or corrupt data.
    Untagged,
}

impl SectorHeader {
    fn parse(sector: &[u8]) -> Self {
        if sector.iter().all(|&b| b == 0) {
            return SectorHeader::Zeros;
        }
        let word = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&sector[i * 8..i * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        if sector.len() >= HEADER_WORDS * 8 && word(0) == MAGIC {
            SectorHeader::Tagged {
                offset: word(1),
                generation: word(2),
            }
        } else {
            SectorHeader::Untagged
        }
    }
}

/// The first difference found by [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Device byte offset of the first differing byte.
    pub offset: u64,
    /// Device byte offset of the sector holding it.
    pub sector_offset: u64,
    /// The byte that should be there.
    pub expected: u8,
    /// The byte that is there.
    pub found: u8,
    /// The generation that was expected.
    pub generation: u64,
    /// What the sector's header says.
    pub found_header: SectorHeader,
}

impl Mismatch {
    /// A one-word diagnosis: `zeros`, `misplaced`, `stale`, `corrupt`.
    pub fn kind(&self) -> &'static str {
        match self.found_header {
            SectorHeader::Zeros => "zeros",
            SectorHeader::Tagged { offset, .. } if offset != self.sector_offset => "misplaced",
            SectorHeader::Tagged { generation, .. } if generation != self.generation => "stale",
            _ => "corrupt",
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data mismatch at byte offset {} (sector at {}): expected {:#04x}, found {:#04x}: ",
            self.offset, self.sector_offset, self.expected, self.found
        )?;
        match self.found_header {
            SectorHeader::Zeros => write!(f, "the sector reads as all zeros"),
            SectorHeader::Tagged { offset, generation } if offset != self.sector_offset => write!(
                f,
                "misplaced: the sector holds data written for offset {offset} (generation {generation:#x})"
            ),
            SectorHeader::Tagged { generation, .. } if generation != self.generation => write!(
                f,
                "stale: the sector holds data of generation {generation:#x}, expected {:#x}",
                self.generation
            ),
            SectorHeader::Tagged { .. } => {
                write!(f, "corrupt: the header is right but the contents differ")
            }
            SectorHeader::Untagged => write!(f, "corrupt: the sector holds no verification tag"),
        }
    }
}

impl std::error::Error for Mismatch {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_passes() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 8192, 7);
        assert_eq!(check(&buf, 8192, 7), Ok(()));
    }

    #[test]
    fn detects_corruption_at_exact_byte() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 0, 7);
        buf[1000] ^= 1;
        let m = check(&buf, 0, 7).unwrap_err();
        assert_eq!(m.offset, 1000);
        assert_eq!(m.sector_offset, 512);
        assert_eq!(m.kind(), "corrupt");
    }

    #[test]
    fn detects_misplaced_stale_and_zero_data() {
        let mut buf = vec![0u8; 1024];
        fill(&mut buf, 4096, 7);
        let m = check(&buf, 0, 7).unwrap_err();
        assert_eq!(m.kind(), "misplaced");
        assert!(m.to_string().contains("offset 4096"), "{m}");

        fill(&mut buf, 0, 6);
        let m = check(&buf, 0, 7).unwrap_err();
        assert_eq!(m.kind(), "stale");

        buf.fill(0);
        let m = check(&buf, 0, 7).unwrap_err();
        assert_eq!(m.kind(), "zeros");
        assert_eq!(m.offset, 0);
    }

    #[test]
    fn every_sector_is_distinct() {
        let mut buf = vec![0u8; 2048];
        fill(&mut buf, 0, 1);
        let sectors: Vec<&[u8]> = buf.chunks(SECTOR).collect();
        for i in 0..sectors.len() {
            for j in i + 1..sectors.len() {
                assert_ne!(sectors[i], sectors[j]);
            }
        }
    }
}
