//! A directory drive: one file per chunk.
//!
//! Chunk `i` of a stripe lives at `<drive>/<stripe / 4096, hex>/<stripe,
//! hex>.<gen>.<i>` (`gen`: how often a rebuild rewrote the stripe). A chunk
//! is written once, to a temporary name, synced and renamed into place, so
//! a crash leaves either no chunk or a whole one.
//!
//! The drive's label (see [`super::label`]) is the file `drive-label`. A
//! directory without one is labelled only when that is allowed (a drive the
//! pool has never used, whatever it holds, or one the administrator
//! replaced); otherwise it is not the drive the pool used (its disk not
//! mounted, say) and is not written to. Nothing creates a drive's directory
//! behind the pool's back: chunk directories are made one level at a time.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::label::{check_label, decode_label, encode_label, DriveKind, DriveLabel, LABEL_LEN};
use super::{ChunkError, ChunkId};

/// The label's file in a directory drive.
const LABEL_FILE: &str = "drive-label";

/// A drive that is a directory.
#[derive(Debug)]
pub struct DirectoryDrive {
    number: usize,
    path: PathBuf,
}

impl DirectoryDrive {
    /// Opens directory `path` as drive `number` of pool `pool`: checks its
    /// label, or (if `may_label`) creates the directory as needed and
    /// labels it.
    pub fn open(
        number: usize,
        path: PathBuf,
        pool: &[u8; 16],
        may_label: bool,
    ) -> anyhow::Result<DirectoryDrive> {
        open_directory(number, &path, pool, may_label)
            .with_context(|| format!("drive {number} ({})", path.display()))?;
        Ok(DirectoryDrive { number, path })
    }

    /// The path of `chunk`'s file.
    pub fn chunk_path(&self, chunk: ChunkId) -> PathBuf {
        chunk_file(&self.path, chunk)
    }

    fn io_error(&self, what: &'static str) -> impl FnOnce(io::Error) -> ChunkError {
        let (drive, path) = (self.number, self.path.clone());
        move |source| ChunkError::Io {
            drive,
            path,
            what,
            source,
        }
    }

    /// Writes `image` (an encoded chunk) as `chunk`'s file, durably.
    pub fn write(&self, chunk: ChunkId, image: &[u8]) -> Result<(), ChunkError> {
        let path = self.chunk_path(chunk);
        let dir = path.parent().unwrap_or(&self.path);
        if !dir.exists() {
            // One level only: if the drive's directory went, so does the
            // write. The new directory's name must be durable too.
            match fs::create_dir(dir) {
                Ok(()) => fs::File::open(&self.path).and_then(|d| d.sync_all()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
            .map_err(self.io_error("creating a chunk directory"))?;
        }
        let tmp = path.with_extension(format!("{}.tmp", chunk.index));
        let written = fs::File::create(&tmp).and_then(|mut file| {
            file.write_all(image)?;
            file.sync_data()
        });
        if let Err(e) = written {
            // A partial file is no chunk; a full file system is no failed
            // disk (the pool lays new stripes out around it).
            let _ = fs::remove_file(&tmp);
            if e.kind() == io::ErrorKind::StorageFull {
                return Err(ChunkError::Full {
                    drive: self.number,
                    path: self.path.clone(),
                    len: image.len() as u64,
                });
            }
            return Err(self.io_error("writing a chunk")(e));
        }
        fs::rename(&tmp, &path).map_err(self.io_error("naming a chunk"))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io_error("syncing a chunk directory"))
    }

    /// The bytes of `chunk`'s file (unchecked).
    pub fn read(&self, chunk: ChunkId) -> Result<Vec<u8>, ChunkError> {
        match fs::read(self.chunk_path(chunk)) {
            Ok(image) => Ok(image),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ChunkError::Missing {
                drive: self.number,
                chunk,
            }),
            Err(source) => Err(self.io_error("reading a chunk")(source)),
        }
    }

    /// Whether `chunk`'s file exists (not whether it is sound).
    pub fn has(&self, chunk: ChunkId) -> bool {
        self.chunk_path(chunk).exists()
    }

    /// Deletes `chunk`'s file; a missing one is not an error.
    pub fn remove(&self, chunk: ChunkId) {
        match fs::remove_file(self.chunk_path(chunk)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(drive = self.number, %chunk, error = %e, "cannot delete an old chunk")
            }
        }
    }
}

/// The path of `chunk`'s file in the drive directory `root`.
pub fn chunk_file(root: &Path, chunk: ChunkId) -> PathBuf {
    root.join(format!("{:x}", chunk.stripe >> 12))
        .join(format!("{:x}.{}.{}", chunk.stripe, chunk.gen, chunk.index))
}

/// Checks the label of directory `path` as drive `number` of pool `pool`,
/// or labels it (creating it if needed) when it has none and `may_label`.
fn open_directory(
    number: usize,
    path: &Path,
    pool: &[u8; 16],
    may_label: bool,
) -> anyhow::Result<()> {
    let label_path = path.join(LABEL_FILE);
    match fs::read(&label_path) {
        Ok(bytes) => {
            anyhow::ensure!(
                bytes.len() == LABEL_LEN,
                "its label is {} bytes",
                bytes.len()
            );
            let label = decode_label(&bytes)
                .map_err(|why| anyhow::anyhow!("damaged label: {why}"))?
                .context("its label file holds no label")?;
            check_label(&label, pool, number, DriveKind::Directory).map_err(anyhow::Error::msg)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            anyhow::ensure!(
                may_label,
                "it has no label: the drive the pool used is not there (is its disk mounted? a replaced disk is taken into use by 'strata drive replace {number}')"
            );
            fs::create_dir_all(path).context("cannot create it")?;
            let label = DriveLabel {
                pool: *pool,
                number: u16::try_from(number).context("too many drives")?,
                kind: DriveKind::Directory,
                capacity: 0,
            };
            let tmp = path.join(format!("{LABEL_FILE}.tmp"));
            let mut file = fs::File::create(&tmp).context("cannot write its label")?;
            file.write_all(&encode_label(&label))
                .and_then(|()| file.sync_all())
                .and_then(|()| fs::rename(&tmp, &label_path))
                .and_then(|()| fs::File::open(path)?.sync_all())
                .context("cannot write its label")?;
            tracing::info!(drive = number, path = %path.display(), "labelled a directory drive");
            Ok(())
        }
        Err(e) => Err(e).context("cannot read its label"),
    }
}
