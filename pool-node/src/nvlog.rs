//! One host's NVLOG: an append-only durable log of opaque records on the
//! pool's disk.
//!
//! Records live in segment files `DIR/<first seq, 20 digits>.log`; a new
//! segment starts when the current one passes [`SEGMENT_BYTES`]. A record
//! is a 32-byte header and its payload:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `"SNVL"` |
//! | 4 | 1 | version `1` |
//! | 5 | 3 | zero |
//! | 8 | 8 | sequence number, u64 LE |
//! | 16 | 4 | payload length, u32 LE |
//! | 20 | 4 | zero |
//! | 24 | 8 | xxh3-64 of bytes 0..24 and the payload, u64 LE |
//!
//! Appends are made durable in groups: [`Nvlog::append_batch`] writes every
//! record of a batch with one write and one fdatasync. Opening replays the
//! segments; a torn record at the end of the last segment (a crash during a
//! write that was never acknowledged) is cut off; a bad record anywhere
//! else is an error, never skipped. Truncation records its point in
//! `DIR/truncated` (written to a temporary file, synced, renamed) and
//! deletes segments that hold only truncated records.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

/// Length of a record header.
pub const HEADER_LEN: usize = 32;
/// Size past which a new segment file starts.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const MAGIC: [u8; 4] = *b"SNVL";
const VERSION: u8 = 1;

/// What went wrong with an NVLOG.
#[derive(Debug, thiserror::Error)]
pub enum NvlogError {
    /// The OS refused.
    #[error("NVLOG {path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A record that is not the torn end of the log fails its checks.
    #[error("NVLOG {path}: corrupt record at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Which check failed.
        reason: &'static str,
    },
    /// An append whose sequence number is not above the last one.
    #[error("sequence {seq} is not above the last appended, {last}")]
    StaleSequence {
        /// Asked.
        seq: u64,
        /// The last one.
        last: u64,
    },
}

/// Where one record is.
#[derive(Debug, Clone, Copy)]
struct RecordPlace {
    seq: u64,
    /// First sequence number of its segment (names the file).
    segment: u64,
    offset: u64,
    len: u32,
}

/// One host's NVLOG (see the [module docs](self)). Not shared: its owner
/// serialises access.
#[derive(Debug)]
pub struct Nvlog {
    dir: PathBuf,
    /// Records held (not truncated), oldest first.
    records: VecDeque<RecordPlace>,
    /// Segment files, oldest first: (first seq, length).
    segments: VecDeque<(u64, u64)>,
    current: Option<File>,
    last_seq: u64,
    truncated_through: u64,
    /// Bytes of the records held (headers included).
    used: u64,
}

