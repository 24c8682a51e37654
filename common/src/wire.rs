//! The host ↔ pool wire protocol, carried inside TLS.
//!
//! Every message is one frame: a little-endian `u32` body length, then the
//! body: a kind byte and the kind's fields (integers little-endian, byte
//! strings as a `u32` length and the bytes). A body longer than
//! [`MAX_BODY_LEN`] is refused before it is read. Requests go host → pool;
//! the pool answers each request with one response (a replay with several
//! [`Response::Record`]s and a [`Response::ReplayDone`]), in request order,
//! so a host may pipeline up to [`MAX_IN_FLIGHT`] requests.
//!
//! | kind | message | fields |
//! |---:|---|---|
//! | 1 | `Append` | seq u64, count u32, vdisk tickets (epoch u64, name bytes), payload bytes |
//! | 2 | `Replay` | from_seq u64, host bytes (empty: this host) |
//! | 3 | `Truncate` | through_seq u64 |
//! | 4 | `Status` | — |
//! | 5 | `Lookup` | count u32, fingerprints (32 bytes each) |
//! | 6 | `PutStripe` | k u8, data_len u32, count u8, chunks (bytes each), count u32, entries (fingerprint, offset u32, len u32) |
//! | 7 | `GetFrames` | count u32, fingerprints |
//! | 8 | `Commit` | through_seq u64, state bytes |
//! | 9 | `LoadCommit` | host bytes (empty: this host) |
//! | 10 | `DriveStatus` | — |
//! | 11 | `SetDrive` | drive u16, failed u8 (admin only) |
//! | 12 | `Rebuild` | — (admin only) |
//! | 13 | `Open` | epoch u64 (0: take a new lease) |
//! | 14 | `ClaimVdisk` | name bytes (UTF-8) |
//! | 15 | `ReadRecord` | seq u64 |
//! | 16 | `Scrub` | — (admin only) |
//! | 17 | `Adopted` | name bytes, epoch u64 |
//! | 18 | `DatastoreKeys` | datastore bytes, offer bytes |
//! | 0x81 | `Appended` | seq u64 |
//! | 0x82 | `Record` | seq u64, payload bytes |
//! | 0x83 | `ReplayDone` | last_seq u64 |
//! | 0x84 | `Truncated` | through_seq u64 |
//! | 0x85 | `Status` | used u64, quota u64, truncated_through u64, last_seq u64 |
//! | 0x86 | `Error` | code u16, message bytes (UTF-8) |
//! | 0x87 | `Have` | count u32, one byte (0 or 1) per fingerprint asked |
//! | 0x88 | `StripeStored` | stripe u64 |
//! | 0x89 | `Frames` | count u32, bytes each (empty: the pool lacks it) |
//! | 0x8a | `Committed` | through_seq u64 |
//! | 0x8b | `Commit` | through_seq u64, state bytes |
//! | 0x8c | `Drives` | max_data_chunks u8, degraded_stripes u64, count u32, state u8 per drive (0 in service, 1 failed, 2 offline, 3 full) |
//! | 0x8d | `Rebuilt` | stripes u64 |
//! | 0x8e | `Opened` | epoch u64 |
//! | 0x8f | `Claimed` | epoch u64, adopt_from bytes (empty: nothing to adopt) |
//! | 0x90 | `Scrubbed` | stripes u64, chunks u64, bad_chunks u64, repaired u64, unreadable u64 |
//! | 0x91 | `Keys` | key file bytes |
//! | 0x92 | `Moved` | count u32, vdisk names (bytes each) |
//!
//! Decoding is total: any byte string gives a message or a [`WireError`],
//! never a panic, and trailing bytes are an error.

use crate::erasure::{MAX_DATA_CHUNKS, PARITY_CHUNKS};
use crate::fingerprint::Fingerprint;

/// Longest frame body accepted: a payload of up to 16 MiB plus fields.
pub const MAX_BODY_LEN: usize = (16 << 20) + 64;
/// Longest payload an append may carry.
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// Most requests a host may have unanswered on one connection; the pool
/// stops reading a connection that has more.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Longest error message sent.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Most fingerprints one `Lookup` or `GetFrames` may name.
pub const MAX_FINGERPRINTS: usize = 4096;
/// Most frames one `GetFrames` may ask for.
pub const MAX_FRAMES: usize = 1024;
/// Longest entry (a frame or a map node) a `Frames` answer may carry.
pub const MAX_ENTRY_LEN: usize = 9 << 10;
/// Longest chunk of a stripe.
pub const MAX_CHUNK_LEN: usize = 4 << 20;
/// Most frame entries one stripe may list.
pub const MAX_STRIPE_ENTRIES: usize = 1 << 16;
/// Most drives a pool may report.
pub const MAX_DRIVES: usize = 4096;
/// Longest committed host state.
pub const MAX_STATE_LEN: usize = 4 << 20;
/// Longest vdisk name a host may claim.
pub const MAX_VDISK_NAME_LEN: usize = 255;
/// Most vdisks one append may name.
pub const MAX_APPEND_VDISKS: usize = 1 << 16;
/// Longest host name a request may name.
pub const MAX_HOST_NAME_LEN: usize = crate::pki::MAX_HOST_NAME_LEN;
/// Longest datastore name a request may name.
pub const MAX_DATASTORE_NAME_LEN: usize = 255;
/// Longest datastore key file the pool keeps.
pub const MAX_KEY_FILE_LEN: usize = 4096;

