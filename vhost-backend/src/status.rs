//! What the status command reports about the flash store, and how it is
//! computed and shown. The control socket (`control.rs`) serves it.
//!
//! Space figures per vdisk and for the store, in bytes:
//!
//! * **logical**: mapped blocks that are not all zeros, × 4096;
//! * **unique**: distinct non-zero fingerprints among them, × 4096;
//! * **stored**: the frame length the flash index records for each of those
//!   distinct fingerprints, summed (frames are compressed, encrypted and
//!   carry a 72-byte header, tag and checksum);
//! * **dedupe ratio** logical / unique, **compression ratio** unique /
//!   stored, **reduction ratio** logical / stored; `null` when the
//!   denominator is 0.
//!
//! The store-wide figures count a fingerprint once however many vdisks map
//! it, so the store's dedupe ratio includes sharing between vdisks.
//!
//! The maps are walked with [`VdiskMap::visit`](strata_common::map::VdiskMap::visit)
//! under each vdisk's read lock, taken for at most [`LEAVES_PER_LOCK`] map
//! leaves at a time so that writers are never held up for long. The figures
//! are therefore not an atomic snapshot while vdisks are being written.

use std::sync::atomic::{AtomicBool, Ordering};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use strata_common::fingerprint::{Fingerprint, BLOCK_SIZE};
use strata_common::map::{MapError, Visit, Walk};

use crate::flash::{FlashStore, StoreVdisk};

/// Map leaves (256 blocks each) walked per hold of a vdisk's map read lock.
pub const LEAVES_PER_LOCK: u64 = 64;
/// Fingerprints looked up in the flash index per hold of the store's lock.
const LOOKUPS_PER_LOCK: usize = 4096;
/// Blocks one map leaf covers.
const LEAF_SPAN: u128 = 256;

/// Everything `strata-host status` shows: one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The strata-host version answering.
    pub version: String,
    /// The flash and its fill.
    pub flash: FlashStatus,
    /// Event counters since the daemon started.
    pub counters: CounterStatus,
    /// Space figures over all vdisks together (fingerprints counted once).
    pub store: SpaceStatus,
    /// Every vdisk of the store, in id order.
    pub vdisks: Vec<VdiskStatus>,
}

/// The flash device and how full it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashStatus {
    /// The flash file or block device.
    pub path: String,
    /// The datastore the flash belongs to.
    pub datastore: String,
    /// Size of the flash, in bytes.
    pub bytes: u64,
    /// Bytes per segment.
    pub segment_size: u64,
    /// Segment slots in use (open, waiting for their write, or on flash).
    pub segments_used: u64,
    /// Segment slots in total.
    pub segments_total: u64,
    /// `segments_used × segment_size`.
    pub segment_bytes_used: u64,
    /// Journal bytes holding records not yet covered by a checkpoint.
    pub journal_used: u64,
    /// Journal size in bytes.
    pub journal_total: u64,
    /// Entries of the flash index (data frames and map nodes).
    pub index_entries: u64,
    /// Why the store stopped taking writes, if it did.
    pub failed: Option<String>,
}

/// The store's event counters (`flash::Core::counters`), since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterStatus {
    /// Non-zero blocks written that the store already held.
    pub dedupe_hits: u64,
    /// New data frames appended.
    pub frames_appended: u64,
    /// Bytes of those frames.
    pub frame_bytes_appended: u64,
    /// Frames read back that failed verification.
    pub bad_frames: u64,
    /// Segments written to flash.
    pub segments_written: u64,
    /// Journal records written.
    pub journal_records: u64,
    /// Batches made durable in the pool's NVLOG.
    pub nvlog_records: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Destage rounds committed to the pool.
    pub destages: u64,
    /// Stripes written to the pool's drives.
    pub stripes_written: u64,
    /// Bytes of stripe chunks (data and parity) sent to the pool.
    pub stripe_bytes: u64,
    /// Bytes of batches sent to the pool's NVLOG.
    pub nvlog_bytes: u64,
    /// The last record appended to the pool's NVLOG.
    pub nvlog_last_record: u64,
    /// The last NVLOG record a destage committed (the log is truncated
    /// through it).
    pub nvlog_destaged_through: u64,
    /// Frames and map nodes sent to the pool in stripes.
    pub frames_destaged: u64,
    /// Frames and map nodes fetched from the pool into the flash.
    pub frames_fetched: u64,
    /// Bad frames on flash replaced by the pool's copy.
    pub frames_repaired: u64,
    /// Those of them whose copy came from an NVLOG record.
    pub frames_repaired_from_nvlog: u64,
    /// Frames dropped from the flash because the pool holds them.
    pub frames_evicted: u64,
}