impl Nvlog {
    /// Opens (creating if needed) the NVLOG in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<Nvlog, NvlogError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "cannot create directory"))?;
        let truncated_through = read_truncated(dir)?;
        let mut firsts: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir, "cannot list"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut log = Nvlog {
            dir: dir.to_path_buf(),
            records: VecDeque::new(),
            segments: VecDeque::new(),
            current: None,
            last_seq: truncated_through,
            truncated_through,
            used: 0,
        };
        for (i, first) in firsts.iter().enumerate() {
            let last_segment = i + 1 == firsts.len();
            let len = log.replay_segment(*first, last_segment)?;
            log.segments.push_back((*first, len));
        }
        if let Some(&(first, _)) = log.segments.back() {
            let path = log.segment_path(first);
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path, "cannot open for appending"))?;
            log.current = Some(file);
        }
        Ok(log)
    }

    /// Reads one segment's records; returns its length after any torn tail
    /// (which only the last segment may have) is cut off.
    fn replay_segment(&mut self, first: u64, last_segment: bool) -> Result<u64, NvlogError> {
        let path = self.segment_path(first);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(&path, "cannot read"))?;
        let mut at = 0usize;
        while at < bytes.len() {
            match parse_record(&bytes[at..]) {
                Ok((seq, len)) if seq > self.last_seq || seq <= self.truncated_through => {
                    if seq > self.truncated_through {
                        self.records.push_back(RecordPlace {
                            seq,
                            segment: first,
                            offset: at as u64,
                            len,
                        });
                        self.used += (HEADER_LEN + len as usize) as u64;
                    }
                    self.last_seq = self.last_seq.max(seq);
                    at += HEADER_LEN + len as usize;
                }
                Ok(_) => {
                    return Err(NvlogError::Corrupt {
                        path,
                        offset: at as u64,
                        reason: "sequence number out of order",
                    })
                }
                Err(reason) if last_segment => {
                    tracing::warn!(path = %path.display(), offset = at, reason,
                        "cutting a torn record off the end of the NVLOG");
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path, "cannot open to cut a torn record"))?;
                    file.set_len(at as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err(&path, "cannot cut a torn record"))?;
                    return Ok(at as u64);
                }
                Err(reason) => {
                    return Err(NvlogError::Corrupt {
                        path,
                        offset: at as u64,
                        reason,
                    })
                }
            }
        }
        Ok(bytes.len() as u64)
    }

    /// Appends `batch` (sequence number, payload), in order, and makes all
    /// of it durable with one write and one fdatasync. Nothing is appended
    /// if a sequence number is not above the one before it.
    pub fn append_batch(&mut self, batch: &[(u64, &[u8])]) -> Result<(), NvlogError> {
        let mut last = self.last_seq;
        for &(seq, _) in batch {
            if seq <= last {
                return Err(NvlogError::StaleSequence { seq, last });
            }
            last = seq;
        }
        let Some(&(first_seq, _)) = batch.first() else {
            return Ok(());
        };
        let needs_segment = match self.segments.back() {
            None => true,
            Some(&(_, len)) => len >= SEGMENT_BYTES,
        };
        if needs_segment {
            self.start_segment(first_seq)?;
        }
        let Some((segment, seg_len)) = self.segments.back().copied() else {
            unreachable!("a segment was just started");
        };
        let mut bytes = Vec::new();
        let mut places = Vec::with_capacity(batch.len());
        for &(seq, payload) in batch {
            places.push(RecordPlace {
                seq,
                segment,
                offset: seg_len + bytes.len() as u64,
                len: payload.len() as u32,
            });
            encode_record(seq, payload, &mut bytes);
        }
        let path = self.segment_path(segment);
        let file = self.current.as_mut().ok_or_else(|| NvlogError::Io {
            path: path.clone(),
            what: "no open segment",
            source: io::Error::other("segment not open"),
        })?;
        if let Err(source) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            // The file may now end in part of this batch: cut it back so
            // that later appends do not follow garbage.
            let _ = file.set_len(seg_len);
            return Err(NvlogError::Io {
                path,
                what: "cannot append",
                source,
            });
        }
        if let Some(back) = self.segments.back_mut() {
            back.1 += bytes.len() as u64;
        }
        self.used += bytes.len() as u64;
        self.last_seq = last;
        self.records.extend(places);
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), NvlogError> {
        let path = self.segment_path(first_seq);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path, "cannot create segment"))?;
        sync_dir(&self.dir)?;
        self.current = Some(file);
        self.segments.push_back((first_seq, 0));
        Ok(())
    }

    /// Drops every record up to `through_seq` (durably), deleting segments
    /// that hold nothing else. Returns the bytes freed.
    pub fn truncate(&mut self, through_seq: u64) -> Result<u64, NvlogError> {
        let through_seq = through_seq.min(self.last_seq);
        if through_seq <= self.truncated_through {
            return Ok(0);
        }
        write_truncated(&self.dir, through_seq)?;
        self.truncated_through = through_seq;
        let mut freed = 0;
        while self.records.front().is_some_and(|r| r.seq <= through_seq) {
            if let Some(r) = self.records.pop_front() {
                freed += (HEADER_LEN + r.len as usize) as u64;
            }
        }
        self.used -= freed;
        // A segment is dead once the next one starts at or below the
        // truncation point + 1; the newest one stays open for appends.
        while self.segments.len() > 1 && self.segments[1].0 <= through_seq + 1 {
            if let Some((first, _)) = self.segments.pop_front() {
                let path = self.segment_path(first);
                fs::remove_file(&path).map_err(io_err(&path, "cannot delete segment"))?;
            }
        }
        Ok(freed)
    }

    /// The records with sequence numbers from `from_seq` on, read back from
    /// disk and checked, passed to `each` in order.
    pub fn replay(
        &self,
        from_seq: u64,
        mut each: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> Result<(), NvlogError> {
        let mut open: Option<(u64, File)> = None;
        for place in self.records.iter().filter(|r| r.seq >= from_seq) {
            if open.as_ref().is_none_or(|(s, _)| *s != place.segment) {
                open = Some((place.segment, self.open_segment(place.segment)?));
            }
            let Some((_, file)) = open.as_ref() else {
                continue;
            };
            if !each(place.seq, self.read_place(file, place)?) {
                break;
            }
        }
        Ok(())
    }

    /// The payload of record `seq`, read back from disk and checked;
    /// `None` when the log does not hold it (truncated or not appended).
    pub fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, NvlogError> {
        let Ok(at) = self.records.binary_search_by_key(&seq, |r| r.seq) else {
            return Ok(None);
        };
        let place = &self.records[at];
        let file = self.open_segment(place.segment)?;
        self.read_place(&file, place).map(Some)
    }

    fn open_segment(&self, first: u64) -> Result<File, NvlogError> {
        let path = self.segment_path(first);
        File::open(&path).map_err(io_err(&path, "cannot open for reading"))
    }

    /// Reads the record at `place` from its segment `file` and returns its
    /// payload once the header and checksum are right.
    fn read_place(&self, file: &File, place: &RecordPlace) -> Result<Vec<u8>, NvlogError> {
        let path = self.segment_path(place.segment);
        let mut bytes = vec![0u8; HEADER_LEN + place.len as usize];
        file.read_exact_at(&mut bytes, place.offset)
            .map_err(io_err(&path, "cannot read a record"))?;
        let corrupt = |reason| NvlogError::Corrupt {
            path: path.clone(),
            offset: place.offset,
            reason,
        };
        match parse_record(&bytes) {
            Ok((seq, _)) if seq == place.seq => {}
            Ok(_) => return Err(corrupt("sequence number changed on disk")),
            Err(reason) => return Err(corrupt(reason)),
        }
        bytes.drain(..HEADER_LEN);
        Ok(bytes)
    }

    /// The last sequence number appended (or truncated), 0 for a new log.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Records up to here are truncated.
    pub fn truncated_through(&self) -> u64 {
        self.truncated_through
    }

    /// Bytes of the records held, headers included.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.log"))
    }
}

