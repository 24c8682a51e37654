//! A minimal writer for the "newc" cpio format the Linux initramfs loader reads.
//!
//! Only what the harness needs: directories and regular files, no hard links.
//! Linux unpacks concatenated archives one after another, so an archive made
//! here can be appended to the cached base initramfs to add or replace files.

use anyhow::{bail, Result};

/// Builds one newc archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl CpioWriter {
    /// Starts an empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (`path` without leading slash, e.g. `strata`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[])?;
        Ok(self)
    }

    /// Adds a regular file with the given contents and permission bits.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<&mut Self> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data)?;
        Ok(self)
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.entry("TRAILER!!!", 0, 1, &[])?;
        Ok(self.buf)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            bail!("bad cpio member name {name:?}");
        }
        let (Ok(filesize), Ok(namesize)) =
            (u32::try_from(data.len()), u32::try_from(name.len() + 1))
        else {
            bail!("cpio member {name:?} is too large for the newc format");
        };
        self.next_ino += 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            filesize,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            namesize,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut w = CpioWriter::new();
        w.dir("d", 0o755)
            .unwrap()
            .file("d/f", 0o644, b"hello")
            .unwrap();
        let a = w.finish().unwrap();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // Header is 110 bytes; "d\0" pads the first entry to 112.
        assert_eq!(&a[110..112], b"d\0");
        let second = &a[112..];
        assert!(second.starts_with(b"070701"));
        // File size field (7th) of the second entry.
        assert_eq!(&second[6 + 6 * 8..6 + 7 * 8], b"00000005");
        let name_at = 110;
        assert_eq!(&second[name_at..name_at + 4], b"d/f\0");
        // 110 + 4 = 114, padded to 116, then the data.
        assert_eq!(&second[116..121], b"hello");
        let tail = &a[a.len() - 124..];
        assert!(tail.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn rejects_absolute_names() {
        assert!(CpioWriter::new().file("/etc/x", 0o644, b"").is_err());
    }
}
