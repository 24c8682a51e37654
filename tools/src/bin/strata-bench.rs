//! `strata-bench`: host-side load generator for vhost-user-blk backends and
//! files. See `strata-bench --help`; the logic lives in
//! [`strata_tools::bench`].

use std::process::ExitCode;

fn main() -> ExitCode {
    strata_tools::bench::cli::main()
}
