//! Starting the vhost-user-blk daemon under test on scratch images.
//!
//! One [`Daemon`] serves one or more vdisks, each described by
//! [`VdiskOptions`] (name, size, queues, logical block size, read-only,
//! initial content). The daemon is `strata-host` unless
//! `STRATA_TEST_DAEMON=qsd` selects `qemu-storage-daemon` (see [`Target`]).
//! strata-host serves `strata` vdisks (its flash store) unless
//! `STRATA_TEST_KIND=raw` selects raw image files (see [`Kind`]).
//! Everything lives in a temporary directory that goes away with the
//! [`Daemon`], which kills the process unless a test has already stopped it
//! with [`Daemon::signal`] and [`Daemon::wait_for_exit`].

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::data::pattern;
use super::pool::{pool_mode, PoolNode};

/// Size of the [`VdiskOptions::probe_disk`] image.
pub const DISK_SIZE: u64 = 16 << 20;
/// virtio-blk's fixed sector unit.
pub const SECTOR: u64 = 512;
/// Number of 512-byte sectors of the [`VdiskOptions::probe_disk`] image.
pub const DISK_SECTORS: u64 = DISK_SIZE / SECTOR;
/// Sector of the [`VdiskOptions::probe_disk`] image holding [`probe_pattern`]
/// from the moment the image is created.
pub const PROBE_SECTOR: u64 = 2048;
/// Length of the probe pattern.
pub const PROBE_LEN: usize = 4096;

/// How long the daemon may take to create its sockets (or to exit, for
/// [`run_to_exit`] and after SIGTERM); also a sensible bound for
/// reconnecting to a socket.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval at which startup and exits are polled.
const POLL: Duration = Duration::from_millis(10);
/// File name of strata-host's control socket in the test's directory.
const CONTROL_SOCKET: &str = "control.sock";

/// Which vhost-user-blk implementation the tests drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The `strata-host` binary of this crate (the default).
    StrataHost,
    /// `qemu-storage-daemon` with a vhost-user-blk export
    /// (`STRATA_TEST_DAEMON=qsd`), to check the tests themselves against an
    /// independent implementation.
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

/// How strata-host stores the vdisks under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kind=strata`, in a flash store in the test's directory (the default).
    Strata,
    /// `kind=raw`: plain image files (`STRATA_TEST_KIND=raw`).
    Raw,
}

impl Kind {
    /// Reads the kind from `STRATA_TEST_KIND` (`strata` or `raw`).
    pub fn from_env() -> Self {
        match std::env::var("STRATA_TEST_KIND").as_deref() {
            Err(_) | Ok("") | Ok("strata") => Kind::Strata,
            Ok("raw") => Kind::Raw,
            Ok(other) => panic!("STRATA_TEST_KIND={other:?}: expected strata or raw"),
        }
    }
}

/// Contents of the [`VdiskOptions::probe_disk`] image at [`PROBE_SECTOR`].
pub fn probe_pattern() -> Vec<u8> {
    pattern(0x0050_524f_4245, PROBE_LEN)
}

/// One vdisk to serve.
#[derive(Clone, Debug)]
pub struct VdiskOptions {
    name: String,
    size: u64,
    queues: usize,
    block_size: Option<u32>,
    read_only: bool,
    /// Start with the write cache off (`cache=writethrough`).
    writethrough: bool,
    /// `(offset, bytes)` written into a sparse image before the daemon starts.
    preset: Vec<(u64, Vec<u8>)>,
}

impl VdiskOptions {
    /// A vdisk of `size` bytes named `vd0` with one queue, the default block
    /// size, writable. Its image does not exist before the daemon starts
    /// (strata-host creates it from `size=`) unless content is
    /// [preset](Self::preset) or the target is qsd, which needs an image:
    /// then it is created sparse, all zeros.
    pub fn new(size: u64) -> Self {
        VdiskOptions {
            name: "vd0".to_string(),
            size,
            queues: 1,
            block_size: None,
            read_only: false,
            writethrough: false,
            preset: Vec::new(),
        }
    }