/// The bytes a record of `payload_len` takes.
pub fn record_bytes(payload_len: usize) -> u64 {
    (HEADER_LEN + payload_len) as u64
}

/// Appends the record of `payload` with number `seq` to `out`.
pub fn encode_record(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let sum = checksum(&header[..24], payload);
    header[24..].copy_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Parses the record at the start of `bytes`: its sequence number and
/// payload length, or which check failed. Never panics, whatever the bytes.
pub fn parse_record(bytes: &[u8]) -> Result<(u64, u32), &'static str> {
    let header = bytes.get(..HEADER_LEN).ok_or("truncated header")?;
    if header[..4] != MAGIC {
        return Err("bad magic");
    }
    if header[4] != VERSION || header[5..8] != [0; 3] || header[20..24] != [0; 4] {
        return Err("bad version or reserved bytes");
    }
    let le64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    };
    let seq = le64(&header[8..16]);
    let len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    let payload = bytes
        .get(HEADER_LEN..HEADER_LEN + len as usize)
        .ok_or("truncated payload")?;
    if checksum(&header[..24], payload) != le64(&header[24..32]) {
        return Err("checksum mismatch");
    }
    Ok((seq, len))
}

fn checksum(head: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(head);
    h.update(payload);
    h.digest()
}

fn read_truncated(dir: &Path) -> Result<u64, NvlogError> {
    let path = dir.join("truncated");
    match fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            text.trim().parse().map_err(|_| NvlogError::Corrupt {
                path,
                offset: 0,
                reason: "truncation point is not a number",
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(&path, "cannot read")(e)),
    }
}

