//! Adopting a vdisk another host held: its state moves into this host's
//! own NVLOG before this host serves it.
//!
//! The pool fenced the previous holder for the vdisk when this host claimed
//! it, so that holder's committed state plus the suffix of its NVLOG after
//! the commit hold every acknowledged write of the vdisk, and nothing
//! changes them any more. Adopting copies them into this host's log as
//! its own records:
//!
//! 1. an adopt item: the vdisk at the root of the previous holder's commit
//!    (whose nodes and blocks are in the pool's stripes), or empty when
//!    the vdisk was created after that commit;
//! 2. the vdisk's set and unmap items from the suffix, renumbered in this
//!    store's update sequence, with the frames they reference that the
//!    suffix logged;
//! 3. frames the sets reference that neither the suffix's own records nor
//!    the stripes hold (logged earlier in the suffix for another vdisk),
//!    found in a second pass over the suffix.
//!
//! Every record is appended under this host's vdisk lease and applied to
//! the store exactly as a replay of the log would, so a restart rebuilds
//! the same vdisk. A previous holder that truncates its log while it is
//! read (a destage committed meanwhile) shows as a gap in the sequence
//! numbers: the adoption starts again from the newer commit, whose adopt
//! item replaces whatever the first attempt logged.

use anyhow::{bail, Context};
use rustc_hash::FxHashSet;
use strata_common::fingerprint::Fingerprint;
use strata_common::frame::FrameHeader;
use strata_common::ondisk::{decode_batch, BatchBuilder, BatchItem, Checkpoint};
use strata_common::wire::VdiskTicket;

use super::core::MAX_UNWRITTEN_SEGMENTS;
use super::flusher::{self, Writer};
use super::nvlog_frames::frames_of_batch;
use super::recovery::{blocks_the_pool_lacks, BatchReplay};
use super::Shared;
use crate::pool::PoolLink;

/// Bytes of items after which an adoption record is sent.
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
        let mut adoption = Adoption {
            shared,
            writer,
            link: &mut link,
            name,
            id,
            ticket: VdiskTicket {
                name: name.to_string(),
                epoch,
            },
            replay: BatchReplay::new(shared),
            record: BatchBuilder::new(),
            records: 0,
            frames: 0,
        };
        for attempt in 1..=MAX_ATTEMPTS {
            match adoption.attempt(&mut reader, source)? {
                Outcome::Adopted => {
                    tracing::info!(
                        vdisk = name,
                        from = source,
                        records = adoption.records,
                        frames = adoption.frames,
                        "adopted the vdisk's state into this host's log"
                    );
                    return Ok(true);
                }
                Outcome::Absent => return Ok(false),
                Outcome::Truncated => {
                    tracing::info!(vdisk = name, from = source, attempt,
                        "the previous holder truncated its log while it was read; adopting again from its newer commit");
                }
            }
        }
        bail!("host {source} kept truncating its log while vdisk {name} was adopted from it")
    })();
    writer.pool = Some(link);
    result
}

/// How one attempt ended.
enum Outcome {
    /// The vdisk's state is in this host's log and store.
    Adopted,
    /// The source's state has no such vdisk.
    Absent,
    /// The source's log lost records the attempt needed: start again.
    Truncated,
}

/// One adoption in progress.
struct Adoption<'a> {
    shared: &'a Shared,
    writer: &'a mut Writer,
    link: &'a mut PoolLink,
    name: &'a str,
    id: u32,
    ticket: VdiskTicket,
    replay: BatchReplay<'a>,
    record: BatchBuilder,
    /// Records appended, and frames copied into them.
    records: usize,
    frames: usize,
}

