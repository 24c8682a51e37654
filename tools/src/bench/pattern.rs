//! What benchmark writes contain.
//!
//! Strata deduplicates and compresses 4 KiB blocks, so the data written
//! changes what is measured. The patterns:
//!
//! - `unique`: random bytes, and every 4 KiB chunk of every write is
//!   stamped with the run id and a counter: nothing dedupes or compresses.
//! - `dup`: every 4 KiB chunk is one of `--dup-blocks` distinct random
//!   blocks: almost everything dedupes, nothing compresses.
//! - `zeros`: all zero (thin-provisioned, never stored by Strata).
//! - `text`: lines of ASCII words and recurring phrases, stamped like
//!   `unique` so blocks stay distinct: does not dedupe, compresses about
//!   2.5:1 with snappy/lz4-type compressors (more with zlib).
//!
//! Writes do not allocate or copy: slot buffers are filled once, per-write
//! work is only the stamp, and `dup` writes point straight into a shared
//! read-only pool.

use serde::Serialize;

use super::rng::{mix64, Rng};

/// The granularity at which data is made distinct: Strata's block size.
pub const DEDUPE_BLOCK: usize = 4096;

/// Bytes of the stamp at the start of each chunk (`unique`).
const BINARY_STAMP_LEN: usize = 16;

/// Bytes of the stamp at the start of each chunk (`text`): `[` + 32 hex
/// digits + `]`.
const TEXT_STAMP_LEN: usize = 34;

/// The data pattern of benchmark writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Every 4 KiB block distinct and incompressible.
    Unique,
    /// A few distinct 4 KiB blocks repeated (dedupes, does not compress).
    Dup,
    /// All zeros.
    Zeros,
    /// Distinct blocks of compressible ASCII text.
    Text,
}

impl Pattern {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Unique => "unique",
            Pattern::Dup => "dup",
            Pattern::Zeros => "zeros",
            Pattern::Text => "text",
        }
    }
}

/// Where the data of one write lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteData {
    /// In the slot's own write buffer (just stamped).
    Slot,
    /// In the queue's shared `dup` pool, starting at this byte offset.
    Pool {
        /// Byte offset into the pool.
        offset: usize,
    },
}

/// Produces the data of one queue's writes.
#[derive(Clone, Debug)]
pub struct PatternWriter {
    pattern: Pattern,
    block_size: usize,
    chunk: usize,
    dup_blocks: usize,
    seed: u64,
    run_id: u64,
    counter: u64,
}

impl PatternWriter {
    /// A writer for queue `queue` of a run with this seed.
    pub fn new(
        pattern: Pattern,
        seed: u64,
        queue: usize,
        block_size: usize,
        dup_blocks: usize,
    ) -> Self {
        PatternWriter {
            pattern,
            block_size,
            chunk: chunk_size(block_size),
            dup_blocks: dup_blocks.max(1),
            seed,
            run_id: mix64(seed).wrapping_add(queue as u64),
            counter: 0,
        }
    }

    /// Bytes of I/O memory the `dup` pool needs (zero for other patterns):
    /// the distinct chunks plus enough repeated ones that any window of
    /// `block_size` bytes starting at a chunk boundary fits.
    pub fn pool_len(pattern: Pattern, block_size: usize, dup_blocks: usize) -> usize {
        match pattern {
            Pattern::Dup => {
                let chunk = chunk_size(block_size);
                (dup_blocks.max(1) + block_size / chunk - 1) * chunk
            }
            _ => 0,
        }
    }

    /// Fills a slot's write buffer once, before the run.
    pub fn init_slot(&self, slot: usize, buf: &mut [u8]) {
        let mut rng = Rng::new(mix64(self.run_id ^ mix64(slot as u64)));
        match self.pattern {
            Pattern::Unique => rng.fill(buf),
            Pattern::Zeros | Pattern::Dup => buf.fill(0),
            Pattern::Text => fill_text(buf, &mut rng),
        }
    }

