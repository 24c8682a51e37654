//! `strata`: the administrator's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use strata_common::pki::{ClusterDir, ADMIN_NAME};
use strata_common::wire::{DriveState, Request, Response};
use strata_pool::client::PoolClient;

/// Strata's command line for administrators.
#[derive(Debug, Parser)]
#[command(name = "strata", version)]
struct Cli {
    /// The cluster directory (CA, pool and host certificates).
    #[arg(long, global = true, default_value = "/var/lib/strata/cluster")]
    cluster_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes a new cluster: its CA, the pool node's certificate and the
    /// administrators' certificate.
    Init,
    /// Hosts of the cluster.
    #[command(subcommand)]
    Host(HostCommand),
    /// The pool's drives (as the administrator, over TLS).
    Drive {
        /// The pool node.
        #[arg(long, global = true, default_value = "127.0.0.1:7470")]
        pool: SocketAddr,
        #[command(subcommand)]
        command: DriveCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DriveCommand {
    /// Lists the drives and the stripes a rebuild would rewrite.
    List,
    /// Marks a drive failed: its chunks are no longer read, it takes no
    /// new ones, and `rebuild` moves its chunks to the others.
    Fail {
        /// The drive's number (from `list`).
        drive: u16,
    },
    /// Puts a drive back in service for new stripes: a failed one, or an
    /// offline one (a replaced disk, labelled if it is blank).
    Replace {
        /// The drive's number.
        drive: u16,
    },
    /// Rewrites every stripe with a chunk on a failed drive, or missing,
    /// onto the drives in service: full redundancy again.
    Rebuild,
    /// Reads every chunk of every stripe and checks it, rewriting stripes
    /// with a damaged or missing chunk; fails if a stripe cannot be
    /// restored.
    Scrub,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Makes a certificate for a new host (its name becomes its identity at
    /// the pool).
    Add {
        /// The host's name: 1 to 64 of a-z, 0-9, '-', '_' and '.'.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let cluster = ClusterDir::new(&cli.cluster_dir);
    match &cli.command {
        Command::Init => {
            cluster.init()?;
            println!(
                "cluster CA, pool and administrator certificates written to {}",
                cluster.root().display()
            );
        }
        Command::Host(HostCommand::Add { name }) => {
            cluster.add_host(name)?;
            println!(
                "host {name}: certificate {} and key {}",
                cluster.host_cert(name).display(),
                cluster.host_key(name).display()
            );
        }
        Command::Drive { pool, command } => drive(&cluster, *pool, command)?,
    }
    Ok(())
}

/// Runs a drive command against the pool at `pool` as the administrator.
fn drive(cluster: &ClusterDir, pool: SocketAddr, command: &DriveCommand) -> anyhow::Result<()> {
    let tls = strata_common::tls::client_config(cluster, ADMIN_NAME).with_context(|| {
        format!(
            "the administrator's certificate in {}",
            cluster.root().display()
        )
    })?;
    let request = match command {
        DriveCommand::List => Request::DriveStatus,
        DriveCommand::Fail { drive } => Request::SetDrive {
            drive: *drive,
            failed: true,
        },
        DriveCommand::Replace { drive } => Request::SetDrive {
            drive: *drive,
            failed: false,
        },
        DriveCommand::Rebuild => Request::Rebuild,
        DriveCommand::Scrub => Request::Scrub,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(async {
        let mut client = PoolClient::connect(pool, tls).await?;
        client.call(&request).await
    })?;
    match response {
        Response::Drives {
            max_data_chunks,
            degraded_stripes,
            drives,
        } => {
            println!("DRIVE  STATE");
            for (drive, state) in drives.iter().enumerate() {
                let state = match state {
                    DriveState::InService => "in service",
                    DriveState::Failed => "failed",
                    DriveState::Offline => "offline (see the pool's log; 'replace' tries it again)",
                    DriveState::Full => "full (read; new stripes go around it until room is freed)",
                };
                println!("{drive:>5}  {state}");
            }
            println!(
                "new stripes: {max_data_chunks} data + 2 parity chunks; stripes to rebuild: {degraded_stripes}"
            );
        }
        Response::Rebuilt { stripes } => println!("rebuilt {stripes} stripes"),
        Response::Scrubbed {
            stripes,
            chunks,
            bad_chunks,
            repaired,
            unreadable,
        } => {
            println!(
                "scrubbed {stripes} stripes: {chunks} chunks checked, {bad_chunks} bad, {repaired} stripes repaired, {unreadable} unreadable"
            );
            if unreadable > 0 {
                bail!(
                    "{unreadable} stripes have too few good chunks to restore (see the pool's log)"
                );
            }
        }
        Response::Error { message, .. } => bail!("pool {pool}: {message}"),
        other => bail!("pool {pool} answered {other:?}"),
    }
    Ok(())
}
