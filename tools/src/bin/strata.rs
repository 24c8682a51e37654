//! `strata`: the administrator's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_common::pki::ClusterDir;

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
    /// Makes a new cluster: its CA and the pool node's certificate.
    Init,
    /// Hosts of the cluster.
    #[command(subcommand)]
    Host(HostCommand),
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
    let cluster = ClusterDir::new(&cli.cluster_dir);
    let result = match &cli.command {
        Command::Init => cluster.init().map(|()| {
            println!(
                "cluster CA and pool certificate written to {}",
                cluster.root().display()
            )
        }),
        Command::Host(HostCommand::Add { name }) => cluster.add_host(name).map(|()| {
            println!(
                "host {name}: certificate {} and key {}",
                cluster.host_cert(name).display(),
                cluster.host_key(name).display()
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e}");
            ExitCode::FAILURE
        }
    }
}
