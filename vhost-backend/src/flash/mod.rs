//! The flash store: the host's flash as a log of segments holding frames
//! (compressed, encrypted, checksummed blocks) and map nodes, a journal
//! ring that makes writes durable before their segment is full, a flash
//! index from fingerprint to location, and the vdisks' maps.
//!
//! Writes fingerprint each block, store the blocks the store lacks in the
//! open segment (RAM), point the vdisk's map at them and queue the change
//! for the journal. The flusher thread writes journal batches (group
//! commit), full segments (one write each) and checkpoints (all maps
//! flushed into segments, roots recorded in the journal). Recovery loads
//! the last checkpoint's roots, rebuilds the index from segment summaries
//! and replays the journal after the checkpoint. docs/ARCHITECTURE.md has
//! the byte formats and the reasoning.

mod adopt;
mod cleaner;
mod core;
mod destage;
mod device;
mod fetch;
mod flusher;
mod journal;
mod nvlog_frames;
mod recovery;
mod segment;
mod vdisk;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use strata_common::fingerprint::{Fingerprint, BLOCK_SIZE};
use strata_common::frame::{FrameCodec, FrameError, FrameKeys};
use strata_common::keys::{decode_key_file, DatastoreKeys, MasterKey};
use strata_common::map::{MapError, NodeCache, NodeIdKey, VdiskMap};
use strata_common::ondisk::{Superblock, PAGE, SUPERBLOCK_VERSION};

pub use self::core::{Core, Located};
use self::device::{FlashDevice, PageWriter};
use self::flusher::Writer;
use self::journal::JournalRing;
pub use self::segment::Location;
use self::vdisk::NodeAccess;
pub use self::vdisk::StoreVdisk;
use crate::engine::IoMode;
use crate::pool::PoolLink;

