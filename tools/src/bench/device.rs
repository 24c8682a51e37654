//! Opening a target with libblkio: driver properties, queues and the I/O
//! memory the device may access.
//!
//! vhost-user backends can only reach memory the client shares with them,
//! so all I/O buffers live in one libblkio memory region (a memfd), mapped
//! once and split between the queues.

use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use blkio::{Blkio, Blkioq, MemoryRegion};

use super::target::{TargetKind, TargetSpec};

/// Descriptors one request takes on a split virtqueue without indirect
/// descriptors (header, data, status): libblkio's virtio driver uses three.
const DESCRIPTORS_PER_REQUEST: usize = 3;

/// The largest virtqueue libblkio asks for; backends built on libvhost-user
/// accept at most 1024. Deeper queue depths wait in libblkio's own backlog.
const MAX_QUEUE_SIZE: usize = 1024;

/// The page size I/O memory is rounded to.
const PAGE: usize = 4096;

/// How to open a device.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Number of queues to start.
    pub queues: usize,
    /// I/Os in flight per queue; sizes the rings.
    pub iodepth: usize,
    /// Open without write access (then writes fail in libblkio).
    pub read_only: bool,
    /// Bytes of I/O memory each queue needs.
    pub memory_per_queue: usize,
}

/// What the device reports about itself.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The libblkio driver name.
    pub driver: &'static str,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Required alignment of offsets and lengths (the logical block size).
    pub request_alignment: u64,
    /// The most queues the device offers.
    pub max_queues: usize,
}

/// An open, started device with its I/O memory mapped.
///
/// Keep it alive while its queues are in use: dropping it disconnects.
pub struct Device {
    /// Kept for its lifetime: dropping `Blkio` tears the connection down.
    _blkio: Blkio,
    info: DeviceInfo,
    queues: Vec<QueueIo>,
}

/// One queue and the part of the I/O memory reserved for it.
pub struct QueueIo {
    /// The libblkio queue.
    pub queue: Blkioq,
    /// This queue's I/O memory.
    pub memory: IoMemory,
}

/// A span of I/O memory shared with the device.
///
/// The memory stays valid as long as the [`Device`] it came from. While an
/// I/O on part of it is in flight the device may read or write that part at
/// any time, so Rust references to it must only exist while no I/O using it
/// is outstanding.
#[derive(Debug)]
pub struct IoMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: `IoMemory` is a pointer to memory owned by the `Device`, which
// outlives the threads using it; each span is handed to exactly one thread.
unsafe impl Send for IoMemory {}

impl IoMemory {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A raw pointer to byte `offset`, for submitting I/O.
    ///
    /// # Panics
    ///
    /// If `offset + len` runs past the end of the span.
    pub fn ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "I/O memory access {offset}+{len} out of {} bytes",
            self.len
        );
        // SAFETY: in bounds, checked above.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// The bytes `offset..offset + len`.
    ///
    /// # Safety
    ///
    /// No I/O may be in flight on these bytes while the slice lives, and no
    /// other live slice may overlap them.
    ///
    /// # Panics
    ///
    /// If `offset + len` runs past the end of the span.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        let ptr = self.ptr(offset, len);
        // SAFETY: in bounds; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

/// Wraps a libblkio error with what we were doing.
fn blk<T>(result: blkio::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    result.map_err(|e| anyhow::anyhow!("{}: {} ({})", what(), e.message(), e.errno()))
}

impl Device {
    /// Connects to `spec`, starts `config.queues` queues and maps
    /// `config.memory_per_queue` bytes of I/O memory for each.
    pub fn open(spec: &TargetSpec, config: &DeviceConfig) -> Result<Device> {
        let driver = spec.kind.driver();
        let path = spec
            .path
            .to_str()
            .with_context(|| format!("{}: the path is not valid UTF-8", spec.path.display()))?;
        match spec.kind {
            TargetKind::VhostUser => {
                let meta = std::fs::metadata(&spec.path).with_context(|| {
                    format!("vhost-user socket {path} (is the backend running?)")
                })?;
                if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                    bail!("{path} is not a unix socket");
                }
            }
            TargetKind::File => {
                std::fs::metadata(&spec.path).with_context(|| format!("file {path}"))?;
            }
        }

