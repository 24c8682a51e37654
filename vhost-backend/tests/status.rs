//! The status command and its control socket, against a real strata-host:
//! data is written through the vhost-user socket with libblkio (the
//! `blkio` crate, via `support::preset`), then the space figures are read
//! on the control socket (docs/HOST-CLI.md) and checked with exact numbers
//! wherever the data makes them exact.
//!
//! Writes complete after the vdisk's map and the flash index hold them, so
//! a status request made after the write completed sees it: no waiting.
//!
//! Only strata-host serving `strata` vdisks has a control socket: every test
//! skips itself under `STRATA_TEST_DAEMON=qsd` or `STRATA_TEST_KIND=raw`.

// Each test binary uses a subset of the shared helpers.
#[allow(dead_code)]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use support::daemon::{run_to_exit, Daemon, Kind, Target, VdiskOptions, STARTUP_TIMEOUT};
use support::data::{pattern, TestRng};
use support::preset::write_through_daemon;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const BLOCK: u64 = 4096;
/// A frame's bytes around its body: 48-byte header, 16-byte tag, 8-byte
/// checksum (common/src/frame.rs).
const FRAME_OVERHEAD: u64 = 72;
/// The frame of a block that does not compress: the block plus overhead.
const RAW_FRAME: u64 = BLOCK + FRAME_OVERHEAD;
/// Bytes per write request.
const CHUNK: usize = MIB as usize;

/// True (and says so) unless the daemon under test is strata-host with
/// strata vdisks, the only configuration with a control socket.
fn skip(test: &str) -> bool {
    if Target::from_env() == Target::StrataHost && Kind::from_env() == Kind::Strata {
        return false;
    }
    eprintln!("{test}: skipped: needs strata-host serving strata vdisks");
    true
}

/// Sends `bytes` on a new connection to the control socket and returns
/// everything the daemon sends back before it closes the connection.
fn exchange(socket: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(STARTUP_TIMEOUT))?;
    stream.write_all(bytes)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The daemon's status document, read on its control socket.
#[track_caller]
fn status(daemon: &Daemon) -> Value {
    let answer = exchange(&daemon.control_socket(), b"status\n")
        .unwrap_or_else(|e| panic!("status request: {e}; log:\n{}", daemon.log()));
    let document: Value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("status answer is not JSON ({e}): {answer:?}"));
    assert!(
        document.get("error").is_none(),
        "status failed: {document}; log:\n{}",
        daemon.log()
    );
    document
}

/// The entry of vdisk `name` in a status document.
#[track_caller]
fn vdisk<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vdisks"]
        .as_array()
        .expect("vdisks is an array")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no vdisk {name} in {status:#}"))
}