    /// A [`DISK_SIZE`] vdisk whose image holds [`probe_pattern`] at
    /// [`PROBE_SECTOR`] and zeros elsewhere.
    pub fn probe_disk() -> Self {
        VdiskOptions::new(DISK_SIZE).preset(PROBE_SECTOR * SECTOR, probe_pattern())
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn queues(mut self, queues: usize) -> Self {
        self.queues = queues;
        self
    }

    pub fn block_size(mut self, block_size: u32) -> Self {
        self.block_size = Some(block_size);
        self
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// strata-host's `cache=writethrough`: writes are durable when they complete.
    pub fn writethrough(mut self) -> Self {
        self.writethrough = true;
        self
    }

    /// Writes `data` at byte `offset` of the image before the daemon starts.
    pub fn preset(mut self, offset: u64, data: Vec<u8>) -> Self {
        assert!(
            offset + data.len() as u64 <= self.size,
            "preset data beyond the end of the {}-byte vdisk",
            self.size
        );
        self.preset.push((offset, data));
        self
    }
}

/// One served vdisk: its options and where its image and socket are.
pub struct Vdisk {
    options: VdiskOptions,
    image: PathBuf,
    socket: PathBuf,
    /// Whether its bytes are a plain image file the test may read directly.
    has_image: bool,
}

impl Vdisk {
    /// Whether the vdisk is a plain image file ([`Vdisk::image_bytes`] and
    /// [`Vdisk::read_image`] work): qsd and raw vdisks; a `strata` vdisk's
    /// bytes are encrypted frames in the flash store.
    pub fn has_image(&self) -> bool {
        self.has_image
    }

    /// Path of the backing file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Path of the vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Reads `len` bytes at byte `offset` of the image, bypassing the daemon;
    /// `None` for a vdisk without an image file (see [`Vdisk::has_image`]).
    pub fn read_image(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if !self.has_image {
            return None;
        }
        let mut buf = vec![0; len];
        File::open(&self.image)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.image.display()));
        Some(buf)
    }

    /// The whole backing file, bypassing the daemon; `None` without one.
    pub fn image_bytes(&self) -> Option<Vec<u8>> {
        self.has_image.then(|| {
            fs::read(&self.image)
                .unwrap_or_else(|e| panic!("reading {}: {e}", self.image.display()))
        })
    }

    /// Creates the image if the target needs one or content is preset
    /// (strata vdisks get their preset content through the daemon instead).
    fn prepare_image(&self, target: Target) {
        if !self.has_image || (self.options.preset.is_empty() && target == Target::StrataHost) {
            return;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&self.image)
            .expect("creating the image");
        file.set_len(self.options.size).expect("sizing the image");
        for (offset, data) in &self.options.preset {
            file.write_all_at(data, *offset)
                .expect("writing preset content");
        }
        file.sync_all().expect("syncing the image");
    }
}

/// A running vhost-user-blk daemon serving one or more vdisks on scratch
/// images. The process is killed when this is dropped; if the test is
/// failing, the daemon's log is printed then.
pub struct Daemon {
    child: Child,
    target: Target,
    kind: Kind,
    vdisks: Vec<Vdisk>,
    /// Extra flags, kept for restarts.
    args: Vec<String>,
    /// The daemon's stdout and stderr.
    log: PathBuf,
    /// The pool strata-host writes through (`STRATA_TEST_POOL=1`).
    pool: Option<PoolNode>,
    /// Keeps the images, sockets and log alive for the daemon's lifetime.
    _dir: TempDir,
}

impl Daemon {
    /// Starts the daemon selected by [`Target::from_env`] serving one vdisk.
    pub fn start(options: VdiskOptions) -> Daemon {
        Daemon::start_many(vec![options])
    }

