//! A `strata-pool` run as a child process, for the harnesses that need a
//! real pool node (the host's client tests, the guest tests, the pool's own
//! process tests): start it, learn the address it listens on, kill it with
//! SIGKILL, start it again on the same address and data.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The line `strata-pool` prints once it listens, before the address.
pub const LISTENING_PREFIX: &str = "strata-pool: listening on ";

/// How a pool process is started.
#[derive(Debug, Clone)]
pub struct PoolCommand {
    /// The `strata-pool` binary.
    pub program: PathBuf,
    /// `--cluster-dir`.
    pub cluster_dir: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--nvlog-quota` (such as `64M`).
    pub nvlog_quota: String,
    /// `--drive`, each (empty: the six default directory drives).
    pub drives: Vec<PathBuf>,
    /// Where its stdout and stderr go (appended).
    pub log: PathBuf,
    /// How long it may take to listen.
    pub startup_timeout: Duration,
}

/// A running `strata-pool`, killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct PoolProcess {
    command: PoolCommand,
    child: Child,
    address: SocketAddr,
}

impl PoolProcess {
    /// Starts `command` listening on `listen` (`127.0.0.1:0` for any free
    /// port) and returns once it reports its address.
    pub fn start(command: PoolCommand, listen: &str) -> anyhow::Result<PoolProcess> {
        let (child, address) = launch(&command, listen)?;
        Ok(PoolProcess {
            command,
            child,
            address,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How it was started.
    pub fn command(&self) -> &PoolCommand {
        &self.command
    }

    /// strata-host's flags for writing through this pool as `host` (its
    /// certificate in the pool's cluster directory), destaging every
    /// `destage_secs` seconds.
    pub fn host_args(&self, host: &str, destage_secs: u64) -> Vec<String> {
        vec![
            "--pool".to_string(),
            self.address.to_string(),
            "--cluster-dir".to_string(),
            self.command.cluster_dir.display().to_string(),
            "--host-name".to_string(),
            host.to_string(),
            "--destage-interval".to_string(),
            destage_secs.to_string(),
        ]
    }

    /// Kills it with SIGKILL (no chance to finish anything) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        // Fails only if it already exited; wait() reaps it either way.
        let _ = self.child.kill();
        self.child.wait().context("reaping strata-pool")?;
        Ok(())
    }

    /// Kills it with SIGKILL and starts it again on the same address and
    /// data.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let (child, address) = launch(&self.command, &self.address.to_string())?;
        self.child = child;
        if address != self.address {
            bail!("strata-pool came back on {address}, not {}", self.address);
        }
        Ok(())
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.command.log).unwrap_or_default()
    }
}

impl Drop for PoolProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Starts `command` on `listen` and waits for the address it reports, read
/// from the lines its log gained since.
fn launch(command: &PoolCommand, listen: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let log = &command.log;
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the pool log {}", log.display()))?;
    let start = fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let mut child = Command::new(&command.program)
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(&command.data_dir)
        .arg("--cluster-dir")
        .arg(&command.cluster_dir)
        .args(["--nvlog-quota", &command.nvlog_quota])
        .args(
            command
                .drives
                .iter()
                .flat_map(|d| [OsStr::new("--drive"), d.as_os_str()]),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", command.program.display()))?;
    match wait_for_address(&mut child, command, start) {
        Ok(address) => Ok((child, address)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Waits until `child` reports its address in the lines its log gained
/// after byte `start`.
fn wait_for_address(
    child: &mut Child,
    command: &PoolCommand,
    start: usize,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + command.startup_timeout;
    loop {
        let text = fs::read_to_string(&command.log).unwrap_or_default();
        let fresh = text.get(start..).unwrap_or("");
        // Only whole lines: the pool may be in the middle of writing one.
        let reported = fresh
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find_map(|l| l.strip_prefix(LISTENING_PREFIX));
        if let Some(line) = reported {
            return line
                .trim()
                .parse()
                .with_context(|| format!("strata-pool reported address {line:?}"));
        }
        if let Some(status) = child.try_wait()? {
            bail!("strata-pool exited ({status}) before listening; log:\n{fresh}");
        }
        if Instant::now() >= deadline {
            bail!(
                "strata-pool did not listen within {:?}; log:\n{fresh}",
                command.startup_timeout
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `name`, a binary of this workspace, in the cargo profile directory of
/// the running executable (`target/release` for
/// `target/release/deps/test-0123`).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe.parent().context("the executable has no directory")?;
    let profile = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let bin = profile.join(name);
    if !bin.is_file() {
        bail!(
            "{} does not exist: build the workspace first (cargo build --release --workspace)",
            bin.display()
        );
    }
    Ok(bin)
}
