//! A `strata-pool` for strata-host to write through, on loopback with a
//! cluster directory made for the test.
//!
//! Tests run against a pool when `STRATA_TEST_POOL=1` (see [`pool_mode`]):
//! every `strata` vdisk's writes are then durable in the pool's NVLOG, and
//! the host's flash is a cache it refills from the pool at each start. The
//! `strata-pool` binary is the one cargo built beside the test binary
//! (`cargo build --workspace` builds it).

use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use strata_common::pki::ClusterDir;

use super::daemon::STARTUP_TIMEOUT;

/// The NVLOG quota of the tests' pool.
pub const NVLOG_QUOTA: &str = "64M";

/// The host name the test's strata-host uses.
pub const HOST_NAME: &str = "test-host";

/// Whether `STRATA_TEST_POOL` asks for strata-host to run on a pool.
pub fn pool_mode() -> bool {
    match std::env::var("STRATA_TEST_POOL").as_deref() {
        Err(_) | Ok("") | Ok("0") => false,
        Ok("1") => true,
        Ok(other) => panic!("STRATA_TEST_POOL={other:?}: expected 0 or 1"),
    }
}

/// A running `strata-pool`, killed when dropped.
pub struct PoolNode {
    child: Child,
    address: SocketAddr,
    cluster_dir: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
}

impl PoolNode {
    /// Makes a cluster directory (CA, pool and [`HOST_NAME`] certificates)
    /// under `dir` and starts a pool node keeping its data there.
    pub fn start(dir: &Path) -> PoolNode {
        let cluster_dir = dir.join("cluster");
        let cluster = ClusterDir::new(&cluster_dir);
        cluster.init().expect("strata init");
        cluster.add_host(HOST_NAME).expect("strata host add");
        let data_dir = dir.join("pool");
        let log = dir.join("pool.log");
        let (child, address) = launch(&cluster_dir, &data_dir, &log, "127.0.0.1:0");
        PoolNode {
            child,
            address,
            cluster_dir,
            data_dir,
            log,
        }
    }

    /// strata-host's flags for using this pool.
    pub fn host_args(&self) -> Vec<String> {
        vec![
            "--pool".into(),
            self.address.to_string(),
            "--cluster-dir".into(),
            self.cluster_dir.display().to_string(),
            "--host-name".into(),
            HOST_NAME.into(),
            // Destage soon, so the tests exercise the pool's stripes.
            "--destage-interval".into(),
            "1".into(),
        ]
    }

    /// Runs `strata ARGS --pool ADDR` as the cluster's administrator and
    /// returns what it printed; panics if it fails.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(strata_binary())
            .arg("--cluster-dir")
            .arg(&self.cluster_dir)
            .args(args)
            .arg("--pool")
            .arg(self.address.to_string())
            .output()
            .expect("running strata");
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}; pool log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The directory of the pool's drive `index` (of the six default ones).
    pub fn drive_dir(&self, index: usize) -> PathBuf {
        self.data_dir.join("drives").join(index.to_string())
    }

    /// Kills the pool with SIGKILL and starts it again on the same address
    /// and data.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL strata-pool");
        self.child.wait().expect("reaping strata-pool");
        let (child, address) = launch(
            &self.cluster_dir,
            &self.data_dir,
            &self.log,
            &self.address.to_string(),
        );
        assert_eq!(address, self.address);
        self.child = child;
    }

    /// Everything the pool has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PoolNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- strata-pool log ---\n{}--- end of log ---", self.log());
        }
    }
}

/// The `strata-pool` binary beside this test binary's directory.
fn pool_binary() -> PathBuf {
    workspace_binary("strata-pool")
}

/// The `strata` command line beside this test binary's directory.
fn strata_binary() -> PathBuf {
    workspace_binary("strata")
}

/// A binary of the workspace, built beside this test binary's directory.
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("the test binary's directory");
    assert!(
        bin.exists(),
        "{} does not exist: build the workspace first (cargo build --release --workspace)",
        bin.display()
    );
    bin
}

/// Starts strata-pool listening on `listen` and returns it with the address
/// it reports once it listens.
fn launch(cluster_dir: &Path, data_dir: &Path, log: &Path, listen: &str) -> (Child, SocketAddr) {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the pool log");
    let start = fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let mut child = Command::new(pool_binary())
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cluster-dir")
        .arg(cluster_dir)
        // Small, so that tests writing more than this prove the NVLOG is
        // truncated (writes would wait forever otherwise).
        .args(["--nvlog-quota", NVLOG_QUOTA])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("cloning the log handle"))
        .stderr(log_file)
        .spawn()
        .expect("spawning strata-pool");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let fresh = text.get(start..).unwrap_or("");
        // Only whole lines: the pool may be in the middle of writing one.
        if let Some(line) = fresh
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find_map(|l| l.strip_prefix("strata-pool: listening on "))
        {
            let address = line.trim().parse().expect("the pool's address");
            return (child, address);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("strata-pool exited ({status}) before listening; log:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "strata-pool did not listen within {STARTUP_TIMEOUT:?}; log:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