    /// Starts the daemon selected by [`Target::from_env`] serving `vdisks`.
    pub fn start_many(vdisks: Vec<VdiskOptions>) -> Daemon {
        Daemon::start_target(Target::from_env(), vdisks, &[])
    }

    /// Starts strata-host serving one vdisk with the daemon flags `args`
    /// (such as `--io sync`) besides the `--vdisk`. Panics if
    /// `STRATA_TEST_DAEMON` selects another target: tests of strata-host
    /// flags skip themselves then.
    pub fn start_with_args(options: VdiskOptions, args: &[&str]) -> Daemon {
        Daemon::start_target(Target::from_env(), vec![options], args)
    }

    /// Starts `target` serving `vdisks` with the extra strata-host flags
    /// `args`, and waits until every socket exists.
    pub fn start_target(target: Target, vdisks: Vec<VdiskOptions>, args: &[&str]) -> Daemon {
        assert!(!vdisks.is_empty(), "a daemon needs at least one vdisk");
        assert!(
            args.is_empty() || target == Target::StrataHost,
            "strata-host flags {args:?} given to {target:?}"
        );
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let kind = Kind::from_env();
        let vdisks: Vec<Vdisk> = vdisks
            .into_iter()
            .enumerate()
            .map(|(i, options)| Vdisk {
                image: dir.path().join(format!("{}.img", options.name)),
                socket: dir.path().join(format!("{i}.sock")),
                options,
                has_image: target == Target::Qsd || kind == Kind::Raw,
            })
            .collect();
        for vdisk in &vdisks {
            vdisk.prepare_image(target);
        }
        let on_pool = target == Target::StrataHost && kind == Kind::Strata && pool_mode();
        let pool = on_pool.then(|| PoolNode::start(dir.path()));
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(pool) = &pool {
            // Destage every second, so the tests exercise the pool's
            // stripes, unless the test sets an interval of its own.
            let destage_secs = take_flag(&mut args, "--destage-interval").map_or(1, |secs| {
                secs.parse()
                    .expect("--destage-interval needs a number of seconds")
            });
            args.extend(pool.host_args(destage_secs));
        }
        if target == Target::StrataHost && kind == Kind::Strata {
            preset_strata_vdisks(&vdisks, dir.path(), &args);
        }
        let mut daemon = Daemon::spawn(target, kind, vdisks, dir, args, pool);
        daemon.wait_for_sockets();
        daemon
    }

    fn spawn(
        target: Target,
        kind: Kind,
        vdisks: Vec<Vdisk>,
        dir: TempDir,
        args: Vec<String>,
        pool: Option<PoolNode>,
    ) -> Daemon {
        let log = dir.path().join("daemon.log");
        let child = launch(target, kind, &vdisks, dir.path(), &args, &log);
        Daemon {
            child,
            target,
            kind,
            vdisks,
            args,
            log,
            pool,
            _dir: dir,
        }
    }

    /// Starts a second strata-host with this one's flags and vdisks on a
    /// flash and sockets of its own, while this one keeps running: a
    /// replacement host taking over (on a pool it takes the host's lease,
    /// which fences this one). It uses this daemon's pool, so drop it
    /// first.
    pub fn start_successor(&self) -> Daemon {
        let all: Vec<usize> = (0..self.vdisks.len()).collect();
        self.start_beside(self.args.clone(), &all)
    }

    /// Starts strata-host as another host of this daemon's pool, named
    /// `host` (its certificate is made here), serving this daemon's vdisks
    /// `vdisks` (by index) on a flash and sockets of its own: opening them
    /// takes them over from this daemon. Drop it before this daemon.
    pub fn start_on_host(&self, host: &str, vdisks: &[usize]) -> Daemon {
        let pool = self.pool.as_ref().expect("another host needs a pool");
        pool.add_host(host);
        let mut args = self.args.clone();
        let at = args
            .iter()
            .position(|a| a == "--host-name")
            .expect("a pooled daemon has --host-name");
        args[at + 1] = host.to_string();
        self.start_beside(args, vdisks)
    }

