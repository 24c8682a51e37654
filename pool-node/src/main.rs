//! `strata-pool`: the pool node daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use strata_common::pki::ClusterDir;
use strata_pool::server::{PoolServer, PoolSettings};
use tracing_subscriber::EnvFilter;

/// Strata's pool node: serves hosts' NVLOGs and the erasure-coded drive pool
/// over mutually authenticated TLS.
#[derive(Debug, Parser)]
#[command(name = "strata-pool", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7470")]
    listen: SocketAddr,
    /// Where the pool keeps its data (NVLOGs under nvlog/, the catalog, and
    /// the default drives under drives/).
    #[arg(long, default_value = "/var/lib/strata/pool")]
    data_dir: PathBuf,
    /// The cluster directory made by `strata init` (CA and pool certificate).
    #[arg(long, default_value = "/var/lib/strata/cluster")]
    cluster_dir: PathBuf,
    /// Bytes of un-truncated NVLOG records each host may hold (K/M/G
    /// suffixes); appends beyond wait for truncation.
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    nvlog_quota: u64,
    /// A drive of the pool: a directory, or a block device (a blank one is
    /// labelled; one holding other data is refused). Repeat for each drive,
    /// in the same order every time; at least 3. Without any, six
    /// directories under the data directory.
    #[arg(long = "drive")]
    drives: Vec<PathBuf>,
    /// Log filter (tracing's EnvFilter syntax); STRATA_LOG also works.
    #[arg(long)]
    log: Option<String>,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = match &args.log {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cluster = ClusterDir::new(&args.cluster_dir);
    let tls = strata_common::tls::server_config(&cluster)
        .with_context(|| format!("cluster directory {}", args.cluster_dir.display()))?;
    let settings = PoolSettings {
        data_dir: args.data_dir.clone(),
        nvlog_quota: args.nvlog_quota,
        drives: args.drives.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = PoolServer::bind(args.listen, tls, settings).await?;
        let addr = server.local_addr()?;
        eprintln!("{}{addr}", strata_pool::process::LISTENING_PREFIX);
        tokio::select! {
            () = server.run() => {}
            r = tokio::signal::ctrl_c() => { r?; }
        }
        anyhow::Ok(())
    })
}
