//! `strata-host`: serves vdisks to QEMU over vhost-user-blk.
//!
//! See docs/HOST-CLI.md for the command line and docs/ARCHITECTURE.md for
//! how the pieces fit.

mod backend;
mod control;
mod engine;
mod flash;
mod pool;
mod queue;
mod server;
mod status;
mod vdisk;
mod virtio_config;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use strata_common::config::{FlashSettings, HostConfig, PoolSettings, VdiskConfig, VdiskKind};
use strata_common::keys::MasterKey;
use tracing_subscriber::EnvFilter;

use crate::control::ControlServer;
use crate::engine::strata::StrataEngine;
use crate::engine::{Engine, IoMode, RawImage};
use crate::flash::{FlashConfig, FlashStore};
use crate::server::VdiskServer;
use crate::vdisk::Vdisk;

/// Strata's per-host vhost-user-blk daemon.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    after_help = "\
VDISK SPEC: name=NAME[,size=8G][,kind=strata|raw][,path=IMAGE][,socket=PATH][,queues=N]\
[,block-size=512|4096][,read-only][,cache=writeback|writethrough]
  kind=strata (the default) keeps the vdisk in the flash store; kind=raw serves path=IMAGE as is.

Example:
  strata-host --vdisk name=d0,size=8G,socket=/run/strata/d0.sock
  strata-host status"
)]
struct Args {
    /// Without a subcommand, strata-host serves vdisks.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with one [[vdisk]] table per vdisk.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A vdisk to serve (repeatable); same keys as the config file.
    #[arg(long = "vdisk", value_name = "SPEC", value_parser = parse_vdisk)]
    vdisks: Vec<VdiskConfig>,
    /// The flash file or device of the store [default: /var/lib/strata/flash.img].
    #[arg(long, value_name = "PATH")]
    flash: Option<PathBuf>,
    /// Size of the flash file when it is created [default: 16G].
    #[arg(long, value_name = "SIZE", value_parser = strata_common::config::parse_size)]
    flash_size: Option<u64>,
    /// Directory of the datastore key files [default: /var/lib/strata/keys].
    #[arg(long, value_name = "DIR")]
    key_dir: Option<PathBuf>,
    /// Master key file [default: $STRATA_MASTER_KEY, else KEY_DIR/master.key, created].
    #[arg(long, value_name = "FILE")]
    master_key: Option<PathBuf>,
    /// Control socket `strata-host status` talks to [default: /run/strata/strata-host.ctl].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// The pool node (IP:PORT) whose NVLOG makes writes durable; without
    /// one (and no [pool] table) the host runs standalone on its flash.
    #[arg(long, value_name = "ADDR")]
    pool: Option<std::net::SocketAddr>,
    /// The cluster directory of `strata init` [default: /var/lib/strata/cluster].
    #[arg(long, value_name = "DIR", requires = "pool")]
    cluster_dir: Option<PathBuf>,
    /// This host's name, as given to `strata host add` [default: host1].
    #[arg(long, value_name = "NAME", requires = "pool")]
    host_name: Option<String>,
    /// Seconds between destages to the pool's drives [default: 30].
    #[arg(long, value_name = "SECS", requires = "pool")]
    destage_interval: Option<u64>,
    /// How queues do I/O.
    #[arg(long, value_enum, default_value = "auto")]
    io: IoMode,
    /// Log filter (tracing-subscriber syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

/// What strata-host does besides serving vdisks.
#[derive(Debug, Subcommand)]
enum Command {
    /// Shows the flash store of a running strata-host: flash use, counters,
    /// and per vdisk logical, unique and stored bytes with dedupe and
    /// compression ratios.
    Status(StatusArgs),
}

/// `strata-host status`.
#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Config file whose `[flash] control-socket` to use.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The daemon's control socket [default: from --config, else /run/strata/strata-host.ctl].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Print the daemon's JSON document instead of a summary.
    #[arg(long)]
    json: bool,
}