/// Space figures of a vdisk or of the whole store (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceStatus {
    /// Mapped non-zero blocks × 4096.
    pub logical_bytes: u64,
    /// Distinct non-zero fingerprints × 4096.
    pub unique_bytes: u64,
    /// Frame bytes of those distinct fingerprints.
    pub stored_bytes: u64,
    /// `logical_bytes / unique_bytes`.
    pub dedupe_ratio: Option<f64>,
    /// `unique_bytes / stored_bytes`.
    pub compression_ratio: Option<f64>,
    /// `logical_bytes / stored_bytes`.
    pub reduction_ratio: Option<f64>,
    /// Distinct fingerprints mapped but missing from the flash index; they
    /// add nothing to `stored_bytes`. On a pool these are blocks only the
    /// pool's stripes hold (fetched when read); standalone, always 0
    /// unless the store is damaged.
    pub missing_frames: u64,
}

impl SpaceStatus {
    /// The figures for `logical` mapped blocks, `unique` distinct
    /// fingerprints, `stored` frame bytes and `missing` unindexed ones.
    fn new(logical: u64, unique: u64, stored: u64, missing: u64) -> SpaceStatus {
        let block = BLOCK_SIZE as u64;
        let logical_bytes = logical * block;
        let unique_bytes = unique * block;
        SpaceStatus {
            logical_bytes,
            unique_bytes,
            stored_bytes: stored,
            dedupe_ratio: ratio(logical_bytes, unique_bytes),
            compression_ratio: ratio(unique_bytes, stored),
            reduction_ratio: ratio(logical_bytes, stored),
            missing_frames: missing,
        }
    }
}

/// One vdisk of the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VdiskStatus {
    /// Its name.
    pub name: String,
    /// Whether this daemon serves it (the store may hold vdisks the
    /// current configuration does not name).
    pub served: bool,
    /// Its size in bytes.
    pub capacity: u64,
    /// Its space figures.
    #[serde(flatten)]
    pub space: SpaceStatus,
}

/// Why [`collect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The daemon is shutting down.
    #[error("strata-host is shutting down")]
    Cancelled,
    /// Walking a vdisk's map failed.
    #[error("cannot walk the map of vdisk {vdisk}: {source}")]
    Map {
        /// The vdisk.
        vdisk: String,
        /// The error.
        #[source]
        source: MapError,
    },
}

/// `numerator / denominator`, or `None` for a zero denominator.
fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator != 0).then(|| numerator as f64 / denominator as f64)
}

