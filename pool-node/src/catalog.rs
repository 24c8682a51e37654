//! The pool's metadata in redb (crash-safe, one file `catalog.redb` under
//! the data directory): the stripe table, the global fingerprint index and
//! the hosts' committed states and leases, and which host holds each
//! vdisk.
//!
//! | table | key | value |
//! |---|---|---|
//! | `stripes` | stripe id u64 | k u8, generation u16, chunk_len u32, data_len u32, then per chunk: drive u16, place u64 |
//! | `frames` | fingerprint (32 bytes) | stripe u64, offset u32, len u32 |
//! | `commits` | host name | through_seq u64, state bytes |
//! | `drives` | drive number u16 | 1 if failed |
//! | `drive_kinds` | drive number u16 | 1 directory, 2 device (recorded when the pool first opens it) |
//! | `meta` | `"pool_id"` | the pool's random 16-byte id, which drive labels carry |
//! | `leases` | host name | fencing epoch u64 of the host's current lease |
//! | `vdisk_holders` | vdisk name | epoch u64 of the vdisk's lease, holder name length u8 and name, then the name length u8 and name of the host to adopt its state from (0: none) |
//! | `datastore_keys` | datastore name | the datastore's key file (wrapped by the master key, which the pool never sees) |
//!
//! (`vdisks`, vdisk name to holder, is the layout before vdisk leases had
//! epochs: opening the catalog moves its entries to `vdisk_holders`, each
//! at epoch 1.)
//!
//! A chunk's place is its byte offset on a device drive (0 on a directory
//! drive). Records written before device drives existed list drives only
//! (2 bytes per chunk) and read as places 0.
//!
//! A commit or a vdisk claim checks the host's lease epoch in its own
//! transaction, so a host fenced by a newer lease can never overwrite the
//! state its successor loaded (redb serialises write transactions). A
//! claim of a vdisk another host holds takes it over: a new vdisk epoch,
//! and the previous holder named as the host to adopt its state from.
//!
//! A stripe and its index entries go in one transaction, after its chunks
//! are durable on the drives; an entry already indexed keeps its first
//! stripe (that is the pool-wide dedupe).

use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableTable, TableDefinition};
use strata_common::erasure::{self, MAX_DATA_CHUNKS};
use strata_common::fingerprint::Fingerprint;
use strata_common::wire::StripeEntry;

use crate::drives::DriveKind;

const STRIPES: TableDefinition<u64, &[u8]> = TableDefinition::new("stripes");
const FRAMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("frames");
const COMMITS: TableDefinition<&str, &[u8]> = TableDefinition::new("commits");
const DRIVES: TableDefinition<u16, u8> = TableDefinition::new("drives");
const LEASES: TableDefinition<&str, u64> = TableDefinition::new("leases");
const OLD_VDISKS: TableDefinition<&str, &str> = TableDefinition::new("vdisks");
const HOLDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("vdisk_holders");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("datastore_keys");
const DRIVE_KINDS: TableDefinition<u16, u8> = TableDefinition::new("drive_kinds");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const POOL_ID: &str = "pool_id";

/// Why a change to the namespace was refused.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The host's lease was taken over by a newer one.
    #[error("lease epoch {held} of host {host} is fenced: epoch {current} took over")]
    Fenced {
        /// The host.
        host: String,
        /// The epoch the request came with.
        held: u64,
        /// The host's current epoch.
        current: u64,
    },
    /// The vdisk's lease is not the one the request was made under:
    /// another claim took it over.
    #[error("vdisk {vdisk:?} moved: host {holder} holds it at epoch {epoch}")]
    Moved {
        /// The vdisk.
        vdisk: String,
        /// Its holder now.
        holder: String,
        /// The epoch of its lease now.
        epoch: u64,
    },
    /// The vdisk's holder is not the one the claim expected (it changed
    /// since the caller looked): look again.
    #[error("vdisk {vdisk:?} changed hands while being claimed")]
    Changed {
        /// The vdisk.
        vdisk: String,
    },
    /// The catalog could not be read or written.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