/// An unsigned field of a status object.
#[track_caller]
fn num(object: &Value, field: &str) -> u64 {
    object[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an unsigned number in {object:#}"))
}

/// A ratio field (a number, or null when undefined).
#[track_caller]
fn ratio(object: &Value, field: &str) -> Option<f64> {
    match &object[field] {
        Value::Null => None,
        value => Some(
            value
                .as_f64()
                .unwrap_or_else(|| panic!("{field} is not a number in {object:#}")),
        ),
    }
}

/// Asserts the space figures of a vdisk or of the store, in bytes.
#[track_caller]
fn assert_space(object: &Value, logical: u64, unique: u64, stored: u64) {
    assert_eq!(
        num(object, "logical_bytes"),
        logical,
        "logical in {object:#}"
    );
    assert_eq!(num(object, "unique_bytes"), unique, "unique in {object:#}");
    assert_eq!(num(object, "stored_bytes"), stored, "stored in {object:#}");
    assert_eq!(num(object, "missing_frames"), 0, "missing in {object:#}");
    let expect = |n: u64, d: u64| (d != 0).then(|| n as f64 / d as f64);
    assert_eq!(ratio(object, "dedupe_ratio"), expect(logical, unique));
    assert_eq!(ratio(object, "compression_ratio"), expect(unique, stored));
    assert_eq!(ratio(object, "reduction_ratio"), expect(logical, stored));
}

/// Writes `data` at byte `offset` of the vdisk behind `socket` in
/// [`CHUNK`]-sized requests, then flushes.
#[track_caller]
fn write(daemon: &Daemon, socket: &Path, offset: u64, data: &[u8]) {
    let writes: Vec<(u64, Vec<u8>)> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| (offset + (i * CHUNK) as u64, chunk.to_vec()))
        .collect();
    write_through_daemon(socket, &writes)
        .unwrap_or_else(|e| panic!("writing {} bytes: {e}; log:\n{}", data.len(), daemon.log()));
}

/// Runs `strata-host status ARGS`.
fn run_status(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata-host"))
        .arg("status")
        .args(args)
        .output()
        .expect("running strata-host status")
}

/// `len` bytes of ASCII text: random words from a small vocabulary.
fn words(seed: u64, len: usize) -> Vec<u8> {
    const VOCABULARY: [&str; 24] = [
        "the",
        "flash",
        "store",
        "keeps",
        "every",
        "block",
        "once",
        "and",
        "compresses",
        "what",
        "it",
        "keeps",
        "so",
        "text",
        "like",
        "this",
        "takes",
        "less",
        "room",
        "than",
        "random",
        "bytes",
        "would",
        "take",
    ];
    let mut rng = TestRng::new(seed);
    let mut text = Vec::with_capacity(len + 16);
    while text.len() < len {
        text.extend_from_slice(VOCABULARY[rng.below(VOCABULARY.len() as u64) as usize].as_bytes());
        text.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
    }
    text.truncate(len);
    text
}

#[test]
fn writing_zeros_stores_nothing() {
    if skip("writing_zeros_stores_nothing") {
        return;
    }
    let daemon = Daemon::start(VdiskOptions::new(16 * MIB).named("zeros"));
    let socket = daemon.socket().to_path_buf();

    let empty = status(&daemon);
    assert_space(vdisk(&empty, "zeros"), 0, 0, 0);
    assert_eq!(vdisk(&empty, "zeros")["served"], true);
    assert_eq!(num(vdisk(&empty, "zeros"), "capacity"), 16 * MIB);

    write(&daemon, &socket, 0, &vec![0u8; 8 * MIB as usize]);
    let zeros = status(&daemon);
    assert_space(vdisk(&zeros, "zeros"), 0, 0, 0);
    assert_space(&zeros["store"], 0, 0, 0);
    assert_eq!(num(&zeros["counters"], "frames_appended"), 0);
    assert_eq!(num(&zeros["counters"], "frame_bytes_appended"), 0);
    assert_eq!(num(&zeros["counters"], "dedupe_hits"), 0);

    // The writes did reach the map: one non-zero block shows, and writing
    // zeros over it takes it away again.
    write(&daemon, &socket, 4 * MIB, &pattern(1, BLOCK as usize));
    let one = status(&daemon);
    assert_space(vdisk(&one, "zeros"), BLOCK, BLOCK, RAW_FRAME);
    assert_eq!(num(&one["counters"], "frames_appended"), 1);
    assert_eq!(num(&one["counters"], "frame_bytes_appended"), RAW_FRAME);

    write(&daemon, &socket, 4 * MIB, &[0u8; BLOCK as usize]);
    let again = status(&daemon);
    assert_space(vdisk(&again, "zeros"), 0, 0, 0);
    assert_space(&again["store"], 0, 0, 0);
}

#[test]
fn eight_vdisks_of_the_same_data_dedupe_eightfold() {
    if skip("eight_vdisks_of_the_same_data_dedupe_eightfold") {
        return;
    }
    const SIZE: u64 = 16 * MIB;
    let names: Vec<String> = (0..8).map(|i| format!("same{i}")).collect();
    let daemon = Daemon::start_many(
        names
            .iter()
            .map(|name| VdiskOptions::new(SIZE).named(name))
            .collect(),
    );
    let data = pattern(0x5354_4154, SIZE as usize);
    for i in 0..names.len() {
        write(&daemon, daemon.vdisk(i).socket(), 0, &data);
    }

    let status = status(&daemon);
    let blocks = SIZE / BLOCK;
    // Random data does not compress: each distinct block is one raw frame.
    let stored = blocks * RAW_FRAME;
    for name in &names {
        assert_space(vdisk(&status, name), SIZE, SIZE, stored);
    }
    let store = &status["store"];
    assert_space(store, 8 * SIZE, SIZE, stored);
    assert!(
        num(store, "stored_bytes") as f64 <= 1.15 * SIZE as f64 + (blocks * FRAME_OVERHEAD) as f64,
        "stored bytes beyond 1.15 x the data plus frame overhead: {store:#}"
    );
    let dedupe = ratio(store, "dedupe_ratio").expect("a store dedupe ratio");
    assert!(dedupe >= 7.5, "store dedupe ratio {dedupe}");
    assert_eq!(dedupe, 8.0);
    // The vdisks were written one after another: the first stored every
    // block, the other seven found them all.
    let counters = &status["counters"];
    assert_eq!(num(counters, "frames_appended"), blocks);
    assert_eq!(num(counters, "frame_bytes_appended"), stored);
    assert_eq!(num(counters, "dedupe_hits"), 7 * blocks);
    assert_eq!(num(counters, "bad_frames"), 0);
    let flash = &status["flash"];
    assert!(num(flash, "index_entries") >= blocks, "{flash:#}");
    assert!(num(flash, "segments_used") >= 1, "{flash:#}");
    assert!(num(flash, "segments_used") <= num(flash, "segments_total"));
    assert!(num(flash, "journal_used") <= num(flash, "journal_total"));
    assert_eq!(
        num(flash, "segment_bytes_used"),
        num(flash, "segments_used") * num(flash, "segment_size")
    );
    assert_eq!(flash["failed"], Value::Null);
}

#[test]
fn ascii_text_compresses_at_least_two_to_one() {
    if skip("ascii_text_compresses_at_least_two_to_one") {
        return;
    }
    const LEN: u64 = 8 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(16 * MIB).named("text"));
    let text = words(7, LEN as usize);
    write(&daemon, daemon.socket(), 0, &text);

    let status = status(&daemon);
    let v = vdisk(&status, "text");
    // Every block of random word sequences differs from every other.
    assert_eq!(num(v, "logical_bytes"), LEN);
    assert_eq!(num(v, "unique_bytes"), LEN);
    let compression = ratio(v, "compression_ratio").expect("a compression ratio");
    assert!(
        compression >= 2.0,
        "text compressed only {compression:.2}:1: {v:#}"
    );
    assert_eq!(status["store"]["stored_bytes"], v["stored_bytes"]);
    assert_eq!(
        num(&status["counters"], "frame_bytes_appended"),
        num(v, "stored_bytes")
    );
}