/// Computes the status of `store`; `served` names the vdisks this daemon
/// serves. Gives up with [`StatusError::Cancelled`] between lock holds once
/// `cancel` is set.
pub fn collect(
    store: &FlashStore,
    served: &[String],
    cancel: &AtomicBool,
) -> Result<HostStatus, StatusError> {
    let core = store.core();
    let superblock = &core.superblock;
    let (segments_used, segments_total) = store.segment_use();
    let (journal_used, journal_total) = store.journal_use();
    let counters = store.counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let flash = FlashStatus {
        path: core.device.path().display().to_string(),
        datastore: superblock.datastore.clone(),
        bytes: core.device.len(),
        segment_size: u64::from(superblock.segment_size),
        segments_used: u64::from(segments_used),
        segments_total: u64::from(segments_total),
        segment_bytes_used: u64::from(segments_used) * u64::from(superblock.segment_size),
        journal_used: journal_used as u64,
        journal_total: journal_total as u64,
        index_entries: store.index_len() as u64,
        failed: core.failure().map(|reason| reason.to_string()),
    };
    let counters = CounterStatus {
        dedupe_hits: load(&counters.dedupe_hits),
        frames_appended: load(&counters.frames_appended),
        frame_bytes_appended: load(&counters.frame_bytes_appended),
        bad_frames: store.bad_frames(),
        segments_written: load(&counters.segments_written),
        journal_records: load(&counters.journal_records),
        nvlog_records: load(&counters.nvlog_records),
        checkpoints: load(&counters.checkpoints),
        destages: load(&counters.destages),
        stripes_written: load(&counters.stripes_written),
        stripe_bytes: load(&counters.stripe_bytes),
        nvlog_bytes: load(&counters.nvlog_bytes),
        nvlog_last_record: store.nvlog_records().0,
        nvlog_destaged_through: store.nvlog_records().1,
        frames_destaged: load(&counters.frames_destaged),
        frames_fetched: load(&counters.frames_fetched),
        frames_evicted: load(&counters.frames_evicted),
        frames_repaired: load(&counters.frames_repaired),
        frames_repaired_from_nvlog: load(&counters.frames_repaired_from_nvlog),
    };

    // Frame length (None: not in the index) of every fingerprint seen so
    // far, over all vdisks: the store-wide distinct set.
    let mut lens: FxHashMap<Fingerprint, Option<u32>> = FxHashMap::default();
    let mut logical_total = 0u64;
    let mut vdisks = Vec::new();
    for vdisk in store.vdisks() {
        let (logical, distinct) = walk_vdisk(&vdisk, cancel)?;
        let new: Vec<Fingerprint> = distinct
            .iter()
            .filter(|fp| !lens.contains_key(*fp))
            .copied()
            .collect();
        for chunk in new.chunks(LOOKUPS_PER_LOCK) {
            if cancel.load(Ordering::Acquire) {
                return Err(StatusError::Cancelled);
            }
            lens.extend(chunk.iter().copied().zip(store.stored_lens(chunk)));
        }
        let (stored, missing) =
            stored_of(distinct.iter().map(|fp| lens.get(fp).copied().flatten()));
        if missing > 0 {
            tracing::warn!(vdisk = %vdisk.name, missing, "mapped blocks missing from the flash index");
        }
        logical_total += logical;
        vdisks.push(VdiskStatus {
            name: vdisk.name.clone(),
            served: served.contains(&vdisk.name),
            capacity: vdisk.block_count * BLOCK_SIZE as u64,
            space: SpaceStatus::new(logical, distinct.len() as u64, stored, missing),
        });
    }
    let (stored, missing) = stored_of(lens.values().copied());
    Ok(HostStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        flash,
        counters,
        store: SpaceStatus::new(logical_total, lens.len() as u64, stored, missing),
        vdisks,
    })
}

/// Sums frame lengths, and counts the fingerprints without one.
fn stored_of(lens: impl Iterator<Item = Option<u32>>) -> (u64, u64) {
    lens.fold((0, 0), |(stored, missing), len| match len {
        Some(len) => (stored + u64::from(len), missing),
        None => (stored, missing + 1),
    })
}

/// Why one lock hold of a map walk ended early.
enum Stop {
    /// The hold's leaf budget is spent; go on from the cursor.
    Pause,
    /// The map failed.
    Map(MapError),
}

impl From<MapError> for Stop {
    fn from(e: MapError) -> Stop {
        Stop::Map(e)
    }
}

/// Walks `vdisk`'s map: its mapped non-zero blocks and their distinct
/// fingerprints. The read lock is held for [`LEAVES_PER_LOCK`] leaves at a
/// time; each hold resumes at the first leaf the previous one left.
fn walk_vdisk(
    vdisk: &StoreVdisk,
    cancel: &AtomicBool,
) -> Result<(u64, FxHashSet<Fingerprint>), StatusError> {
    let mut logical = 0u64;
    let mut distinct = FxHashSet::default();
    // First block not yet accounted for; always the start of a leaf.
    let mut cursor = 0u64;
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(StatusError::Cancelled);
        }
        let mut leaves = 0u64;
        let map = vdisk.map();
        let result = map.visit(|visit| match visit {
            Visit::Node {
                level, first_lba, ..
            } => {
                // A node covers 256^(level + 1) blocks (up to 2^64: u128).
                let span = LEAF_SPAN.pow(u32::from(level) + 1);
                if u128::from(first_lba) + span <= u128::from(cursor) {
                    return Ok(Walk::SkipChildren);
                }
                if level == 0 {
                    if leaves == LEAVES_PER_LOCK {
                        cursor = first_lba;
                        return Err(Stop::Pause);
                    }
                    leaves += 1;
                }
                Ok(Walk::Continue)
            }
            Visit::Block { fingerprint, .. } => {
                logical += 1;
                distinct.insert(fingerprint);
                Ok(Walk::Continue)
            }
        });
        drop(map);
        match result {
            Ok(()) => return Ok((logical, distinct)),
            Err(Stop::Pause) => continue,
            Err(Stop::Map(source)) => {
                return Err(StatusError::Map {
                    vdisk: vdisk.name.clone(),
                    source,
                })
            }
        }
    }
}