    /// Fills the `dup` pool (length [`PatternWriter::pool_len`]) once.
    ///
    /// Chunk `i` holds distinct block `i % dup_blocks`; the blocks depend only
    /// on the seed, so all queues write the same few blocks.
    pub fn init_pool(&self, pool: &mut [u8]) {
        for (i, chunk) in pool.chunks_exact_mut(self.chunk).enumerate() {
            let distinct = (i % self.dup_blocks) as u64;
            Rng::new(mix64(self.seed ^ 0x6475_7000 ^ distinct)).fill(chunk);
        }
    }

    /// Prepares the next write from a slot whose buffer is `slot_buf`
    /// (`block_size` bytes, not in flight) and says where its data is.
    pub fn next_write(&mut self, slot_buf: &mut [u8]) -> WriteData {
        match self.pattern {
            Pattern::Zeros => WriteData::Slot,
            Pattern::Unique => {
                for chunk in slot_buf.chunks_exact_mut(self.chunk) {
                    chunk[..8].copy_from_slice(&self.run_id.to_le_bytes());
                    chunk[8..BINARY_STAMP_LEN].copy_from_slice(&self.counter.to_le_bytes());
                    self.counter += 1;
                }
                WriteData::Slot
            }
            Pattern::Text => {
                for chunk in slot_buf.chunks_exact_mut(self.chunk) {
                    let stamp = &mut chunk[..TEXT_STAMP_LEN];
                    stamp[0] = b'[';
                    write_hex(&mut stamp[1..17], self.run_id);
                    write_hex(&mut stamp[17..33], self.counter);
                    stamp[33] = b']';
                    self.counter += 1;
                }
                WriteData::Slot
            }
            Pattern::Dup => {
                let window = (self.counter % self.dup_blocks as u64) as usize;
                self.counter += 1;
                debug_assert!(
                    (window * self.chunk + self.block_size)
                        <= Self::pool_len(self.pattern, self.block_size, self.dup_blocks)
                );
                WriteData::Pool {
                    offset: window * self.chunk,
                }
            }
        }
    }
}

/// The unit made distinct: 4 KiB, or the largest power-of-two divisor of
/// the block size below that (blocks are multiples of 512).
fn chunk_size(block_size: usize) -> usize {
    let mut chunk = DEDUPE_BLOCK;
    while chunk > 512 && block_size % chunk != 0 {
        chunk /= 2;
    }
    chunk
}

/// Writes `value` as 16 lower-case hex digits into `out` (16 bytes).
fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        let nibble = (value >> (60 - 4 * i)) & 0xf;
        *byte = DIGITS[nibble as usize];
    }
}

/// Vocabulary for the text pattern: common words, so it compresses like
/// prose or logs rather than like random letters.
const WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "storage", "block", "disk",
    "request", "queue", "latency", "error", "write", "read", "cache", "server", "client", "data",
    "value", "system", "volume",
];

/// Recurring phrases: half of the text's tokens are one of these, which
/// gives LZ-type block compressors (snappy, lz4) the long matches they need.
/// Measured: about 2.6:1 with lz4 and 4:1 with zlib per 4 KiB block.
const PHRASES: [&str; 16] = [
    "the storage server ",
    "wrote the block ",
    "to the disk ",
    "and the client ",
    "read the data ",
    "from the cache ",
    "in the queue ",
    "with low latency ",
    "of the volume ",
    "for the request ",
    "but the system ",
    "has no error ",
    "when it was ",
    "which will be ",
    "that they have ",
    "on the host ",
];

