//! Which NVLOG record logged each frame that is not yet destaged.
//!
//! On a pool, a frame written since the last destage exists twice: on the
//! host's flash and in the NVLOG record that logged it; the pool's stripes
//! get it only at the next destage. When the flash copy fails verification
//! in that window, the stripes cannot help; this list names the record to
//! read back from the pool instead. A record's frames are noted when it is
//! appended (or replayed into a fresh flash at start) and forgotten, oldest
//! first, when a destage truncates the log past it, by which time the
//! stripes hold them.
//!
//! It costs 32 bytes of RAM per frame logged since the last destage: with
//! the default 1 GiB NVLOG quota, 8 MiB for incompressible 4 KiB writes and
//! up to about 170 MiB when every block compresses to 200 bytes. Only a
//! repair looks a frame up, which scans the list, newest record first.

use std::collections::VecDeque;
use std::sync::Mutex;

use strata_common::fingerprint::Fingerprint;
use strata_common::frame::FrameHeader;
use strata_common::ondisk::{decode_batch, BatchItem};

/// The frames of each NVLOG record not yet truncated, oldest record first.
#[derive(Default)]
pub struct NvlogFrames {
    records: Mutex<VecDeque<(u64, Vec<Fingerprint>)>>,
}

impl NvlogFrames {
    fn records(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Vec<Fingerprint>)>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that record `seq` (above every record noted before) logged the
    /// frames `fingerprints`.
    pub fn note(&self, seq: u64, fingerprints: Vec<Fingerprint>) {
        if !fingerprints.is_empty() {
            self.records().push_back((seq, fingerprints));
        }
    }

    /// Forgets the frames of records up to `seq` (truncated: the stripes
    /// hold them now).
    pub fn forget_through(&self, seq: u64) {
        let mut records = self.records();
        while records.front().is_some_and(|(logged, _)| *logged <= seq) {
            records.pop_front();
        }
        if records.capacity() > 4 * records.len() + 64 {
            records.shrink_to_fit();
        }
    }

    /// The newest record that logged `fingerprint`, if it is not truncated
    /// yet.
    pub fn record_of(&self, fingerprint: &Fingerprint) -> Option<u64> {
        self.records()
            .iter()
            .rev()
            .find(|(_, frames)| frames.contains(fingerprint))
            .map(|(seq, _)| *seq)
    }
}

/// The frames in batch body `body`, each with its fingerprint (a body
/// that does not decode has none, a frame whose header does not parse is
/// left out; the caller verifies the bytes).
pub fn frames_in_batch(body: &[u8]) -> Vec<(Fingerprint, &[u8])> {
    match decode_batch(body) {
        Ok(items) => items
            .into_iter()
            .filter_map(|item| match item {
                BatchItem::Frame(frame) => FrameHeader::parse(frame)
                    .ok()
                    .map(|header| (header.fingerprint, frame)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "an NVLOG record does not decode");
            Vec::new()
        }
    }
}

/// The fingerprints of the frames in batch body `body`.
pub fn frames_of_batch(body: &[u8]) -> Vec<Fingerprint> {
    frames_in_batch(body)
        .into_iter()
        .map(|(fp, _)| fp)
        .collect()
}

/// The bytes of the frame with `fingerprint` in batch body `body`, as the
/// record holds them (the caller verifies them).
pub fn frame_in_batch<'a>(body: &'a [u8], fingerprint: &Fingerprint) -> Option<&'a [u8]> {
    frames_in_batch(body)
        .into_iter()
        .find_map(|(fp, frame)| (fp == *fingerprint).then_some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::frame::{Encoded, FrameCodec, FrameKeys};
    use strata_common::ondisk::BatchBuilder;

    fn frame(codec: &FrameCodec, fill: u8) -> (Fingerprint, Vec<u8>) {
        let block = [fill; 4096];
        let mut out = Vec::new();
        match codec.encode(&block, &mut out).expect("encoding") {
            Encoded::Frame(fp) => (fp, out),
            Encoded::Zero => panic!("block {fill} encodes as zero"),
        }
    }

    #[test]
    fn frames_are_found_in_their_batch_and_forgotten_at_truncation() {
        let codec = FrameCodec::new(&FrameKeys {
            data_key: [1; 32],
            dedupe_key: [2; 32],
        });
        let (a, frame_a) = frame(&codec, 1);
        let (b, frame_b) = frame(&codec, 2);
        let (c, _) = frame(&codec, 3);
        let mut batch = BatchBuilder::new();
        batch.push_frame(&frame_a);
        batch.push_set(1, 0, 0, &[a, b]);
        batch.push_frame(&frame_b);
        let body = batch.into_body();
        assert_eq!(frames_of_batch(&body), vec![a, b]);
        assert_eq!(frame_in_batch(&body, &a), Some(&frame_a[..]));
        assert_eq!(frame_in_batch(&body, &b), Some(&frame_b[..]));
        assert_eq!(frame_in_batch(&body, &c), None);
        assert!(frames_of_batch(&body[..body.len() - 1]).is_empty());
        assert_eq!(frame_in_batch(&body[..body.len() - 1], &b), None);

        let logged = NvlogFrames::default();
        logged.note(4, frames_of_batch(&body));
        logged.note(5, Vec::new());
        logged.note(7, vec![c, a]);
        assert_eq!(logged.record_of(&a), Some(7), "the newer record wins");
        assert_eq!(logged.record_of(&b), Some(4));
        logged.forget_through(4);
        assert_eq!(logged.record_of(&b), None);
        assert_eq!(logged.record_of(&a), Some(7));
        assert_eq!(logged.record_of(&c), Some(7));
        logged.forget_through(7);
        assert_eq!(logged.record_of(&a), None);
        assert_eq!(logged.record_of(&c), None);
    }
}
