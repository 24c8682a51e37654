//! `strata-host`: serves vdisks to QEMU over vhost-user-blk.
//!
//! See docs/HOST-CLI.md for the command line and docs/ARCHITECTURE.md for
//! how the pieces fit.

mod backend;
mod engine;
mod queue;
mod request;
mod server;
mod vdisk;
mod virtio_config;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use strata_common::config::{HostConfig, VdiskConfig};
use tracing_subscriber::EnvFilter;

use crate::engine::{IoMode, RawImage};
use crate::server::VdiskServer;
use crate::vdisk::Vdisk;

/// Strata's per-host vhost-user-blk daemon.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "\
VDISK SPEC: name=NAME,path=IMAGE[,size=8G][,socket=PATH][,queues=N][,block-size=512|4096]\
[,read-only][,cache=writeback|writethrough]

Example:
  strata-host --vdisk name=d0,path=/var/lib/strata/d0.img,size=8G,socket=/run/strata/d0.sock"
)]
struct Args {
    /// TOML file with one [[vdisk]] table per vdisk.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A vdisk to serve (repeatable); same keys as the config file.
    #[arg(long = "vdisk", value_name = "SPEC", value_parser = parse_vdisk)]
    vdisks: Vec<VdiskConfig>,
    /// How queues do I/O.
    #[arg(long, value_enum, default_value = "auto")]
    io: IoMode,
    /// Log filter (tracing-subscriber syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn parse_vdisk(spec: &str) -> Result<VdiskConfig, String> {
    VdiskConfig::from_spec(spec).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => HostConfig::from_file(path)?,
        None => HostConfig::default(),
    };
    config.vdisk.extend(args.vdisks);
    config.validate()?;
    if config.vdisk.is_empty() {
        anyhow::bail!("no vdisks to serve: give --vdisk or --config (see --help)");
    }

    // Before anything is created on disk.
    for vdisk in &config.vdisk {
        VdiskServer::check_socket_free(&vdisk.name, &vdisk.socket_path())?;
    }
    let mut servers = Vec::new();
    for vdisk_config in &config.vdisk {
        let image = RawImage::open(
            &vdisk_config.path,
            vdisk_config.size,
            vdisk_config.read_only,
            args.io,
        )
        .with_context(|| format!("vdisk {}", vdisk_config.name))?;
        let (direct, io) = (image.is_direct(), image.io_kind());
        let vdisk = Arc::new(Vdisk::new(vdisk_config, Arc::new(image)));
        let server = VdiskServer::bind(vdisk.clone(), &vdisk_config.socket_path())?;
        tracing::info!(vdisk = %vdisk.name, image = %vdisk_config.path.display(), capacity = vdisk.shape.capacity,
            queues = vdisk.shape.num_queues, block_size = vdisk.shape.block_size, read_only = vdisk.shape.read_only,
            cache = %vdisk_config.cache, direct, io, socket = %server.socket().display(), "serving");
        servers.push(Arc::new(server));
    }

    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    for server in &servers {
        let server = server.clone();
        std::thread::Builder::new()
            .name("serve".into())
            .spawn(move || server.run())
            .context("cannot start a server thread")?;
    }
    tracing::info!(vdisks = servers.len(), "ready");

    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down: completing in-flight I/O");
    }
    for server in &servers {
        server.shut_down();
        let _ = std::fs::remove_file(server.socket());
    }
    tracing::info!("stopped");
    Ok(())
}