    /// Starts strata-host with `args`, serving this daemon's vdisks
    /// `vdisks`, on a directory, flash and sockets of its own.
    fn start_beside(&self, args: Vec<String>, vdisks: &[usize]) -> Daemon {
        assert!(
            self.target == Target::StrataHost,
            "only strata-host has successors"
        );
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        // The datastore's keys go with it (a replacement host is given them).
        let keys = self._dir.path().join("keys");
        fs::create_dir(dir.path().join("keys")).expect("creating the key directory");
        for entry in fs::read_dir(&keys).expect("reading the key directory") {
            let entry = entry.expect("reading the key directory");
            fs::copy(
                entry.path(),
                dir.path().join("keys").join(entry.file_name()),
            )
            .expect("copying a key file");
        }
        let vdisks = vdisks
            .iter()
            .enumerate()
            .map(|(i, &index)| {
                let v = &self.vdisks[index];
                Vdisk {
                    options: v.options.clone(),
                    image: dir.path().join(format!("{}.img", v.options.name)),
                    socket: dir.path().join(format!("{i}.sock")),
                    has_image: v.has_image,
                }
            })
            .collect();
        let mut daemon = Daemon::spawn(self.target, self.kind, vdisks, dir, args, None);
        daemon.wait_for_sockets();
        daemon
    }

    /// The pool strata-host writes through, when `STRATA_TEST_POOL=1`.
    pub fn pool(&mut self) -> Option<&mut PoolNode> {
        self.pool.as_mut()
    }

    /// Kills strata-host with SIGKILL, deletes its flash (a host that died
    /// with its disk, or a VM moved to a new host), and starts a fresh one
    /// on the same pool; returns once its sockets are back.
    pub fn kill_and_restart_on_empty_flash(&mut self) {
        self.kill_edit_and_restart(|flash| fs::remove_file(flash).expect("deleting the flash"));
    }

    /// Kills the daemon with SIGKILL (no chance to finish anything) and
    /// starts it again on the same images or flash store, with the same
    /// flags; returns once its sockets are back.
    pub fn kill_and_restart(&mut self) {
        self.kill_edit_and_restart(|_| {});
    }