/// A vdisk an append changes, and the vdisk lease it is changed under: the
/// pool refuses the append once another claim of the vdisk took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiskTicket {
    /// The vdisk's name.
    pub name: String,
    /// The epoch of the vdisk's lease ([`Response::Claimed`]).
    pub epoch: u64,
}

/// One frame a stripe holds: its name and where its bytes are in the
/// stripe's data (the data chunks, concatenated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeEntry {
    /// The frame's fingerprint (or a map node's id).
    pub fingerprint: Fingerprint,
    /// Byte offset in the stripe's data.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// A request from a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Make `payload` durable in the host's NVLOG as record `seq` (greater
    /// than every earlier one), then answer [`Response::Appended`]; or,
    /// when one of `vdisks` is no longer this host's under that epoch,
    /// refuse it whole with [`Response::Moved`].
    Append {
        /// The record's sequence number.
        seq: u64,
        /// Every vdisk the payload changes (creates, resets or updates).
        vdisks: Vec<VdiskTicket>,
        /// Opaque bytes (the host's batch of frames and map updates).
        payload: Vec<u8>,
    },
    /// Send every record of `host`'s log with a sequence number at least
    /// `from_seq` that is not truncated, then [`Response::ReplayDone`].
    /// Another host's log may be read only while adopting a vdisk from it.
    Replay {
        /// First sequence number wanted.
        from_seq: u64,
        /// Whose log; empty for this host's own.
        host: String,
    },
    /// The records up to `through_seq` are safe elsewhere: drop them.
    Truncate {
        /// Last sequence number to drop.
        through_seq: u64,
    },
    /// Report the host's NVLOG use.
    Status,
    /// Which of these frames does the pool hold? Answered by
    /// [`Response::Have`].
    Lookup {
        /// Up to [`MAX_FINGERPRINTS`].
        fingerprints: Vec<Fingerprint>,
    },
    /// Store a stripe the host erasure-coded, and index its frames.
    PutStripe {
        /// Data chunks (parity is 2 more).
        k: u8,
        /// Bytes of frames in the data chunks (the rest is padding).
        data_len: u32,
        /// k data chunks, then 2 parity chunks, all the same length.
        chunks: Vec<Vec<u8>>,
        /// The frames in the data.
        entries: Vec<StripeEntry>,
    },
    /// Send these frames' bytes. Answered by [`Response::Frames`].
    GetFrames {
        /// Up to [`MAX_FRAMES`].
        fingerprints: Vec<Fingerprint>,
    },
    /// Record the host's state (its vdisks' map roots), which covers its
    /// NVLOG through `through_seq`; every frame the state references is in
    /// the pool.
    Commit {
        /// The last NVLOG record the state covers.
        through_seq: u64,
        /// The encoded state (opaque to the pool).
        state: Vec<u8>,
    },
    /// Send `host`'s last committed state (empty: this host's). Another
    /// host's may be read only while adopting a vdisk from it.
    LoadCommit {
        /// Whose state; empty for this host's own.
        host: String,
    },
    /// Report the pool's drives. Answered by [`Response::Drives`].
    DriveStatus,
    /// Mark a drive failed (its chunks are no longer read; a rebuild moves
    /// them) or back in service (a replaced drive). Administrators only.
    SetDrive {
        /// The drive's number.
        drive: u16,
        /// Failed, or in service.
        failed: bool,
    },
    /// Restore full redundancy: rewrite every stripe with a chunk on a
    /// failed drive, or missing, onto the drives in service.
    /// Administrators only.
    Rebuild,
    /// Binds this connection to the host's lease, which every request that
    /// changes the host's state (appends, truncations, stripes, commits,
    /// claims) needs. Answered by [`Response::Opened`].
    Open {
        /// 0 takes a new lease, fencing every connection of an earlier
        /// one (a restarted or replacement strata-host does this before it
        /// replays the log); any other value continues that lease, refused
        /// with [`code::FENCED`] once a newer one was taken.
        epoch: u64,
    },
    /// Records this host as the one serving vdisk `name`. If another host
    /// held it, that host is fenced for it (its later appends naming it
    /// are refused) and the answer names the host to adopt the vdisk's
    /// state from. Answered by [`Response::Claimed`].
    ClaimVdisk {
        /// The vdisk's name, at most [`MAX_VDISK_NAME_LEN`] bytes of UTF-8.
        name: String,
    },
    /// Send NVLOG record `seq` as a [`Response::Record`]; refused with
    /// [`code::NOT_FOUND`] when the log does not hold it (truncated, or
    /// never appended). A host repairs a damaged frame on its flash that
    /// is not yet in the stripes from the record that logged it.
    ReadRecord {
        /// The record's sequence number.
        seq: u64,
    },
    /// Read every chunk of every stripe in full and check it; rewrite the
    /// stripes with a damaged or missing chunk on a drive in service.
    /// Answered by [`Response::Scrubbed`]. Administrators only.
    Scrub,
    /// This host's own log now holds vdisk `name`'s adopted state: it no
    /// longer needs the previous holder's. Answered by
    /// [`Response::Claimed`].
    Adopted {
        /// The vdisk.
        name: String,
        /// The vdisk lease it was adopted under.
        epoch: u64,
    },
    /// The keys of datastore `datastore`, wrapped by the cluster's master
    /// key: the pool keeps the first `offer` it gets and answers every
    /// host with that one ([`Response::Keys`]), so all hosts share them.
    DatastoreKeys {
        /// The datastore's name.
        datastore: String,
        /// A key file ([`crate::keys`]) this host would use.
        offer: Vec<u8>,
    },
}