#[test]
fn sparse_blocks_over_many_map_leaves_are_counted_once_and_survive_a_restart() {
    if skip("sparse_blocks_over_many_map_leaves_are_counted_once_and_survive_a_restart") {
        return;
    }
    // One block in each of 200 leaves (a leaf maps 1 MiB), spread over
    // four level-1 nodes: the status walk takes the map lock many times
    // (64 leaves at a time) and must count each block once.
    const LEAVES: u64 = 200;
    const DISTINCT: u64 = 50;
    let mut daemon = Daemon::start(VdiskOptions::new(1024 * MIB).named("sparse"));
    let writes: Vec<(u64, Vec<u8>)> = (0..LEAVES)
        .map(|k| {
            let offset = k * 4 * MIB + (k % 256) * BLOCK;
            (offset, pattern(1000 + k % DISTINCT, BLOCK as usize))
        })
        .collect();
    write_through_daemon(daemon.socket(), &writes)
        .unwrap_or_else(|e| panic!("writing: {e}; log:\n{}", daemon.log()));

    let before = status(&daemon);
    let expect = |status: &Value| {
        let v = vdisk(status, "sparse");
        assert_space(v, LEAVES * BLOCK, DISTINCT * BLOCK, DISTINCT * RAW_FRAME);
        assert_eq!(num(v, "capacity"), 1024 * MIB);
    };
    expect(&before);

    // SIGKILL leaves a stale control socket behind; the new daemon replaces
    // it, and the figures come back from the flash.
    daemon.kill_and_restart();
    let after = status(&daemon);
    expect(&after);
    assert_eq!(num(&after["counters"], "frames_appended"), 0);
}