    /// [`Daemon::kill_and_restart`], calling `edit` with the flash file's
    /// path while no daemon runs.
    pub fn kill_edit_and_restart(&mut self, edit: impl FnOnce(&Path)) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed daemon");
        edit(&self.flash_path());
        self.relaunch();
    }

    /// Starts the daemon again after it died, on the same images, flash
    /// store and flags; returns once its sockets are back.
    fn relaunch(&mut self) {
        for vdisk in &self.vdisks {
            // The killed daemon could not remove its sockets.
            let _ = fs::remove_file(&vdisk.socket);
        }
        self.child = launch(
            self.target,
            self.kind,
            &self.vdisks,
            self._dir.path(),
            &self.args,
            &self.log,
        );
        self.wait_for_sockets();
    }

    /// How strata-host stores the vdisks (meaningless for qsd).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// strata-host's flash file (strata vdisks).
    pub fn flash_path(&self) -> PathBuf {
        self._dir.path().join("flash.img")
    }

    /// strata-host's control socket (`--control-socket`), which exists
    /// (bound before the vdisk sockets) when it serves strata vdisks.
    pub fn control_socket(&self) -> PathBuf {
        self._dir.path().join(CONTROL_SOCKET)
    }

    /// Polls until every socket exists, failing early if the daemon exits.
    fn wait_for_sockets(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !self.vdisks.iter().all(|v| v.socket.exists()) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{:?} exited ({status}) before creating its sockets; log:\n{}",
                    self.target,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} created no socket within {STARTUP_TIMEOUT:?}; log:\n{}",
                self.target,
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The implementation this daemon runs.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The `index`th vdisk, in the order given at start.
    pub fn vdisk(&self, index: usize) -> &Vdisk {
        &self.vdisks[index]
    }

    /// Socket of the first vdisk.
    pub fn socket(&self) -> &Path {
        self.vdisk(0).socket()
    }

    /// Reads `len` bytes at byte `offset` of the first vdisk's image,
    /// bypassing the daemon (`None` without an image file).
    pub fn read_image(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        self.vdisk(0).read_image(offset, len)
    }

    /// The status document (`strata-host status --json`) of a daemon
    /// serving strata vdisks.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_strata-host"))
            .arg("status")
            .arg("--control-socket")
            .arg(self.control_socket())
            .arg("--json")
            .output()
            .expect("running strata-host status");
        assert!(
            out.status.success(),
            "strata-host status failed: {}; log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// Counter `name` of the status document.
    pub fn counter(&self, name: &str) -> u64 {
        let status = self.status();
        status["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {status:#}"))
    }

    /// Polls the status document until counter `name` reaches `at_least`
    /// (work the daemon does in the background), failing after `timeout`.
    pub fn wait_for_counter(&self, name: &str, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.counter(name);
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "counter {name} stayed at {value} (< {at_least}) for {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Everything the daemon has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the daemon's log) unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{:?} died with {status}; log:\n{}", self.target, self.log());
        }
    }

    /// Sends `signal` to the running daemon without waiting for any effect.
    /// SIGTERM asks it to finish in-flight I/O, remove its sockets and exit 0
    /// (docs/HOST-CLI.md): see [`Daemon::wait_for_exit`].
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "{:?} exited before signal {signal}; log:\n{}",
            self.target,
            self.log()
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) has no memory-safety preconditions. The child is
        // not reaped (try_wait just found it running), so `pid` is still its.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the daemon to exit and returns its status;
    /// panics (with the log) if it is still running then.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_with_deadline(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{:?} did not exit within {timeout:?}; log:\n{}",
                self.target,
                self.log()
            )
        })
    }

    /// How many io_uring instances the daemon has open (strata-host keeps
    /// one per queue thread when queues use io_uring, none with `--io sync`).
    pub fn io_uring_instances(&self) -> usize {
        let fds = PathBuf::from(format!("/proc/{}/fd", self.child.id()));
        fs::read_dir(&fds)
            .unwrap_or_else(|e| panic!("listing {}: {e}", fds.display()))
            // An fd may close between listing and reading its link.
            .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.as_os_str() == "anon_inode:[io_uring]")
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Errors only mean the process is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {:?} log ---\n{}--- end of log ---",
                self.target,
                self.log()
            );
        }
    }
}

