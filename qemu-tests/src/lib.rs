//! Harness that boots a real Linux guest under QEMU against a vhost-user-blk
//! server (normally `strata-host`) and runs a shell script inside it.
//!
//! The pieces:
//!
//! - [`GuestImage`]: a Debian kernel and an initramfs with busybox, fio and
//!   e2fsprogs, built once from Debian packages by `guest/build-guest.sh` and
//!   cached under `target/strata-guest/`, keyed by the package versions.
//! - [`Server`]: a running `strata-host` (or `qemu-storage-daemon`) exporting
//!   one vhost-user-blk socket per [`DiskSpec`]; killed on drop.
//! - [`Vm`]: one QEMU run. The test script is appended to the base initramfs
//!   as a small cpio archive; the guest's init runs it, prints a result
//!   marker on the serial console and powers off. A run that does not finish
//!   before its deadline is killed and reported as a failure with the console
//!   log.
//!
//! Environment knobs (all optional):
//!
//! - `STRATA_QEMU_TESTS_SERVER`: `strata-host` (default) or
//!   `qemu-storage-daemon`, see [`ServerKind::from_env`].
//! - `STRATA_TEST_POOL=1`: strata-host writes through a `strata-pool` the
//!   harness starts beside it (its flash is then a cache).
//! - `STRATA_HOST_BIN`, `STRATA_QSD_BIN`, `STRATA_QEMU_BIN`: binaries to use
//!   instead of the defaults.
//! - `STRATA_QEMU_ACCEL`: QEMU accelerator (default `tcg`; see [`Vm::new`]).
//! - `STRATA_QEMU_TESTS_ECHO=1`: copy the guest console to stderr live.

#![warn(missing_docs)]

mod cpio;
mod image;
mod server;
mod vm;

pub use cpio::CpioWriter;
pub use image::GuestImage;
pub use server::{DiskSpec, Server, ServerDisk, ServerKind};
pub use vm::{Cue, GuestOutcome, Vm, VmDisk, RESULT_MARKER};

use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

/// The cargo profile directory the running test executable was built into,
/// e.g. `target/release` for `target/release/deps/guest-0123abcd`.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let deps = exe
        .parent()
        .ok_or_else(|| anyhow!("executable {} has no parent directory", exe.display()))?;
    let profile = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", deps.display()))?
    } else {
        deps
    };
    Ok(profile.to_path_buf())
}

/// The cargo target directory (the parent of [`profile_dir`]).
pub fn target_dir() -> Result<PathBuf> {
    let profile = profile_dir()?;
    profile
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", profile.display()))
}

/// A fresh scratch directory under `target/strata-qemu-tests/`, removed when
/// the returned guard drops. Lives on the target directory's filesystem (not
/// /tmp, which may be tmpfs) so image files there support `O_DIRECT`.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = target_dir()?.join("strata-qemu-tests");
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a scratch directory in {}", base.display()))
}

/// Finds an executable: the path in environment variable `env` if set,
/// otherwise `name` looked up in `PATH`. `hint` says how to install it.
pub(crate) fn find_program(env: &str, name: &str, hint: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(anyhow!("{env}={} does not name a file", p.display()));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("`{name}` not found in PATH; {hint} (or set {env})"))
}
