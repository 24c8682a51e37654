//! Erasure coding of pool stripes: k data chunks and [`PARITY_CHUNKS`]
//! parity chunks (reed-solomon-simd), each with its own xxh3 checksum.
//!
//! The code is systematic: the data chunks are the stripe's bytes cut in k
//! equal pieces (the last one padded with zeros), so reading a frame
//! touches only the chunk (or two) it lies in; parity is needed only when
//! a chunk is missing or fails its checksum. Any k of the k + 2 chunks
//! restore the rest. The host encodes; the pool stores and, when drives
//! fail, decodes.

/// Parity chunks per stripe: any two chunks may be lost.
pub const PARITY_CHUNKS: usize = 2;
/// Most data chunks a stripe may have.
pub const MAX_DATA_CHUNKS: usize = 32;
/// Chunk lengths are multiples of this (the coder works in 64-byte units).
pub const CHUNK_ALIGN: usize = 64;

/// Why a stripe cannot be encoded or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErasureError {
    /// k is zero or above [`MAX_DATA_CHUNKS`].
    #[error("{0} data chunks: a stripe has 1 to {MAX_DATA_CHUNKS}")]
    BadShape(usize),
    /// Fewer than k chunks are usable.
    #[error("only {have} of the {need} chunks needed to restore the stripe are usable")]
    TooFewChunks {
        /// Usable chunks.
        have: usize,
        /// Chunks needed (k).
        need: usize,
    },
    /// Chunks of different lengths, or a count other than k + 2.
    #[error("chunks do not form one stripe: {0}")]
    Mismatch(&'static str),
    /// The coder refused its input (a bug).
    #[error("erasure coder failed: {0}")]
    Coder(String),
}

/// The chunk length of a stripe of `data_len` bytes in `k` data chunks.
pub fn chunk_len(data_len: usize, k: usize) -> usize {
    data_len
        .div_ceil(k.max(1))
        .next_multiple_of(CHUNK_ALIGN)
        .max(CHUNK_ALIGN)
}

/// The checksum stored with each chunk.
pub fn chunk_checksum(chunk: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(chunk)
}

/// Cuts `data` into `k` data chunks and computes the parity chunks: the
/// k + 2 chunks of the stripe, data first.
pub fn encode(data: &[u8], k: usize) -> Result<Vec<Vec<u8>>, ErasureError> {
    if k == 0 || k > MAX_DATA_CHUNKS {
        return Err(ErasureError::BadShape(k));
    }
    let len = chunk_len(data.len(), k);
    let mut chunks: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let start = (i * len).min(data.len());
            let end = ((i + 1) * len).min(data.len());
            let mut chunk = data[start..end].to_vec();
            chunk.resize(len, 0);
            chunk
        })
        .collect();
    let parity = reed_solomon_simd::encode(k, PARITY_CHUNKS, &chunks)
        .map_err(|e| ErasureError::Coder(e.to_string()))?;
    chunks.extend(parity);
    Ok(chunks)
}

