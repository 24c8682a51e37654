//! Shared helpers for strata-host's integration tests: starting a vhost-user-blk
//! daemon on a scratch image and talking to it as a frontend.
//!
//! By default the daemon under test is the `strata-host` binary built by cargo.
//! Setting `STRATA_TEST_DAEMON=qsd` runs the same tests against
//! `qemu-storage-daemon`'s vhost-user-blk export instead, which is how the
//! frontend in [`vhost_frontend`] was validated while strata-host was still
//! being written. Tests encode where qsd's answers differ from strata-host's.

pub mod vhost_frontend;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Size of every test image.
pub const DISK_SIZE: u64 = 16 << 20;
/// virtio-blk's fixed sector unit.
pub const SECTOR: u64 = 512;
/// Number of 512-byte sectors in a test image.
pub const DISK_SECTORS: u64 = DISK_SIZE / SECTOR;
/// Sector holding [`probe_pattern`] from the moment the image is created.
pub const PROBE_SECTOR: u64 = 2048;
/// Length of the probe pattern.
pub const PROBE_LEN: usize = 4096;

/// How long the daemon may take to create its socket.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Interval at which startup is polled for the socket file.
const STARTUP_POLL: Duration = Duration::from_millis(10);

/// Which vhost-user-blk implementation the tests drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The `strata-host` binary of this crate (the default).
    StrataHost,
    /// `qemu-storage-daemon` with a vhost-user-blk export (`STRATA_TEST_DAEMON=qsd`).
    Qsd,
}

impl Target {
    /// Reads the target from `STRATA_TEST_DAEMON` (`strata-host` or `qsd`).
    pub fn from_env() -> Self {
        match std::env::var("STRATA_TEST_DAEMON").as_deref() {
            Err(_) | Ok("") | Ok("strata-host") => Target::StrataHost,
            Ok("qsd") | Ok("qemu-storage-daemon") => Target::Qsd,
            Ok(other) => panic!("STRATA_TEST_DAEMON={other:?}: expected strata-host or qsd"),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so that data checks compare
/// something more telling than a constant fill.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Contents of the image at [`PROBE_SECTOR`], written before the daemon starts.
pub fn probe_pattern() -> Vec<u8> {
    pattern(0x0050_524f_4245, PROBE_LEN)
}

/// A running vhost-user-blk daemon serving one 16 MiB scratch image.
///
/// The process is killed when this is dropped.
pub struct Daemon {
    child: Child,
    target: Target,
    socket: PathBuf,
    image: PathBuf,
    stderr: PathBuf,
    /// Keeps the image, socket and log alive for the daemon's lifetime.
    _dir: TempDir,
}

impl Daemon {
    /// Starts the daemon selected by [`Target::from_env`] and waits until its
    /// socket exists.
    pub fn start(read_only: bool) -> Self {
        Self::start_target(Target::from_env(), read_only)
    }

    /// Starts `target` on a fresh image and waits until its socket exists.
    pub fn start_target(target: Target, read_only: bool) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let image = dir.path().join("t.img");
        let socket = dir.path().join("t.sock");
        let stderr = dir.path().join("daemon.stderr");
        create_image(&image);

        let mut cmd = match target {
            Target::StrataHost => {
                let mut spec = format!(
                    "name=t,path={},size=16M,socket={}",
                    image.display(),
                    socket.display()
                );
                if read_only {
                    spec.push_str(",read-only");
                }
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-host"));
                cmd.arg("--vdisk").arg(spec);
                cmd
            }
            Target::Qsd => {
                let mut cmd = Command::new("qemu-storage-daemon");
                cmd.arg("--blockdev").arg(format!(
                    "driver=file,node-name=f,filename={}{}",
                    image.display(),
                    if read_only { ",read-only=on" } else { "" }
                ));
                cmd.arg("--export").arg(format!(
                    "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable={}",
                    socket.display(),
                    if read_only { "off" } else { "on" }
                ));
                cmd
            }
        };
        let log = File::create(&stderr).expect("create daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {target:?}: {e}"));

        let mut daemon = Daemon {
            child,
            target,
            socket,
            image,
            stderr,
            _dir: dir,
        };
        daemon.wait_for_socket();
        daemon
    }

    /// Polls for the socket file until [`STARTUP_DEADLINE`], failing early if
    /// the daemon exits.
    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while !self.socket.exists() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{:?} exited during startup with {status}; stderr:\n{}",
                    self.target,
                    self.stderr_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not create {} within {STARTUP_DEADLINE:?}; stderr:\n{}",
                self.target,
                self.socket.display(),
                self.stderr_log()
            );
            std::thread::sleep(STARTUP_POLL);
        }
    }

    /// The implementation this daemon runs.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Path of the vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Everything the daemon has written to stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics (with the daemon's stderr) unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "{:?} died with {status}; stderr:\n{}",
                self.target,
                self.stderr_log()
            );
        }
    }

    /// Reads `len` bytes at byte `offset` of the image, bypassing the daemon.
    pub fn read_image(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        File::open(&self.image)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .expect("read image");
        buf
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Errors only mean the process is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a sparse [`DISK_SIZE`] image with [`probe_pattern`] at [`PROBE_SECTOR`].
fn create_image(path: &Path) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create image");
    file.set_len(DISK_SIZE).expect("size image");
    file.write_all_at(&probe_pattern(), PROBE_SECTOR * SECTOR)
        .expect("write probe pattern");
    file.sync_all().expect("sync image");
}
