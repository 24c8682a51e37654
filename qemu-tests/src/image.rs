//! The cached guest image (kernel + base initramfs).

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A bootable guest: a Debian kernel and an uncompressed newc initramfs whose
/// `/init` runs `/strata/test.sh` (see `guest/init`).
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The base initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
}

static SHARED: OnceLock<Result<GuestImage, String>> = OnceLock::new();

impl GuestImage {
    /// The image for this process: built (or found in the cache) on first use
    /// under `target/strata-guest/`, then shared by every test. A failure is
    /// remembered and returned to every caller.
    pub fn shared() -> Result<&'static GuestImage> {
        SHARED
            .get_or_init(|| {
                target_dir_cache()
                    .and_then(|dir| Self::build(&dir))
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("cannot build the guest image: {e}"))
    }

    /// Builds the image into `cache_dir` with `guest/build-guest.sh`, or
    /// reuses the one there if the Debian package versions have not changed.
    /// Needs `apt-get` and `dpkg-deb` on the host; downloads only through apt.
    pub fn build(cache_dir: &Path) -> Result<GuestImage> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build-guest.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(cache_dir)
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{} {} failed ({}):\n{stderr}{stdout}",
                script.display(),
                cache_dir.display(),
                out.status
            );
        }
        let dir = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("GUEST_DIR="))
            .ok_or_else(|| {
                anyhow!(
                    "{} printed no GUEST_DIR= line:\n{stderr}{stdout}",
                    script.display()
                )
            })?;
        let dir = PathBuf::from(dir);
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio"),
        };
        for f in [&image.kernel, &image.initramfs] {
            if !f.is_file() {
                bail!("the guest build did not produce {}", f.display());
            }
        }
        Ok(image)
    }
}

fn target_dir_cache() -> Result<PathBuf> {
    Ok(crate::target_dir()?.join("strata-guest"))
}