/// Error codes of [`Response::Error`].
pub mod code {
    /// The request could not be decoded.
    pub const BAD_REQUEST: u16 = 1;
    /// An append's sequence number is not above the last one.
    pub const STALE_SEQUENCE: u16 = 2;
    /// An append is larger than the host's whole quota.
    pub const TOO_LARGE: u16 = 3;
    /// The pool could not store or read the log.
    pub const STORAGE: u16 = 4;
    /// The pool's drives cannot hold or return the data (too many failed).
    pub const UNAVAILABLE: u16 = 5;
    /// The connection's lease is not the host's current one (a newer
    /// strata-host took over), or it never opened one.
    pub const FENCED: u16 = 6;
    /// The NVLOG does not hold the record asked for.
    pub const NOT_FOUND: u16 = 8;
    /// A vdisk changed hands while it was being claimed (the pool looks
    /// again; a host never sees it). Code 7 meant "held by another host"
    /// before a claim could take a vdisk over; it is no longer sent.
    pub const CHANGED: u16 = 9;
    /// The vdisk's lease is no longer the one the request was made under:
    /// another host claimed it.
    pub const MOVED: u16 = 10;
}

/// A response from the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Record `seq` is durable.
    Appended {
        /// Its sequence number.
        seq: u64,
    },
    /// One record of a replay.
    Record {
        /// Its sequence number.
        seq: u64,
        /// Its bytes, as appended.
        payload: Vec<u8>,
    },
    /// The end of a replay.
    ReplayDone {
        /// The last sequence number the log holds (0 if none ever).
        last_seq: u64,
    },
    /// Records up to `through_seq` are dropped.
    Truncated {
        /// As asked.
        through_seq: u64,
    },
    /// The host's NVLOG use.
    Status {
        /// Bytes of records held.
        used: u64,
        /// The host's quota in bytes.
        quota: u64,
        /// Records up to here are truncated.
        truncated_through: u64,
        /// The last sequence number appended (0 if none ever).
        last_seq: u64,
    },
    /// Whether the pool holds each fingerprint of a [`Request::Lookup`].
    Have {
        /// In the order asked.
        have: Vec<bool>,
    },
    /// A stripe is durable on the drives and its frames are indexed.
    StripeStored {
        /// Its id.
        stripe: u64,
    },
    /// Frames of a [`Request::GetFrames`], in the order asked; an empty one
    /// is a frame the pool lacks.
    Frames {
        /// Their bytes.
        frames: Vec<Vec<u8>>,
    },
    /// A [`Request::Commit`] is durable.
    Committed {
        /// As asked.
        through_seq: u64,
    },
    /// The host's last committed state (`through_seq` 0 and empty if none).
    Commit {
        /// The last NVLOG record it covers.
        through_seq: u64,
        /// The state as committed.
        state: Vec<u8>,
    },
    /// The pool's drives.
    Drives {
        /// Most data chunks a new stripe may have (drives in service − 2).
        max_data_chunks: u8,
        /// Stripes with a chunk on a failed or offline drive (a
        /// rebuild's work).
        degraded_stripes: u64,
        /// Per drive, its state.
        drives: Vec<DriveState>,
    },
    /// A rebuild finished.
    Rebuilt {
        /// Stripes rewritten.
        stripes: u64,
    },
    /// The connection holds lease `epoch`.
    Opened {
        /// The lease's fencing epoch.
        epoch: u64,
    },
    /// A [`Request::ClaimVdisk`] (or [`Request::Adopted`]) is durable.
    Claimed {
        /// The epoch of the host's lease of the vdisk, which its appends
        /// name.
        epoch: u64,
        /// The host whose commit and log hold the vdisk's state, which
        /// this host must adopt before serving it; empty when this host's
        /// own state has it.
        adopt_from: String,
    },
    /// A scrub finished.
    Scrubbed {
        /// Stripes looked at.
        stripes: u64,
        /// Chunks read and checked (those on failed drives are not).
        chunks: u64,
        /// Chunks found missing or damaged.
        bad_chunks: u64,
        /// Stripes rewritten because of them.
        repaired: u64,
        /// Stripes with too few good chunks to restore.
        unreadable: u64,
    },
    /// The datastore's key file, as the pool keeps it.
    Keys {
        /// The key file.
        key_file: Vec<u8>,
    },
    /// An append was refused: these vdisks it names are no longer this
    /// host's (another host claimed them).
    Moved {
        /// The vdisks.
        vdisks: Vec<String>,
    },
    /// The request failed.
    Error {
        /// One of [`code`].
        code: u16,
        /// What went wrong.
        message: String,
    },
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body is empty or ends inside a field.
    #[error("message truncated: needed {needed} more bytes at offset {at}")]
    Truncated {
        /// Where.
        at: usize,
        /// How many more bytes.
        needed: usize,
    },
    /// Unknown kind byte.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// Bytes after the last field.
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    /// A length field above its limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An error message or a name that is not UTF-8.
    #[error("text field is not UTF-8")]
    NotUtf8,
    /// A yes/no byte other than 0 or 1.
    #[error("flag byte {0:#04x} is neither 0 nor 1")]
    BadFlag(u8),
    /// A drive state byte other than 0, 1 or 2.
    #[error("drive state byte {0:#04x} is none of 0, 1, 2, 3")]
    BadDriveState(u8),
}