/// Fills `buf` with lines of words and phrases.
fn fill_text(buf: &mut [u8], rng: &mut Rng) {
    let mut pos = 0;
    let mut line_len = 0;
    while pos < buf.len() {
        let r = rng.next_u64();
        let token: &[u8] = if r & 1 == 1 {
            PHRASES[((r >> 1) & 15) as usize].as_bytes()
        } else {
            WORDS[((r >> 5) & 63) as usize].as_bytes()
        };
        let take = token.len().min(buf.len() - pos);
        buf[pos..pos + take].copy_from_slice(&token[..take]);
        pos += take;
        line_len += take;
        if pos == buf.len() {
            break;
        }
        if r & 1 == 0 {
            buf[pos] = if (r >> 11) % 8 == 0 { b'.' } else { b' ' };
            pos += 1;
            line_len += 1;
        }
        if line_len > 72 && pos < buf.len() {
            buf[pos] = b'\n';
            pos += 1;
            line_len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn chunks_of(writer: &mut PatternWriter, slot: &mut [u8], writes: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..writes {
            assert_eq!(writer.next_write(slot), WriteData::Slot);
            out.extend(slot.chunks(DEDUPE_BLOCK).map(<[u8]>::to_vec));
        }
        out
    }

    #[test]
    fn unique_blocks_are_all_distinct() {
        let mut writer = PatternWriter::new(Pattern::Unique, 5, 0, 16384, 4);
        let mut slot = vec![0u8; 16384];
        writer.init_slot(0, &mut slot);
        let chunks = chunks_of(&mut writer, &mut slot, 20);
        let distinct: HashSet<_> = chunks.iter().collect();
        assert_eq!(distinct.len(), chunks.len());
    }

    #[test]
    fn unique_differs_between_queues() {
        let mut a = PatternWriter::new(Pattern::Unique, 5, 0, 4096, 4);
        let mut b = PatternWriter::new(Pattern::Unique, 5, 1, 4096, 4);
        let (mut sa, mut sb) = (vec![0u8; 4096], vec![0u8; 4096]);
        a.init_slot(0, &mut sa);
        b.init_slot(0, &mut sb);
        a.next_write(&mut sa);
        b.next_write(&mut sb);
        assert_ne!(sa, sb);
    }

    #[test]
    fn text_is_ascii_distinct_and_repetitive() {
        let mut writer = PatternWriter::new(Pattern::Text, 5, 0, 8192, 4);
        let mut slot = vec![0u8; 8192];
        writer.init_slot(3, &mut slot);
        let chunks = chunks_of(&mut writer, &mut slot, 4);
        assert!(chunks.iter().flatten().all(|b| b.is_ascii()));
        let distinct: HashSet<_> = chunks.iter().collect();
        assert_eq!(distinct.len(), chunks.len());
        // Few distinct byte values: a strong hint that it compresses.
        let alphabet: HashSet<u8> = chunks.iter().flatten().copied().collect();
        assert!(alphabet.len() < 48, "{} distinct bytes", alphabet.len());
    }

    #[test]
    fn dup_windows_use_few_distinct_blocks() {
        let bs = 16384;
        let mut writer = PatternWriter::new(Pattern::Dup, 5, 0, bs, 3);
        let mut pool = vec![0u8; PatternWriter::pool_len(Pattern::Dup, bs, 3)];
        writer.init_pool(&mut pool);
        let mut slot = vec![0u8; bs];
        let mut seen = HashSet::new();
        for _ in 0..10 {
            match writer.next_write(&mut slot) {
                WriteData::Pool { offset } => {
                    let data = &pool[offset..offset + bs];
                    seen.extend(data.chunks(DEDUPE_BLOCK).map(<[u8]>::to_vec));
                }
                WriteData::Slot => panic!("dup must use the pool"),
            }
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn chunk_size_divides_block_size() {
        assert_eq!(chunk_size(512), 512);
        assert_eq!(chunk_size(1536), 512);
        assert_eq!(chunk_size(4096), 4096);
        assert_eq!(chunk_size(6144), 2048);
        assert_eq!(chunk_size(1 << 20), 4096);
    }

    #[test]
    fn hex_is_big_endian_digits() {
        let mut out = [0u8; 16];
        write_hex(&mut out, 0x0123_4567_89ab_cdef);
        assert_eq!(&out, b"0123456789abcdef");
    }
}
