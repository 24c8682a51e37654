//! The host's flash: a file or block device, opened for O_DIRECT where the
//! file system allows it, and read and written in whole pages.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use io_uring::{opcode, types, IoUring};

use crate::engine::raw::{image_size, open_image};
use crate::engine::IoMode;
use strata_common::ondisk::PAGE;

/// The flash device (or file) of one store.
#[derive(Debug)]
pub struct FlashDevice {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    direct: bool,
    read_align: u64,
}

impl FlashDevice {
    /// Opens `path`, creating a sparse file of `size` bytes if it is missing.
    /// Returns the device and whether it was just created.
    pub fn open_or_create(path: &Path, size: u64) -> anyhow::Result<(FlashDevice, bool)> {
        let created = !path.exists();
        if created {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
            let file = File::create_new(path)
                .with_context(|| format!("cannot create flash file {}", path.display()))?;
            file.set_len(size).with_context(|| {
                format!("cannot size flash file {} to {size} bytes", path.display())
            })?;
        }
        let (mut file, direct) = open_image(path, false)?;
        let len = image_size(&mut file)
            .with_context(|| format!("cannot read the size of flash {}", path.display()))?;
        if len == 0 {
            bail!("flash {} is empty", path.display());
        }
        let read_align = if direct {
            direct_io_alignment(&file)
        } else {
            SECTOR
        };
        Ok((
            FlashDevice {
                file: Arc::new(file),
                path: path.to_path_buf(),
                len,
                direct,
                read_align,
            },
            created,
        ))
    }

    /// The open file, for queue rings that register it.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Where the flash is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The alignment of file offsets and lengths that reads need: the
    /// device's direct I/O alignment (often 512 bytes), so that reading one
    /// frame costs as few bytes as the device allows.
    pub fn read_align(&self) -> u64 {
        self.read_align
    }

    /// Reads exactly `buf.len()` bytes at `offset` (page-aligned buffer;
    /// offset and length aligned to [`FlashDevice::read_align`]).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Makes every completed write durable (fdatasync).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fdatasync(&*self.file).map_err(io::Error::from)
    }
}

/// The smallest alignment considered: one sector.
const SECTOR: u64 = 512;

/// The file offset alignment O_DIRECT needs on `file`, as the kernel reports
/// it (statx `STATX_DIOALIGN`, Linux 6.1 and later); a page where it does not
/// say. Never below a sector, never above a page.
fn direct_io_alignment(file: &File) -> u64 {
    let reported = rustix::fs::statx(
        file,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::DIOALIGN,
    )
    .ok()
    .filter(|st| st.stx_mask & rustix::fs::StatxFlags::DIOALIGN.bits() != 0)
    .map(|st| u64::from(st.stx_dio_offset_align))
    .filter(|&a| a.is_power_of_two());
    reported.map_or(PAGE as u64, |a| a.clamp(SECTOR, PAGE as u64))
}

/// Writes whole page runs to the flash: through a private io_uring where the
/// kernel allows it, with plain positioned writes otherwise. Used by the one
/// background thread that writes segments and journal records.
pub struct PageWriter {
    file: Arc<File>,
    ring: Option<IoUring>,
}

impl PageWriter {
    /// A writer for `device`; `mode` says whether io_uring may or must be used.
    pub fn new(device: &FlashDevice, mode: IoMode) -> io::Result<PageWriter> {
        let ring = match mode {
            IoMode::Sync => None,
            IoMode::Uring => Some(IoUring::new(4)?),
            IoMode::Auto => IoUring::new(4).ok(),
        };
        Ok(PageWriter {
            file: device.file.clone(),
            ring,
        })
    }

    /// Whether writes go through io_uring.
    pub fn uses_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Writes all of `buf` at `offset`, in one request where the kernel takes
    /// it whole.
    pub fn write_all_at(&mut self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            return self.file.write_all_at(buf, offset);
        };
        while !buf.is_empty() {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let entry = opcode::Write::new(types::Fd(self.file.as_raw_fd()), buf.as_ptr(), len)
                .offset(offset)
                .build();
            // SAFETY: `buf` is borrowed for this whole call and the call waits
            // for the write's completion before returning or retrying.
            unsafe { ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("flash writer ring unexpectedly full"))?;
            ring.submit_and_wait(1)?;
            let cqe = ring
                .completion()
                .next()
                .ok_or_else(|| io::Error::other("flash writer ring returned no completion"))?;
            let written = cqe.result();
            if written < 0 {
                let e = io::Error::from_raw_os_error(-written);
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if written == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "flash write made no progress",
                ));
            }
            let written = written as usize;
            buf = &buf[written..];
            offset += written as u64;
        }
        Ok(())
    }
}