#[test]
fn status_command_prints_a_summary_or_the_json() {
    if skip("status_command_prints_a_summary_or_the_json") {
        return;
    }
    let names = ["alpha", "beta-2", "gamma.3"];
    let mut daemon = Daemon::start_many(
        names
            .iter()
            .map(|name| VdiskOptions::new(16 * MIB).named(name))
            .collect(),
    );
    let data = pattern(42, 4 * MIB as usize);
    write(&daemon, daemon.vdisk(0).socket(), 0, &data);
    write(&daemon, daemon.vdisk(1).socket(), 0, &data);
    let socket = daemon.control_socket();
    let socket_arg = socket.to_str().expect("UTF-8 path");

    let out = run_status(&["--control-socket", socket_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in names {
        assert!(
            stdout.lines().any(|line| line.starts_with(name)),
            "no line for vdisk {name} in:\n{stdout}"
        );
    }
    // Two vdisks share the same 4 MiB: the store dedupes 2:1.
    assert!(stdout.contains("dedupe 2.00x"), "{stdout}");
    assert!(stdout.contains("4.00 MiB"), "{stdout}");
    assert!(
        stdout.contains(
            daemon
                .control_socket()
                .parent()
                .expect("dir")
                .to_str()
                .expect("UTF-8")
        ),
        "the flash path is shown:\n{stdout}"
    );

    let out = run_status(&["--control-socket", socket_arg, "--json"]);
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    assert_space(
        &json["store"],
        8 * MIB,
        4 * MIB,
        4 * MIB / BLOCK * RAW_FRAME,
    );
    assert_space(vdisk(&json, "gamma.3"), 0, 0, 0);
    for field in [
        "path",
        "datastore",
        "bytes",
        "segment_size",
        "segments_used",
        "segments_total",
        "journal_used",
        "journal_total",
        "index_entries",
    ] {
        assert!(json["flash"].get(field).is_some(), "flash.{field} missing");
    }
    for field in [
        "dedupe_hits",
        "frames_appended",
        "frame_bytes_appended",
        "bad_frames",
        "segments_written",
        "journal_records",
        "nvlog_records",
        "checkpoints",
    ] {
        assert!(
            json["counters"].get(field).is_some(),
            "counters.{field} missing"
        );
    }
    // The writes' batches went to the pool's NVLOG when there is a pool
    // (the flash journal then holds only checkpoints), else to the journal.
    let (journal, nvlog, checkpoints) = (
        num(&json["counters"], "journal_records"),
        num(&json["counters"], "nvlog_records"),
        num(&json["counters"], "checkpoints"),
    );
    let batches_in_journal = journal - checkpoints;
    if support::pool::pool_mode() {
        assert!(
            nvlog > 0 && batches_in_journal == 0,
            "journal batches {batches_in_journal}, NVLOG {nvlog}"
        );
    } else {
        assert!(
            batches_in_journal > 0 && nvlog == 0,
            "journal batches {batches_in_journal}, NVLOG {nvlog}"
        );
    }

    // Nobody listening: one line on stderr, exit code 1.
    let missing = socket.with_file_name("nobody.sock");
    let out = run_status(&["--control-socket", missing.to_str().expect("UTF-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(out.stdout.is_empty());

    // A clean shutdown removes the control socket.
    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait_for_exit(STARTUP_TIMEOUT);
    assert!(exit.success(), "exit status {exit}");
    assert!(!socket.exists(), "control socket left behind");
}

#[test]
fn a_second_daemon_refuses_a_live_control_socket() {
    if skip("a_second_daemon_refuses_a_live_control_socket") {
        return;
    }
    let mut daemon = Daemon::start(VdiskOptions::new(16 * MIB));
    let dir = tempfile::tempdir().expect("temporary directory");
    let flash = dir.path().join("flash.img");
    let (exit, stderr) = run_to_exit(&[
        "--flash".to_string(),
        flash.display().to_string(),
        "--flash-size".to_string(),
        "1G".to_string(),
        "--key-dir".to_string(),
        dir.path().join("keys").display().to_string(),
        "--control-socket".to_string(),
        daemon.control_socket().display().to_string(),
        "--vdisk".to_string(),
        format!(
            "name=other,size=16M,socket={}",
            dir.path().join("other.sock").display()
        ),
    ]);
    assert_eq!(exit.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(!flash.exists(), "the refused daemon created its flash");
    daemon.assert_running();
    status(&daemon);
}

#[test]
fn bad_clients_get_an_error_or_a_closed_connection_and_the_daemon_keeps_serving() {
    if skip("bad_clients_get_an_error_or_a_closed_connection_and_the_daemon_keeps_serving") {
        return;
    }
    let mut daemon = Daemon::start(VdiskOptions::new(16 * MIB).named("busy"));
    let control = daemon.control_socket();

    // An error answer must be a JSON document with "error"; a closed
    // connection (nothing, or a reset) is also acceptable.
    let assert_error_or_closed = |answer: std::io::Result<String>, what: &str| match answer {
        Ok(text) if text.is_empty() => {}
        Ok(text) => {
            let document: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: answer is not JSON ({e}): {text:?}"));
            assert!(
                document["error"].is_string(),
                "{what}: not an error: {document}"
            );
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::NotConnected
            ),
            "{what}: {e}"
        ),
    };

    // A client that says nothing stays connected while everything else
    // goes on: status on other connections, and I/O.
    let idle = UnixStream::connect(&control).expect("idle connection");

    // An unknown command: an error naming it.
    let answer = exchange(&control, b"frobnicate\n").expect("unknown command");
    let document: Value = serde_json::from_str(&answer).expect("JSON");
    let message = document["error"].as_str().expect("an error message");
    assert!(message.contains("frobnicate"), "{message}");

    // Binary garbage with a newline, and without one.
    let mut rng = TestRng::new(99);
    let mut garbage = rng.bytes(300);
    garbage.push(b'\n');
    assert_error_or_closed(exchange(&control, &garbage), "garbage line");
    assert_error_or_closed(exchange(&control, &rng.bytes(200)), "garbage");
    assert_error_or_closed(exchange(&control, b"\n"), "empty line");
    assert_error_or_closed(exchange(&control, b"status status\n"), "status with junk");

    // An over-long line: 1 MiB without a newline.
    assert_error_or_closed(
        exchange(&control, &vec![b'a'; MIB as usize]),
        "over-long line",
    );
    // And one just over the limit, with a newline after it.
    let mut long = vec![b's'; 2000];
    long.push(b'\n');
    assert_error_or_closed(exchange(&control, &long), "long line");

    // Connecting and leaving at once.
    drop(UnixStream::connect(&control).expect("connect"));

    // Many connections at once, each sending half a command: the daemon
    // answers the ones it takes and turns the rest away.
    let mut half: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(&control).expect("connect");
            // A turned-away connection may already be closed.
            let _ = s.write_all(b"sta");
            s
        })
        .collect();

    // The daemon still serves I/O and status while all of that is open.
    let data = pattern(5, 2 * MIB as usize);
    write(&daemon, daemon.socket(), 0, &data);
    daemon.assert_running();
    // Status may be refused as busy while too many connections are open:
    // finish the half commands first, then ask.
    for s in &mut half {
        // A turned-away connection is closed: writing to it may fail.
        let _ = s.write_all(b"tus\n");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
    }
    for mut s in half {
        let mut answer = String::new();
        // A turned-away connection may have been closed with our bytes
        // unread: a reset is fine, so is a "busy" error or a status.
        if s.read_to_string(&mut answer).is_ok() && !answer.is_empty() {
            let document: Value = serde_json::from_str(&answer).expect("JSON answer");
            assert!(
                document.get("error").is_some() || document.get("vdisks").is_some(),
                "{document}"
            );
        }
    }
    drop(idle);

    let status = status(&daemon);
    assert_space(
        vdisk(&status, "busy"),
        2 * MIB,
        2 * MIB,
        2 * MIB / BLOCK * RAW_FRAME,
    );
    daemon.assert_running();
}
