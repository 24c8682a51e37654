//! The raw engine: a vdisk is a plain image file or block device, byte for
//! byte. Scratch disks use it, and it is the baseline the data services are
//! measured against.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::{sync_io::SyncQueue, uring::UringQueue, Engine, EngineInfo, EngineQueue, IoMode};

/// Buffers and offsets of O_DIRECT I/O must be aligned to this.
pub const DIRECT_IO_ALIGN: usize = 512;

/// A raw image opened for serving.
#[derive(Debug)]
pub struct RawImage {
    file: Arc<File>,
    path: PathBuf,
    info: EngineInfo,
    direct: bool,
    /// What was asked for.
    io_mode: IoMode,
    /// What the kernel allowed at open: `Uring` or `Sync`.
    io_used: IoMode,
}

impl RawImage {
    /// Opens `path`, creating a sparse image of `size` bytes if it is missing.
    ///
    /// If the image exists and `size` is given, the sizes must agree. The
    /// image is opened with O_DIRECT where the file system supports it.
    pub fn open(
        path: &Path,
        size: Option<u64>,
        read_only: bool,
        io_mode: IoMode,
    ) -> anyhow::Result<Self> {
        if !path.exists() {
            let Some(size) = size else {
                bail!(
                    "image {} does not exist (give size= to create it)",
                    path.display()
                );
            };
            let file = File::create_new(path)
                .with_context(|| format!("cannot create image {}", path.display()))?;
            file.set_len(size)
                .with_context(|| format!("cannot size image {} to {size} bytes", path.display()))?;
        }
        let (file, direct) = open_image(path, read_only)?;
        let mut file = file;
        let capacity = image_size(&mut file)
            .with_context(|| format!("cannot read the size of image {}", path.display()))?;
        if let Some(size) = size {
            if size != capacity {
                bail!(
                    "image {} is {capacity} bytes but the vdisk is configured as {size} bytes",
                    path.display()
                );
            }
        }
        if capacity == 0 || capacity % 512 != 0 {
            bail!(
                "image {} is {capacity} bytes: not a whole number of 512-byte sectors",
                path.display()
            );
        }
        let file = Arc::new(file);
        let io_used = match io_mode {
            IoMode::Sync => IoMode::Sync,
            IoMode::Uring | IoMode::Auto => match UringQueue::new(file.clone(), 1) {
                Ok(_) => IoMode::Uring,
                Err(e) if io_mode == IoMode::Auto => {
                    tracing::warn!(image = %path.display(), error = %e,
                        "io_uring unavailable; queues use blocking syscalls");
                    IoMode::Sync
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot set up io_uring for image {}", path.display())
                    })
                }
            },
        };
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            info: EngineInfo {
                capacity,
                read_only,
            },
            direct,
            io_mode,
            io_used,
        })
    }

    /// How queues move data: "io_uring" or "syscalls".
    pub fn io_kind(&self) -> &'static str {
        match self.io_used {
            IoMode::Sync => "syscalls",
            _ => "io_uring",
        }
    }

    /// Whether the image bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

/// Opens with O_DIRECT, or without it on file systems that refuse it (tmpfs).
pub(crate) fn open_image(path: &Path, read_only: bool) -> anyhow::Result<(File, bool)> {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(image = %path.display(), "file system refuses O_DIRECT; using the page cache");
            let f = open(0).with_context(|| format!("cannot open image {}", path.display()))?;
            Ok((f, false))
        }
        Err(e) => Err(e).with_context(|| format!("cannot open image {}", path.display())),
    }
}

/// Size of a regular file or block device.
pub(crate) fn image_size(file: &mut File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        file.seek(SeekFrom::End(0))
    } else if meta.is_file() {
        Ok(meta.len())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

impl Engine for RawImage {
    fn info(&self) -> EngineInfo {
        self.info
    }

    fn new_queue(&self, queue_index: u16) -> io::Result<Box<dyn EngineQueue>> {
        let align = if self.direct { DIRECT_IO_ALIGN } else { 1 };
        if self.io_used == IoMode::Uring {
            match UringQueue::new(self.file.clone(), align) {
                Ok(q) => {
                    tracing::debug!(image = %self.path.display(), queue = queue_index, "io_uring queue ready");
                    return Ok(Box::new(q));
                }
                Err(e) if self.io_mode == IoMode::Auto => {
                    tracing::warn!(image = %self.path.display(), queue = queue_index, error = %e,
                        "io_uring unavailable; falling back to blocking syscalls");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Box::new(SyncQueue::new(self.file.clone(), align)))
    }
}