/// How to open or make a flash store.
#[derive(Debug, Clone)]
pub struct FlashConfig {
    /// The flash file or block device.
    pub path: PathBuf,
    /// Size of a new flash file.
    pub size: u64,
    /// Bytes per segment.
    pub segment_size: u32,
    /// Bytes of journal ring on a new flash.
    pub journal_size: u64,
    /// RAM budget for cached map nodes.
    pub map_cache_bytes: usize,
    /// The datastore name recorded at format.
    pub datastore: String,
    /// Where the datastore's key file is (standalone), or the one this
    /// host offers the pool if it has one.
    pub key_dir: PathBuf,
    /// How to do I/O.
    pub io: IoMode,
    /// The pool whose NVLOG makes writes durable; `None` for a standalone
    /// host whose flash journal does. With a pool the flash is a cache:
    /// formatted afresh and refilled from the pool at every start.
    pub pool: Option<strata_common::config::PoolSettings>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Flash I/O failed.
    #[error("flash I/O failed {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A vdisk's map failed.
    #[error("vdisk {vdisk}: {source}")]
    Map {
        /// The vdisk.
        vdisk: String,
        /// The error.
        #[source]
        source: MapError,
    },
    /// Encoding a frame failed.
    #[error("cannot encode a frame: {0}")]
    Encode(#[source] FrameError),
    /// No free segment slot.
    #[error("flash store full: all {segments} segments in use")]
    Full {
        /// Number of segments.
        segments: u32,
    },
    /// A record does not fit the journal even when it is empty.
    #[error("journal of {journal} bytes too small for a {record}-byte record")]
    JournalTooSmall {
        /// Record length.
        record: usize,
        /// Journal length.
        journal: usize,
    },
    /// An earlier flash write failed; the store takes no more writes.
    #[error("flash store stopped after an earlier failure: {0}")]
    Failed(Arc<str>),
    /// The pool's NVLOG did not take a batch.
    #[error("{0}")]
    Pool(String),
    /// A broken invariant (a bug).
    #[error("flash store internal error: {0}")]
    Internal(&'static str),
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> std::io::Error {
        match e {
            StoreError::Io { source, .. } => source,
            StoreError::Full { .. } => std::io::Error::from_raw_os_error(libc::ENOSPC),
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// What the flusher, the vdisks and the store handle share.
pub struct Shared {
    core: Arc<Core>,
    vdisks: RwLock<Vec<Arc<StoreVdisk>>>,
    writer: Mutex<Writer>,
    node_ids: NodeIdKey,
    node_cache: Arc<NodeCache>,
    /// The store is a cache of a pool (no flash recovery; the cleaner need
    /// not make its copies durable).
    pooled: bool,
}

impl Shared {
    /// The vdisks, in id order.
    pub fn vdisks(&self) -> Vec<Arc<StoreVdisk>> {
        self.vdisks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn open_map(&self, block_count: u64, root: Fingerprint) -> VdiskMap<NodeAccess> {
        VdiskMap::open(
            NodeAccess::new(self.core.clone(), self.node_ids.clone()),
            self.node_cache.clone(),
            self.node_ids.clone(),
            block_count,
            root,
        )
    }
}

/// The datastore's keys on a pool: the key file the pool keeps for every
/// host, so that one host can read what another wrote (a vdisk moves
/// between hosts with its data). This host offers its existing key file,
/// or fresh keys; the pool keeps the first offer it gets. A local key file
/// that differs from the pool's is an error: data it encrypted would not
/// read.
fn keys_from_pool(
    link: &mut PoolLink,
    key_dir: &Path,
    datastore: &str,
    master: &MasterKey,
) -> anyhow::Result<FrameKeys> {
    let local = DatastoreKeys::read_file(key_dir, datastore, master)?;
    let where_kept = PathBuf::from(format!("<pool {}, datastore {datastore}>", link.address()));
    let offer = match &local {
        Some(bytes) => bytes.to_vec(),
        None => DatastoreKeys::new_file(datastore, master, &where_kept)?.to_vec(),
    };
    let kept = link.datastore_keys(datastore, offer)?;
    if let Some(local) = &local {
        if local[..] != kept[..] {
            bail!(
                "key file {} holds other keys than datastore {datastore:?} has at pool {}: every host of a pool must use the pool's keys",
                DatastoreKeys::path(key_dir, datastore)?.display(),
                link.address()
            );
        }
    }
    Ok(decode_key_file(&kept, datastore, master, &where_kept)?)
}

/// The host's flash store.
pub struct FlashStore {
    shared: Arc<Shared>,
    /// The flusher and cleaner threads, joined at shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl FlashStore {
    /// Opens the store on `config.path`, formatting a new or blank flash,
    /// and recovering an existing one. The datastore's keys, wrapped by
    /// `master`, come from the pool when there is one, else from the key
    /// file (made on first use).
    pub fn open(config: &FlashConfig, master: &MasterKey) -> anyhow::Result<FlashStore> {
        let started = Instant::now();
        // Three connections: the flusher's appends, reads that miss the
        // flash, and the destager's stripes; none waits behind another.
        // The flusher's link takes the host's lease before anything is
        // replayed, fencing any earlier strata-host of this host; the
        // destager's joins it. Reads need no lease.
        let mut keys = None;
        let (mut pool, pool_reads, destager) = match &config.pool {
            Some(settings) => {
                let mut link = PoolLink::connect(settings)?;
                link.take_lease()?;
                keys = Some(keys_from_pool(
                    &mut link,
                    &config.key_dir,
                    &config.datastore,
                    master,
                )?);
                let destager = destage::Destager::new(
                    link.join()?,
                    std::time::Duration::from_secs(settings.destage_interval_secs),
                );
                (
                    Some(link),
                    Some(fetch::PoolReads::new(PoolLink::connect(settings)?)),
                    Some(destager),
                )
            }
            None => (None, None, None),
        };
        let keys = match keys {
            Some(keys) => keys,
            None => DatastoreKeys::load_or_create(&config.key_dir, &config.datastore, master)?,
        };
        let keys = &keys;
        let (device, created) = FlashDevice::open_or_create(&config.path, config.size)?;
        let flash = device.path().display().to_string();
        let mut page0 = crate::engine::buffers::AlignedBuf::new(PAGE, PAGE);
        device
            .read_exact_at(page0.as_mut_slice(), 0)
            .with_context(|| format!("cannot read the superblock of flash {flash}"))?;
        let blank = page0.as_slice().iter().all(|&b| b == 0);
        let mut pages = PageWriter::new(&device, config.io)
            .with_context(|| format!("cannot set up io_uring for flash {flash}"))?;
        let fresh = created || blank || pool.is_some();
        if pool.is_some() && !(created || blank) {
            tracing::info!(%flash, "host flash is a cache of the pool: formatting it afresh");
        }
        let (superblock, version) = if fresh {
            let superblock = format_layout(config, device.len())
                .with_context(|| format!("cannot format flash {flash}"))?;
            write_superblock(&mut pages, &device, &superblock)
                .with_context(|| format!("cannot write the superblock of flash {flash}"))?;
            tracing::info!(%flash, segments = superblock.segment_count, segment_size = superblock.segment_size,
                journal = superblock.journal_len, "formatted flash");
            (superblock, SUPERBLOCK_VERSION)
        } else {
            Superblock::decode_versioned(page0.as_slice()).with_context(|| {
                format!("flash {flash} does not hold a Strata store (or it is damaged)")
            })?
        };
        if superblock.datastore != config.datastore {
            bail!(
                "flash {flash} belongs to datastore {:?}, not {:?}",
                superblock.datastore,
                config.datastore
            );
        }
        if version < SUPERBLOCK_VERSION {
            // Before recovery can write a segment with split frames, which
            // a strata-host reading this version would take for free space.
            write_superblock(&mut pages, &device, &superblock)
                .with_context(|| format!("cannot upgrade the superblock of flash {flash}"))?;
            tracing::info!(%flash, from = version, to = SUPERBLOCK_VERSION,
                "flash store format upgraded: older strata-host versions can no longer open it");
        }
        let core = Arc::new(Core {
            device,
            superblock: superblock.clone(),
            codec: FrameCodec::new(keys),
            state: Mutex::new(recovery::empty_state(&superblock)),
            flusher_wake: Condvar::new(),
            room: Condvar::new(),
            cleaner_wake: Condvar::new(),
            durable_seq: AtomicU64::new(0),
            nvlog_appended: AtomicU64::new(0),
            nvlog_destaged: AtomicU64::new(0),
            destaged_through_segment: AtomicU64::new(0),
            journal_used: AtomicU64::new(0),
            pool_reads,
            waiters: Mutex::new(Vec::new()),
            counters: Default::default(),
        });
        let shared = Arc::new(Shared {
            core: core.clone(),
            vdisks: RwLock::new(Vec::new()),
            writer: Mutex::new(Writer {
                pages,
                ring: JournalRing::new(superblock.journal_len as usize, 0),
                last_checkpoint: Instant::now(),
                records_since_checkpoint: 0,
                pool: None,
            }),
            node_ids: NodeIdKey::new(&keys.dedupe_key),
            node_cache: Arc::new(NodeCache::new(config.map_cache_bytes)),
            pooled: config.pool.is_some(),
        });
        let replayed = if fresh {
            let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            flusher::checkpoint(&shared, &mut writer)
                .with_context(|| format!("cannot write the first checkpoint on flash {flash}"))?;
            drop(writer);
            match pool.as_mut() {
                Some(link) => recovery::refill_from_pool(&shared, link).with_context(|| {
                    format!("cannot refill flash {flash} from pool {}", link.address())
                })?,
                None => 0,
            }
        } else {
            recovery::recover(&shared).with_context(|| format!("cannot recover flash {flash}"))?
        };
        shared.writer.lock().unwrap_or_else(|p| p.into_inner()).pool = pool;
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("flusher".into())
                .spawn(move || flusher::run(shared))
                .context("cannot start the flusher thread")?
        };
        let cleaner = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cleaner".into())
                .spawn(move || cleaner::run(shared, destager))
                .context("cannot start the cleaner thread")?
        };
        tracing::info!(%flash, vdisks = shared.vdisks().len(), replayed, elapsed_ms = started.elapsed().as_millis() as u64,
            direct = shared.core.device.is_direct(), io_uring = shared.writer.lock().map(|w| w.pages.uses_uring()).unwrap_or(false),
            "flash store open");
        Ok(FlashStore {
            shared,
            threads: Mutex::new(vec![cleaner, flusher]),
        })
    }

    /// The shared core, for engine queues.
    pub fn core(&self) -> &Arc<Core> {
        &self.shared.core
    }

    /// The vdisk `name` of `capacity` bytes, created (and checkpointed) if the
    /// store does not have it yet. On a pool the host first takes the
    /// vdisk's lease; if another host held it, that host is fenced for it
    /// and its state is adopted into this host's log before anything else.
    pub fn open_vdisk(&self, name: &str, capacity: Option<u64>) -> anyhow::Result<Arc<StoreVdisk>> {
        let mut writer = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let existing_id = |shared: &Shared| {
            shared
                .vdisks()
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.id)
        };
        let new_id = |shared: &Shared| shared.vdisks().iter().map(|v| v.id + 1).max().unwrap_or(1);
        let lease_epoch = match writer.pool.as_mut() {
            Some(link) => {
                let claim = link
                    .claim_vdisk(name)
                    .with_context(|| format!("cannot open vdisk {name}"))?;
                if let Some(source) = &claim.adopt_from {
                    tracing::info!(vdisk = name, from = %source, epoch = claim.epoch,
                        "took the vdisk over from another host; adopting its state");
                    let id = existing_id(&self.shared).unwrap_or_else(|| new_id(&self.shared));
                    let found =
                        adopt::adopt(&self.shared, &mut writer, name, id, source, claim.epoch)
                            .with_context(|| {
                                format!("cannot adopt vdisk {name} from host {source}")
                            })?;
                    if !found {
                        tracing::info!(vdisk = name, from = %source,
                            "the previous holder never logged the vdisk's creation: it starts empty");
                    }
                    flusher::checkpoint(&self.shared, &mut writer)
                        .with_context(|| format!("cannot record adopted vdisk {name}"))?;
                    if let Some(link) = writer.pool.as_mut() {
                        link.adopted(name, claim.epoch)
                            .with_context(|| format!("cannot open vdisk {name}"))?;
                    }
                }
                claim.epoch
            }
            None => 0,
        };
        let existing = self.shared.vdisks().into_iter().find(|v| v.name == name);
        if let Some(vdisk) = existing {
            vdisk.set_lease_epoch(lease_epoch);
            let have = vdisk.block_count * BLOCK_SIZE as u64;
            if let Some(want) = capacity {
                if want != have {
                    bail!("vdisk {name} is {have} bytes on this flash, but size={want} was given (resizing is not supported)");
                }
            }
            return Ok(vdisk);
        }
        let Some(capacity) = capacity else {
            bail!("vdisk {name} does not exist on this flash (give size= to create it)");
        };
        if capacity == 0 || !capacity.is_multiple_of(BLOCK_SIZE as u64) {
            bail!("vdisk {name}: size {capacity} is not a positive multiple of {BLOCK_SIZE} bytes");
        }
        let block_count = capacity / BLOCK_SIZE as u64;
        let id = new_id(&self.shared);
        let map = self.shared.open_map(block_count, Fingerprint::ZERO);
        let vdisk = Arc::new(StoreVdisk::new(
            id,
            name.to_string(),
            map,
            self.shared.core.clone(),
        ));
        vdisk.set_lease_epoch(lease_epoch);
        self.shared
            .vdisks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(vdisk.clone());
        // Logged before any write to it, so a log replay can create it.
        self.shared
            .core
            .lock()
            .batch
            .push_vdisk(id, block_count, name);
        flusher::checkpoint(&self.shared, &mut writer)
            .with_context(|| format!("cannot record new vdisk {name}"))?;
        tracing::info!(vdisk = name, capacity, id, "created vdisk");
        Ok(vdisk)
    }

    /// Every vdisk of the store.
    pub fn vdisks(&self) -> Vec<Arc<StoreVdisk>> {
        self.shared.vdisks()
    }

    /// Stops the cleaner, then the flusher after a final checkpoint.
    /// Writes after this fail.
    pub fn shut_down(&self) {
        let core = &self.shared.core;
        core.lock().stopping = true;
        core.cleaner_wake.notify_all();
        core.room.notify_all();
        core.flusher_wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in threads {
            if handle.join().is_err() {
                tracing::error!("a flash store thread panicked");
            }
        }
    }

    /// Counters and space figures for the status command.
    pub fn counters(&self) -> &self::core::Counters {
        &self.shared.core.counters
    }

    /// Segments in use and in total.
    pub fn segment_use(&self) -> (u32, u32) {
        let state = self.shared.core.lock();
        let total = state.slots.len() as u32;
        (total - state.free.len() as u32, total)
    }

    /// The flash's journal fill, in bytes used and total, as of the
    /// flusher's last journal write (never waits for the flusher).
    pub fn journal_use(&self) -> (usize, usize) {
        let core = &self.shared.core;
        (
            core.journal_used.load(Ordering::Relaxed) as usize,
            core.superblock.journal_len as usize,
        )
    }

    /// The last record this host appended to the pool's NVLOG, and the last
    /// one a destage committed (both 0 standalone).
    pub fn nvlog_records(&self) -> (u64, u64) {
        let core = &self.shared.core;
        (
            core.nvlog_appended.load(Ordering::Acquire),
            core.nvlog_destaged.load(Ordering::Acquire),
        )
    }

    /// Number of index entries.
    pub fn index_len(&self) -> usize {
        self.shared.core.lock().index.len()
    }

    /// The stored length (frame bytes, as the flash index records it) of
    /// each of `fingerprints`, in order; `None` for one the store does not
    /// hold. Takes the store's lock once for the whole slice, so callers
    /// bound the slice to keep writers from waiting.
    pub fn stored_lens(&self, fingerprints: &[Fingerprint]) -> Vec<Option<u32>> {
        let state = self.shared.core.lock();
        fingerprints
            .iter()
            .map(|fp| {
                state
                    .index
                    .get(fp)
                    .map(|location| location.entry_len() as u32)
            })
            .collect()
    }

    /// Frames that failed verification since start.
    pub fn bad_frames(&self) -> u64 {
        self.shared.core.counters.bad_frames.load(Ordering::Relaxed)
    }
}

impl Drop for FlashStore {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Writes `superblock` as page 0 of `device` and syncs it.
fn write_superblock(
    pages: &mut PageWriter,
    device: &FlashDevice,
    superblock: &Superblock,
) -> std::io::Result<()> {
    let mut image = crate::engine::buffers::AlignedBuf::new(PAGE, PAGE);
    image.as_mut_slice().copy_from_slice(&superblock.encode());
    pages.write_all_at(image.as_slice(), 0)?;
    device.sync()
}

/// Lays out a new store on `len` bytes of flash.
fn format_layout(config: &FlashConfig, len: u64) -> anyhow::Result<Superblock> {
    const MIB: u64 = 1 << 20;
    let segment_size = u64::from(config.segment_size);
    if segment_size < 64 * 1024 || !segment_size.is_multiple_of(PAGE as u64) {
        bail!("segment size {segment_size} must be a multiple of {PAGE} and at least 64 KiB");
    }
    let journal_len = config.journal_size.min(len / 8) & !(MIB - 1);
    if journal_len < 4 * MIB {
        bail!("flash of {len} bytes leaves a journal of {journal_len} bytes; need at least 4 MiB (use a larger flash)");
    }
    let segments_offset = MIB + journal_len;
    let segment_count =
        (len.saturating_sub(segments_offset) / segment_size).min(u64::from(u32::MAX));
    if segment_count < 8 {
        bail!("flash of {len} bytes holds only {segment_count} segments of {segment_size} bytes; need at least 8");
    }
    let mut store_id = [0u8; 16];
    getrandom::fill(&mut store_id)
        .map_err(|e| anyhow::anyhow!("no randomness for the store id: {e}"))?;
    Ok(Superblock {
        store_id,
        datastore: config.datastore.clone(),
        journal_offset: MIB,
        journal_len,
        segments_offset,
        segment_size: config.segment_size,
        segment_count: segment_count as u32,
    })
}