impl From<redb::Error> for NamespaceError {
    fn from(e: redb::Error) -> Self {
        NamespaceError::Storage(e.into())
    }
}
const RECORD_HEADER: usize = 11;

/// Who holds a vdisk, under which lease, and whose state it has yet to
/// adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiskHolder {
    /// The host serving the vdisk.
    pub host: String,
    /// The epoch of its lease of the vdisk: appends naming the vdisk under
    /// another epoch are refused.
    pub epoch: u64,
    /// The host whose committed state and NVLOG still hold the vdisk's
    /// latest content, until the holder reports it adopted.
    pub adopt_from: Option<String>,
}

impl VdiskHolder {
    /// The record's bytes in the catalog.
    pub fn encode(&self) -> Vec<u8> {
        let source = self.adopt_from.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(10 + self.host.len() + source.len());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        for name in [self.host.as_str(), source] {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    /// Decodes vdisk `vdisk`'s record (the name only goes into errors);
    /// any bytes give a holder with a host name, or an error.
    pub fn decode(vdisk: &str, bytes: &[u8]) -> anyhow::Result<VdiskHolder> {
        let bad = || {
            anyhow::anyhow!(
                "vdisk {vdisk:?}: holder record of {} bytes is damaged",
                bytes.len()
            )
        };
        let epoch = u64::from_le_bytes(
            bytes
                .get(..8)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let mut rest = &bytes[8..];
        let mut name = || -> anyhow::Result<String> {
            let (&len, tail) = rest.split_first().ok_or_else(bad)?;
            let text = tail.get(..usize::from(len)).ok_or_else(bad)?;
            rest = &tail[usize::from(len)..];
            String::from_utf8(text.to_vec()).map_err(|_| bad())
        };
        let host = name()?;
        let source = name()?;
        anyhow::ensure!(rest.is_empty() && !host.is_empty(), bad());
        Ok(VdiskHolder {
            host,
            epoch,
            adopt_from: (!source.is_empty()).then_some(source),
        })
    }
}

/// Where a stripe's chunks are and how long they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeRecord {
    /// Data chunks.
    pub k: usize,
    /// How many times the stripe was rewritten (by a rebuild): chunks carry
    /// it, so a rewrite never overwrites a chunk.
    pub gen: u16,
    /// Bytes per chunk.
    pub chunk_len: usize,
    /// Bytes of frames in the data chunks.
    pub data_len: usize,
    /// The drive of each chunk, data chunks first.
    pub drives: Vec<usize>,
    /// The place of each chunk on its drive, in the same order.
    pub places: Vec<u64>,
}

impl StripeRecord {
    /// The record's bytes in the catalog.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert_eq!(self.drives.len(), self.places.len());
        let mut out = Vec::with_capacity(RECORD_HEADER + 10 * self.drives.len());
        out.push(self.k as u8);
        out.extend_from_slice(&self.gen.to_le_bytes());
        out.extend_from_slice(&(self.chunk_len as u32).to_le_bytes());
        out.extend_from_slice(&(self.data_len as u32).to_le_bytes());
        for (&drive, &place) in self.drives.iter().zip(&self.places) {
            out.extend_from_slice(&(drive as u16).to_le_bytes());
            out.extend_from_slice(&place.to_le_bytes());
        }
        out
    }

    /// Decodes a record (either layout); any bytes give a consistent record
    /// (1 to [`MAX_DATA_CHUNKS`] data chunks, k + 2 drives and places, a
    /// chunk length that fits the data length), or an error.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<StripeRecord> {
        anyhow::ensure!(
            bytes.len() >= RECORD_HEADER,
            "stripe record of {} bytes",
            bytes.len()
        );
        let k = usize::from(bytes[0]);
        let n = k + erasure::PARITY_CHUNKS;
        let body = &bytes[RECORD_HEADER..];
        let per_chunk = match body.len() {
            len if k > 0 && len == 10 * n => 10,
            len if k > 0 && len == 2 * n => 2,
            len => anyhow::bail!("stripe record with {len} bytes of chunks for k={k}"),
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        };
        let (drives, places) = body
            .chunks_exact(per_chunk)
            .map(|c| {
                let drive = usize::from(u16::from_le_bytes([c[0], c[1]]));
                let mut place = [0u8; 8];
                place[..per_chunk - 2].copy_from_slice(&c[2..]);
                (drive, u64::from_le_bytes(place))
            })
            .unzip();
        let record = StripeRecord {
            k,
            gen: u16::from_le_bytes([bytes[1], bytes[2]]),
            chunk_len: u32_at(3),
            data_len: u32_at(7),
            drives,
            places,
        };
        anyhow::ensure!(
            k <= MAX_DATA_CHUNKS && record.chunk_len == erasure::chunk_len(record.data_len, k),
            "stripe record of {k} data chunks of {} bytes for {} bytes of data",
            record.chunk_len,
            record.data_len
        );
        Ok(record)
    }
}