fn write_truncated(dir: &Path, seq: u64) -> Result<(), NvlogError> {
    let tmp = dir.join("truncated.tmp");
    let path = dir.join("truncated");
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "cannot create"))?;
    f.write_all(format!("{seq}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp, "cannot write"))?;
    fs::rename(&tmp, &path).map_err(io_err(&path, "cannot replace"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), NvlogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "cannot sync directory"))
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> NvlogError + 'a {
    move |source| NvlogError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(log: &Nvlog, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        log.replay(from, |seq, p| {
            out.push((seq, p));
            true
        })
        .expect("replay");
        out
    }

    fn payload(seq: u64) -> Vec<u8> {
        (0..(seq as usize * 37) % 5000)
            .map(|i| (i as u64 ^ seq) as u8)
            .collect()
    }

    #[test]
    fn append_reopen_replay_truncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Nvlog::open(dir.path()).expect("open");
        for chunk in (1..=100u64).collect::<Vec<_>>().chunks(7) {
            let payloads: Vec<Vec<u8>> = chunk.iter().map(|&s| payload(s)).collect();
            let batch: Vec<(u64, &[u8])> = chunk
                .iter()
                .zip(&payloads)
                .map(|(&s, p)| (s, p.as_slice()))
                .collect();
            log.append_batch(&batch).expect("append");
        }
        assert!(matches!(
            log.append_batch(&[(100, b"again")]),
            Err(NvlogError::StaleSequence {
                seq: 100,
                last: 100
            })
        ));
        drop(log);
        let mut log = Nvlog::open(dir.path()).expect("reopen");
        assert_eq!(log.last_seq(), 100);
        let all = collect(&log, 0);
        assert_eq!(all.len(), 100);
        for (seq, p) in &all {
            assert_eq!(*p, payload(*seq));
        }
        let used = log.used();
        let freed = log.truncate(60).expect("truncate");
        assert_eq!(log.used(), used - freed);
        drop(log);
        let log = Nvlog::open(dir.path()).expect("reopen after truncate");
        assert_eq!(log.truncated_through(), 60);
        let rest = collect(&log, 0);
        assert_eq!(rest.first().map(|r| r.0), Some(61));
        assert_eq!(rest.len(), 40);
        assert_eq!(collect(&log, 90).len(), 11);
        // One record at a time: held ones read back, others are absent.
        for seq in [61, 77, 100] {
            assert_eq!(log.read(seq).expect("read"), Some(payload(seq)));
        }
        for seq in [0, 1, 60, 101, u64::MAX] {
            assert_eq!(log.read(seq).expect("read"), None, "record {seq}");
        }
    }

    #[test]
    fn a_damaged_record_reads_as_an_error_not_as_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Nvlog::open(dir.path()).expect("open");
        log.append_batch(&[(1, b"first record"), (2, b"second record")])
            .expect("append");
        let seg = dir.path().join(format!("{:020}.log", 1));
        let mut bytes = fs::read(&seg).expect("read");
        let second = bytes.len() - 3;
        bytes[second] ^= 0x01;
        fs::write(&seg, &bytes).expect("write");
        assert_eq!(log.read(1).expect("first"), Some(b"first record".to_vec()));
        assert!(matches!(log.read(2), Err(NvlogError::Corrupt { .. })));
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Nvlog::open(dir.path()).expect("open");
        log.append_batch(&[(1, b"one"), (2, b"two")])
            .expect("append");
        drop(log);
        let seg = dir.path().join(format!("{:020}.log", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).expect("seg");
        let mut torn = Vec::new();
        encode_record(3, b"three, never acknowledged", &mut torn);
        f.write_all(&torn[..torn.len() - 5]).expect("write torn");
        drop(f);
        let mut log = Nvlog::open(dir.path()).expect("reopen");
        assert_eq!(log.last_seq(), 2);
        log.append_batch(&[(3, b"three")])
            .expect("append after cut");
        drop(log);
        let log = Nvlog::open(dir.path()).expect("reopen again");
        let got: Vec<u64> = collect(&log, 0).into_iter().map(|r| r.0).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn corruption_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Nvlog::open(dir.path()).expect("open");
        log.append_batch(&[(1, b"first record"), (2, b"second record")])
            .expect("append");
        drop(log);
        // A second, later segment makes the first one not the last.
        fs::write(dir.path().join(format!("{:020}.log", 3)), b"").expect("segment");
        let seg = dir.path().join(format!("{:020}.log", 1));
        let mut bytes = fs::read(&seg).expect("read");
        bytes[HEADER_LEN + 2] ^= 0x40;
        fs::write(&seg, &bytes).expect("write");
        let err = Nvlog::open(dir.path()).expect_err("corrupt");
        assert!(
            matches!(err, NvlogError::Corrupt { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn every_single_bit_flip_of_a_record_is_caught() {
        let mut rec = Vec::new();
        encode_record(9, b"payload bytes", &mut rec);
        assert_eq!(parse_record(&rec), Ok((9, 13)));
        for bit in 0..rec.len() * 8 {
            let mut r = rec.clone();
            r[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_record(&r).is_err(), "bit {bit}");
        }
        for cut in 0..rec.len() {
            assert!(parse_record(&rec[..cut]).is_err());
        }
    }

    proptest::proptest! {
        /// Whatever a segment file holds, parsing gives a record or an
        /// error, never a panic, and never claims more bytes than exist.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            if let Ok((_, len)) = parse_record(&bytes) {
                proptest::prop_assert!(HEADER_LEN + len as usize <= bytes.len());
            }
        }

        /// A segment whose newest record is cut anywhere reopens with the
        /// complete records only.
        #[test]
        fn any_torn_tail_reopens_cleanly(cut in 1usize..60) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut log = Nvlog::open(dir.path()).expect("open");
            log.append_batch(&[(1, b"kept"), (2, b"cut short somewhere in here")]).expect("append");
            drop(log);
            let seg = dir.path().join(format!("{:020}.log", 1));
            let len = fs::metadata(&seg).expect("meta").len();
            let file = OpenOptions::new().write(true).open(&seg).expect("open seg");
            file.set_len(len - cut as u64).expect("cut");
            drop(file);
            let log = Nvlog::open(dir.path()).expect("reopen");
            proptest::prop_assert_eq!(log.last_seq(), 1);
            proptest::prop_assert_eq!(collect(&log, 0), vec![(1, b"kept".to_vec())]);
        }
    }
}