impl Adoption<'_> {
    fn attempt(&mut self, reader: &mut PoolLink, source: &str) -> anyhow::Result<Outcome> {
        let name = self.name;
        // Whatever an earlier attempt built and did not send.
        self.record.clear();
        let (through, base) = match reader.load_commit_of(source)? {
            Some((through, state)) => {
                let cp = Checkpoint::decode(&state)
                    .with_context(|| format!("the pool's commit of host {source} is damaged"))?;
                let base = cp.vdisks.into_iter().find(|v| v.name == name);
                (through, base)
            }
            None => (0, None),
        };
        // The source's id of the vdisk, once known.
        let mut source_id = None;
        if let Some(v) = &base {
            source_id = Some(v.id);
            let seq = self.next_seq();
            self.record
                .push_adopt(seq, self.id, v.block_count, v.root, name);
        }
        let mut copied: FxHashSet<Fingerprint> = FxHashSet::default();
        let mut wanted: FxHashSet<Fingerprint> = FxHashSet::default();
        let mut next = through + 1;
        let mut gap = false;
        let last = reader.replay_of(source, through + 1, |seq, payload| {
            if seq != next {
                gap = true;
                bail!("record {seq} follows {}", next - 1);
            }
            next = seq + 1;
            let items =
                decode_batch(payload).with_context(|| format!("host {source}'s record {seq}"))?;
            for item in &items {
                self.take_item(item, &items, &mut source_id, &mut copied, &mut wanted)?;
            }
            if self.record.len() >= RECORD_BYTES {
                self.send()?;
            }
            Ok(())
        });
        match last {
            Err(_) if gap => return Ok(Outcome::Truncated),
            Err(e) => return Err(e),
            Ok(last) if last >= next => return Ok(Outcome::Truncated),
            Ok(_) => {}
        }
        if source_id.is_none() {
            self.record.clear();
            return Ok(Outcome::Absent);
        }
        self.send()?;
        // Frames the vdisk's sets reference that the suffix logged for
        // other vdisks, and that the stripes lack: a second pass.
        let lacking = wanted.difference(&copied).copied().collect();
        let mut lacking: FxHashSet<Fingerprint> = blocks_the_pool_lacks(self.link, lacking)?
            .into_iter()
            .collect();
        if !lacking.is_empty() {
            let mut next = through + 1;
            let pass = reader.replay_of(source, through + 1, |seq, payload| {
                if seq != next {
                    gap = true;
                    bail!("record {seq} follows {}", next - 1);
                }
                next = seq + 1;
                for frame in frames(payload) {
                    if let Ok(header) = FrameHeader::parse(frame) {
                        if lacking.remove(&header.fingerprint) {
                            self.record.push_frame(frame);
                            self.frames += 1;
                        }
                    }
                }
                if self.record.len() >= RECORD_BYTES {
                    self.send()?;
                }
                Ok(())
            });
            match pass {
                Err(_) if gap => return Ok(Outcome::Truncated),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            self.send()?;
            // Truncated meanwhile means destaged: the stripes have them.
            let still = blocks_the_pool_lacks(self.link, lacking.into_iter().collect())?;
            if !still.is_empty() {
                bail!(
                    "neither the pool nor host {source}'s log holds {} blocks of vdisk {name}",
                    still.len()
                );
            }
        }
        Ok(Outcome::Adopted)
    }

    /// Takes one item of a source record: the vdisk's own items are
    /// renumbered into the record being built, with the frames of `items`
    /// (the same source record) that its sets reference.
    fn take_item(
        &mut self,
        item: &BatchItem<'_>,
        items: &[BatchItem<'_>],
        source_id: &mut Option<u32>,
        copied: &mut FxHashSet<Fingerprint>,
        wanted: &mut FxHashSet<Fingerprint>,
    ) -> anyhow::Result<()> {
        match item {
            BatchItem::Vdisk {
                id,
                block_count,
                name,
            } if name == self.name => {
                *source_id = Some(*id);
                let seq = self.next_seq();
                self.record
                    .push_adopt(seq, self.id, *block_count, Fingerprint::ZERO, name);
            }
            BatchItem::Adopt {
                id,
                block_count,
                root,
                name,
                ..
            } if name == self.name => {
                *source_id = Some(*id);
                let seq = self.next_seq();
                self.record
                    .push_adopt(seq, self.id, *block_count, *root, name);
            }
            BatchItem::Set {
                vdisk, lba, fps, ..
            } if Some(*vdisk) == *source_id => {
                for fp in fps.iter().filter(|fp| !fp.is_zero()) {
                    if copied.contains(fp) {
                        continue;
                    }
                    let logged = items.iter().find_map(|i| match i {
                        BatchItem::Frame(frame)
                            if FrameHeader::parse(frame).is_ok_and(|h| h.fingerprint == *fp) =>
                        {
                            Some(*frame)
                        }
                        _ => None,
                    });
                    match logged {
                        Some(frame) => {
                            self.record.push_frame(frame);
                            self.frames += 1;
                            copied.insert(*fp);
                        }
                        None => {
                            wanted.insert(*fp);
                        }
                    }
                }
                let seq = self.next_seq();
                self.record.push_set(seq, self.id, *lba, fps);
            }
            BatchItem::Unmap {
                vdisk, lba, count, ..
            } if Some(*vdisk) == *source_id => {
                let seq = self.next_seq();
                self.record.push_unmap(seq, self.id, *lba, *count);
            }
            _ => {}
        }
        Ok(())
    }

    /// The next update sequence number of this store.
    fn next_seq(&self) -> u64 {
        let mut state = self.shared.core.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        seq
    }

    /// Applies the record built so far to the store and appends it to this
    /// host's log.
    fn send(&mut self) -> anyhow::Result<()> {
        if self.record.is_empty() {
            return Ok(());
        }
        let record = std::mem::take(&mut self.record);
        let body = record.into_body();
        let core = &*self.shared.core;
        self.replay
            .apply(&body)
            .context("applying an adoption record")?;
        if core.lock().unwritten.len() >= MAX_UNWRITTEN_SEGMENTS {
            flusher::write_segments(core, self.writer)?;
        }
        let frames = frames_of_batch(&body);
        self.link
            .append(body, vec![self.ticket.clone()], &|| false)
            .context("appending an adoption record")?;
        if let Some(reads) = &core.pool_reads {
            reads.logged.note(self.link.last_appended(), frames);
        }
        core.nvlog_appended.store(
            self.link.last_appended(),
            std::sync::atomic::Ordering::Release,
        );
        self.records += 1;
        Ok(())
    }
}

/// The frames of a record's payload (none if it does not decode).
fn frames(payload: &[u8]) -> Vec<&[u8]> {
    decode_batch(payload)
        .map(|items| {
            items
                .into_iter()
                .filter_map(|item| match item {
                    BatchItem::Frame(frame) => Some(frame),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
