//! The `strata-bench` command line.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use super::compare::run_compare;
use super::pattern::Pattern;
use super::report::{format_compare, format_run, CompareReport, RunReport, WorkloadSummary};
use super::run::{fresh_seed, run_target};
use super::size::parse_size;
use super::tag::Mismatch;
use super::target::{NamedTarget, TargetSpec};
use super::workload::{Limit, VerifyPasses, Workload, WorkloadSpec};

/// Exit code for a failed run (I/O error, unreachable target, ...).
const EXIT_FAILURE: u8 = 1;
/// Exit code when `--verify` read back different data.
const EXIT_MISMATCH: u8 = 3;

const LONG_ABOUT: &str = "\
Host-side load generator for block devices, built on libblkio.

It drives a vhost-user-blk backend (strata-host, qemu-storage-daemon, ...) \
through its unix socket exactly as a guest's virtio-blk driver would, or a \
plain file through io_uring with O_DIRECT (the physical limit of the same \
storage). Because the client is the same, the figures compare directly.

TARGETS
  vhost-user:SOCKET   a vhost-user-blk backend's socket (libblkio driver
                      virtio-blk-vhost-user; I/O memory is a shared memfd)
  file:PATH           a regular file or block device (libblkio driver
                      io_uring, direct=true)

Each queue (--queues) is its own libblkio queue driven by its own thread, \
keeping --iodepth I/Os in flight and sleeping in the kernel until a \
completion arrives (no busy polling), so the load generator leaves CPU to \
the daemon under test. Latency is measured per I/O from submission to \
completion and reported as mean, p50, p99, p99.9 and max (HdrHistogram, 3 \
significant digits).

WRITE DATA (--pattern)
  unique  random bytes; every 4 KiB block of every write is stamped with the \
run id and a counter, so nothing dedupes or compresses
  dup     every 4 KiB block is one of --dup-blocks distinct random blocks: \
dedupes almost entirely, does not compress
  zeros   all zero bytes
  text    lines of ASCII words and phrases, stamped like unique: does not \
dedupe, compresses about 2.5:1 per 4 KiB block with lz4/snappy (4:1 with zlib)

VERIFICATION (--verify)
  Instead of the timed run: writes every block of the region once (in \
random order for rand* workloads, else sequentially), each 512-byte sector \
tagged with its own offset and the run's generation (--seed), then reads \
everything back and compares every byte. The first mismatch is reported \
with its byte offset and a diagnosis (zeros, misplaced, stale, corrupt) and \
the exit code is 3. --verify-passes write|read splits the two passes \
across runs (use the same --seed and workload), e.g. to check data \
survives a daemon restart.

ROUNDS (compare --rounds N)
  The speed of shared or virtual storage drifts over time, so targets run \
one after another for the whole --runtime are partly compared with a \
different moment of the disk. --rounds N runs every target for --runtime \
(or --ios) once per round, the order rotating by one target each round, \
and reports each target's totals over all rounds (all I/Os over all \
measured time, latency percentiles of all I/Os) next to its lowest and \
highest per-round IOPS. Each target stays connected across its rounds \
unless another target names the same socket; round 1 uses --seed, later \
rounds seeds derived from it. With a multiple of the number of targets as \
N, every target runs in every position equally often.

EXIT CODES
  0 success, 1 failure (including any failed target in compare mode), \
2 bad usage, 3 verification mismatch.

EXAMPLES
  strata-bench run --target vhost-user:/run/strata/vm1.sock --rw randread --bs 4k --iodepth 32 --runtime 10
  strata-bench run --target file:/var/lib/img.raw --rw randrw --rwmix-read 70 --queues 2 --json
  strata-bench run --target vhost-user:/tmp/a.sock --rw randwrite --size 256M --verify
  strata-bench compare --target strata=vhost-user:/tmp/s.sock --target qsd=vhost-user:/tmp/q.sock \\
      --target file=file:/tmp/img --rw randwrite --bs 4k --iodepth 32 --runtime 10
  strata-bench compare --target a=vhost-user:/tmp/a.sock --target b=vhost-user:/tmp/b.sock \\
      --rw randread --bs 4k --iodepth 32 --runtime 3 --rounds 5";

/// The `strata-bench` command line.
#[derive(Debug, Parser)]
#[command(
    name = "strata-bench",
    version,
    about = "Host-side load generator for vhost-user-blk backends and files (libblkio)",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workload against one target and print its figures.
    Run(RunArgs),
    /// Run the same workload against several targets in turn and print a
    /// table with each target's figures and its ratios to a baseline.
    Compare(CompareArgs),
}