/// Fills in every `None` of `chunks` (k data then 2 parity, as [`encode`]
/// made them) from the others. Callers pass `None` for chunks that are
/// missing or failed their checksum.
pub fn restore(chunks: &mut [Option<Vec<u8>>], k: usize) -> Result<(), ErasureError> {
    if k == 0 || k > MAX_DATA_CHUNKS {
        return Err(ErasureError::BadShape(k));
    }
    if chunks.len() != k + PARITY_CHUNKS {
        return Err(ErasureError::Mismatch("wrong number of chunks"));
    }
    let have = chunks.iter().filter(|c| c.is_some()).count();
    if have < k {
        return Err(ErasureError::TooFewChunks { have, need: k });
    }
    if have == chunks.len() {
        return Ok(());
    }
    let mut lens = chunks.iter().flatten().map(Vec::len);
    let len = lens.next().unwrap_or(0);
    if len == 0 || !len.is_multiple_of(CHUNK_ALIGN) || lens.any(|l| l != len) {
        return Err(ErasureError::Mismatch(
            "chunk lengths differ or are not aligned",
        ));
    }
    if chunks[..k].iter().any(Option::is_none) {
        let originals = chunks[..k]
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)));
        let recovery = chunks[k..]
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)));
        let restored = reed_solomon_simd::decode(k, PARITY_CHUNKS, originals, recovery)
            .map_err(|e| ErasureError::Coder(e.to_string()))?;
        for (i, chunk) in restored {
            if let Some(slot) = chunks.get_mut(i).filter(|_| i < k) {
                *slot = Some(chunk);
            }
        }
    }
    if chunks[k..].iter().any(Option::is_none) {
        let data: Vec<&Vec<u8>> = chunks[..k].iter().flatten().collect();
        if data.len() != k {
            return Err(ErasureError::Coder("data chunks still missing".into()));
        }
        let parity = reed_solomon_simd::encode(k, PARITY_CHUNKS, data)
            .map_err(|e| ErasureError::Coder(e.to_string()))?;
        for (slot, chunk) in chunks[k..].iter_mut().zip(parity) {
            slot.get_or_insert(chunk);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn data_chunks_are_the_bytes_in_order() {
        let data = sample(10_000);
        let chunks = encode(&data, 4).unwrap();
        assert_eq!(chunks.len(), 6);
        let joined: Vec<u8> = chunks[..4].concat();
        assert_eq!(&joined[..data.len()], &data[..]);
        assert!(joined[data.len()..].iter().all(|&b| b == 0));
        assert!(chunks.iter().all(|c| c.len() == chunk_len(10_000, 4)));
    }

    #[test]
    fn every_pair_of_lost_chunks_is_restored() {
        let data = sample(50_001);
        let k = 4;
        let full = encode(&data, k).unwrap();
        for a in 0..k + 2 {
            for b in a..k + 2 {
                let mut chunks: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
                chunks[a] = None;
                chunks[b] = None;
                restore(&mut chunks, k).unwrap();
                let got: Vec<Vec<u8>> = chunks.into_iter().map(Option::unwrap).collect();
                assert_eq!(got, full, "lost chunks {a} and {b}");
            }
        }
    }

    #[test]
    fn three_lost_chunks_are_an_error_not_garbage() {
        let full = encode(&sample(9000), 4).unwrap();
        let mut chunks: Vec<Option<Vec<u8>>> = full.into_iter().map(Some).collect();
        chunks[0] = None;
        chunks[2] = None;
        chunks[5] = None;
        assert_eq!(
            restore(&mut chunks, 4),
            Err(ErasureError::TooFewChunks { have: 3, need: 4 })
        );
    }

    #[test]
    fn hostile_shapes_are_errors() {
        assert_eq!(encode(b"x", 0), Err(ErasureError::BadShape(0)));
        assert_eq!(encode(b"x", 33), Err(ErasureError::BadShape(33)));
        let mut short = vec![Some(vec![0u8; 64]); 5];
        assert!(matches!(
            restore(&mut short, 4),
            Err(ErasureError::Mismatch(_))
        ));
        let mut uneven = vec![Some(vec![0u8; 64]); 6];
        uneven[1] = Some(vec![0u8; 128]);
        uneven[0] = None;
        assert!(matches!(
            restore(&mut uneven, 4),
            Err(ErasureError::Mismatch(_))
        ));
    }

    proptest! {
        #[test]
        fn any_two_losses_restore_the_bytes(
            data in proptest::collection::vec(any::<u8>(), 1..5000),
            k in 1usize..8,
            a in 0usize..10,
            b in 0usize..10,
        ) {
            let full = encode(&data, k).unwrap();
            let mut chunks: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
            chunks[a % (k + 2)] = None;
            chunks[b % (k + 2)] = None;
            restore(&mut chunks, k).unwrap();
            let joined: Vec<u8> = chunks[..k].iter().flatten().flatten().copied().collect();
            prop_assert_eq!(&joined[..data.len()], &data[..]);
        }
    }
}