/// A drive's state, as [`Response::Drives`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveState {
    /// Read and written.
    InService = 0,
    /// Marked failed by the administrator: neither read nor written.
    Failed = 1,
    /// Cannot be opened as the drive the pool used (gone, not mounted, a
    /// damaged or foreign label): neither read nor written until
    /// `strata drive replace` opens it again.
    Offline = 2,
    /// In service, but its last chunk write found no room: read, and left
    /// out of new stripes until a chunk is removed from it or it is
    /// replaced.
    Full = 3,
}

impl Request {
    /// The frame (length prefix and body) of this request.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Request::Append {
                seq,
                vdisks,
                payload,
            } => {
                w.u8(1);
                w.u64(*seq);
                w.u32(vdisks.len() as u32);
                for ticket in vdisks {
                    w.u64(ticket.epoch);
                    w.bytes(ticket.name.as_bytes());
                }
                w.bytes(payload);
            }
            Request::Replay { from_seq, host } => {
                w.u8(2);
                w.u64(*from_seq);
                w.bytes(host.as_bytes());
            }
            Request::Truncate { through_seq } => {
                w.u8(3);
                w.u64(*through_seq);
            }
            Request::Status => w.u8(4),
            Request::Lookup { fingerprints } => {
                w.u8(5);
                w.fingerprints(fingerprints);
            }
            Request::PutStripe {
                k,
                data_len,
                chunks,
                entries,
            } => {
                w.u8(6);
                w.u8(*k);
                w.u32(*data_len);
                w.u8(chunks.len() as u8);
                for chunk in chunks {
                    w.bytes(chunk);
                }
                w.u32(entries.len() as u32);
                for e in entries {
                    w.0.extend_from_slice(e.fingerprint.as_bytes());
                    w.u32(e.offset);
                    w.u32(e.len);
                }
            }
            Request::GetFrames { fingerprints } => {
                w.u8(7);
                w.fingerprints(fingerprints);
            }
            Request::Commit { through_seq, state } => {
                w.u8(8);
                w.u64(*through_seq);
                w.bytes(state);
            }
            Request::LoadCommit { host } => {
                w.u8(9);
                w.bytes(host.as_bytes());
            }
            Request::DriveStatus => w.u8(10),
            Request::SetDrive { drive, failed } => {
                w.u8(11);
                w.u16(*drive);
                w.u8(u8::from(*failed));
            }
            Request::Rebuild => w.u8(12),
            Request::Open { epoch } => {
                w.u8(13);
                w.u64(*epoch);
            }
            Request::ClaimVdisk { name } => {
                w.u8(14);
                w.bytes(name.as_bytes());
            }
            Request::ReadRecord { seq } => {
                w.u8(15);
                w.u64(*seq);
            }
            Request::Scrub => w.u8(16),
            Request::Adopted { name, epoch } => {
                w.u8(17);
                w.bytes(name.as_bytes());
                w.u64(*epoch);
            }
            Request::DatastoreKeys { datastore, offer } => {
                w.u8(18);
                w.bytes(datastore.as_bytes());
                w.bytes(offer);
            }
        }
        w.finish()
    }

    /// Decodes a frame body.
    pub fn decode(body: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader::new(body);
        let request = match r.u8()? {
            1 => {
                let seq = r.u64()?;
                let count = r.count("vdisk list", MAX_APPEND_VDISKS, 12)?;
                let vdisks = (0..count)
                    .map(|_| {
                        let epoch = r.u64()?;
                        let name = r.text("vdisk name", MAX_VDISK_NAME_LEN)?;
                        Ok(VdiskTicket { name, epoch })
                    })
                    .collect::<Result<_, WireError>>()?;
                Request::Append {
                    seq,
                    vdisks,
                    payload: r.bytes("payload", MAX_PAYLOAD_LEN)?.to_vec(),
                }
            }
            2 => Request::Replay {
                from_seq: r.u64()?,
                host: r.text("host name", MAX_HOST_NAME_LEN)?,
            },
            3 => Request::Truncate {
                through_seq: r.u64()?,
            },
            4 => Request::Status,
            5 => Request::Lookup {
                fingerprints: r.fingerprints(MAX_FINGERPRINTS)?,
            },
            6 => {
                let k = r.u8()?;
                let data_len = r.u32()?;
                let count = r.u8()? as usize;
                if count > MAX_DATA_CHUNKS + PARITY_CHUNKS {
                    return Err(WireError::TooLong {
                        what: "chunk list",
                        len: count,
                        limit: MAX_DATA_CHUNKS + PARITY_CHUNKS,
                    });
                }
                let chunks = (0..count)
                    .map(|_| r.bytes("chunk", MAX_CHUNK_LEN).map(<[u8]>::to_vec))
                    .collect::<Result<_, _>>()?;
                let count = r.count("entry list", MAX_STRIPE_ENTRIES, 40)?;
                let entries = (0..count)
                    .map(|_| {
                        Ok(StripeEntry {
                            fingerprint: Fingerprint::from_bytes(r.array()?),
                            offset: r.u32()?,
                            len: r.u32()?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Request::PutStripe {
                    k,
                    data_len,
                    chunks,
                    entries,
                }
            }
            7 => Request::GetFrames {
                fingerprints: r.fingerprints(MAX_FRAMES)?,
            },
            8 => Request::Commit {
                through_seq: r.u64()?,
                state: r.bytes("state", MAX_STATE_LEN)?.to_vec(),
            },
            9 => Request::LoadCommit {
                host: r.text("host name", MAX_HOST_NAME_LEN)?,
            },
            10 => Request::DriveStatus,
            11 => Request::SetDrive {
                drive: r.u16()?,
                failed: r.flag()?,
            },
            12 => Request::Rebuild,
            13 => Request::Open { epoch: r.u64()? },
            14 => Request::ClaimVdisk {
                name: r.text("vdisk name", MAX_VDISK_NAME_LEN)?,
            },
            15 => Request::ReadRecord { seq: r.u64()? },
            16 => Request::Scrub,
            17 => Request::Adopted {
                name: r.text("vdisk name", MAX_VDISK_NAME_LEN)?,
                epoch: r.u64()?,
            },
            18 => Request::DatastoreKeys {
                datastore: r.text("datastore name", MAX_DATASTORE_NAME_LEN)?,
                offer: r.bytes("key file", MAX_KEY_FILE_LEN)?.to_vec(),
            },
            kind => return Err(WireError::UnknownKind(kind)),
        };
        r.end()?;
        Ok(request)
    }
}

impl Response {
    /// The frame (length prefix and body) of this response.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Response::Appended { seq } => {
                w.u8(0x81);
                w.u64(*seq);
            }
            Response::Record { seq, payload } => {
                w.u8(0x82);
                w.u64(*seq);
                w.bytes(payload);
            }
            Response::ReplayDone { last_seq } => {
                w.u8(0x83);
                w.u64(*last_seq);
            }
            Response::Truncated { through_seq } => {
                w.u8(0x84);
                w.u64(*through_seq);
            }
            Response::Status {
                used,
                quota,
                truncated_through,
                last_seq,
            } => {
                w.u8(0x85);
                for v in [used, quota, truncated_through, last_seq] {
                    w.u64(*v);
                }
            }
            Response::Have { have } => {
                w.u8(0x87);
                w.u32(have.len() as u32);
                w.0.extend(have.iter().map(|&h| u8::from(h)));
            }
            Response::StripeStored { stripe } => {
                w.u8(0x88);
                w.u64(*stripe);
            }
            Response::Frames { frames } => {
                w.u8(0x89);
                w.u32(frames.len() as u32);
                for frame in frames {
                    w.bytes(frame);
                }
            }
            Response::Committed { through_seq } => {
                w.u8(0x8a);
                w.u64(*through_seq);
            }
            Response::Commit { through_seq, state } => {
                w.u8(0x8b);
                w.u64(*through_seq);
                w.bytes(state);
            }
            Response::Drives {
                max_data_chunks,
                degraded_stripes,
                drives,
            } => {
                w.u8(0x8c);
                w.u8(*max_data_chunks);
                w.u64(*degraded_stripes);
                w.u32(drives.len() as u32);
                w.0.extend(drives.iter().map(|&d| d as u8));
            }
            Response::Rebuilt { stripes } => {
                w.u8(0x8d);
                w.u64(*stripes);
            }
            Response::Scrubbed {
                stripes,
                chunks,
                bad_chunks,
                repaired,
                unreadable,
            } => {
                w.u8(0x90);
                for n in [stripes, chunks, bad_chunks, repaired, unreadable] {
                    w.u64(*n);
                }
            }
            Response::Opened { epoch } => {
                w.u8(0x8e);
                w.u64(*epoch);
            }
            Response::Claimed { epoch, adopt_from } => {
                w.u8(0x8f);
                w.u64(*epoch);
                w.bytes(adopt_from.as_bytes());
            }
            Response::Keys { key_file } => {
                w.u8(0x91);
                w.bytes(key_file);
            }
            Response::Moved { vdisks } => {
                w.u8(0x92);
                w.u32(vdisks.len() as u32);
                for name in vdisks {
                    w.bytes(name.as_bytes());
                }
            }
            Response::Error { code, message } => {
                w.u8(0x86);
                w.u16(*code);
                let mut end = message.len().min(MAX_MESSAGE_LEN);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                w.bytes(&message.as_bytes()[..end]);
            }
        }
        w.finish()
    }

    /// Decodes a frame body.
    pub fn decode(body: &[u8]) -> Result<Response, WireError> {
        let mut r = Reader::new(body);
        let response = match r.u8()? {
            0x81 => Response::Appended { seq: r.u64()? },
            0x82 => Response::Record {
                seq: r.u64()?,
                payload: r.bytes("payload", MAX_PAYLOAD_LEN)?.to_vec(),
            },
            0x83 => Response::ReplayDone { last_seq: r.u64()? },
            0x84 => Response::Truncated {
                through_seq: r.u64()?,
            },
            0x85 => Response::Status {
                used: r.u64()?,
                quota: r.u64()?,
                truncated_through: r.u64()?,
                last_seq: r.u64()?,
            },
            0x86 => Response::Error {
                code: r.u16()?,
                message: r.text("message", MAX_MESSAGE_LEN)?,
            },
            0x87 => {
                let count = r.count("lookup answer", MAX_FINGERPRINTS, 1)?;
                let have = (0..count).map(|_| r.flag()).collect::<Result<_, _>>()?;
                Response::Have { have }
            }
            0x8c => {
                let max_data_chunks = r.u8()?;
                let degraded_stripes = r.u64()?;
                let count = r.count("drive list", MAX_DRIVES, 1)?;
                let drives = (0..count)
                    .map(|_| match r.u8()? {
                        0 => Ok(DriveState::InService),
                        1 => Ok(DriveState::Failed),
                        2 => Ok(DriveState::Offline),
                        3 => Ok(DriveState::Full),
                        b => Err(WireError::BadDriveState(b)),
                    })
                    .collect::<Result<_, _>>()?;
                Response::Drives {
                    max_data_chunks,
                    degraded_stripes,
                    drives,
                }
            }
            0x8d => Response::Rebuilt { stripes: r.u64()? },
            0x8e => Response::Opened { epoch: r.u64()? },
            0x8f => Response::Claimed {
                epoch: r.u64()?,
                adopt_from: r.text("host name", MAX_HOST_NAME_LEN)?,
            },
            0x91 => Response::Keys {
                key_file: r.bytes("key file", MAX_KEY_FILE_LEN)?.to_vec(),
            },
            0x92 => {
                let count = r.count("vdisk list", MAX_APPEND_VDISKS, 4)?;
                let vdisks = (0..count)
                    .map(|_| r.text("vdisk name", MAX_VDISK_NAME_LEN))
                    .collect::<Result<_, _>>()?;
                Response::Moved { vdisks }
            }
            0x90 => Response::Scrubbed {
                stripes: r.u64()?,
                chunks: r.u64()?,
                bad_chunks: r.u64()?,
                repaired: r.u64()?,
                unreadable: r.u64()?,
            },
            0x88 => Response::StripeStored { stripe: r.u64()? },
            0x89 => {
                let count = r.count("frame list", MAX_FRAMES, 4)?;
                let frames = (0..count)
                    .map(|_| r.bytes("frame", MAX_ENTRY_LEN).map(<[u8]>::to_vec))
                    .collect::<Result<_, _>>()?;
                Response::Frames { frames }
            }
            0x8a => Response::Committed {
                through_seq: r.u64()?,
            },
            0x8b => Response::Commit {
                through_seq: r.u64()?,
                state: r.bytes("state", MAX_STATE_LEN)?.to_vec(),
            },
            kind => return Err(WireError::UnknownKind(kind)),
        };
        r.end()?;
        Ok(response)
    }
}