/// Arguments of `strata-bench run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The target: vhost-user:SOCKET or file:PATH.
    #[arg(long, short = 't', value_name = "TARGET")]
    pub target: TargetSpec,

    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Arguments of `strata-bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A named target, NAME=vhost-user:SOCKET or NAME=file:PATH. Repeat for
    /// each target; they run one after another in this order (rotated each
    /// round with --rounds).
    #[arg(
        long = "target",
        short = 't',
        value_name = "NAME=TARGET",
        required = true
    )]
    pub targets: Vec<NamedTarget>,

    /// The target the others are compared with (default: the first).
    #[arg(long, value_name = "NAME")]
    pub baseline: Option<String>,

    /// Split the comparison into N rounds: each round runs every target for
    /// --runtime (or --ios), starting with the next target each time, and
    /// the figures are totals over all rounds with the per-round IOPS range
    /// (see ROUNDS in strata-bench --help).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rounds: u32,

    /// The workload, run identically on every target.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Workload and output flags shared by `run` and `compare`.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// I/O pattern: randread, randwrite, read, write (sequential; each queue
    /// walks its own slice of the region) or randrw (see --rwmix-read).
    #[arg(long = "rw", visible_alias = "workload", value_enum, default_value_t = Workload::Randread)]
    pub rw: Workload,

    /// Bytes per I/O: a multiple of 512 and of the device's block size, with
    /// an optional K/M/G suffix (powers of 1024), e.g. 512, 4k, 64k, 1M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4k")]
    pub bs: u64,

    /// I/Os kept in flight on each queue.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub iodepth: usize,

    /// Number of queues, each driven by its own thread. A vhost-user backend
    /// must offer at least this many.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queues: usize,

    /// How long to run: seconds, or with a unit (500ms, 10s, 2m). Default 10s
    /// unless --ios is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "ios")]
    pub runtime: Option<Duration>,

    /// Stop after this many I/Os in total (shared between the queues)
    /// instead of after a time.
    #[arg(long, value_name = "COUNT")]
    pub ios: Option<u64>,

    /// Use only the first SIZE bytes of the device (default: all of it).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,

    /// Percentage of reads in a randrw workload.
    #[arg(long, value_name = "PCT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmix_read: u8,

    /// Data written by writes: unique, dup, zeros or text (see strata-bench --help).
    #[arg(long, value_enum, default_value_t = Pattern::Unique)]
    pub pattern: Pattern,

    /// Number of distinct 4 KiB blocks the dup pattern repeats.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub dup_blocks: usize,

    /// Write a tagged pattern over the whole region, read it all back and
    /// compare every byte (replaces the timed run; exit code 3 on mismatch).
    #[arg(long)]
    pub verify: bool,

    /// With --verify: which passes to make. `write` only writes the tagged
    /// pattern, `read` only checks one written earlier with the same --seed
    /// (e.g. across a daemon restart), `both` does one then the other.
    #[arg(long, value_enum, value_name = "PASSES", default_value_t = VerifyPasses::Both, requires = "verify")]
    pub verify_passes: VerifyPasses,

    /// Seed for offsets and data, and the generation tag of --verify
    /// (decimal or 0x hex). Default: different on every run.
    #[arg(long, value_name = "SEED", value_parser = parse_seed)]
    pub seed: Option<u64>,

    /// Give up if no I/O completes for this long (the target is hung).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub io_timeout: Duration,

    /// Print one JSON document on stdout instead of the human-readable
    /// report.
    #[arg(long)]
    pub json: bool,
}

impl WorkloadArgs {
    /// The workload these flags describe.
    pub fn spec(&self) -> Result<WorkloadSpec> {
        let limit = match (self.ios, self.runtime) {
            (Some(ios), _) => Limit::Ios(ios),
            (None, Some(runtime)) => Limit::Runtime(runtime),
            (None, None) => Limit::Runtime(Duration::from_secs(10)),
        };
        let spec = WorkloadSpec {
            workload: self.rw,
            block_size: self.bs,
            iodepth: self.iodepth,
            queues: self.queues,
            rwmix_read: self.rwmix_read,
            size: self.size,
            limit,
            pattern: self.pattern,
            dup_blocks: self.dup_blocks,
            verify: self.verify.then_some(self.verify_passes),
            seed: self.seed.unwrap_or_else(fresh_seed),
            io_timeout: self.io_timeout,
        };
        if let Err(e) = spec.validate() {
            bail!(e);
        }
        Ok(spec)
    }
}

/// Parses a duration: plain seconds (`10`, `1.5`) or with a unit (`500ms`,
/// `10s`, `2m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: use seconds or 500ms, 10s, 2m, 1h"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {text:?}: must be non-negative and finite"))
}

