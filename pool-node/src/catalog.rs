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
//! | `vdisks` | vdisk name | the name of the host that holds it |
//!
//! A chunk's place is its byte offset on a device drive (0 on a directory
//! drive). Records written before device drives existed list drives only
//! (2 bytes per chunk) and read as places 0.
//!
//! A commit or a vdisk claim checks the host's lease epoch in its own
//! transaction, so a host fenced by a newer lease can never overwrite the
//! state its successor loaded (redb serialises write transactions).
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
const VDISKS: TableDefinition<&str, &str> = TableDefinition::new("vdisks");
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
    /// Another host holds the vdisk.
    #[error("vdisk {vdisk:?} is held by host {holder}")]
    Held {
        /// The vdisk.
        vdisk: String,
        /// Its holder.
        holder: String,
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
        tx.open_table(VDISKS)?;
        tx.open_table(DRIVE_KINDS)?;
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

    /// Records `host`, under lease `epoch`, as the holder of vdisk `vdisk`
    /// (a no-op if it already is).
    pub fn claim_vdisk(&self, host: &str, epoch: u64, vdisk: &str) -> Result<(), NamespaceError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        check_lease(&tx, host, epoch)?;
        {
            let mut vdisks = tx.open_table(VDISKS).map_err(redb::Error::from)?;
            let holder = vdisks
                .get(vdisk)
                .map_err(redb::Error::from)?
                .map(|v| v.value().to_string());
            match holder {
                Some(holder) if holder == host => return Ok(()),
                Some(holder) => {
                    return Err(NamespaceError::Held {
                        vdisk: vdisk.to_string(),
                        holder,
                    })
                }
                None => {
                    vdisks.insert(vdisk, host).map_err(redb::Error::from)?;
                }
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
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
        catalog.claim_vdisk("h1", old, "db").unwrap();
        catalog.commit("h1", old, 5, b"first").unwrap();
        let new = catalog.take_lease("h1").unwrap();
        assert_eq!(new, old + 1);
        assert!(matches!(
            catalog.commit("h1", old, 6, b"stale"),
            Err(NamespaceError::Fenced { held, current, .. }) if held == old && current == new
        ));
        assert!(matches!(
            catalog.claim_vdisk("h1", old, "other"),
            Err(NamespaceError::Fenced { .. })
        ));
        assert_eq!(
            catalog.load_commit("h1").unwrap(),
            Some((5, b"first".to_vec()))
        );
        // The same host keeps its vdisk under the new lease; another host
        // cannot take it.
        catalog.claim_vdisk("h1", new, "db").unwrap();
        let h2 = catalog.take_lease("h2").unwrap();
        assert!(matches!(
            catalog.claim_vdisk("h2", h2, "db"),
            Err(NamespaceError::Held { holder, .. }) if holder == "h1"
        ));
        catalog.claim_vdisk("h2", h2, "logs").unwrap();
        drop(catalog);
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.lease_epoch("h1").unwrap(), new);
        assert!(matches!(
            catalog.claim_vdisk("h1", new, "logs"),
            Err(NamespaceError::Held { .. })
        ));
    }
}
