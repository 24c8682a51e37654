//! A `strata-pool` for strata-host to write through, on loopback with a
//! cluster directory made for the test.
//!
//! Tests run against a pool when `STRATA_TEST_POOL=1` (see [`pool_mode`]):
//! every `strata` vdisk's writes are then durable in the pool's NVLOG, and
//! the host's flash is a cache it refills from the pool at each start. The
//! `strata-pool` binary is the one cargo built beside the test binary
//! (`cargo build --workspace` builds it).

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_common::pki::ClusterDir;
use strata_pool::process::{workspace_binary, PoolCommand, PoolProcess};

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
    process: PoolProcess,
    cluster_dir: PathBuf,
    data_dir: PathBuf,
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
        let command = PoolCommand {
            drives: Vec::new(),
            program: workspace_binary("strata-pool").expect("the strata-pool binary"),
            cluster_dir: cluster_dir.clone(),
            data_dir: data_dir.clone(),
            // Small, so that tests writing more than this prove the NVLOG
            // is truncated (writes would wait forever otherwise).
            nvlog_quota: NVLOG_QUOTA.to_string(),
            log: dir.join("pool.log"),
            startup_timeout: STARTUP_TIMEOUT,
        };
        let process = PoolProcess::start(command, "127.0.0.1:0").expect("starting strata-pool");
        PoolNode {
            process,
            cluster_dir,
            data_dir,
        }
    }

    /// strata-host's flags for using this pool, destaging every
    /// `destage_secs` seconds.
    pub fn host_args(&self, destage_secs: u64) -> Vec<String> {
        self.process.host_args(HOST_NAME, destage_secs)
    }

    /// Makes a certificate for another host, `name` (`strata host add`).
    pub fn add_host(&self, name: &str) {
        ClusterDir::new(&self.cluster_dir)
            .add_host(name)
            .expect("strata host add");
    }

    /// Runs `strata ARGS --pool ADDR` as the cluster's administrator and
    /// returns what it printed; panics if it fails.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(workspace_binary("strata").expect("the strata binary"))
            .arg("--cluster-dir")
            .arg(&self.cluster_dir)
            .args(args)
            .arg("--pool")
            .arg(self.process.address().to_string())
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
        self.process
            .kill_and_restart()
            .expect("restarting strata-pool");
    }

    /// Everything the pool has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

impl Drop for PoolNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- strata-pool log ---\n{}--- end of log ---", self.log());
        }
    }
}