/// Starts the daemon process for `vdisks`, its output appended to `log`.
fn launch(
    target: Target,
    kind: Kind,
    vdisks: &[Vdisk],
    dir: &Path,
    args: &[String],
    log: &Path,
) -> Child {
    let mut command = match target {
        Target::StrataHost => strata_host_command(vdisks, kind, dir),
        Target::Qsd => qsd_command(vdisks),
    };
    command.args(args);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the daemon log");
    command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("cloning the log handle"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {target:?}: {e}"))
}

/// Gives strata vdisks their preset content: a writable strata-host on the
/// same flash store takes the writes and stops cleanly before the daemon
/// under test starts (which may be read-only).
fn preset_strata_vdisks(vdisks: &[Vdisk], dir: &Path, args: &[String]) {
    if vdisks.iter().all(|v| v.options.preset.is_empty()) {
        return;
    }
    let writable: Vec<Vdisk> = vdisks
        .iter()
        .map(|v| Vdisk {
            options: VdiskOptions {
                read_only: false,
                ..v.options.clone()
            },
            image: v.image.clone(),
            socket: v.socket.clone(),
            has_image: false,
        })
        .collect();
    let log = dir.join("preset.log");
    let mut child = launch(Target::StrataHost, Kind::Strata, &writable, dir, args, &log);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while !writable.iter().all(|v| v.socket.exists()) {
        let log_text = || fs::read_to_string(&log).unwrap_or_default();
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "preset strata-host exited; log:\n{}",
            log_text()
        );
        assert!(
            Instant::now() < deadline,
            "preset strata-host did not start; log:\n{}",
            log_text()
        );
        std::thread::sleep(POLL);
    }
    for v in &writable {
        super::preset::write_through_daemon(&v.socket, &v.options.preset).unwrap_or_else(|e| {
            panic!(
                "presetting {}: {e}; log:\n{}",
                v.options.name,
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) has no memory-safety preconditions; the child is ours
    // and not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status =
        wait_with_deadline(&mut child, STARTUP_TIMEOUT).expect("preset strata-host did not exit");
    assert!(status.success(), "preset strata-host failed: {status}");
}

/// `strata-host --vdisk ...` for `vdisks` (docs/HOST-CLI.md); strata vdisks
/// share one flash store in `dir`.
fn strata_host_command(vdisks: &[Vdisk], kind: Kind, dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata-host"));
    if kind == Kind::Strata {
        command
            .arg("--flash")
            .arg(dir.join("flash.img"))
            .args(["--flash-size", "4G", "--key-dir"])
            .arg(dir.join("keys"))
            .arg("--control-socket")
            .arg(dir.join(CONTROL_SOCKET));
    }
    for v in vdisks {
        let mut spec = format!(
            "name={},size={},socket={},queues={}",
            v.options.name,
            v.options.size,
            v.socket.display(),
            v.options.queues
        );
        if kind == Kind::Raw {
            spec.push_str(&format!(",kind=raw,path={}", v.image.display()));
        }
        if let Some(bs) = v.options.block_size {
            spec.push_str(&format!(",block-size={bs}"));
        }
        if v.options.read_only {
            spec.push_str(",read-only");
        }
        if v.options.writethrough {
            spec.push_str(",cache=writethrough");
        }
        command.arg("--vdisk").arg(spec);
    }
    command
}

/// `qemu-storage-daemon` with one file blockdev and one vhost-user-blk export
/// per vdisk; the images must exist.
fn qsd_command(vdisks: &[Vdisk]) -> Command {
    let mut command = Command::new("qemu-storage-daemon");
    for (i, v) in vdisks.iter().enumerate() {
        let ro = if v.options.read_only {
            ",read-only=on"
        } else {
            ""
        };
        command.arg("--blockdev").arg(format!(
            "driver=file,node-name=f{i},filename={},cache.direct=on,aio=io_uring,discard=unmap{ro}",
            v.image.display()
        ));
        let mut export = format!(
            "type=vhost-user-blk,id=e{i},node-name=f{i},addr.type=unix,addr.path={},writable={},num-queues={}",
            v.socket.display(),
            if v.options.read_only { "off" } else { "on" },
            v.options.queues
        );
        if let Some(bs) = v.options.block_size {
            export.push_str(&format!(",logical-block-size={bs}"));
        }
        command.arg("--export").arg(export);
    }
    command
}

/// Removes `flag` and its value from `args`; returns the value.
fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    let value = args.get(at + 1).cloned();
    args.drain(at..(at + 2).min(args.len()));
    value
}

/// Runs strata-host with `args` (whatever the [`Target`]: this is for its
/// command line) and waits up to [`STARTUP_TIMEOUT`] for it to exit.
/// Returns the exit status and everything written to stderr.
pub fn run_to_exit(args: &[String]) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-host"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning strata-host");
    let Some(status) = wait_with_deadline(&mut child, STARTUP_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("strata-host {args:?} did not exit within {STARTUP_TIMEOUT:?}");
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// Polls `child` until it exits (its status) or `timeout` passes (`None`).
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the daemon") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}