/// Where a frame is: its stripe and its byte range in the stripe's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLocation {
    /// The stripe.
    pub stripe: u64,
    /// Byte offset in the stripe's data.
    pub offset: usize,
    /// Length.
    pub len: usize,
}

/// The pool's catalog.
pub struct Catalog {
    db: Database,
}

impl Catalog {
    /// Opens (creating if needed) `dir/catalog.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<Catalog> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let path = dir.join("catalog.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open the pool catalog {}", path.display()))?;
        let tx = db.begin_write()?;
        tx.open_table(STRIPES)?;
        tx.open_table(FRAMES)?;
        tx.open_table(COMMITS)?;
        tx.open_table(DRIVES)?;
        tx.open_table(LEASES)?;
        tx.open_table(KEYS)?;
        tx.open_table(DRIVE_KINDS)?;
        migrate_vdisk_holders(&tx)?;
        {
            let mut meta = tx.open_table(META)?;
            if meta.get(POOL_ID)?.is_none() {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id)
                    .map_err(|e| anyhow::anyhow!("cannot draw the pool's id: {e}"))?;
                meta.insert(POOL_ID, id.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(Catalog { db })
    }

    /// The pool's id, which its drives' labels carry.
    pub fn pool_id(&self) -> anyhow::Result<[u8; 16]> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let value = meta.get(POOL_ID)?.context("the catalog has no pool id")?;
        value
            .value()
            .try_into()
            .map_err(|_| anyhow::anyhow!("the pool id is {} bytes", value.value().len()))
    }