        let mut blkio = blk(Blkio::new(driver), || {
            format!("creating libblkio driver {driver}")
        })?;
        blk(blkio.set_str("path", path), || "setting path".to_string())?;
        if spec.kind == TargetKind::File {
            blk(blkio.set_bool("direct", true), || {
                "setting direct".to_string()
            })?;
        }
        blk(blkio.set_bool("read-only", config.read_only), || {
            "setting read-only".to_string()
        })?;
        blk(blkio.connect(), || format!("connecting to {spec}"))?;

        let capacity = blk(blkio.get_u64("capacity"), || "reading capacity".to_string())?;
        let request_alignment = blk(blkio.get_i32("request-alignment"), || {
            "reading request-alignment".to_string()
        })?;
        let max_queues = blk(blkio.get_i32("max-queues"), || {
            "reading max-queues".to_string()
        })?;
        let info = DeviceInfo {
            driver,
            capacity,
            request_alignment: u64::try_from(request_alignment.max(1)).unwrap_or(512),
            max_queues: usize::try_from(max_queues.max(1)).unwrap_or(1),
        };
        if config.queues > info.max_queues {
            bail!(
                "{spec} offers {} queue(s) but {} were asked for (lower --queues or start the backend with more queues)",
                info.max_queues,
                config.queues
            );
        }

        let queues = i32::try_from(config.queues).context("too many queues")?;
        blk(blkio.set_i32("num-queues", queues), || {
            format!("setting num-queues={queues}")
        })?;
        match spec.kind {
            TargetKind::VhostUser => {
                let size = (config.iodepth * DESCRIPTORS_PER_REQUEST)
                    .next_power_of_two()
                    .clamp(256, MAX_QUEUE_SIZE);
                blk(blkio.set_i32("queue-size", size as i32), || {
                    format!("setting queue-size={size}")
                })?;
            }
            TargetKind::File => {
                let entries = config.iodepth.next_power_of_two().clamp(128, 32768);
                blk(blkio.set_i32("num-entries", entries as i32), || {
                    format!("setting num-entries={entries}")
                })?;
            }
        }

        let started = match blkio.start() {
            Err(e) if e.errno() == blkio::Errno::ROFS && !config.read_only => bail!(
                "{spec} is a read-only device: only read workloads (randread, read) can run on it"
            ),
            result => blk(result, || format!("starting {spec}"))?,
        };
        if started.queues.len() != config.queues {
            bail!(
                "{spec}: asked for {} queues, libblkio started {}",
                config.queues,
                started.queues.len()
            );
        }

        let alignment = blk(blkio.get_u64("mem-region-alignment"), || {
            "reading mem-region-alignment".to_string()
        })?;
        let alignment = usize::try_from(alignment)
            .context("mem-region-alignment too large")?
            .max(PAGE);
        let per_queue = config.memory_per_queue.div_ceil(alignment) * alignment;
        let total = (per_queue * config.queues).max(alignment);
        let region = blk(blkio.alloc_mem_region(total), || {
            format!("allocating {total} bytes of I/O memory")
        })?;
        blk(blkio.map_mem_region(&region), || {
            format!("mapping {total} bytes of I/O memory into {spec}")
        })?;
        let base = region_base(&region)?;

        let queues = started
            .queues
            .into_iter()
            .enumerate()
            .map(|(i, queue)| QueueIo {
                queue,
                memory: IoMemory {
                    // SAFETY: `i * per_queue + per_queue <= total`.
                    base: unsafe { NonNull::new_unchecked(base.as_ptr().add(i * per_queue)) },
                    len: per_queue,
                },
            })
            .collect();

        Ok(Device {
            _blkio: blkio,
            info,
            queues,
        })
    }

    /// What the device reported.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Takes the queues (once) to hand them to worker threads.
    pub fn take_queues(&mut self) -> Vec<QueueIo> {
        std::mem::take(&mut self.queues)
    }
}

fn region_base(region: &MemoryRegion) -> Result<NonNull<u8>> {
    NonNull::new(region.addr as *mut u8).context("libblkio returned a null memory region")
}
