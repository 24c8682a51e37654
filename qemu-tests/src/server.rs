//! The vhost-user-blk server under test: `strata-host` (standalone, or
//! writing through a `strata-pool` the harness starts beside it), or
//! `qemu-storage-daemon` as a reference.

use crate::{GuestImage, GuestOutcome, Vm};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use strata_common::pki::ClusterDir;
use strata_pool::process::{workspace_binary, PoolCommand, PoolProcess};

/// How long a server may take to create its sockets.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// The host name strata-host uses on the harness's pool.
const POOL_HOST_NAME: &str = "guest-host";
/// The NVLOG quota of the harness's pool: smaller than what the tests write,
/// so they complete only if destage truncates the log.
const POOL_NVLOG_QUOTA: &str = "64M";

/// Which program serves the disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `target/<profile>/strata-host`, the daemon under test.
    StrataHost,
    /// strata-host writing through a `strata-pool` beside it: writes are
    /// durable in the pool, the flash is a cache.
    StrataHostOnPool,
    /// QEMU's `qemu-storage-daemon` with a vhost-user-blk export, used to
    /// check the harness itself.
    QemuStorageDaemon,
}

impl ServerKind {
    /// From `STRATA_QEMU_TESTS_SERVER`: unset or `strata-host` gives
    /// [`ServerKind::StrataHost`], or [`ServerKind::StrataHostOnPool`] with
    /// `STRATA_TEST_POOL=1`; `qemu-storage-daemon` (or `qsd`) gives
    /// [`ServerKind::QemuStorageDaemon`].
    pub fn from_env() -> Result<Self> {
        let strata_host = match std::env::var("STRATA_TEST_POOL").as_deref() {
            Err(_) | Ok("") | Ok("0") => Self::StrataHost,
            Ok("1") => Self::StrataHostOnPool,
            Ok(other) => bail!("STRATA_TEST_POOL={other:?}: expected 0 or 1"),
        };
        match std::env::var("STRATA_QEMU_TESTS_SERVER") {
            Err(std::env::VarError::NotPresent) => Ok(strata_host),
            Ok(v) if v.is_empty() || v == "strata-host" => Ok(strata_host),
            Ok(v) if v == "qemu-storage-daemon" || v == "qsd" => Ok(Self::QemuStorageDaemon),
            Ok(v) => {
                bail!("STRATA_QEMU_TESTS_SERVER={v:?}: expected strata-host or qemu-storage-daemon")
            }
            Err(e) => bail!("STRATA_QEMU_TESTS_SERVER: {e}"),
        }
    }

    /// The serial number the guest should read for a disk called `name`:
    /// strata-host answers GET_ID with the vdisk name, qemu-storage-daemon
    /// with the fixed string `vhost_user_blk`.
    pub fn expected_serial(&self, name: &str) -> String {
        match self {
            Self::StrataHost | Self::StrataHostOnPool => name.to_string(),
            Self::QemuStorageDaemon => "vhost_user_blk".to_string(),
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::StrataHost => "strata-host",
            Self::StrataHostOnPool => "strata-host on a pool",
            Self::QemuStorageDaemon => "qemu-storage-daemon",
        }
    }

    /// Whether the server is strata-host (standalone or on a pool).
    pub fn is_strata_host(&self) -> bool {
        *self != Self::QemuStorageDaemon
    }
}

/// A disk to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The vdisk name (strata-host also reports it as the virtio serial).
    pub name: String,
    /// Size in bytes; a multiple of 512.
    pub size: u64,
    /// Number of virtqueues.
    pub queues: u16,
}

impl DiskSpec {
    /// A single-queue disk of `size` bytes.
    pub fn new(name: &str, size: u64) -> Self {
        Self {
            name: name.to_string(),
            size,
            queues: 1,
        }
    }

    /// Sets the number of virtqueues.
    pub fn queues(mut self, queues: u16) -> Self {
        self.queues = queues;
        self
    }
}

/// A disk as exported by a running [`Server`].
#[derive(Debug, Clone)]
pub struct ServerDisk {
    /// What was asked for.
    pub spec: DiskSpec,
    /// The backing image file.
    pub image: PathBuf,
    /// The vhost-user socket.
    pub socket: PathBuf,
}

/// A running vhost-user-blk server with its own scratch directory (images,
/// sockets, log). The process is killed when this is dropped.
#[derive(Debug)]
pub struct Server {
    kind: ServerKind,
    program: PathBuf,
    disks: Vec<ServerDisk>,
    child: Option<Child>,
    log: PathBuf,
    /// The pool strata-host writes through ([`ServerKind::StrataHostOnPool`]).
    pool: Option<PoolProcess>,
    // Dropped last: holds the images and sockets.
    dir: tempfile::TempDir,
}