    /// The kind recorded for each of `count` drives (`None`: never opened).
    pub fn drive_kinds(&self, count: usize) -> anyhow::Result<Vec<Option<DriveKind>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DRIVE_KINDS)?;
        (0..count)
            .map(|d| match table.get(d as u16)? {
                None => Ok(None),
                Some(v) => DriveKind::from_code(v.value())
                    .map(Some)
                    .with_context(|| format!("drive {d}'s kind is recorded as {}", v.value())),
            })
            .collect()
    }

    /// Records what drive `drive` is.
    pub fn set_drive_kind(&self, drive: usize, kind: DriveKind) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(DRIVE_KINDS)?
            .insert(drive as u16, kind.code())?;
        tx.commit()?;
        Ok(())
    }

    /// The id the next stripe gets: one above the highest stored.
    pub fn next_stripe_id(&self) -> anyhow::Result<u64> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STRIPES)?;
        let last = table.last()?.map(|(k, _)| k.value());
        Ok(last.map_or(1, |id| id + 1))
    }

    /// Records stripe `id` and indexes its entries not indexed yet, in one
    /// durable transaction.
    pub fn add_stripe(
        &self,
        id: u64,
        record: &StripeRecord,
        entries: &[StripeEntry],
    ) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut stripes = tx.open_table(STRIPES)?;
            stripes.insert(id, record.encode().as_slice())?;
            let mut frames = tx.open_table(FRAMES)?;
            for e in entries {
                let key = e.fingerprint.as_bytes().as_slice();
                if frames.get(key)?.is_none() {
                    let mut value = [0u8; 16];
                    value[..8].copy_from_slice(&id.to_le_bytes());
                    value[8..12].copy_from_slice(&e.offset.to_le_bytes());
                    value[12..].copy_from_slice(&e.len.to_le_bytes());
                    frames.insert(key, value.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stripe and its record, in id order.
    pub fn stripes(&self) -> anyhow::Result<Vec<(u64, StripeRecord)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STRIPES)?;
        table
            .iter()?
            .map(|entry| {
                let (id, value) = entry?;
                let id = id.value();
                let record =
                    StripeRecord::decode(value.value()).with_context(|| format!("stripe {id}"))?;
                Ok((id, record))
            })
            .collect()
    }

    /// Replaces stripe `id`'s record (after a rebuild rewrote it).
    pub fn replace_stripe(&self, id: u64, record: &StripeRecord) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(STRIPES)?
            .insert(id, record.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Which of `count` drives are marked failed.
    pub fn failed_drives(&self, count: usize) -> anyhow::Result<Vec<bool>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DRIVES)?;
        (0..count)
            .map(|d| Ok(table.get(d as u16)?.is_some_and(|v| v.value() == 1)))
            .collect()
    }

    /// Marks drive `drive` failed or in service.
    pub fn set_drive(&self, drive: usize, failed: bool) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(DRIVES)?
            .insert(drive as u16, u8::from(failed))?;
        tx.commit()?;
        Ok(())
    }

    /// Stripe `id`'s record.
    pub fn stripe(&self, id: u64) -> anyhow::Result<Option<StripeRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STRIPES)?;
        let value = table.get(id)?;
        value
            .map(|v| StripeRecord::decode(v.value()).with_context(|| format!("stripe {id}")))
            .transpose()
    }

    /// Where each of `fingerprints` is, in order (`None`: not in the pool).
    pub fn locate(
        &self,
        fingerprints: &[Fingerprint],
    ) -> anyhow::Result<Vec<Option<FrameLocation>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(FRAMES)?;
        fingerprints
            .iter()
            .map(|fp| {
                let Some(v) = table.get(fp.as_bytes().as_slice())? else {
                    return Ok(None);
                };
                let v = v.value();
                anyhow::ensure!(v.len() == 16, "index entry of {} bytes for {fp}", v.len());
                let mut id = [0u8; 8];
                id.copy_from_slice(&v[..8]);
                let word = |at: usize| u32::from_le_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
                Ok(Some(FrameLocation {
                    stripe: u64::from_le_bytes(id),
                    offset: word(8) as usize,
                    len: word(12) as usize,
                }))
            })
            .collect()
    }

    /// Records `host`'s state, covering its NVLOG through `through_seq`,
    /// if `epoch` is still the host's lease.
    pub fn commit(
        &self,
        host: &str,
        epoch: u64,
        through_seq: u64,
        state: &[u8],
    ) -> Result<(), NamespaceError> {
        let mut value = Vec::with_capacity(8 + state.len());
        value.extend_from_slice(&through_seq.to_le_bytes());
        value.extend_from_slice(state);
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        check_lease(&tx, host, epoch)?;
        tx.open_table(COMMITS)
            .map_err(redb::Error::from)?
            .insert(host, value.as_slice())
            .map_err(redb::Error::from)?;
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// The epoch of `host`'s current lease (0 if it never took one).
    pub fn lease_epoch(&self, host: &str) -> anyhow::Result<u64> {
        let tx = self.db.begin_read()?;
        let epoch = tx.open_table(LEASES)?.get(host)?.map_or(0, |v| v.value());
        Ok(epoch)
    }

    /// Gives `host` a new lease, one epoch above its last, and returns the
    /// epoch. Every request made under an earlier epoch is refused from
    /// the moment this returns.
    pub fn take_lease(&self, host: &str) -> anyhow::Result<u64> {
        let tx = self.db.begin_write()?;
        let epoch = {
            let mut leases = tx.open_table(LEASES)?;
            let epoch = leases.get(host)?.map_or(0, |v| v.value()) + 1;
            leases.insert(host, epoch)?;
            epoch
        };
        tx.commit()?;
        Ok(epoch)
    }

    /// Records `host`, under its lease `epoch`, as the holder of vdisk
    /// `vdisk`, provided `expected` still holds it (`None`: nobody), and
    /// returns the vdisk's lease. Claiming a vdisk the host holds returns
    /// the lease it has; claiming one another host holds takes it over: a
    /// new epoch, and that host (or, if it had not finished adopting the
    /// vdisk, the one it was adopting from) is the one to adopt from.
    pub fn claim_vdisk(
        &self,
        host: &str,
        epoch: u64,
        vdisk: &str,
        expected: Option<&str>,
    ) -> Result<VdiskHolder, NamespaceError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        check_lease(&tx, host, epoch)?;
        let claim = {
            let mut holders = tx.open_table(HOLDERS).map_err(redb::Error::from)?;
            let current = holder_in(&holders, vdisk)?;
            if current.as_ref().map(|h| h.host.as_str()) != expected {
                return Err(NamespaceError::Changed {
                    vdisk: vdisk.to_string(),
                });
            }
            let claim = match current {
                Some(held) if held.host == host => return Ok(held),
                Some(held) => VdiskHolder {
                    host: host.to_string(),
                    epoch: held.epoch + 1,
                    adopt_from: Some(held.adopt_from.unwrap_or(held.host)),
                },
                None => VdiskHolder {
                    host: host.to_string(),
                    epoch: 1,
                    adopt_from: None,
                },
            };
            holders
                .insert(vdisk, claim.encode().as_slice())
                .map_err(redb::Error::from)?;
            claim
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(claim)
    }

    /// Records that `host`, holding vdisk `vdisk` at `vdisk_epoch` under
    /// its lease `epoch`, has the vdisk's state in its own log: nothing is
    /// left to adopt.
    pub fn adopted(
        &self,
        host: &str,
        epoch: u64,
        vdisk: &str,
        vdisk_epoch: u64,
    ) -> Result<VdiskHolder, NamespaceError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        check_lease(&tx, host, epoch)?;
        let holder = {
            let mut holders = tx.open_table(HOLDERS).map_err(redb::Error::from)?;
            let current = holder_in(&holders, vdisk)?;
            let mut holder = match current {
                Some(h) if h.host == host && h.epoch == vdisk_epoch => h,
                Some(h) => {
                    return Err(NamespaceError::Moved {
                        vdisk: vdisk.to_string(),
                        holder: h.host,
                        epoch: h.epoch,
                    })
                }
                None => {
                    return Err(NamespaceError::Moved {
                        vdisk: vdisk.to_string(),
                        holder: "nobody".to_string(),
                        epoch: 0,
                    })
                }
            };
            holder.adopt_from = None;
            holders
                .insert(vdisk, holder.encode().as_slice())
                .map_err(redb::Error::from)?;
            holder
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(holder)
    }

    /// Every vdisk's holder.
    pub fn vdisk_holders(&self) -> anyhow::Result<Vec<(String, VdiskHolder)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HOLDERS)?;
        table
            .iter()?
            .map(|entry| {
                let (name, value) = entry?;
                let name = name.value().to_string();
                let holder = VdiskHolder::decode(&name, value.value())?;
                Ok((name, holder))
            })
            .collect()
    }

    /// The key file of datastore `datastore`: the one kept, or else
    /// `offer`, which is kept from now on (under `host`'s lease `epoch`).
    pub fn share_keys(
        &self,
        host: &str,
        epoch: u64,
        datastore: &str,
        offer: &[u8],
    ) -> Result<Vec<u8>, NamespaceError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        check_lease(&tx, host, epoch)?;
        let kept = {
            let mut keys = tx.open_table(KEYS).map_err(redb::Error::from)?;
            let kept = keys
                .get(datastore)
                .map_err(redb::Error::from)?
                .map(|v| v.value().to_vec());
            match kept {
                Some(kept) => kept,
                None => {
                    keys.insert(datastore, offer).map_err(redb::Error::from)?;
                    offer.to_vec()
                }
            }
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(kept)
    }

    /// `host`'s last committed state and the NVLOG record it covers.
    pub fn load_commit(&self, host: &str) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(COMMITS)?;
        let Some(v) = table.get(host)? else {
            return Ok(None);
        };
        let v = v.value();
        anyhow::ensure!(v.len() >= 8, "commit of host {host} is {} bytes", v.len());
        let mut through = [0u8; 8];
        through.copy_from_slice(&v[..8]);
        Ok(Some((u64::from_le_bytes(through), v[8..].to_vec())))
    }
}