/// Checks a frame's length prefix: the body length, if acceptable.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_BODY_LEN {
        return Err(WireError::TooLong {
            what: "message",
            len,
            limit: MAX_BODY_LEN,
        });
    }
    Ok(len)
}

struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Writer {
        Writer(vec![0; 4])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn fingerprints(&mut self, fps: &[Fingerprint]) {
        self.u32(fps.len() as u32);
        for fp in fps {
            self.0.extend_from_slice(fp.as_bytes());
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    fn finish(mut self) -> Vec<u8> {
        let body = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&body.to_le_bytes());
        self.0
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let rest = &self.bytes[self.at..];
        if rest.len() < n {
            return Err(WireError::Truncated {
                at: self.at,
                needed: n - rest.len(),
            });
        }
        self.at += n;
        Ok(&rest[..n])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError::BadFlag(b)),
        }
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A list's count, checked against its limit and against the bytes
    /// left (each item takes at least `min_item` bytes), so a hostile count
    /// never makes the decoder reserve memory.
    fn count(
        &mut self,
        what: &'static str,
        limit: usize,
        min_item: usize,
    ) -> Result<usize, WireError> {
        let len = self.u32()? as usize;
        if len > limit {
            return Err(WireError::TooLong { what, len, limit });
        }
        let left = self.bytes.len() - self.at;
        if len * min_item > left {
            return Err(WireError::Truncated {
                at: self.at,
                needed: len * min_item - left,
            });
        }
        Ok(len)
    }
    fn fingerprints(&mut self, limit: usize) -> Result<Vec<Fingerprint>, WireError> {
        let count = self.count("fingerprint list", limit, 32)?;
        (0..count)
            .map(|_| Ok(Fingerprint::from_bytes(self.array()?)))
            .collect()
    }
    fn bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], WireError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > limit {
            return Err(WireError::TooLong { what, len, limit });
        }
        self.take(len)
    }
    fn text(&mut self, what: &'static str, limit: usize) -> Result<String, WireError> {
        let bytes = self.bytes(what, limit)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8)
    }
    fn end(&self) -> Result<(), WireError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(frame: &[u8]) -> &[u8] {
        let len = body_len(frame[..4].try_into().expect("prefix")).expect("length");
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Append {
                seq: 7,
                vdisks: vec![
                    VdiskTicket {
                        name: "db".to_string(),
                        epoch: 2,
                    },
                    VdiskTicket {
                        name: "logs".to_string(),
                        epoch: u64::MAX,
                    },
                ],
                payload: b"frames and map updates".to_vec(),
            },
            Request::Append {
                seq: u64::MAX,
                vdisks: Vec::new(),
                payload: Vec::new(),
            },
            Request::Replay {
                from_seq: 3,
                host: String::new(),
            },
            Request::Replay {
                from_seq: 1,
                host: "host2".to_string(),
            },
            Request::Truncate { through_seq: 9 },
            Request::Status,
            Request::Lookup {
                fingerprints: vec![Fingerprint::from_bytes([7; 32]), Fingerprint::ZERO],
            },
            Request::Lookup {
                fingerprints: Vec::new(),
            },
            Request::PutStripe {
                k: 2,
                data_len: 100,
                chunks: vec![vec![1; 64], vec![2; 64], vec![3; 64], vec![4; 64]],
                entries: vec![StripeEntry {
                    fingerprint: Fingerprint::from_bytes([9; 32]),
                    offset: 0,
                    len: 100,
                }],
            },
            Request::GetFrames {
                fingerprints: vec![Fingerprint::from_bytes([1; 32])],
            },
            Request::Commit {
                through_seq: 12,
                state: b"roots".to_vec(),
            },
            Request::LoadCommit {
                host: String::new(),
            },
            Request::LoadCommit {
                host: "host1".to_string(),
            },
            Request::DriveStatus,
            Request::SetDrive {
                drive: 3,
                failed: true,
            },
            Request::Rebuild,
            Request::Open { epoch: 0 },
            Request::Open { epoch: u64::MAX },
            Request::ClaimVdisk {
                name: "db-é".to_string(),
            },
            Request::ReadRecord { seq: 41 },
            Request::Scrub,
            Request::Adopted {
                name: "db".to_string(),
                epoch: 4,
            },
            Request::DatastoreKeys {
                datastore: "default".to_string(),
                offer: vec![3; 160],
            },
        ]
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::Appended { seq: 1 },
            Response::Record {
                seq: 2,
                payload: vec![0xAB; 1000],
            },
            Response::ReplayDone { last_seq: 5 },
            Response::Truncated { through_seq: 4 },
            Response::Status {
                used: 1,
                quota: 2,
                truncated_through: 3,
                last_seq: 4,
            },
            Response::Error {
                code: code::STALE_SEQUENCE,
                message: "seq 3 is not above 5".to_string(),
            },
            Response::Have {
                have: vec![true, false, true],
            },
            Response::StripeStored { stripe: 77 },
            Response::Frames {
                frames: vec![vec![5; 300], Vec::new()],
            },
            Response::Committed { through_seq: 8 },
            Response::Commit {
                through_seq: 0,
                state: Vec::new(),
            },
            Response::Drives {
                max_data_chunks: 2,
                degraded_stripes: 9,
                drives: vec![
                    DriveState::InService,
                    DriveState::Failed,
                    DriveState::InService,
                    DriveState::Offline,
                    DriveState::Failed,
                    DriveState::Full,
                ],
            },
            Response::Rebuilt { stripes: 12 },
            Response::Opened { epoch: 3 },
            Response::Claimed {
                epoch: 1,
                adopt_from: String::new(),
            },
            Response::Claimed {
                epoch: 9,
                adopt_from: "host1".to_string(),
            },
            Response::Keys {
                key_file: vec![1; 160],
            },
            Response::Moved {
                vdisks: vec!["db".to_string(), "é".to_string()],
            },
            Response::Moved { vdisks: Vec::new() },
            Response::Scrubbed {
                stripes: 10,
                chunks: 58,
                bad_chunks: 3,
                repaired: 2,
                unreadable: 1,
            },
        ]
    }

    #[test]
    fn round_trips() {
        for r in requests() {
            assert_eq!(Request::decode(body(&r.encode())), Ok(r));
        }
        for r in responses() {
            assert_eq!(Response::decode(body(&r.encode())), Ok(r));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for r in requests() {
            let frame = r.encode();
            let b = body(&frame);
            for cut in 0..b.len() {
                assert!(matches!(
                    Request::decode(&b[..cut]),
                    Err(WireError::Truncated { .. })
                ));
            }
            let mut longer = b.to_vec();
            longer.push(0);
            assert_eq!(Request::decode(&longer), Err(WireError::Trailing(1)));
        }
        for r in responses() {
            let frame = r.encode();
            let b = body(&frame);
            for cut in 0..b.len() {
                assert!(Response::decode(&b[..cut]).is_err());
            }
        }
    }

    #[test]
    fn hostile_fields() {
        assert_eq!(Request::decode(&[0x81]), Err(WireError::UnknownKind(0x81)));
        assert_eq!(Response::decode(&[1]), Err(WireError::UnknownKind(1)));
        // An append claiming a 4 GiB payload is refused on the length alone.
        let mut b = vec![1];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Request::decode(&b),
            Err(WireError::TooLong {
                what: "payload",
                ..
            })
        ));
        // ... and one naming more vdisks than any append does, or more
        // than its bytes could hold.
        for (count, limit) in [
            (u32::MAX, true),
            (MAX_APPEND_VDISKS as u32 + 1, true),
            (3, false),
        ] {
            let mut b = vec![1];
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            b.extend_from_slice(&[0; 16]);
            match Request::decode(&b) {
                Err(WireError::TooLong {
                    what: "vdisk list", ..
                }) => assert!(limit),
                Err(WireError::Truncated { .. }) => assert!(!limit),
                other => panic!("{count}: {other:?}"),
            }
        }
        assert!(body_len(u32::MAX.to_le_bytes()).is_err());
        assert!(body_len((MAX_BODY_LEN as u32).to_le_bytes()).is_ok());
        // A fingerprint list claiming more items than bytes left.
        let mut l = vec![5];
        l.extend_from_slice(&1000u32.to_le_bytes());
        l.extend_from_slice(&[0; 64]);
        assert!(matches!(
            Request::decode(&l),
            Err(WireError::Truncated { .. })
        ));
        let mut l = vec![7];
        l.extend_from_slice(&(MAX_FRAMES as u32 + 1).to_le_bytes());
        assert!(matches!(
            Request::decode(&l),
            Err(WireError::TooLong { .. })
        ));
        // A stripe with more chunks than any stripe has.
        let mut p = vec![6, 4];
        p.extend_from_slice(&0u32.to_le_bytes());
        p.push(200);
        assert!(matches!(
            Request::decode(&p),
            Err(WireError::TooLong { .. })
        ));
        // A lookup answer with a byte other than 0 or 1.
        let mut h = vec![0x87];
        h.extend_from_slice(&1u32.to_le_bytes());
        h.push(2);
        assert_eq!(Response::decode(&h), Err(WireError::BadFlag(2)));
        // A drive state that is none of the three.
        let mut d = vec![0x8c, 4];
        d.extend_from_slice(&0u64.to_le_bytes());
        d.extend_from_slice(&1u32.to_le_bytes());
        d.push(4);
        assert_eq!(Response::decode(&d), Err(WireError::BadDriveState(4)));
        let mut e = vec![0x86, 1, 0];
        e.extend_from_slice(&2u32.to_le_bytes());
        e.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(Response::decode(&e), Err(WireError::NotUtf8));
        // A vdisk name that is not UTF-8, or longer than any name.
        let mut c = vec![14];
        c.extend_from_slice(&1u32.to_le_bytes());
        c.push(0xc3);
        assert_eq!(Request::decode(&c), Err(WireError::NotUtf8));
        let mut c = vec![14];
        c.extend_from_slice(&(MAX_VDISK_NAME_LEN as u32 + 1).to_le_bytes());
        c.extend(std::iter::repeat_n(b'a', MAX_VDISK_NAME_LEN + 1));
        assert!(matches!(
            Request::decode(&c),
            Err(WireError::TooLong {
                what: "vdisk name",
                ..
            })
        ));
    }

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        let r = Response::Error {
            code: code::STORAGE,
            message: "é".repeat(MAX_MESSAGE_LEN),
        };
        match Response::decode(body(&r.encode())) {
            Ok(Response::Error { message, .. }) => {
                assert!(message.len() <= MAX_MESSAGE_LEN && !message.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(i in 0usize..64, x in any::<u8>()) {
            for r in requests() {
                let mut b = body(&r.encode()).to_vec();
                let at = i % b.len();
                b[at] ^= x;
                let _ = Request::decode(&b);
            }
            for r in responses() {
                let mut b = body(&r.encode()).to_vec();
                let at = i % b.len();
                b[at] ^= x;
                let _ = Response::decode(&b);
            }
        }
    }
}
