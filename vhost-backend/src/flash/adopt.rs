//! Adopting a vdisk another host held: its state moves into this host's
//! own NVLOG before this host serves it.
//!
//! The pool fenced the previous holder for the vdisk when this host claimed
//! it, so that holder's committed state plus the suffix of its NVLOG after
//! the commit hold every write of the vdisk it acknowledged, and its log
//! gains no more of them. Adopting reads them (the pool allows it while
//! the claim names that host) and gathers, in RAM:
//!
//! 1. an adopt item: the vdisk at the root of the previous holder's commit
//!    (whose nodes and blocks are in the pool's stripes), or empty when
//!    the vdisk was created after that commit;
//! 2. the vdisk's set and unmap items from the suffix, with the frames they
//!    reference that the same records logged;
//! 3. frames the sets reference that neither those records nor the stripes
//!    hold (logged earlier in the suffix for another vdisk, a dedupe hit),
//!    found in a second pass over the suffix.
//!
//! Only then are they written, as records of this host's log: each record's
//! items get this store's update sequence numbers and are applied to the
//! vdisk under its map lock (so a destage's roots reflect exactly the
//! updates numbered below what they claim, as for guest writes), and the
//! record is appended under this host's vdisk lease. A restart rebuilds the
//! same vdisk by replaying them. Nothing is appended while the previous
//! holder's log is being read: that read runs in the pool's writer thread
//! of that log, and two hosts adopting from each other must not wait on
//! each other's writers.
//!
//! A previous holder that truncates its log while it is read (it destaged
//! meanwhile) shows as a gap in the sequence numbers: the adoption starts
//! again from its newer commit.

use anyhow::{bail, Context};
use rustc_hash::{FxHashMap, FxHashSet};
use strata_common::fingerprint::Fingerprint;
use strata_common::frame::verify_checksum;
use strata_common::ondisk::{decode_batch, BatchBuilder, BatchItem, Checkpoint};
use strata_common::wire::VdiskTicket;

use super::core::{Core, MAX_UNWRITTEN_SEGMENTS};
use super::flusher::{self, Writer};
use super::nvlog_frames::frames_in_batch;
use super::recovery::{add_vdisk, blocks_the_pool_lacks, existing_vdisk, store_frame};
use super::Shared;
use crate::pool::PoolLink;

/// Bytes of items after which an adoption record is cut.
const RECORD_BYTES: usize = 4 << 20;
/// How many times an adoption starts again after the previous holder
/// truncated its log under it.
const MAX_ATTEMPTS: usize = 5;

/// Vdisk `name` (this store's id `id`), claimed under the vdisk lease
/// `epoch`, adopted from host `source`. Returns `false` when `source`'s
/// state does not have the vdisk (it never logged its creation).
///
/// A vdisk taken back before the host it moved to adopted it names this
/// host itself: this host's own commit and log, which the store was just
/// rebuilt from, still hold its latest state.
pub fn adopt(
    shared: &Shared,
    writer: &mut Writer,
    name: &str,
    id: u32,
    source: &str,
    epoch: u64,
) -> anyhow::Result<bool> {
    let mut link = writer
        .pool
        .take()
        .context("adopting a vdisk needs the pool")?;
    if source == link.host_name() {
        writer.pool = Some(link);
        return Ok(shared.vdisks().iter().any(|v| v.name == name));
    }
    let result = (|| {
        let mut reader = link.join()?;
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(spool) = gather(&mut reader, &mut link, source, name)? else {
                tracing::info!(vdisk = name, from = source, attempt,
                    "the previous holder truncated its log while it was read; adopting again from its newer commit");
                continue;
            };
            if spool.is_empty() {
                return Ok(false);
            }
            let mut records = Records {
                shared,
                writer: &mut *writer,
                link: &mut link,
                name,
                id,
                ticket: VdiskTicket {
                    name: name.to_string(),
                    epoch,
                },
            };
            let (count, frames) = records.write(spool)?;
            tracing::info!(
                vdisk = name,
                from = source,
                records = count,
                frames,
                "adopted the vdisk's state into this host's log"
            );
            return Ok(true);
        }
        bail!("host {source} kept truncating its log while vdisk {name} was adopted from it")
    })();
    writer.pool = Some(link);
    result
}

/// One item of the adopted state, before it has this store's numbers.
enum Spooled {
    /// The vdisk holds this map (of this many blocks) from here on.
    Adopt {
        block_count: u64,
        root: Fingerprint,
    },
    Set {
        lba: u64,
        fps: Vec<Fingerprint>,
    },
    Unmap {
        lba: u64,
        count: u64,
    },
    Frame(Fingerprint, Vec<u8>),
}

impl Spooled {
    /// Roughly its bytes in a record.
    fn len(&self) -> usize {
        match self {
            Spooled::Adopt { .. } | Spooled::Unmap { .. } => 64,
            Spooled::Set { fps, .. } => 32 + 32 * fps.len(),
            Spooled::Frame(_, frame) => 8 + frame.len(),
        }
    }
}