/// Makes a cluster (CA, pool and host certificates) in `dir/cluster` and
/// starts a `strata-pool` keeping its data in `dir/pool`.
fn start_pool(dir: &Path) -> Result<PoolProcess> {
    let cluster_dir = dir.join("cluster");
    let cluster = ClusterDir::new(&cluster_dir);
    cluster.init().context("strata init")?;
    cluster
        .add_host(POOL_HOST_NAME)
        .context("strata host add")?;
    let command = PoolCommand {
        drives: Vec::new(),
        program: workspace_binary("strata-pool")?,
        cluster_dir,
        data_dir: dir.join("pool"),
        nvlog_quota: POOL_NVLOG_QUOTA.to_string(),
        log: dir.join("pool.log"),
        startup_timeout: STARTUP_DEADLINE,
    };
    PoolProcess::start(command, "127.0.0.1:0")
}

impl Server {
    /// Starts `kind` exporting `specs`, and returns once every socket exists.
    /// Images are fresh sparse files in a new scratch directory.
    pub fn start(kind: ServerKind, specs: &[DiskSpec]) -> Result<Self> {
        if specs.is_empty() {
            bail!("a server needs at least one disk");
        }
        for s in specs {
            if s.size == 0 || s.size % 512 != 0 {
                bail!(
                    "disk {}: size {} is not a positive multiple of 512",
                    s.name,
                    s.size
                );
            }
        }
        let program = match kind {
            ServerKind::StrataHost | ServerKind::StrataHostOnPool => strata_host_binary()?,
            ServerKind::QemuStorageDaemon => crate::find_program(
                "STRATA_QSD_BIN",
                "qemu-storage-daemon",
                "install it with `apt-get install -y qemu-system-common`",
            )?,
        };
        let dir = crate::scratch_dir("server-")?;
        let disks = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| ServerDisk {
                spec: spec.clone(),
                image: dir.path().join(format!("disk{i}.img")),
                socket: dir.path().join(format!("disk{i}.sock")),
            })
            .collect();
        let log = dir.path().join("server.log");
        let pool = match kind {
            ServerKind::StrataHostOnPool => Some(start_pool(dir.path())?),
            _ => None,
        };
        let mut server = Self {
            kind,
            program,
            disks,
            child: None,
            log,
            pool,
            dir,
        };
        if kind == ServerKind::QemuStorageDaemon {
            for d in &server.disks {
                let f = File::create(&d.image)
                    .with_context(|| format!("cannot create {}", d.image.display()))?;
                f.set_len(d.spec.size)
                    .with_context(|| format!("cannot size {}", d.image.display()))?;
            }
        }
        server.spawn()?;
        Ok(server)
    }

    /// [`Server::start`] with the kind chosen by [`ServerKind::from_env`].
    pub fn start_from_env(specs: &[DiskSpec]) -> Result<Self> {
        Self::start(ServerKind::from_env()?, specs)
    }

    /// Which program is serving.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The exported disks, in the order given to [`Server::start`].
    pub fn disks(&self) -> &[ServerDisk] {
        &self.disks
    }

    /// The server's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// A [`Vm`] with every disk of this server attached, in order.
    pub fn vm(&self) -> Vm {
        self.disks
            .iter()
            .fold(Vm::new(), |vm, d| vm.disk(&d.socket, d.spec.queues))
    }

    /// Runs `script` in `vm` and requires it to pass and the server to still
    /// be running afterwards. Errors carry the guest console and the server
    /// log.
    pub fn run_guest(&mut self, vm: &Vm, image: &GuestImage, script: &str) -> Result<GuestOutcome> {
        let result = vm
            .run(image, script)
            .and_then(GuestOutcome::require_pass)
            .and_then(|outcome| {
                self.check_running()?;
                Ok(outcome)
            });
        // The guest's story first, then the server's.
        result.map_err(|e| anyhow!("{e:#}\n{}", self.log_for_error()))
    }

    /// Errors if the server process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.kind.name());
        };
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.kind.name()))?
        {
            bail!("{} exited unexpectedly ({status})", self.kind.name());
        }
        Ok(())
    }

    /// Kills the server with SIGKILL and reaps it (no-op if not running).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited; wait() reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("waiting for {}", self.kind.name()))?;
        }
        Ok(())
    }

    /// Kills the server and starts it again on the same images and sockets.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.respawn()
    }

    /// Kills the server with SIGKILL and starts a new one on the same
    /// sockets: on a pool, a fresh strata-host on an empty flash (the old
    /// host is gone with its disk); otherwise the same flash or image.
    pub fn replace_host(&mut self) -> Result<()> {
        self.kill()?;
        if self.pool.is_some() {
            let flash = self.dir.path().join("flash.img");
            std::fs::remove_file(&flash)
                .with_context(|| format!("cannot delete the flash {}", flash.display()))?;
        }
        self.respawn()
    }

    /// Starts the server again after it died, on the same sockets (the
    /// dead one could not remove them).
    fn respawn(&mut self) -> Result<()> {
        for d in &self.disks {
            match std::fs::remove_file(&d.socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", d.socket.display()))
                }
            }
        }
        self.spawn()
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.kind.is_strata_host() {
            // strata vdisks (the default kind) in one flash store; restarts
            // reopen it.
            let dir = self.dir.path();
            args.extend([
                "--flash".to_string(),
                dir.join("flash.img").display().to_string(),
                "--flash-size".to_string(),
                "8G".to_string(),
                "--key-dir".to_string(),
                dir.join("keys").display().to_string(),
                "--control-socket".to_string(),
                dir.join("control.sock").display().to_string(),
            ]);
        }
        if let Some(pool) = &self.pool {
            // Destage every second, so guest I/O also runs against the
            // pool's stripes.
            args.extend(pool.host_args(POOL_HOST_NAME, 1));
        }
        for (i, d) in self.disks.iter().enumerate() {
            match self.kind {
                ServerKind::StrataHost | ServerKind::StrataHostOnPool => {
                    args.push("--vdisk".to_string());
                    args.push(format!(
                        "name={},size={},socket={},queues={}",
                        d.spec.name,
                        size_arg(d.spec.size),
                        d.socket.display(),
                        d.spec.queues
                    ));
                }
                ServerKind::QemuStorageDaemon => {
                    args.push("--blockdev".to_string());
                    args.push(format!(
                        "driver=file,node-name=f{i},filename={},cache.direct=on,aio=io_uring",
                        d.image.display()
                    ));
                    args.push("--export".to_string());
                    args.push(format!(
                        "type=vhost-user-blk,id=e{i},node-name=f{i},addr.type=unix,\
                         addr.path={},writable=on,num-queues={}",
                        d.socket.display(),
                        d.spec.queues
                    ));
                }
            }
        }
        args
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let args = self.args();
        let child = Command::new(&self.program)
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        self.child = Some(child);
        self.wait_for_sockets().with_context(|| {
            format!(
                "{} {} did not come up\n{}",
                self.program.display(),
                args.join(" "),
                self.log_for_error()
            )
        })
    }

    /// Polls for the socket files until they all exist, the process exits,
    /// or the startup deadline passes.
    fn wait_for_sockets(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let missing = self.disks.iter().find(|d| !is_socket(&d.socket));
            let Some(missing) = missing else {
                return Ok(());
            };
            let missing = missing.socket.clone();
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "socket {} did not appear within {STARTUP_DEADLINE:?}",
                    missing.display()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_for_error(&self) -> String {
        let pool = self.pool.as_ref().map_or(String::new(), |p| {
            format!(
                "\n----- strata-pool log -----\n{}\n----- end of pool log -----",
                p.log()
            )
        });
        format!(
            "----- {} log ({}) -----\n{}\n----- end of server log -----{pool}",
            self.kind.name(),
            self.log.display(),
            self.log()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// `size=` for strata-host: the largest exact suffix (K, M, G, T = powers of
/// 1024), or plain bytes.
fn size_arg(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|(_, unit)| bytes % unit == 0)
        .map(|(suffix, unit)| format!("{}{suffix}", bytes / unit))
        .unwrap_or_else(|| bytes.to_string())
}

/// `target/<profile>/strata-host` next to the test executable, or
/// `STRATA_HOST_BIN`.
fn strata_host_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STRATA_HOST_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(anyhow!(
                "STRATA_HOST_BIN={} does not name a file",
                p.display()
            ))
        };
    }
    let p = crate::profile_dir()?.join("strata-host");
    if p.is_file() {
        Ok(p)
    } else {
        Err(anyhow!(
            "{} not found: build it first with `cargo build --release -p strata-host`",
            p.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_suffixes() {
        assert_eq!(size_arg(64 << 20), "64M");
        assert_eq!(size_arg(1 << 30), "1G");
        assert_eq!(size_arg(1536), "1536");
        assert_eq!(size_arg(3 << 10), "3K");
        assert_eq!(size_arg(512), "512");
    }
}