/// `bytes` with a binary unit: `512 B`, `16.0 MiB`, `1.50 TiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if value < 10.0 { 2 } else { 1 };
    format!("{value:.decimals$} {}", UNITS[unit])
}

/// A ratio as `3.42x`, or `-` when it is undefined.
pub fn human_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{r:.2}x"),
        None => "-".to_string(),
    }
}

/// The readable form of `status` printed by `strata-host status`.
pub fn render(status: &HostStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let f = &status.flash;
    let c = &status.counters;
    let s = &status.store;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "strata-host {}: flash {} (datastore {}), {}",
        status.version,
        f.path,
        f.datastore,
        human_bytes(f.bytes)
    );
    if let Some(reason) = &f.failed {
        let _ = writeln!(out, "  FAILED, not taking writes: {reason}");
    }
    let _ = writeln!(
        out,
        "  segments  {} of {} in use, {} each ({} used)",
        f.segments_used,
        f.segments_total,
        human_bytes(f.segment_size),
        human_bytes(f.segment_bytes_used)
    );
    let _ = writeln!(
        out,
        "  journal   {} of {} used",
        human_bytes(f.journal_used),
        human_bytes(f.journal_total)
    );
    let _ = writeln!(out, "  index     {} entries", f.index_entries);
    let _ = writeln!(
        out,
        "  store     logical {}, unique {}, stored {}: dedupe {}, compression {}, overall {}",
        human_bytes(s.logical_bytes),
        human_bytes(s.unique_bytes),
        human_bytes(s.stored_bytes),
        human_ratio(s.dedupe_ratio),
        human_ratio(s.compression_ratio),
        human_ratio(s.reduction_ratio)
    );
    if s.missing_frames > 0 {
        let _ = writeln!(
            out,
            "  note      {} mapped blocks are not on this flash (on a pool: read from its stripes; standalone: damage)",
            s.missing_frames
        );
    }
    let _ = writeln!(
        out,
        "  counters  dedupe hits {}, frames appended {} ({}), bad frames {}, segments written {}, \
         journal records {}, NVLOG records {}, checkpoints {}",
        c.dedupe_hits,
        c.frames_appended,
        human_bytes(c.frame_bytes_appended),
        c.bad_frames,
        c.segments_written,
        c.journal_records,
        c.nvlog_records,
        c.checkpoints
    );
    if c.destages + c.frames_fetched + c.frames_repaired > 0 {
        let _ = writeln!(
            out,
            "  pool      destages {}, stripes written {}, entries destaged {}, fetched {}, repaired {} ({} from the NVLOG), evicted {}",
            c.destages,
            c.stripes_written,
            c.frames_destaged,
            c.frames_fetched,
            c.frames_repaired,
            c.frames_repaired_from_nvlog,
            c.frames_evicted
        );
    }
    let _ = writeln!(out);

    let header = [
        "VDISK",
        "CAPACITY",
        "LOGICAL",
        "UNIQUE",
        "STORED",
        "DEDUPE",
        "COMPRESSION",
    ];
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_string)];
    for v in &status.vdisks {
        let name = if v.served {
            v.name.clone()
        } else {
            format!("{} (not served)", v.name)
        };
        rows.push([
            name,
            human_bytes(v.capacity),
            human_bytes(v.space.logical_bytes),
            human_bytes(v.space.unique_bytes),
            human_bytes(v.space.stored_bytes),
            human_ratio(v.space.dedupe_ratio),
            human_ratio(v.space.compression_ratio),
        ]);
    }
    if status.vdisks.is_empty() {
        let _ = writeln!(out, "no vdisks");
        return out;
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i == 0 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "  {cell:>width$}");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ratios_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_ratio(Some(3.4166)), "3.42x");
        assert_eq!(human_ratio(None), "-");
    }

    #[test]
    fn ratios_are_null_without_a_denominator() {
        let empty = SpaceStatus::new(0, 0, 0, 0);
        assert_eq!(empty.dedupe_ratio, None);
        assert_eq!(empty.compression_ratio, None);
        assert_eq!(empty.reduction_ratio, None);
        let some = SpaceStatus::new(8, 2, 4096, 0);
        assert_eq!(some.dedupe_ratio, Some(4.0));
        assert_eq!(some.compression_ratio, Some(2.0));
        assert_eq!(some.reduction_ratio, Some(8.0));
    }
}