fn parse_vdisk(spec: &str) -> Result<VdiskConfig, String> {
    VdiskConfig::from_spec(spec).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match args.command.take() {
        Some(Command::Status(status)) => run_status(&status),
        None => run(args),
    };
    match result {
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
    let flash = &mut config.flash;
    if let Some(path) = args.flash {
        flash.path = path;
    }
    if let Some(size) = args.flash_size {
        flash.size = size;
    }
    if let Some(dir) = args.key_dir {
        flash.key_dir = dir;
    }
    if args.master_key.is_some() {
        flash.master_key = args.master_key;
    }
    if let Some(socket) = args.control_socket {
        flash.control_socket = socket;
    }
    if let Some(address) = args.pool {
        let pool = config
            .pool
            .get_or_insert_with(|| PoolSettings::new(address));
        pool.address = address;
        if let Some(dir) = args.cluster_dir {
            pool.cluster_dir = dir;
        }
        if let Some(name) = args.host_name {
            pool.host_name = name;
        }
        if let Some(secs) = args.destage_interval {
            pool.destage_interval_secs = secs;
        }
    }
    config.validate()?;
    if config.vdisk.is_empty() {
        anyhow::bail!("no vdisks to serve: give --vdisk or --config (see --help)");
    }

    let has_store = config.vdisk.iter().any(|v| v.kind == VdiskKind::Strata);
    let control_socket = &config.flash.control_socket;
    if has_store
        && config
            .vdisk
            .iter()
            .any(|v| v.socket_path() == *control_socket)
    {
        anyhow::bail!(
            "control socket {} is also a vdisk socket",
            control_socket.display()
        );
    }

    // Before anything is created on disk.
    for vdisk in &config.vdisk {
        VdiskServer::check_socket_free(&vdisk.name, &vdisk.socket_path())?;
    }
    if has_store {
        ControlServer::check_socket_free(control_socket)?;
    }
    let store = if has_store {
        Some(Arc::new(open_store(
            &config.flash,
            config.pool.as_ref(),
            args.io,
        )?))
    } else {
        None
    };
    // Only a flash store has anything to report; raw-only hosts have no
    // control socket. Bound before the vdisk sockets, so it answers by the
    // time they exist.
    let control = match &store {
        Some(store) => {
            let served = config.vdisk.iter().filter(|v| v.kind == VdiskKind::Strata);
            let served = served.map(|v| v.name.clone()).collect();
            Some(ControlServer::start(control_socket, store.clone(), served)?)
        }
        None => None,
    };
    let mut servers = Vec::new();
    for vdisk_config in &config.vdisk {
        let (engine, detail) = open_engine(vdisk_config, store.as_ref(), args.io)
            .with_context(|| format!("vdisk {}", vdisk_config.name))?;
        let vdisk = Arc::new(Vdisk::new(vdisk_config, engine));
        let server = VdiskServer::bind(vdisk.clone(), &vdisk_config.socket_path())?;
        tracing::info!(vdisk = %vdisk.name, kind = %vdisk_config.kind, %detail, capacity = vdisk.shape.capacity,
            queues = vdisk.shape.num_queues, block_size = vdisk.shape.block_size, read_only = vdisk.shape.read_only,
            cache = %vdisk_config.cache, socket = %server.socket().display(), "serving");
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
    if let Some(control) = &control {
        control.shut_down();
    }
    for server in &servers {
        server.shut_down();
        let _ = std::fs::remove_file(server.socket());
    }
    drop(servers);
    drop(control);
    if let Some(store) = store {
        store.shut_down();
    }
    tracing::info!("stopped");
    Ok(())
}

/// `strata-host status`: asks the daemon on the control socket and prints
/// its answer, as a summary or (`--json`) as is.
fn run_status(args: &StatusArgs) -> anyhow::Result<()> {
    let socket = match (&args.control_socket, &args.config) {
        (Some(socket), _) => socket.clone(),
        (None, Some(path)) => HostConfig::from_file(path)?.flash.control_socket,
        (None, None) => FlashSettings::default().control_socket,
    };
    let answer = control::request(&socket, "status")?;
    let document: serde_json::Value = serde_json::from_str(&answer)
        .with_context(|| format!("control socket {} sent no JSON", socket.display()))?;
    if let Some(error) = document.get("error") {
        let message = error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_string);
        anyhow::bail!("strata-host answered: {message}");
    }
    if args.json {
        print!("{answer}");
        return Ok(());
    }
    let status: status::HostStatus = serde_json::from_value(document).with_context(|| {
        format!(
            "control socket {} sent a status this strata-host does not understand (try --json)",
            socket.display()
        )
    })?;
    print!("{}", status::render(&status));
    Ok(())
}

/// Opens the flash store with the datastore's keys, on the pool if there is
/// one.
fn open_store(
    settings: &FlashSettings,
    pool: Option<&PoolSettings>,
    io: IoMode,
) -> anyhow::Result<FlashStore> {
    let master = match &settings.master_key {
        Some(path) => MasterKey::from_file(path)?,
        None => match MasterKey::from_env()? {
            Some(key) => key,
            None => {
                let path = settings.key_dir.join("master.key");
                if !path.exists() {
                    tracing::warn!(path = %path.display(),
                        "no master key given: creating one beside the data (fine for one box; use --master-key or STRATA_MASTER_KEY elsewhere)");
                }
                MasterKey::load_or_create_file(&path)?
            }
        },
    };
    let config = FlashConfig {
        path: settings.path.clone(),
        size: settings.size,
        segment_size: u32::try_from(settings.segment_size)
            .context("segment-size must be below 4 GiB")?,
        journal_size: settings.journal_size,
        map_cache_bytes: usize::try_from(settings.map_cache).unwrap_or(usize::MAX),
        datastore: settings.datastore.clone(),
        key_dir: settings.key_dir.clone(),
        io,
        pool: pool.cloned(),
    };
    FlashStore::open(&config, &master)
}

/// The engine of one vdisk, and a word on where its bytes are for the log.
fn open_engine(
    config: &VdiskConfig,
    store: Option<&Arc<FlashStore>>,
    io: IoMode,
) -> anyhow::Result<(Arc<dyn Engine>, String)> {
    match (config.kind, &config.path, store) {
        (VdiskKind::Raw, Some(path), _) => {
            let image = RawImage::open(path, config.size, config.read_only, io)?;
            let detail = format!(
                "image {} (direct={}, io={})",
                path.display(),
                image.is_direct(),
                image.io_kind()
            );
            Ok((Arc::new(image), detail))
        }
        (VdiskKind::Strata, _, Some(store)) => {
            let vdisk = store.open_vdisk(&config.name, config.size)?;
            let engine = StrataEngine::new(store.clone(), vdisk, config.read_only, io);
            Ok((Arc::new(engine), "flash store".to_string()))
        }
        _ => anyhow::bail!(
            "vdisk {} has no storage (a bug: config validation let it through)",
            config.name
        ),
    }
}
