//! A directory drive: one file per chunk.
//!
//! Chunk `i` of a stripe lives at `<drive>/<stripe / 4096, hex>/<stripe,
//! hex>.<gen>.<i>` (`gen`: how often a rebuild rewrote the stripe). A chunk
//! is written once, to a temporary name, synced and renamed into place, so
//! a crash leaves either no chunk or a whole one.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use super::{ChunkError, ChunkId};

/// A drive that is a directory.
#[derive(Debug)]
pub struct DirectoryDrive {
    number: usize,
    path: PathBuf,
}

impl DirectoryDrive {
    /// Opens (creating if needed) directory `path` as drive `number`.
    pub fn open(number: usize, path: PathBuf) -> anyhow::Result<DirectoryDrive> {
        let drive = DirectoryDrive { number, path };
        drive.create()?;
        Ok(drive)
    }

    /// Creates the drive's directory if it is missing (a new file system
    /// mounted on a replaced disk's mount point, say).
    pub fn create(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.path).map_err(|e| {
            anyhow::anyhow!(
                "cannot create drive directory {} of drive {}: {e}",
                self.path.display(),
                self.number
            )
        })
    }

    /// The path of `chunk`'s file.
    pub fn chunk_path(&self, chunk: ChunkId) -> PathBuf {
        self.path
            .join(format!("{:x}", chunk.stripe >> 12))
            .join(format!("{:x}.{}.{}", chunk.stripe, chunk.gen, chunk.index))
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
            // The new directory's name must be durable too.
            fs::create_dir_all(dir)
                .and_then(|()| fs::File::open(&self.path)?.sync_all())
                .map_err(self.io_error("creating a chunk directory"))?;
        }
        let tmp = path.with_extension(format!("{}.tmp", chunk.index));
        let mut file = fs::File::create(&tmp).map_err(self.io_error("creating a chunk"))?;
        file.write_all(image)
            .and_then(|()| file.sync_data())
            .map_err(self.io_error("writing a chunk"))?;
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