/// Parses a seed in decimal or `0x` hex.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("invalid seed {text:?}: {e}"))
}

/// Entry point of the `strata-bench` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Compare(args) => compare(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("strata-bench: error: {error:#}");
            if error.downcast_ref::<Mismatch>().is_some() {
                ExitCode::from(EXIT_MISMATCH)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

fn print_stdout(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let spec = args.workload.spec()?;
    let name = args.target.to_string();
    let result = run_target(&name, &args.target, &spec)?;
    let workload = WorkloadSummary::new(&spec);
    if args.workload.json {
        let report = RunReport { workload, result };
        print_stdout(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        print_stdout(&format_run(&workload, &result))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(args: CompareArgs) -> Result<ExitCode> {
    let spec = args.workload.spec()?;
    for (i, t) in args.targets.iter().enumerate() {
        if args.targets[..i].iter().any(|u| u.name == t.name) {
            bail!("target name {:?} is used twice", t.name);
        }
    }
    let baseline = match &args.baseline {
        Some(name) => {
            if !args.targets.iter().any(|t| &t.name == name) {
                bail!("--baseline {name:?} is not one of the --target names");
            }
            name.clone()
        }
        None => args.targets[0].name.clone(),
    };
    let rounds = usize::try_from(args.rounds)?;
    if rounds > 1 && spec.verify.is_some() {
        bail!("--rounds applies to timed runs, not to --verify");
    }
    let outcomes = run_compare(&args.targets, &spec, rounds);
    let mismatch = outcomes.iter().any(|o| o.mismatch);
    let workload = WorkloadSummary::new(&spec);
    let report = CompareReport::new(workload, &baseline, rounds, outcomes);
    if args.workload.json {
        print_stdout(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        print_stdout(&format_compare(&report))?;
    }
    Ok(if mismatch {
        ExitCode::from(EXIT_MISMATCH)
    } else if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn parses_seeds() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(parse_seed("0xzz").is_err());
    }

    #[test]
    fn parses_a_compare_command_line() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "compare",
            "--target",
            "a=vhost-user:/tmp/a.sock",
            "--target",
            "b=file:/tmp/b",
            "--rw",
            "randrw",
            "--rwmix-read",
            "70",
            "--bs",
            "64k",
            "--iodepth",
            "8",
            "--ios",
            "1000",
        ])
        .unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("expected compare");
        };
        assert_eq!(args.targets.len(), 2);
        let spec = args.workload.spec().unwrap();
        assert_eq!(spec.block_size, 65536);
        assert_eq!(spec.limit, Limit::Ios(1000));
        assert_eq!(spec.read_percent(), 70);
    }

    #[test]
    fn rounds_default_to_one_and_must_be_positive() {
        let parse = |extra: &[&str]| {
            let base = [
                "strata-bench",
                "compare",
                "--target",
                "a=file:/nonexistent/a",
            ];
            Cli::try_parse_from(base.iter().chain(extra.iter()).copied())
        };
        let rounds = |extra: &[&str]| match parse(extra).map(|cli| cli.command) {
            Ok(Command::Compare(args)) => Some(args.rounds),
            _ => None,
        };
        assert_eq!(rounds(&[]), Some(1));
        assert_eq!(rounds(&["--rounds", "5"]), Some(5));
        assert_eq!(rounds(&["--rounds", "0"]), None);
        assert_eq!(rounds(&["--rounds", "x"]), None);
        let Ok(Command::Compare(args)) = parse(&["--rounds", "2", "--verify"]).map(|c| c.command)
        else {
            panic!("expected compare");
        };
        let error = compare(args).unwrap_err().to_string();
        assert!(error.contains("--rounds"), "{error}");
    }

    #[test]
    fn rejects_runtime_with_ios_and_bad_sizes() {
        let base = ["strata-bench", "run", "--target", "file:/x"];
        let with = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra.iter()).copied()).map(|_| ())
        };
        assert!(with(&["--runtime", "1", "--ios", "5"]).is_err());
        assert!(with(&["--bs", "4q"]).is_err());
        assert!(with(&["--rwmix-read", "101"]).is_err());
        assert!(with(&["--verify-passes", "read"]).is_err());
        assert!(with(&["--verify", "--verify-passes", "read"]).is_ok());
        assert!(with(&[]).is_ok());
    }
}