/// Vdisk `vdisk`'s holder as `table` records it.
fn holder_in(
    table: &redb::Table<&str, &[u8]>,
    vdisk: &str,
) -> Result<Option<VdiskHolder>, NamespaceError> {
    match table.get(vdisk).map_err(redb::Error::from)? {
        Some(v) => Ok(Some(VdiskHolder::decode(vdisk, v.value())?)),
        None => Ok(None),
    }
}

/// Moves the holders of the layout before vdisk epochs (`vdisks`) into
/// `vdisk_holders`, each at epoch 1.
fn migrate_vdisk_holders(tx: &redb::WriteTransaction) -> anyhow::Result<()> {
    let mut old = tx.open_table(OLD_VDISKS)?;
    let mut holders = tx.open_table(HOLDERS)?;
    let entries: Vec<(String, String)> = old
        .iter()?
        .map(|entry| {
            let (name, host) = entry?;
            Ok((name.value().to_string(), host.value().to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    for (name, host) in entries {
        if holders.get(name.as_str())?.is_none() {
            let holder = VdiskHolder {
                host,
                epoch: 1,
                adopt_from: None,
            };
            holders.insert(name.as_str(), holder.encode().as_slice())?;
        }
        old.remove(name.as_str())?;
    }
    Ok(())
}

/// Refuses a change made under `epoch` unless it is `host`'s current lease.
fn check_lease(tx: &redb::WriteTransaction, host: &str, epoch: u64) -> Result<(), NamespaceError> {
    let current = tx
        .open_table(LEASES)
        .map_err(redb::Error::from)?
        .get(host)
        .map_err(redb::Error::from)?
        .map_or(0, |v| v.value());
    if epoch == 0 || epoch != current {
        return Err(NamespaceError::Fenced {
            host: host.to_string(),
            held: epoch,
            current,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_index_and_commits_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = StripeRecord {
            k: 4,
            gen: 0,
            chunk_len: erasure::chunk_len(4_000_000, 4),
            data_len: 4_000_000,
            drives: vec![2, 3, 4, 5, 0, 1],
            places: vec![0, 0, 1 << 20, 0, 0, u64::MAX - 4095],
        };
        let a = Fingerprint::from_bytes([1; 32]);
        let b = Fingerprint::from_bytes([2; 32]);
        {
            let catalog = Catalog::open(dir.path()).unwrap();
            assert_eq!(catalog.next_stripe_id().unwrap(), 1);
            let entry = |fingerprint, offset| StripeEntry {
                fingerprint,
                offset,
                len: 100,
            };
            catalog.add_stripe(1, &record, &[entry(a, 0)]).unwrap();
            // b is new; a stays where it was first stored.
            catalog
                .add_stripe(2, &record, &[entry(a, 500), entry(b, 100)])
                .unwrap();
            let epoch = catalog.take_lease("host1").unwrap();
            catalog.commit("host1", epoch, 42, b"roots").unwrap();
            catalog.set_drive(4, true).unwrap();
        }
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.next_stripe_id().unwrap(), 3);
        assert_eq!(catalog.stripe(2).unwrap(), Some(record));
        assert_eq!(catalog.stripe(9).unwrap(), None);
        let found = catalog
            .locate(&[a, b, Fingerprint::from_bytes([3; 32])])
            .unwrap();
        assert_eq!(
            found,
            vec![
                Some(FrameLocation {
                    stripe: 1,
                    offset: 0,
                    len: 100
                }),
                Some(FrameLocation {
                    stripe: 2,
                    offset: 100,
                    len: 100
                }),
                None
            ]
        );
        assert_eq!(
            catalog.load_commit("host1").unwrap(),
            Some((42, b"roots".to_vec()))
        );
        assert_eq!(catalog.load_commit("host2").unwrap(), None);
        assert_eq!(
            catalog.failed_drives(6).unwrap(),
            vec![false, false, false, false, true, false]
        );
        let rebuilt = StripeRecord {
            k: 2,
            gen: 1,
            chunk_len: erasure::chunk_len(4_000_000, 2),
            data_len: 4_000_000,
            drives: vec![0, 1, 2, 3],
            places: vec![0; 4],
        };
        catalog.replace_stripe(1, &rebuilt).unwrap();
        let all = catalog.stripes().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], (1, rebuilt));
    }

    #[test]
    fn stripe_records_decode_in_both_layouts_and_refuse_bad_lengths() {
        let record = StripeRecord {
            k: 2,
            gen: 7,
            chunk_len: erasure::chunk_len(8000, 2),
            data_len: 8000,
            drives: vec![5, 0, 1, 2],
            places: vec![1 << 20, 0, 3 << 20, 0x0102_0304_0506_0708],
        };
        let bytes = record.encode();
        assert_eq!(bytes.len(), RECORD_HEADER + 40);
        assert_eq!(StripeRecord::decode(&bytes).unwrap(), record);
        // The layout before device drives: drives only, places 0.
        let mut old = bytes[..RECORD_HEADER].to_vec();
        for d in [5u16, 0, 1, 2] {
            old.extend_from_slice(&d.to_le_bytes());
        }
        let decoded = StripeRecord::decode(&old).unwrap();
        assert_eq!(decoded.drives, record.drives);
        assert_eq!(decoded.places, vec![0; 4]);
        // Any other length of chunk list, or k = 0, is refused.
        for cut in 0..bytes.len() {
            if cut != old.len() {
                assert!(StripeRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut no_data = bytes.clone();
        no_data[0] = 0;
        assert!(StripeRecord::decode(&no_data).is_err());
        // A chunk length that does not fit the data, or too many data
        // chunks: reading would index past the chunks or divide by zero.
        for bad in [
            StripeRecord {
                chunk_len: 0,
                ..record.clone()
            },
            StripeRecord {
                chunk_len: record.chunk_len - 64,
                ..record.clone()
            },
            StripeRecord {
                k: MAX_DATA_CHUNKS + 1,
                drives: vec![0; MAX_DATA_CHUNKS + 3],
                places: vec![0; MAX_DATA_CHUNKS + 3],
                ..record.clone()
            },
        ] {
            assert!(StripeRecord::decode(&bad.encode()).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever bytes the stripes table holds, decoding gives a record
        /// with k + 2 drives and places, or an error; never a panic.
        #[test]
        fn arbitrary_record_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            if let Ok(record) = StripeRecord::decode(&bytes) {
                proptest::prop_assert_eq!(record.drives.len(), record.k + 2);
                proptest::prop_assert_eq!(record.places.len(), record.k + 2);
            }
        }
    }

    #[test]
    fn a_newer_lease_fences_commits_and_claims_of_the_older() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.lease_epoch("h1").unwrap(), 0);
        // No lease at all: nothing may change.
        assert!(matches!(
            catalog.commit("h1", 0, 1, b"x"),
            Err(NamespaceError::Fenced { current: 0, .. })
        ));
        let old = catalog.take_lease("h1").unwrap();
        catalog.claim_vdisk("h1", old, "db", None).unwrap();
        catalog.commit("h1", old, 5, b"first").unwrap();
        let new = catalog.take_lease("h1").unwrap();
        assert_eq!(new, old + 1);
        assert!(matches!(
            catalog.commit("h1", old, 6, b"stale"),
            Err(NamespaceError::Fenced { held, current, .. }) if held == old && current == new
        ));
        assert!(matches!(
            catalog.claim_vdisk("h1", old, "other", None),
            Err(NamespaceError::Fenced { .. })
        ));
        assert_eq!(
            catalog.load_commit("h1").unwrap(),
            Some((5, b"first".to_vec()))
        );
        // The same host keeps its vdisk, and the vdisk's epoch, under the
        // new lease.
        let first = VdiskHolder {
            host: "h1".to_string(),
            epoch: 1,
            adopt_from: None,
        };
        assert_eq!(
            catalog.claim_vdisk("h1", new, "db", Some("h1")).unwrap(),
            first
        );
        drop(catalog);
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.lease_epoch("h1").unwrap(), new);
        assert_eq!(
            catalog.vdisk_holders().unwrap(),
            vec![("db".to_string(), first)]
        );
    }

    #[test]
    fn a_claim_of_a_held_vdisk_takes_it_over_and_names_the_state_to_adopt() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let h1 = catalog.take_lease("h1").unwrap();
        let h2 = catalog.take_lease("h2").unwrap();
        let h3 = catalog.take_lease("h3").unwrap();
        catalog.claim_vdisk("h1", h1, "db", None).unwrap();
        // A claim that looked at an old holder is told to look again.
        assert!(matches!(
            catalog.claim_vdisk("h2", h2, "db", None),
            Err(NamespaceError::Changed { .. })
        ));
        let moved = catalog.claim_vdisk("h2", h2, "db", Some("h1")).unwrap();
        assert_eq!(
            moved,
            VdiskHolder {
                host: "h2".to_string(),
                epoch: 2,
                adopt_from: Some("h1".to_string()),
            }
        );
        // Asking again (a restart before adopting) still says adopt.
        assert_eq!(
            catalog.claim_vdisk("h2", h2, "db", Some("h2")).unwrap(),
            moved
        );
        // A third host taking it before h2 adopted must adopt from h1, not
        // from h2, whose log never got the vdisk's state.
        let third = catalog.claim_vdisk("h3", h3, "db", Some("h2")).unwrap();
        assert_eq!(third.epoch, 3);
        assert_eq!(third.adopt_from.as_deref(), Some("h1"));
        // h2's report comes too late; h3's clears the adoption.
        assert!(matches!(
            catalog.adopted("h2", h2, "db", 2),
            Err(NamespaceError::Moved { epoch: 3, .. })
        ));
        let done = catalog.adopted("h3", h3, "db", 3).unwrap();
        assert_eq!(done.adopt_from, None);
        // From h3 it moves on, adopting from h3.
        let back = catalog.claim_vdisk("h1", h1, "db", Some("h3")).unwrap();
        assert_eq!((back.epoch, back.adopt_from.as_deref()), (4, Some("h3")));
        // The catalog keeps the datastore keys first offered.
        assert_eq!(
            catalog.share_keys("h1", h1, "default", b"one").unwrap(),
            b"one"
        );
        assert_eq!(
            catalog.share_keys("h2", h2, "default", b"two").unwrap(),
            b"one"
        );
        assert!(matches!(
            catalog.share_keys("h2", h2 - 1, "other", b"x"),
            Err(NamespaceError::Fenced { .. })
        ));
    }

    #[test]
    fn holders_of_the_layout_before_vdisk_epochs_move_at_epoch_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("catalog.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(OLD_VDISKS)
                .unwrap()
                .insert("db", "h1")
                .unwrap();
            tx.commit().unwrap();
        }
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(
            catalog.vdisk_holders().unwrap(),
            vec![(
                "db".to_string(),
                VdiskHolder {
                    host: "h1".to_string(),
                    epoch: 1,
                    adopt_from: None,
                }
            )]
        );
    }

    #[test]
    fn damaged_holder_records_are_errors() {
        let good = VdiskHolder {
            host: "h1".to_string(),
            epoch: 7,
            adopt_from: Some("h2".to_string()),
        }
        .encode();
        assert!(VdiskHolder::decode("db", &good).is_ok());
        for cut in 0..good.len() {
            assert!(
                VdiskHolder::decode("db", &good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(VdiskHolder::decode("db", &longer).is_err());
    }
}