/// Checks that a replay's records follow one another from its first.
struct Contiguous {
    next: u64,
    broken: bool,
}

impl Contiguous {
    fn from(first: u64) -> Contiguous {
        Contiguous {
            next: first,
            broken: false,
        }
    }

    fn check(&mut self, seq: u64) -> anyhow::Result<()> {
        if seq != self.next {
            self.broken = true;
            bail!("record {seq} follows {}", self.next - 1);
        }
        self.next = seq + 1;
        Ok(())
    }

    /// Whether the replay that ended with `result` (the log's last
    /// sequence number) missed records: the log was truncated under it.
    fn missed(&self, result: &anyhow::Result<u64>) -> bool {
        self.broken || result.as_ref().is_ok_and(|&last| last >= self.next)
    }
}

/// Reads vdisk `name`'s state from host `source`'s commit and log: `None`
/// if `source` truncated the log meanwhile, an empty list if it has no
/// such vdisk.
fn gather(
    reader: &mut PoolLink,
    link: &mut PoolLink,
    source: &str,
    name: &str,
) -> anyhow::Result<Option<Vec<Spooled>>> {
    let (through, base) = match reader.load_commit_of(source)? {
        Some((through, state)) => {
            let cp = Checkpoint::decode(&state)
                .with_context(|| format!("the pool's commit of host {source} is damaged"))?;
            (through, cp.vdisks.into_iter().find(|v| v.name == name))
        }
        None => (0, None),
    };
    let mut spool = Vec::new();
    // The source's id of the vdisk, once known.
    let mut source_id = None;
    if let Some(v) = &base {
        source_id = Some(v.id);
        spool.push(Spooled::Adopt {
            block_count: v.block_count,
            root: v.root,
        });
    }
    let mut copied: FxHashSet<Fingerprint> = FxHashSet::default();
    let mut wanted: FxHashSet<Fingerprint> = FxHashSet::default();
    let mut order = Contiguous::from(through + 1);
    let replayed = reader.replay_of(source, through + 1, |seq, payload| {
        order.check(seq)?;
        let items =
            decode_batch(payload).with_context(|| format!("host {source}'s record {seq}"))?;
        let mut logged: Option<FxHashMap<Fingerprint, &[u8]>> = None;
        for item in &items {
            match item {
                BatchItem::Vdisk {
                    id,
                    block_count,
                    name: n,
                } if n == name => {
                    source_id = Some(*id);
                    spool.push(Spooled::Adopt {
                        block_count: *block_count,
                        root: Fingerprint::ZERO,
                    });
                }
                BatchItem::Adopt {
                    id,
                    block_count,
                    root,
                    name: n,
                    ..
                } if n == name => {
                    source_id = Some(*id);
                    spool.push(Spooled::Adopt {
                        block_count: *block_count,
                        root: *root,
                    });
                }
                BatchItem::Set {
                    vdisk, lba, fps, ..
                } if Some(*vdisk) == source_id => {
                    let logged = logged
                        .get_or_insert_with(|| frames_in_batch(payload).into_iter().collect());
                    for fp in fps.iter().filter(|fp| !fp.is_zero()) {
                        if copied.contains(fp) {
                            continue;
                        }
                        // A damaged copy is left to the stripes or another
                        // record, as a frame the record lacks.
                        match logged.get(fp) {
                            Some(frame) if verify_checksum(frame).is_ok() => {
                                spool.push(Spooled::Frame(*fp, frame.to_vec()));
                                copied.insert(*fp);
                            }
                            _ => {
                                wanted.insert(*fp);
                            }
                        }
                    }
                    spool.push(Spooled::Set {
                        lba: *lba,
                        fps: fps.clone(),
                    });
                }
                BatchItem::Unmap {
                    vdisk, lba, count, ..
                } if Some(*vdisk) == source_id => {
                    spool.push(Spooled::Unmap {
                        lba: *lba,
                        count: *count,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    });
    if order.missed(&replayed) {
        return Ok(None);
    }
    replayed?;
    if source_id.is_none() {
        return Ok(Some(Vec::new()));
    }
    // Frames the vdisk's sets reference that the suffix logged for other
    // vdisks, and that the stripes lack: a second pass.
    let lacking = wanted.difference(&copied).copied().collect();
    let mut lacking: FxHashSet<Fingerprint> =
        blocks_the_pool_lacks(link, lacking)?.into_iter().collect();
    if lacking.is_empty() {
        return Ok(Some(spool));
    }
    let mut order = Contiguous::from(through + 1);
    let replayed = reader.replay_of(source, through + 1, |seq, payload| {
        order.check(seq)?;
        for (fp, frame) in frames_in_batch(payload) {
            if lacking.contains(&fp) && verify_checksum(frame).is_ok() {
                lacking.remove(&fp);
                spool.push(Spooled::Frame(fp, frame.to_vec()));
            }
        }
        Ok(())
    });
    if order.missed(&replayed) {
        return Ok(None);
    }
    replayed?;
    let still = blocks_the_pool_lacks(link, lacking.into_iter().collect())?;
    if !still.is_empty() {
        bail!(
            "neither the pool nor host {source}'s log holds {} blocks of vdisk {name}",
            still.len()
        );
    }
    Ok(Some(spool))
}

/// Writes an adopted vdisk's state as records of this host's log.
struct Records<'a> {
    shared: &'a Shared,
    writer: &'a mut Writer,
    link: &'a mut PoolLink,
    name: &'a str,
    id: u32,
    ticket: VdiskTicket,
}

impl Records<'_> {
    /// Writes `spool` (which starts with an adopt item) in records of about
    /// [`RECORD_BYTES`]; returns the number of records and of frames.
    fn write(&mut self, spool: Vec<Spooled>) -> anyhow::Result<(usize, usize)> {
        let frames = spool
            .iter()
            .filter(|s| matches!(s, Spooled::Frame(..)))
            .count();
        let mut records = 0;
        let mut part = Vec::new();
        let mut bytes = 0;
        for item in spool {
            bytes += item.len();
            part.push(item);
            if bytes >= RECORD_BYTES {
                self.send(std::mem::take(&mut part))?;
                records += 1;
                bytes = 0;
            }
        }
        if !part.is_empty() {
            self.send(part)?;
            records += 1;
        }
        Ok((records, frames))
    }

    /// Numbers `items` and applies them to the vdisk under its map lock,
    /// then appends them as one record.
    fn send(&mut self, items: Vec<Spooled>) -> anyhow::Result<()> {
        let shared = self.shared;
        let core = &*shared.core;
        let (name, id) = (self.name, self.id);
        let vdisk = match items.first() {
            Some(Spooled::Adopt { block_count, .. }) => {
                match existing_vdisk(shared, id, *block_count, name, "adopts")? {
                    Some(vdisk) => vdisk,
                    None => add_vdisk(shared, id, *block_count, name, Fingerprint::ZERO),
                }
            }
            _ => shared
                .vdisks()
                .into_iter()
                .find(|v| v.id == id)
                .with_context(|| format!("vdisk {name} is not in the store"))?,
        };
        let mut record = BatchBuilder::new();
        let mut last_seq = 0;
        {
            let mut map = vdisk.map_mut();
            let mut next_seq = || {
                let mut state = core.lock();
                let seq = state.next_seq;
                state.next_seq += 1;
                last_seq = seq;
                seq
            };
            for item in &items {
                match item {
                    Spooled::Adopt { block_count, root } => {
                        record.push_adopt(next_seq(), id, *block_count, *root, name);
                        *map = shared.open_map(*block_count, *root);
                    }
                    Spooled::Set { lba, fps } => {
                        protect_from_cleaner(core, fps);
                        record.push_set(next_seq(), id, *lba, fps);
                        let updates: Vec<_> = (*lba..).zip(fps.iter().copied()).collect();
                        map.set(&updates)
                            .with_context(|| format!("vdisk {name}: an adopted update"))?;
                    }
                    Spooled::Unmap { lba, count } => {
                        record.push_unmap(next_seq(), id, *lba, *count);
                        map.zero_range(*lba, *count)
                            .with_context(|| format!("vdisk {name}: an adopted unmap"))?;
                    }
                    Spooled::Frame(fp, frame) => {
                        verify_checksum(frame).context("a damaged frame in the adopted log")?;
                        record.push_frame(frame);
                        store_frame(shared, *fp, frame)?;
                        protect_from_cleaner(core, std::slice::from_ref(fp));
                    }
                }
            }
        }
        if core.lock().unwritten.len() >= MAX_UNWRITTEN_SEGMENTS {
            flusher::write_segments(core, self.writer)?;
        }
        let frames = items
            .iter()
            .filter_map(|item| match item {
                Spooled::Frame(fp, _) => Some(*fp),
                _ => None,
            })
            .collect();
        self.link
            .append(record.into_body(), vec![self.ticket.clone()], &|| {
                core.lock().stopping
            })
            .context("appending an adoption record")?;
        let appended = self.link.last_appended();
        if let Some(reads) = &core.pool_reads {
            reads.logged.note(appended, frames);
        }
        core.nvlog_appended
            .store(appended, std::sync::atomic::Ordering::Release);
        // Every update numbered up to `last_seq` is durable: vdisks are
        // opened (and adopted) before any is served, so no guest update
        // can be waiting in the flusher's batch below it.
        core.publish_durable(last_seq);
        Ok(())
    }
}

/// Keeps the blocks `fingerprints` from a cleaner that is running: one
/// that marked before they were referenced would drop them as dead (a
/// guest write's dedupe hits are kept the same way).
fn protect_from_cleaner(core: &Core, fingerprints: &[Fingerprint]) {
    let mut state = core.lock();
    let state = &mut *state;
    if let Some(touched) = state.touched.as_mut() {
        for fp in fingerprints {
            if !fp.is_zero() && state.index.contains_key(fp) {
                touched.insert(*fp);
            }
        }
    }
}
