//! Client-level tests: drive a real `strata-host` process through its
//! vhost-user socket with libblkio (the `blkio` crate), an independent
//! virtio-blk frontend, and check every result byte for byte against an
//! in-memory model of the disk and against the backing file itself.
//!
//! Each test starts its own daemon on temporary files with
//! [`support::daemon::Daemon`]
//! (`--vdisk name=...,path=...,size=...,socket=...` per docs/HOST-CLI.md),
//! which waits for the socket to appear and kills the daemon when done.
//! The data tests also run with `--io sync` (blocking syscalls instead of
//! io_uring), and the SIGTERM tests check that a shutdown completes the
//! writes in flight.
//!
//! Setting `STRATA_TEST_DAEMON=qsd` runs the same tests against
//! qemu-storage-daemon's vhost-user-blk export instead, to check the tests
//! themselves; tests of strata-host-only behaviour (its command line and
//! `--io` modes, sub-block requests on 4 KiB vdisks, completing every
//! request submitted before SIGTERM) are skipped then.
//!
//! Not covered here because libblkio cannot express it:
//! - GET_ID (the serial): libblkio 0.5 never sends VIRTIO_BLK_T_GET_ID.
//! - A device-side refusal of writes on a read-only vdisk: libblkio refuses
//!   to start a read-only device unless the client is read-only too, and a
//!   read-only client fails writes itself (EBADF) without sending them. The
//!   test checks the device advertises VIRTIO_BLK_F_RO (start fails with
//!   EROFS) and that the image is untouched.
//! - Unaligned (non-512) offsets: libblkio rejects them before sending.

// Each test binary uses a subset of the shared helpers.
#[allow(dead_code)]
mod support;

use std::fs;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blkio::{iovec, Blkio, Blkioq, Completion, Errno, ReqFlags};

use support::daemon::{run_to_exit, Daemon, Kind, Target, VdiskOptions, STARTUP_TIMEOUT};
use support::data::{assert_bytes_eq, TestRng};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Longest wait for any single completion before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// I/O memory per client queue: room for one batch of requests.
const QUEUE_MEMORY: usize = 4 * MIB as usize;

/// Returns true (and says so) when the test only applies to strata-host.
fn skip_unless_strata(test: &str) -> bool {
    if Target::from_env() == Target::StrataHost {
        return false;
    }
    eprintln!("{test}: skipped: strata-host-specific behaviour");
    true
}

/// How the daemon under test stores its vdisks.
fn daemon_kind() -> Kind {
    Kind::from_env()
}

/// The name of the running test (the harness names each test's thread
/// after it).
fn current_test() -> String {
    std::thread::current().name().unwrap_or("test").to_string()
}

/// How the daemon's queues do I/O: strata-host's `--io`, for tests that
/// run once per mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Io {
    /// No `--io` flag: strata-host's default (`auto`), or qsd.
    Default,
    /// `--io uring`: io_uring or nothing.
    Uring,
    /// `--io sync`: blocking syscalls, the fallback where io_uring is
    /// unavailable. strata-host only.
    Sync,
}

impl Io {
    /// Starts the daemon serving `options` in this mode, or says that the
    /// test is skipped and returns `None` if the mode is strata-host's and
    /// the target is not.
    fn start(self, options: VdiskOptions) -> Option<Daemon> {
        let args: &[&str] = match self {
            Io::Default => &[],
            Io::Uring => &["--io", "uring"],
            Io::Sync => &["--io", "sync"],
        };
        if !args.is_empty() && skip_unless_strata(&current_test()) {
            return None;
        }
        Some(Daemon::start_with_args(options, args))
    }

    /// Checks that the daemon moves data the way the mode says, so that a
    /// test of `--io sync` cannot pass on io_uring: it has an io_uring open
    /// with `--io uring`, and none with `--io sync`.
    #[track_caller]
    fn assert_in_use(self, daemon: &Daemon) {
        let rings = daemon.io_uring_instances();
        match self {
            Io::Default => {}
            Io::Uring => assert!(rings > 0, "--io uring: no io_uring open"),
            Io::Sync => assert_eq!(rings, 0, "--io sync: io_uring instances open"),
        }
    }
}

// ---------------------------------------------------------------------------
// The libblkio client
// ---------------------------------------------------------------------------

/// A connected libblkio `virtio-blk-vhost-user` client.
struct Client {
    // Queues before `blkio`: dropping `Blkio` disconnects.
    queues: Vec<Queue>,
    blkio: Blkio,
}

/// One client queue with its own slice of shared I/O memory.
struct Queue {
    queue: Blkioq,
    memory: *mut u8,
    memory_len: usize,
    max_segment_len: usize,
    max_segments: usize,
}

// SAFETY: the memory pointer refers to the client's mapped region, which
// outlives every queue; each queue's slice is used by one thread at a time.
unsafe impl Send for Queue {}

/// Requests sent by [`Queue::submit`], to be collected by [`Queue::reap`].
struct InFlight {
    /// Each request's `(start, len)` in the queue's memory.
    buffers: Vec<(usize, usize)>,
    /// The segments given to libblkio, kept until the requests complete.
    _iovecs: Vec<Vec<iovec>>,
}

/// One request of a batch.
#[derive(Clone, Copy, Debug)]
enum Req<'a> {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        data: &'a [u8],
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Flush,
}

impl<'a> Req<'a> {
    /// Plain writes of `(offset, data)` pairs.
    fn writes(writes: &'a [(u64, Vec<u8>)]) -> Vec<Req<'a>> {
        writes
            .iter()
            .map(|(offset, data)| Req::Write {
                offset: *offset,
                data,
                fua: false,
            })
            .collect()
    }
}

impl Client {
    /// Connects and starts `queues` queues, retrying while the socket is
    /// bound but not yet listening (the daemon creates the socket file a
    /// moment before it listens).
    fn connect(socket: &Path, queues: usize, read_only: bool) -> blkio::Result<Client> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match Client::connect_once(socket, queues, read_only) {
                Err(e) if e.errno() == Errno::CONNREFUSED && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => return result,
            }
        }
    }

    fn connect_once(socket: &Path, queues: usize, read_only: bool) -> blkio::Result<Client> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().expect("UTF-8 socket path"))?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", queues as i32)?;
        let started = blkio.start()?;
        let max_segment_len = usize::try_from(blkio.get_i32("max-segment-len")?).unwrap_or(0);
        let max_segments = usize::try_from(blkio.get_i32("max-segments")?).unwrap_or(1);
        let region = blkio.alloc_mem_region(QUEUE_MEMORY * queues)?;
        blkio.map_mem_region(&region)?;
        let queues = started
            .queues
            .into_iter()
            .enumerate()
            .map(|(i, queue)| Queue {
                queue,
                memory: (region.addr + i * QUEUE_MEMORY) as *mut u8,
                memory_len: QUEUE_MEMORY,
                max_segment_len,
                max_segments: max_segments.max(1),
            })
            .collect();
        Ok(Client { queues, blkio })
    }

    /// Connects a client with `queues` queues to the daemon's first vdisk.
    fn open(daemon: &Daemon, queues: usize) -> Client {
        Client::connect(daemon.socket(), queues, false)
            .unwrap_or_else(|e| panic!("connecting: {e} ({:?}); log:\n{}", e.errno(), daemon.log()))
    }

    /// Connects, retrying while the daemon re-arms its socket after an
    /// earlier client left.
    fn connect_retry(socket: &Path, queues: usize, read_only: bool) -> Client {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match Client::connect(socket, queues, read_only) {
                Ok(client) => return client,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("connecting to {}: {e} ({:?})", socket.display(), e.errno()),
            }
        }
    }

    fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").expect("capacity")
    }

    fn prop_i32(&self, name: &str) -> i32 {
        self.blkio
            .get_i32(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn prop_u64(&self, name: &str) -> u64 {
        self.blkio
            .get_u64(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn q(&mut self) -> &mut Queue {
        &mut self.queues[0]
    }
}

impl Queue {
    /// Submits all requests at once (they are in flight together) and waits
    /// for every completion. Reads return their data.
    fn batch(&mut self, reqs: &[Req]) -> Vec<Result<Vec<u8>, Errno>> {
        let in_flight = self.submit(reqs);
        let results = self.reap(&in_flight, Instant::now() + IO_TIMEOUT, "batch");
        results
            .into_iter()
            .zip(reqs)
            .zip(&in_flight.buffers)
            .map(|((result, req), &(start, len))| {
                result?;
                Ok(match req {
                    Req::Read { .. } => {
                        // SAFETY: the read completed; in bounds.
                        unsafe { std::slice::from_raw_parts(self.memory.add(start), len) }.to_vec()
                    }
                    _ => Vec::new(),
                })
            })
            .collect()
    }

    /// Copies write data into the queue's memory and sends every request to
    /// the device, request `i` with user data `i`, without waiting for any
    /// completion; [`Queue::reap`] collects them. Nothing may be in flight on
    /// the queue before.
    fn submit(&mut self, reqs: &[Req]) -> InFlight {
        let mut iovecs: Vec<Vec<iovec>> = Vec::with_capacity(reqs.len());
        let mut buffers: Vec<(usize, usize)> = Vec::with_capacity(reqs.len());
        let mut cursor = 0usize;
        for req in reqs {
            let len = match req {
                Req::Read { len, .. } => *len,
                Req::Write { data, .. } => data.len(),
                _ => 0,
            };
            assert!(
                cursor + len <= self.memory_len,
                "batch needs more than {} bytes of I/O memory",
                self.memory_len
            );
            if let Req::Write { data, .. } = req {
                // SAFETY: in bounds; nothing is in flight on this memory.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), self.memory.add(cursor), len)
                };
            }
            iovecs.push(self.segments(cursor, len));
            buffers.push((cursor, len));
            cursor += len.next_multiple_of(512);
        }

        for (i, req) in reqs.iter().enumerate() {
            let iov = &iovecs[i];
            match *req {
                Req::Read { offset, .. } => {
                    self.queue
                        .readv(offset, iov.as_ptr(), iov.len() as u32, i, ReqFlags::empty())
                }
                Req::Write { offset, fua, .. } => {
                    let flags = if fua {
                        ReqFlags::FUA
                    } else {
                        ReqFlags::empty()
                    };
                    self.queue
                        .writev(offset, iov.as_ptr(), iov.len() as u32, i, flags)
                }
                Req::WriteZeroes { offset, len, unmap } => {
                    let flags = if unmap {
                        ReqFlags::empty()
                    } else {
                        ReqFlags::NO_UNMAP
                    };
                    self.queue.write_zeroes(offset, len, i, flags)
                }
                Req::Discard { offset, len } => {
                    self.queue.discard(offset, len, i, ReqFlags::empty())
                }
                Req::Flush => self.queue.flush(i, ReqFlags::empty()),
            }
        }
        // Kick the device without waiting for anything.
        let mut none: [MaybeUninit<Completion>; 0] = [];
        self.queue
            .do_io(&mut none, 0, None, None)
            .unwrap_or_else(|e| panic!("submitting: {e} ({:?})", e.errno()));
        InFlight {
            buffers,
            _iovecs: iovecs,
        }
    }

    /// Waits until `deadline` for the completion of every request of
    /// `in_flight`, and returns their results in order; panics, naming the
    /// requests `what`, if some are still missing then.
    fn reap(
        &mut self,
        in_flight: &InFlight,
        deadline: Instant,
        what: &str,
    ) -> Vec<Result<(), Errno>> {
        let count = in_flight.buffers.len();
        let mut results: Vec<Option<Result<(), Errno>>> = vec![None; count];
        let mut completions: Vec<MaybeUninit<Completion>> =
            std::iter::repeat_with(MaybeUninit::uninit)
                .take(count.max(1))
                .collect();
        let mut pending = count;
        while pending > 0 {
            let mut timeout = deadline.saturating_duration_since(Instant::now());
            let n = self
                .queue
                .do_io(&mut completions, 1, Some(&mut timeout), None)
                .unwrap_or_else(|e| {
                    panic!(
                        "{what}: waiting for {pending} of {count} completion(s): {e} ({:?})",
                        e.errno()
                    )
                });
            for c in &completions[..n] {
                // SAFETY: do_io initialised the first n entries.
                let c = unsafe { c.assume_init_read() };
                assert!(c.user_data < count, "unknown completion {}", c.user_data);
                assert!(
                    results[c.user_data].is_none(),
                    "request {} completed twice",
                    c.user_data
                );
                results[c.user_data] = Some(if c.ret == 0 {
                    Ok(())
                } else {
                    Err(Errno::from_raw_os_error(-c.ret))
                });
                pending -= 1;
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request completed"))
            .collect()
    }

    /// Splits `len` bytes at `start` into segments the device accepts.
    fn segments(&self, start: usize, len: usize) -> Vec<iovec> {
        let max = if self.max_segment_len == 0 {
            len.max(1)
        } else {
            self.max_segment_len
        };
        let mut out = Vec::new();
        let mut done = 0;
        while done < len {
            let take = (len - done).min(max);
            out.push(iovec {
                // SAFETY: in bounds (checked by the caller).
                iov_base: unsafe { self.memory.add(start + done) }.cast(),
                iov_len: take,
            });
            done += take;
        }
        assert!(
            out.len() <= self.max_segments,
            "{len} bytes need {} segments, the device accepts {}",
            out.len(),
            self.max_segments
        );
        out
    }

    fn one(&mut self, req: Req) -> Result<Vec<u8>, Errno> {
        self.batch(&[req]).pop().expect("one result")
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        self.one(Req::Read { offset, len })
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.one(Req::Write {
            offset,
            data,
            fua: false,
        })
        .map(drop)
    }

    fn write_fua(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.one(Req::Write {
            offset,
            data,
            fua: true,
        })
        .map(drop)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), Errno> {
        self.one(Req::WriteZeroes { offset, len, unmap }).map(drop)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), Errno> {
        self.one(Req::Discard { offset, len }).map(drop)
    }

    fn flush(&mut self) -> Result<(), Errno> {
        self.one(Req::Flush).map(drop)
    }

    /// Reads `len` bytes at `offset` in chunks and compares them with the
    /// model.
    #[track_caller]
    fn check(&mut self, model: &[u8], offset: u64, len: u64, what: &str) {
        let mut done = 0;
        while done < len {
            let take = (len - done).min(MIB);
            let at = offset + done;
            let got = self
                .read(at, take as usize)
                .unwrap_or_else(|e| panic!("{what}: read of {take} bytes at {at} failed: {e:?}"));
            assert_bytes_eq(&got, &model[at as usize..(at + take) as usize], at, what);
            done += take;
        }
    }
}

/// Writes `data` at `offset` through the queue and into the model.
#[track_caller]
fn write_and_model(q: &mut Queue, model: &mut [u8], offset: u64, data: &[u8]) {
    q.write(offset, data)
        .unwrap_or_else(|e| panic!("write of {} bytes at {offset} failed: {e:?}", data.len()));
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn capacity_and_geometry_match_the_spec() {
    for (size, block_size, queues) in [(16 * MIB, None, 1), (8 * MIB + 4 * KIB, Some(4096), 4)] {
        let mut options = VdiskOptions::new(size).queues(queues);
        if let Some(bs) = block_size {
            options = options.block_size(bs);
        }
        let daemon = Daemon::start(options);
        let client = Client::open(&daemon, 1);
        assert_eq!(client.capacity(), size, "capacity");
        assert_eq!(
            client.prop_i32("request-alignment"),
            block_size.unwrap_or(512) as i32,
            "logical block size"
        );
        assert_eq!(
            client.prop_i32("max-queues"),
            queues as i32,
            "queues offered"
        );
        if daemon.vdisk(0).has_image() {
            assert_eq!(
                fs::metadata(daemon.vdisk(0).image()).expect("image").len(),
                size,
                "image created with size="
            );
        }
    }
}

#[test]
fn writes_read_back_byte_exact_at_many_offsets_and_sizes() {
    writes_read_back_byte_exact(Io::Default);
}

#[test]
fn writes_read_back_byte_exact_with_io_sync() {
    writes_read_back_byte_exact(Io::Sync);
}

#[test]
fn io_uring_mode_serves_io_or_fails_to_start() {
    if skip_unless_strata("io_uring_mode_serves_io_or_fails_to_start") {
        return;
    }
    if io_uring::IoUring::new(2).is_ok() {
        writes_read_back_byte_exact(Io::Uring);
        return;
    }
    // No io_uring here (kernel or seccomp): a startup error, not a fallback.
    let dir = tempfile::tempdir().expect("temporary directory");
    let (status, stderr) = run_to_exit(&[
        "--io".to_string(),
        "uring".to_string(),
        "--vdisk".to_string(),
        format!(
            "name=u,path={},size=1M,socket={}",
            dir.path().join("u.img").display(),
            dir.path().join("u.sock").display()
        ),
    ]);
    assert_eq!(
        status.code(),
        Some(1),
        "--io uring without io_uring: {stderr}"
    );
    assert!(
        !dir.path().join("u.sock").exists(),
        "socket after a failed start"
    );
}

/// Every size from one sector to 1 MiB at the start and end of the disk, at
/// odd sectors and across block boundaries, read back with its
/// neighbourhood, then the whole disk and the backing file.
fn writes_read_back_byte_exact(io: Io) {
    let size = 16 * MIB;
    let Some(daemon) = io.start(VdiskOptions::new(size)) else {
        return;
    };
    let mut client = Client::open(&daemon, 1);
    io.assert_in_use(&daemon);
    let cap = client.capacity();
    let q = client.q();
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(1);

    // A fresh image reads as zeros.
    q.check(&model, 0, 2 * MIB, "fresh image");

    let sizes: [u64; 10] = [
        512,
        1024,
        1536,
        4096,
        4608,
        7 * 512,
        8192,
        64 * KIB,
        64 * KIB + 512,
        MIB,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let span = cap - len;
        let base = (i as u64 * 1_337 * KIB) % span / 4096 * 4096;
        let offsets = [
            0,                                          // start of the disk
            base,                                       // 4 KiB aligned
            (base + 512).min(span),                     // odd sector
            (base + 4096 - 512).min(span),              // last sector of a block
            (base / 2 / 512 * 512 + 3 * 512).min(span), // odd, overlapping others
            span,                                       // ends exactly at the end of the disk
            span - 512,                                 // odd sector, near the end
        ];
        for offset in offsets {
            let data = rng.bytes(len as usize);
            write_and_model(q, &mut model, offset, &data);
            // The range itself, then its neighbourhood.
            q.check(&model, offset, len, &format!("{len} bytes at {offset}"));
            let lo = offset.saturating_sub(4096);
            let hi = (offset + len + 4096).min(cap);
            q.check(
                &model,
                lo,
                hi - lo,
                &format!("around {len} bytes at {offset}"),
            );
        }
    }

    // Sub-ranges of earlier writes, read at odd offsets and lengths.
    for _ in 0..64 {
        let len = (1 + rng.below(64)) * 512;
        let offset = rng.below((cap - len) / 512) * 512;
        q.check(&model, offset, len, &format!("re-read {len} at {offset}"));
    }

    q.check(&model, 0, cap, "whole disk");
    q.flush().expect("flush");
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &model, 0, "backing file after flush");
    }
}

#[test]
fn io_across_the_end_of_the_disk_fails_and_changes_nothing() {
    let size = 4 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(size));
    let mut client = Client::open(&daemon, 1);
    let cap = client.capacity();
    let q = client.q();
    let mut model = vec![0u8; size as usize];
    let tail = TestRng::new(2).bytes(8192);
    write_and_model(q, &mut model, cap - 8192, &tail);

    assert!(q.read(cap, 512).is_err(), "read at the capacity");
    assert!(q.read(cap - 512, 1024).is_err(), "read across the end");
    assert!(q.read(cap + MIB, 4096).is_err(), "read far beyond the end");
    assert!(
        q.read(u64::MAX - 511, 512).is_err(),
        "read at the last sector number"
    );
    let junk = vec![0xa5u8; 8192];
    assert!(q.write(cap, &junk[..512]).is_err(), "write at the capacity");
    assert!(
        q.write(cap - 512, &junk[..1024]).is_err(),
        "write across the end"
    );
    assert!(
        q.write(cap - 4096, &junk).is_err(),
        "write across the end, 8 KiB"
    );
    assert!(
        q.write_zeroes(cap - 512, 1024, false).is_err(),
        "write-zeroes across the end"
    );
    assert!(
        q.discard(cap - 4096, 8192).is_err(),
        "discard across the end"
    );

    // Nothing in range was touched, and the device still works.
    q.check(&model, cap - 8192, 8192, "tail after rejected requests");
    write_and_model(q, &mut model, cap - 512, &[0x5au8; 512]);
    q.check(&model, cap - 8192, 8192, "tail after a valid write");
    q.flush().expect("flush");
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &model, 0, "backing file");
    }
}

#[test]
fn sub_block_requests_on_a_4k_vdisk_are_served() {
    if skip_unless_strata("sub_block_requests_on_a_4k_vdisk_are_served") {
        return;
    }
    let size = 4 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(size).block_size(4096));
    let mut client = Client::open(&daemon, 1);
    let q = client.q();
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(3);
    let block = rng.bytes(64 * 1024);
    write_and_model(q, &mut model, 0, &block);
    for (offset, len) in [
        (512, 512),
        (4096 + 1024, 1536),
        (2048, 4096),
        (65536 - 512, 1024),
    ] {
        let data = rng.bytes(len);
        write_and_model(q, &mut model, offset, &data);
        q.check(
            &model,
            offset,
            len as u64,
            &format!("{len} bytes at {offset}"),
        );
        let block_start = offset / 4096 * 4096;
        let block_end = (offset + len as u64).div_ceil(4096) * 4096;
        q.check(
            &model,
            block_start,
            block_end - block_start,
            "whole blocks around it",
        );
    }
    q.check(&model, 0, 128 * KIB, "first 128 KiB");
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    discard_and_write_zeroes(Io::Default);
}

#[test]
fn discard_and_write_zeroes_with_io_sync() {
    discard_and_write_zeroes(Io::Sync);
}

/// Write-zeroes with and without unmap and discards, aligned and not, read
/// back as zeros without disturbing their neighbours.
fn discard_and_write_zeroes(io: Io) {
    let size = 8 * MIB;
    let Some(daemon) = io.start(VdiskOptions::new(size)) else {
        return;
    };
    let mut client = Client::open(&daemon, 1);
    io.assert_in_use(&daemon);
    let discard_alignment = (client.prop_i32("discard-alignment").max(512) as u64).max(4096);
    let max_discard = client.prop_u64("max-discard-len");
    let max_zeroes = client.prop_u64("max-write-zeroes-len");
    let limit = |max: u64, want: u64| if max == 0 { want } else { want.min(max) };
    let q = client.q();
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(4);
    for chunk in 0..4 {
        let data = rng.bytes(MIB as usize);
        write_and_model(q, &mut model, chunk * MIB, &data);
    }

    let zero = |q: &mut Queue, model: &mut [u8], offset: u64, len: u64, what: &str| {
        model[offset as usize..(offset + len) as usize].fill(0);
        q.check(model, offset, len, what);
        let lo = offset.saturating_sub(8192);
        q.check(
            model,
            lo,
            (offset + len + 8192).min(size) - lo,
            &format!("around {what}"),
        );
    };

    // Write-zeroes without unmap (the data must stay allocated as zeros).
    let len = limit(max_zeroes, 128 * KIB);
    q.write_zeroes(64 * KIB, len, false)
        .expect("write-zeroes, no unmap");
    zero(q, &mut model, 64 * KIB, len, "write-zeroes without unmap");

    // Write-zeroes with unmap, at an odd sector with a partial-block length.
    q.write_zeroes(512 * KIB + 512, 7 * 512, true)
        .expect("write-zeroes, unmap");
    zero(
        q,
        &mut model,
        512 * KIB + 512,
        7 * 512,
        "write-zeroes with unmap",
    );

    // Write-zeroes without unmap, odd sector, crossing block boundaries.
    q.write_zeroes(768 * KIB + 1536, 9 * 512, false)
        .expect("write-zeroes, partial");
    zero(
        q,
        &mut model,
        768 * KIB + 1536,
        9 * 512,
        "partial write-zeroes",
    );

    // Discard of whole aligned blocks.
    let len = limit(max_discard, 256 * KIB) / discard_alignment * discard_alignment;
    q.discard(MIB, len).expect("discard");
    zero(q, &mut model, MIB, len, "discard");

    // Discard of a single aligned block.
    q.discard(2 * MIB + discard_alignment, discard_alignment)
        .expect("discard");
    zero(
        q,
        &mut model,
        2 * MIB + discard_alignment,
        discard_alignment,
        "one-block discard",
    );

    // Writes after a discard land normally.
    let data = rng.bytes(4096);
    write_and_model(q, &mut model, MIB + 4096, &data);
    q.check(&model, MIB, 64 * KIB, "write after discard");

    q.flush().expect("flush");
    q.check(&model, 0, size, "whole disk");
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &model, 0, "backing file after flush");
    }
}

#[test]
fn writethrough_vdisk_needs_no_flush_and_writes_land() {
    if skip_unless_strata("writethrough_vdisk_needs_no_flush_and_writes_land") {
        return;
    }
    let daemon = Daemon::start(VdiskOptions::new(4 * MIB).writethrough());
    let mut client = Client::open(&daemon, 1);
    assert!(
        !client.blkio.get_bool("flush-needed").expect("flush-needed"),
        "cache=writethrough must tell the driver its writes need no flush (WCE=0)"
    );
    let data = TestRng::new(7).bytes(64 * 1024);
    client.q().write(MIB, &data).expect("write");
    if let Some(on_disk) = daemon.vdisk(0).read_image(MIB, data.len()) {
        assert_bytes_eq(&on_disk, &data, MIB, "backing file right after the write");
    }
}

#[test]
fn flush_and_fua_writes_reach_the_backing_file() {
    let size = 4 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(size));
    let mut client = Client::open(&daemon, 1);
    if daemon.target() == Target::StrataHost {
        // HOST-CLI: cache=writeback is the default, so the driver must flush.
        // (qemu-storage-daemon reports its write cache differently.)
        assert!(
            client.blkio.get_bool("flush-needed").expect("flush-needed"),
            "cache=writeback (the default) must ask the driver to flush"
        );
    }
    let q = client.q();
    q.flush().expect("flush of a clean disk");

    let data = TestRng::new(5).bytes(64 * 1024);
    q.write(0, &data).expect("write");
    q.flush().expect("flush after a write");
    if let Some(on_disk) = daemon.vdisk(0).read_image(0, data.len()) {
        assert_bytes_eq(&on_disk, &data, 0, "backing file after flush");
    }

    // FUA: durable when it completes, without a separate flush.
    let data = TestRng::new(6).bytes(8192);
    q.write_fua(MIB + 512, &data).expect("FUA write");
    if let Some(on_disk) = daemon.vdisk(0).read_image(MIB + 512, data.len()) {
        assert_bytes_eq(&on_disk, &data, MIB + 512, "backing file after FUA write");
    }

    // Several flushes in flight with writes.
    let a = vec![1u8; 4096];
    let b = vec![2u8; 4096];
    let results = q.batch(&[
        Req::Write {
            offset: 2 * MIB,
            data: &a,
            fua: false,
        },
        Req::Flush,
        Req::Write {
            offset: 2 * MIB + 4096,
            data: &b,
            fua: false,
        },
        Req::Flush,
    ]);
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("request {i} of the batch failed: {e:?}"));
    }
    q.flush().expect("final flush");
    if let Some(on_disk) = daemon.vdisk(0).read_image(2 * MIB, 8192) {
        assert_bytes_eq(&on_disk[..4096], &a, 2 * MIB, "first batched write");
        assert_bytes_eq(&on_disk[4096..], &b, 2 * MIB + 4096, "second batched write");
    }
    let back = q.read(2 * MIB, 8192).expect("read back");
    assert_bytes_eq(&back[..4096], &a, 2 * MIB, "first batched write, read back");
    assert_bytes_eq(
        &back[4096..],
        &b,
        2 * MIB + 4096,
        "second batched write, read back",
    );
}

/// Each thread owns every `queues`-th 2 KiB stripe, so threads write
/// neighbouring sectors of the same 4 KiB blocks concurrently.
fn concurrent_io(queues: usize) {
    const STRIPE: u64 = 2048;
    const BATCH: usize = 8;
    const ROUNDS: usize = 40;
    let size = 8 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(size).queues(queues));
    let mut client = Client::open(&daemon, queues);
    assert_eq!(client.queues.len(), queues);
    let stripes = size / STRIPE;

    let models: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = client
            .queues
            .iter_mut()
            .enumerate()
            .map(|(t, q)| {
                scope.spawn(move || {
                    let mut rng = TestRng::new(100 + t as u64);
                    let mut model = vec![0u8; size as usize];
                    let owned = stripes / queues as u64;
                    for round in 0..ROUNDS {
                        // A batch of writes to distinct stripes of this thread.
                        let mut picked: Vec<u64> = Vec::new();
                        while picked.len() < BATCH {
                            let stripe = rng.below(owned) * queues as u64 + t as u64;
                            if !picked.contains(&stripe) {
                                picked.push(stripe);
                            }
                        }
                        let writes: Vec<(u64, Vec<u8>)> = picked
                            .iter()
                            .map(|&stripe| {
                                let sectors = STRIPE / 512;
                                let first = rng.below(sectors);
                                let count = 1 + rng.below(sectors - first);
                                (
                                    stripe * STRIPE + first * 512,
                                    rng.bytes((count * 512) as usize),
                                )
                            })
                            .collect();
                        for (i, r) in q.batch(&Req::writes(&writes)).into_iter().enumerate() {
                            r.unwrap_or_else(|e| {
                                panic!("queue {t} round {round} write {i}: {e:?}")
                            });
                        }
                        for (offset, data) in &writes {
                            model[*offset as usize..*offset as usize + data.len()]
                                .copy_from_slice(data);
                        }
                        // Read the touched stripes back while the others write.
                        let reads: Vec<Req> = picked
                            .iter()
                            .map(|&s| Req::Read {
                                offset: s * STRIPE,
                                len: STRIPE as usize,
                            })
                            .collect();
                        for (stripe, r) in picked.iter().zip(q.batch(&reads)) {
                            let got = r.unwrap_or_else(|e| panic!("queue {t} read: {e:?}"));
                            let at = stripe * STRIPE;
                            assert_bytes_eq(
                                &got,
                                &model[at as usize..(at + STRIPE) as usize],
                                at,
                                &format!("queue {t} round {round}"),
                            );
                        }
                    }
                    model
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker thread panicked"))
            .collect()
    });

    // Merge: every stripe comes from the thread that owns it.
    let mut model = vec![0u8; size as usize];
    for stripe in 0..stripes {
        let owner = (stripe % queues as u64) as usize;
        let range = (stripe * STRIPE) as usize..((stripe + 1) * STRIPE) as usize;
        model[range.clone()].copy_from_slice(&models[owner][range]);
    }
    let q = client.q();
    q.check(&model, 0, size, "whole disk after concurrent I/O");
    q.flush().expect("flush");
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &model, 0, "backing file");
    }
}

#[test]
fn concurrent_io_on_2_queues() {
    concurrent_io(2);
}

#[test]
fn concurrent_io_on_4_queues() {
    concurrent_io(4);
}

#[test]
fn a_new_client_reads_what_the_previous_one_wrote() {
    let size = 8 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(size).queues(2));
    let socket = daemon.vdisk(0).socket().to_path_buf();
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(7);

    // First client: two queues, writes, leaves without flushing.
    {
        let mut client = Client::open(&daemon, 2);
        let data = rng.bytes(MIB as usize);
        write_and_model(&mut client.queues[0], &mut model, 3 * MIB + 512, &data);
        let data = rng.bytes(64 * 1024);
        write_and_model(&mut client.queues[1], &mut model, 64 * KIB, &data);
    }

    // Second client: one queue; sees everything, writes more, flushes.
    {
        let mut client = Client::connect_retry(&socket, 1, false);
        client.q().check(&model, 0, size, "second client");
        let data = rng.bytes(256 * 1024);
        write_and_model(client.q(), &mut model, 6 * MIB, &data);
        client.q().flush().expect("flush");
    }

    // Third client: leaves with writes still in flight.
    let in_flight_area = 5 * MIB..5 * MIB + 16 * 4096;
    {
        let mut client = Client::connect_retry(&socket, 1, false);
        client.q().check(&model, 0, size, "third client");
        let data = rng.bytes(4096);
        let writes: Vec<Req> = (0..16u64)
            .map(|i| Req::Write {
                offset: in_flight_area.start + i * 4096,
                data: &data,
                fua: false,
            })
            .collect();
        // Sent to the device; the client leaves without waiting for them.
        let _in_flight = client.q().submit(&writes);
    }

    // Fourth client: everything outside the in-flight area is intact (the
    // in-flight writes may or may not have landed) and I/O still works.
    let mut client = Client::connect_retry(&socket, 2, false);
    let q = &mut client.queues[1];
    q.check(
        &model,
        0,
        in_flight_area.start,
        "fourth client, before the area",
    );
    q.check(
        &model,
        in_flight_area.end,
        size - in_flight_area.end,
        "fourth client, after the area",
    );
    let data = rng.bytes(8192);
    write_and_model(q, &mut model, in_flight_area.start, &data);
    q.check(&model, in_flight_area.start, 8192, "fourth client writes");
}

#[test]
fn sigterm_completes_in_flight_writes_and_exits_0() {
    sigterm_completes_in_flight_writes(Io::Default, false);
}

#[test]
fn sigterm_completes_writes_submitted_while_the_daemon_was_stopped() {
    sigterm_completes_in_flight_writes(Io::Default, true);
}

#[test]
fn sigterm_completes_in_flight_writes_with_io_sync() {
    sigterm_completes_in_flight_writes(Io::Sync, false);
}

/// SIGTERM with a queue full of writes submitted and not yet reaped. The
/// daemon may have started, finished or not yet seen any of them when the
/// signal arrives, so only the outcome is checked: every write completes
/// successfully, the daemon exits 0 and removes its socket, and the image
/// holds every write. With `stopped`, the daemon is stopped (SIGSTOP) from
/// before the writes are submitted until after SIGTERM, so none of them can
/// have been taken from the ring when the signal comes.
fn sigterm_completes_in_flight_writes(io: Io, stopped: bool) {
    // qemu-storage-daemon exits leaving requests it has not yet taken from
    // the ring there, never completed (every time with `stopped`, now and
    // then without), so only strata-host is held to this.
    if skip_unless_strata(&current_test()) {
        return;
    }
    const DEPTH: usize = 32;
    /// Each write lies in its own slot, at most half a slot into it and at
    /// most half a slot long, so no two overlap.
    const SLOT: u64 = 128 * KIB;
    let size = 8 * MIB;
    let Some(mut daemon) = io.start(VdiskOptions::new(size)) else {
        return;
    };
    let mut client = Client::open(&daemon, 1);
    io.assert_in_use(&daemon);
    let mut rng = TestRng::new(11);
    let mut free_slots: Vec<u64> = (0..size / SLOT).collect();
    let writes: Vec<(u64, Vec<u8>)> = (0..DEPTH)
        .map(|_| {
            let slot = free_slots.swap_remove(rng.below(free_slots.len() as u64) as usize);
            let sectors = SLOT / 2 / 512;
            let offset = slot * SLOT + rng.below(sectors) * 512;
            let len = (1 + rng.below(sectors)) * 512;
            (offset, rng.bytes(len as usize))
        })
        .collect();
    let mut model = vec![0u8; size as usize];
    for (offset, data) in &writes {
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }

    let q = client.q();
    if stopped {
        daemon.signal(libc::SIGSTOP);
    }
    let in_flight = q.submit(&Req::writes(&writes));
    daemon.signal(libc::SIGTERM);
    if stopped {
        daemon.signal(libc::SIGCONT);
    }
    let status = daemon.wait_for_exit(STARTUP_TIMEOUT);
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    // The daemon is gone, so every completion it reported is on the used
    // ring already and none can follow: no need to wait long.
    let results = q.reap(
        &in_flight,
        Instant::now() + Duration::from_secs(5),
        "writes in flight at SIGTERM, after the daemon exited",
    );
    for (result, (offset, data)) in results.into_iter().zip(&writes) {
        result.unwrap_or_else(|e| {
            panic!(
                "write of {} bytes at {offset}, in flight at SIGTERM: {e:?}",
                data.len()
            )
        });
    }
    assert!(
        !daemon.socket().exists(),
        "socket {} left behind after SIGTERM",
        daemon.socket().display()
    );
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &model, 0, "image after SIGTERM");
    }
}

#[test]
fn a_read_only_vdisk_serves_reads_and_refuses_writers() {
    let size = 4 * MIB;
    let content = TestRng::new(8).bytes(size as usize);
    let daemon = Daemon::start(
        VdiskOptions::new(size)
            .read_only()
            .preset(0, content.clone()),
    );
    let socket = daemon.vdisk(0).socket().to_path_buf();

    // A read-write client cannot start: the device advertises
    // VIRTIO_BLK_F_RO.
    match Client::connect(&socket, 1, false) {
        Ok(_) => panic!("a read-write client started on a read-only vdisk"),
        Err(e) => assert_eq!(e.errno(), Errno::ROFS, "unexpected error: {e}"),
    }

    let mut client = Client::connect_retry(&socket, 1, true);
    let q = client.q();
    q.check(&content, 0, size, "read-only vdisk");
    assert!(q.write(0, &[0u8; 512]).is_err(), "a write succeeded");
    assert!(
        q.write_zeroes(0, 4096, false).is_err(),
        "write-zeroes succeeded"
    );
    assert!(q.discard(0, 4096).is_err(), "discard succeeded");
    q.check(&content, 0, 64 * KIB, "after refused writes");
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &content, 0, "backing file untouched");
    }
}

#[test]
fn two_vdisks_in_one_daemon_are_independent() {
    let size = 2 * MIB;
    let daemon = Daemon::start_many(vec![
        VdiskOptions::new(size).named("a"),
        VdiskOptions::new(size + MIB).named("b").queues(2),
    ]);
    let mut a = Client::connect(daemon.vdisk(0).socket(), 1, false).expect("connecting to a");
    let mut b = Client::connect(daemon.vdisk(1).socket(), 2, false).expect("connecting to b");
    assert_eq!(a.capacity(), size);
    assert_eq!(b.capacity(), size + MIB);
    let mut model_a = vec![0u8; size as usize];
    let mut model_b = vec![0u8; (size + MIB) as usize];
    let mut rng = TestRng::new(9);
    write_and_model(a.q(), &mut model_a, 4096, &rng.bytes(8192));
    write_and_model(b.q(), &mut model_b, 4096, &rng.bytes(8192));
    a.q().check(&model_a, 0, size, "vdisk a");
    b.q().check(&model_b, 0, size + MIB, "vdisk b");
    a.q().flush().expect("flush a");
    b.q().flush().expect("flush b");
    if let Some(image) = daemon.vdisk(0).image_bytes() {
        assert_bytes_eq(&image, &model_a, 0, "image a");
    }
    if let Some(image) = daemon.vdisk(1).image_bytes() {
        assert_bytes_eq(&image, &model_b, 0, "image b");
    }
}

#[test]
fn startup_errors_exit_with_one_line_and_the_documented_code() {
    if skip_unless_strata("startup_errors_exit_with_one_line_and_the_documented_code") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let image = dir.path().join("small.img");
    fs::write(&image, vec![0u8; MIB as usize]).expect("image");
    let socket = dir.path().join("x.sock");

    // An existing image whose size differs from size=.
    let (status, stderr) = run_to_exit(&[
        "--vdisk".to_string(),
        format!(
            "name=s,kind=raw,path={},size=2M,socket={}",
            image.display(),
            socket.display()
        ),
    ]);
    assert_eq!(status.code(), Some(1), "size mismatch: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr:?}"
    );
    assert!(!socket.exists(), "no socket after a failed start");

    // A missing image without size=.
    let (status, stderr) = run_to_exit(&[
        "--vdisk".to_string(),
        format!(
            "name=m,kind=raw,path={},socket={}",
            dir.path().join("none.img").display(),
            socket.display()
        ),
    ]);
    assert_eq!(status.code(), Some(1), "missing image: {stderr}");

    // A strata vdisk that does not exist yet, without size=.
    let (status, stderr) = run_to_exit(&[
        "--flash".to_string(),
        dir.path().join("flash.img").display().to_string(),
        "--key-dir".to_string(),
        dir.path().join("keys").display().to_string(),
        "--vdisk".to_string(),
        format!("name=n,socket={}", socket.display()),
    ]);
    assert_eq!(
        status.code(),
        Some(1),
        "new strata vdisk without size: {stderr}"
    );
    assert!(stderr.contains("size="), "says what is missing: {stderr}");

    // Bad usage: a vdisk without a name; a strata vdisk with a path.
    let (status, stderr) =
        run_to_exit(&["--vdisk".to_string(), format!("path={}", image.display())]);
    assert_eq!(status.code(), Some(2), "bad usage: {stderr}");
    let (status, stderr) = run_to_exit(&[
        "--vdisk".to_string(),
        format!("name=p,path={}", image.display()),
    ]);
    assert_eq!(status.code(), Some(2), "path without kind=raw: {stderr}");
    assert!(stderr.contains("kind=raw"), "suggests kind=raw: {stderr}");
}

/// Non-overlapping writes of 512 B to 64 KiB, one per 64 KiB slot of the
/// first `size` bytes, `count` of them at distinct random slots.
fn scattered_writes(rng: &mut TestRng, size: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
    const SLOT: u64 = 64 * KIB;
    let mut slots: Vec<u64> = Vec::new();
    while slots.len() < count {
        let slot = rng.below(size / SLOT);
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    slots
        .into_iter()
        .map(|slot| {
            let sectors = SLOT / 512;
            let start = rng.below(sectors);
            let len = 1 + rng.below(sectors - start);
            (slot * SLOT + start * 512, rng.bytes((len * 512) as usize))
        })
        .collect()
}

/// Writes `count` [`scattered_writes`] in one batch, each acknowledged,
/// and applies them to `model`.
fn write_scattered(q: &mut Queue, rng: &mut TestRng, model: &mut [u8], count: usize) {
    let writes = scattered_writes(rng, model.len() as u64, count);
    for (i, r) in q.batch(&Req::writes(&writes)).into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("write {i} of {count} at {}: {e:?}", writes[i].0));
    }
    for (offset, data) in &writes {
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
}

/// Zeroes (with unmap) one random MiB-aligned MiB and applies it to `model`.
fn zero_random_mib(q: &mut Queue, rng: &mut TestRng, model: &mut [u8]) {
    let zero_at = rng.below(model.len() as u64 / MIB) * MIB;
    q.batch(&[Req::WriteZeroes {
        offset: zero_at,
        len: MIB,
        unmap: true,
    }])
    .remove(0)
    .expect("write zeroes");
    model[zero_at as usize..(zero_at + MIB) as usize].fill(0);
}

/// Checks the whole disk after a crash: every sector equals `durable`,
/// except sectors that a write in `maybe` touched, which may instead hold
/// that write's bytes (it was not yet promised to be durable).
fn check_after_crash(daemon: &Daemon, durable: &[u8], maybe: &[(u64, Vec<u8>)]) {
    let mut client = Client::open(daemon, 1);
    let q = client.q();
    let size = durable.len() as u64;
    let chunk = MIB;
    let mut got = Vec::with_capacity(durable.len());
    for offset in (0..size).step_by(chunk as usize) {
        got.extend(q.read(offset, chunk as usize).expect("read after restart"));
    }
    for (sector, (have, want)) in got.chunks(512).zip(durable.chunks(512)).enumerate() {
        if have == want {
            continue;
        }
        let at = sector as u64 * 512;
        let allowed = maybe.iter().any(|(offset, data)| {
            (*offset..*offset + data.len() as u64).contains(&at)
                && have == &data[(at - offset) as usize..(at - offset) as usize + 512]
        });
        assert!(
            allowed,
            "sector {sector} (byte {at}) after kill -9 holds neither its durable content nor an unacknowledged write; log:\n{}",
            daemon.log()
        );
    }
}

#[test]
fn kill_9_keeps_every_acknowledged_writethrough_write() {
    if skip_unless_strata("kill_9_keeps_every_acknowledged_writethrough_write") {
        return;
    }
    let size = 32 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x4b11);
    let in_flight = {
        let mut client = Client::open(&daemon, 1);
        let q = client.q();
        for _ in 0..12 {
            write_scattered(q, &mut rng, &mut model, 24);
        }
        // Kill with a batch on the queue: whatever of it was not completed
        // may or may not survive, but nothing acknowledged may be lost.
        let writes = scattered_writes(&mut rng, size, 24);
        let _pending = q.submit(&Req::writes(&writes));
        daemon.kill_and_restart();
        writes
    };
    check_after_crash(&daemon, &model, &in_flight);
}

#[test]
fn kill_9_keeps_every_write_before_the_last_completed_flush() {
    if skip_unless_strata("kill_9_keeps_every_write_before_the_last_completed_flush") {
        return;
    }
    let size = 32 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size));
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x4b12);
    let unflushed = {
        let mut client = Client::open(&daemon, 1);
        let q = client.q();
        for _ in 0..12 {
            write_scattered(q, &mut rng, &mut model, 24);
        }
        q.flush().expect("flush");
        // Completed but not flushed: the write cache may lose them.
        let mut unflushed = Vec::new();
        for _ in 0..4 {
            let writes = scattered_writes(&mut rng, size, 24);
            for r in q.batch(&Req::writes(&writes)) {
                r.expect("write after the flush");
            }
            unflushed.extend(writes);
        }
        daemon.kill_and_restart();
        unflushed
    };
    check_after_crash(&daemon, &model, &unflushed);
}

#[test]
fn data_survives_repeated_kill_9_and_restart() {
    if skip_unless_strata("data_survives_repeated_kill_9_and_restart") {
        return;
    }
    // Several crashes in a row, each after more writes: recovery must also
    // recover what an earlier recovery replayed.
    let size = 16 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x4b13);
    for _ in 0..4 {
        {
            let mut client = Client::open(&daemon, 1);
            let q = client.q();
            write_scattered(q, &mut rng, &mut model, 32);
            // Zeroed ranges must stay zero through recovery too.
            zero_random_mib(q, &mut rng, &mut model);
        }
        daemon.kill_and_restart();
        check_after_crash(&daemon, &model, &[]);
    }
}

#[test]
fn a_store_of_the_format_before_split_frames_is_read_and_upgraded() {
    if skip_unless_strata(&current_test()) || daemon_kind() != Kind::Strata {
        return;
    }
    // A store an older strata-host wrote has a version 1 superblock; this
    // one reads it and marks it version 2 before writing split frames,
    // which the older one would take for free space.
    let size = 8 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x5b1);
    {
        let mut client = Client::open(&daemon, 1);
        write_scattered(client.q(), &mut rng, &mut model, 24);
    }
    let page0 = |flash: &Path| {
        let mut page = vec![0u8; 4096];
        let file = fs::File::open(flash).expect("opening the flash");
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut page, 0).expect("reading page 0");
        page
    };
    let pooled = support::pool::pool_mode();
    daemon.kill_edit_and_restart(|flash| {
        let mut page = page0(flash);
        assert_eq!(page[4], 2, "a new store is version 2");
        page[4] = 1;
        let sum = xxhash_rust::xxh3::xxh3_64(&page[..4088]);
        page[4088..].copy_from_slice(&sum.to_le_bytes());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(flash)
            .expect("opening the flash");
        std::os::unix::fs::FileExt::write_all_at(&file, &page, 0).expect("writing page 0");
        file.sync_all().expect("sync");
    });
    check_after_crash(&daemon, &model, &[]);
    assert_eq!(
        page0(&daemon.flash_path())[4],
        2,
        "the store was not upgraded"
    );
    if !pooled {
        assert!(
            daemon.log().contains("flash store format upgraded"),
            "the upgrade was not logged:\n{}",
            daemon.log()
        );
    }
}

/// Returns true (and says so) unless strata-host runs on a pool
/// (`STRATA_TEST_POOL=1`).
fn skip_unless_pool(test: &str) -> bool {
    if support::pool::pool_mode() && Target::from_env() == Target::StrataHost {
        return false;
    }
    eprintln!("{test}: skipped: needs STRATA_TEST_POOL=1");
    true
}

#[test]
fn a_fresh_host_on_an_empty_flash_reads_every_acknowledged_write() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // The host is stateless: its flash goes with it, and a new host on the
    // same pool serves every acknowledged write, with writes in flight at
    // the kill and zeroed ranges included, crash after crash.
    let size = 32 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x57a7);
    for _ in 0..3 {
        let in_flight = {
            let mut client = Client::open(&daemon, 1);
            let q = client.q();
            for _ in 0..6 {
                write_scattered(q, &mut rng, &mut model, 24);
            }
            zero_random_mib(q, &mut rng, &mut model);
            let writes = scattered_writes(&mut rng, size, 24);
            let _pending = q.submit(&Req::writes(&writes));
            daemon.kill_and_restart_on_empty_flash();
            writes
        };
        check_after_crash(&daemon, &model, &in_flight);
        // What survived of the in-flight writes is now the content.
        let mut client = Client::open(&daemon, 1);
        let q = client.q();
        for (offset, data) in &in_flight {
            let got = q.read(*offset, data.len()).expect("read back");
            model[*offset as usize..*offset as usize + data.len()].copy_from_slice(&got);
        }
    }
}

#[test]
fn kill_9_of_the_pool_under_load_loses_no_acknowledged_write() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // The pool dies with writes in flight and comes back: the host
    // reconnects and resends, so every write completes (slowly, never with
    // an error), and all of them are in the pool: a fresh host on an empty
    // flash reads them back.
    let size = 32 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x9001);
    {
        let mut client = Client::open(&daemon, 1);
        let q = client.q();
        for round in 0..4 {
            write_scattered(q, &mut rng, &mut model, 16);
            let writes = scattered_writes(&mut rng, size, 32);
            let in_flight = q.submit(&Req::writes(&writes));
            daemon.pool().expect("a pool").kill_and_restart();
            let results = q.reap(
                &in_flight,
                Instant::now() + IO_TIMEOUT,
                "writes across a pool restart",
            );
            for (i, r) in results.into_iter().enumerate() {
                r.unwrap_or_else(|e| {
                    panic!("round {round}: write {i} failed across the pool's restart: {e:?}")
                });
            }
            for (offset, data) in &writes {
                model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
            }
        }
    }
    daemon.kill_and_restart_on_empty_flash();
    check_after_crash(&daemon, &model, &[]);
}

#[test]
fn a_host_fenced_by_its_successor_can_no_longer_write() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // A replacement strata-host starts (its own flash) while the first one
    // still runs, as when a host is presumed dead but is only cut off. The
    // newcomer takes the host's lease before it replays the log, so it
    // serves every write the first one acknowledged, and the pool refuses
    // everything the first one sends from then on: its writes fail and
    // never reach the vdisk.
    let size = 8 * MIB;
    let first = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0xfe9ce);
    let mut old_client = Client::open(&first, 1);
    overwrite_whole_disk(&first, old_client.q(), &mut rng, &mut model, 1);
    write_scattered(old_client.q(), &mut rng, &mut model, 16);

    let mut successor = first.start_successor();
    check_after_crash(&successor, &model, &[]);
    let stale = vec![0xEE; 64 << 10];
    for offset in [0, 3 * MIB] {
        let result = old_client.q().write(offset, &stale);
        assert!(
            result.is_err(),
            "the fenced host acknowledged a write at {offset}; its log:\n{}",
            first.log()
        );
    }
    drop(old_client);
    assert!(
        first.log().contains("fenced"),
        "the fenced host does not say why its writes fail; its log:\n{}",
        first.log()
    );
    {
        let mut client = Client::open(&successor, 1);
        write_scattered(client.q(), &mut rng, &mut model, 16);
    }
    // A later host (after the successor dies with its flash) finds the
    // successor's writes and none of the fenced host's.
    successor.kill_and_restart_on_empty_flash();
    check_after_crash(&successor, &model, &[]);
    drop(successor);
    drop(first);
}

#[test]
fn a_vdisk_larger_than_the_flash_is_served_through_the_pool() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // On a pool the host's flash is a cache: 192 MiB of unique data go
    // through 136 MiB of segments only because the cleaner drops frames
    // the pool already holds, and reading it all back fetches them again.
    let size = 192 * MIB;
    let daemon = Daemon::start_with_args(
        VdiskOptions::new(size).writethrough(),
        &["--flash-size", "160M"],
    );
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0xcac4e);
    {
        let mut client = Client::open(&daemon, 1);
        overwrite_whole_disk(&daemon, client.q(), &mut rng, &mut model, 1);
    }
    check_after_crash(&daemon, &model, &[]);
    assert!(
        daemon.counter("frames_evicted") > 0,
        "nothing was evicted from the flash"
    );
    assert!(
        daemon.counter("frames_fetched") > 0,
        "nothing was read back from the pool"
    );
}

/// How long background work (a destage) may take in a test.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `rounds` passes of unique data over the whole of `q`'s disk, in
/// MiB requests, into `model`; a failed write panics with `daemon`'s log.
fn overwrite_whole_disk(
    daemon: &Daemon,
    q: &mut Queue,
    rng: &mut TestRng,
    model: &mut [u8],
    rounds: usize,
) {
    overwrite_whole_disk_with(daemon, q, model, rounds, || rng.bytes(MIB as usize));
}

/// Writes the whole disk `rounds` times, a MiB from `data` at a time.
fn overwrite_whole_disk_with(
    daemon: &Daemon,
    q: &mut Queue,
    model: &mut [u8],
    rounds: usize,
    mut data: impl FnMut() -> Vec<u8>,
) {
    let size = model.len() as u64;
    for _ in 0..rounds {
        for batch in 0..size / (4 * MIB) {
            let writes: Vec<(u64, Vec<u8>)> =
                (0..4).map(|i| ((batch * 4 + i) * MIB, data())).collect();
            write_all(daemon, q, &writes, model);
        }
    }
}

#[test]
fn destaged_data_reads_back_from_the_stripes_with_two_drives_gone() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // 96 MiB of unique writes through a 64 MiB NVLOG quota: they complete
    // only because destage moves the data into stripes and truncates the
    // log. Then the host dies with its flash, two of the pool's six drives
    // vanish, and a fresh host reads every byte: from the stripes (restored
    // from parity where a chunk is gone) and the log after the last commit.
    let size = 48 * MIB;
    let mut daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0xde57);
    {
        let mut client = Client::open(&daemon, 1);
        let q = client.q();
        overwrite_whole_disk(&daemon, q, &mut rng, &mut model, 2);
        write_scattered(q, &mut rng, &mut model, 32);
    }
    let destages = daemon.wait_for_counter("destages", 1, BACKGROUND_TIMEOUT);
    assert!(daemon.counter("stripes_written") > 0);
    // Writes after the last destage stay in the NVLOG only.
    {
        let mut client = Client::open(&daemon, 1);
        write_scattered(client.q(), &mut rng, &mut model, 32);
    }
    let pool = daemon.pool().expect("a pool");
    for drive in [1, 4] {
        let dir = pool.drive_dir(drive);
        fs::rename(&dir, dir.with_extension("gone")).expect("removing a drive");
    }
    daemon.kill_and_restart_on_empty_flash();
    check_after_crash(&daemon, &model, &[]);
    assert!(
        daemon.counter("frames_fetched") > 0,
        "nothing came from the stripes (destages before the kill: {destages})"
    );

    // The administrator marks both drives failed and rebuilds: every stripe
    // is rewritten onto the four drives left, so a third drive may fail
    // too, and a fresh host still reads every byte.
    let pool = daemon.pool().expect("a pool");
    for drive in ["1", "4"] {
        pool.admin(&["drive", "fail", drive]);
    }
    let listing = pool.admin(&["drive", "list"]);
    assert!(!listing.contains("stripes to rebuild: 0"), "{listing}");
    let rebuilt = pool.admin(&["drive", "rebuild"]);
    assert!(
        rebuilt.starts_with("rebuilt ") && !rebuilt.starts_with("rebuilt 0 "),
        "{rebuilt}"
    );
    let listing = pool.admin(&["drive", "list"]);
    assert!(listing.contains("stripes to rebuild: 0"), "{listing}");

    // A chunk on drive 0 rots; a scrub finds it (a rebuild would not: the
    // file is there) and rewrites its stripe. Then drives 2 and 3 go too:
    // the stripes, two data chunks and two parity on drives 0, 2, 3 and 5
    // now, read from drives 0 and 5 alone, the repaired chunk included.
    let rotten = first_chunk_file(&pool.drive_dir(0));
    let mut bytes = fs::read(&rotten).expect("reading a chunk file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&rotten, bytes).expect("damaging a chunk file");
    let scrubbed = pool.admin(&["drive", "scrub"]);
    assert!(
        scrubbed.contains(" 1 bad, 1 stripes repaired, 0 unreadable"),
        "{scrubbed}"
    );
    for drive in [2, 3] {
        let dir = pool.drive_dir(drive);
        fs::rename(&dir, dir.with_extension("gone")).expect("removing a drive");
    }
    daemon.kill_and_restart_on_empty_flash();
    check_after_crash(&daemon, &model, &[]);
}

/// The first chunk file (in name order) under the drive directory `dir`.
fn first_chunk_file(dir: &Path) -> PathBuf {
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("listing a drive")
        .map(|e| e.expect("listing a drive").path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let mut files: Vec<PathBuf> = fs::read_dir(&sub)
            .expect("listing a chunk directory")
            .map(|e| e.expect("listing a chunk directory").path())
            .collect();
        files.sort();
        if let Some(file) = files.into_iter().next() {
            return file;
        }
    }
    panic!("no chunk file on {}", dir.display());
}

#[test]
fn a_corrupt_frame_on_host_flash_is_repaired_from_the_pool() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // Bytes of the first segment on the host's flash are damaged after the
    // data reached the pool's stripes: reads still return the right data
    // (the pool's copy), the frames are rewritten elsewhere, and reading
    // again finds no bad frame.
    let size = 8 * MIB;
    let daemon = Daemon::start(VdiskOptions::new(size).writethrough());
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0xbad);
    {
        let mut client = Client::open(&daemon, 1);
        overwrite_whole_disk(&daemon, client.q(), &mut rng, &mut model, 1);
    }
    // Every write is in the pool's stripes once a destage covers the last
    // NVLOG record.
    let last = daemon.counter("nvlog_last_record");
    daemon.wait_for_counter("nvlog_destaged_through", last, BACKGROUND_TIMEOUT);
    daemon.wait_for_counter("segments_written", 1, BACKGROUND_TIMEOUT);
    damage_segment_slot(&daemon, 0);

    let mut client = Client::open(&daemon, 1);
    client
        .q()
        .check(&model, 0, size, "reads over damaged flash");
    let repaired = daemon.counter("frames_repaired");
    let bad = daemon.counter("bad_frames");
    assert!(repaired > 0, "no frame was repaired");
    assert_eq!(bad, repaired, "every bad frame found is repaired");
    client.q().check(&model, 0, size, "reads after the repair");
    assert_eq!(
        daemon.counter("bad_frames"),
        bad,
        "a repaired frame read bad again"
    );
}

/// Flips bytes of the first 256 KiB of frames in segment slot `slot` of
/// `daemon`'s flash, every 512th byte (a few dozen frames).
fn damage_segment_slot(daemon: &Daemon, slot: u64) {
    // Segment slots start after the superblock MiB and the journal; a
    // slot's frames start one page in.
    let status = daemon.status();
    let field = |name: &str| {
        status["flash"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no flash.{name} in the status: {status}"))
    };
    let frames = MIB + field("journal_total") + slot * field("segment_size") + 4096;
    let flash = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(daemon.flash_path())
        .expect("opening the flash");
    let mut bytes = vec![0u8; 256 * 1024];
    std::os::unix::fs::FileExt::read_exact_at(&flash, &mut bytes, frames).expect("read");
    for b in bytes.iter_mut().step_by(512) {
        *b ^= 0x5a;
    }
    std::os::unix::fs::FileExt::write_all_at(&flash, &bytes, frames).expect("write");
    flash.sync_all().expect("sync");
}

#[test]
fn a_corrupt_frame_not_yet_destaged_is_repaired_from_the_nvlog() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // With an hour between destages, a round starts only once the NVLOG
    // holds a quarter of its 64 MiB quota: the first 8 MiB written live
    // on the host's flash and in the NVLOG, not in the stripes. Damage to
    // them on flash is repaired from the NVLOG records that logged them:
    // when a read meets it, and when the destage that comes later meets it
    // before sending (a damaged frame must never reach the stripes, and
    // without a repair every round would fail and the log would fill up).
    let size = 32 * MIB;
    let mut daemon = Daemon::start_with_args(
        VdiskOptions::new(size).writethrough(),
        &["--destage-interval", "3600"],
    );
    let mut model = vec![0u8; size as usize];
    let mut rng = TestRng::new(0x1095);
    let mut client = Client::open(&daemon, 1);
    let first: Vec<(u64, Vec<u8>)> = (0..8).map(|i| (i * MIB, rng.bytes(MIB as usize))).collect();
    write_all(&daemon, client.q(), &first, &mut model);
    daemon.wait_for_counter("segments_written", 2, BACKGROUND_TIMEOUT);
    assert_eq!(
        daemon.counter("nvlog_destaged_through"),
        0,
        "a destage ran: the damage would not be to frames only the NVLOG holds"
    );
    let first_logged_through = daemon.counter("nvlog_last_record");

    // A read meets damaged frames.
    damage_segment_slot(&daemon, 0);
    client
        .q()
        .check(&model, 0, 8 * MIB, "reads over damaged flash");
    let repaired_by_reads = daemon.counter("frames_repaired");
    assert!(repaired_by_reads > 0, "no frame was repaired");
    assert_eq!(daemon.counter("bad_frames"), repaired_by_reads);
    assert_eq!(
        daemon.counter("frames_repaired_from_nvlog"),
        repaired_by_reads,
        "every copy came from the NVLOG"
    );
    assert_eq!(daemon.counter("nvlog_destaged_through"), 0, "a destage ran");

    // A destage meets damaged frames no read touched.
    damage_segment_slot(&daemon, 1);
    let rest: Vec<(u64, Vec<u8>)> = (8..size / MIB)
        .map(|i| (i * MIB, rng.bytes(MIB as usize)))
        .collect();
    write_all(&daemon, client.q(), &rest, &mut model);
    drop(client);
    // The NVLOG passes a quarter of its quota only after the first 8 MiB
    // were logged, so the round that starts then covers all of them (the
    // damaged slot included). Records logged after that round took its
    // snapshot may wait for the next one, an hour away: the restart below
    // replays them.
    daemon.wait_for_counter(
        "nvlog_destaged_through",
        first_logged_through,
        BACKGROUND_TIMEOUT,
    );
    let repaired = daemon.counter("frames_repaired");
    assert!(
        repaired > repaired_by_reads,
        "the destage repaired nothing ({repaired} repairs in all)"
    );
    assert_eq!(daemon.counter("bad_frames"), repaired);
    assert_eq!(daemon.counter("frames_repaired_from_nvlog"), repaired);

    // What reached the stripes is right: a host with an empty flash reads
    // every byte from them.
    daemon.kill_and_restart_on_empty_flash();
    check_after_crash(&daemon, &model, &[]);
}

/// Writes `writes` through `q`, four at a time, into `model`; a failed
/// write panics with `daemon`'s log.
fn write_all(daemon: &Daemon, q: &mut Queue, writes: &[(u64, Vec<u8>)], model: &mut [u8]) {
    for batch in writes.chunks(4) {
        for (r, (offset, _)) in q.batch(&Req::writes(batch)).into_iter().zip(batch) {
            r.unwrap_or_else(|e| panic!("write at {offset}: {e:?}; log:\n{}", daemon.log()));
        }
        for (offset, data) in batch {
            model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
        }
    }
}

#[test]
fn the_cleaner_reclaims_overwritten_data_on_a_small_flash() {
    if skip_unless_strata("the_cleaner_reclaims_overwritten_data_on_a_small_flash")
        || daemon_kind() != Kind::Strata
    {
        return;
    }
    // 136 MiB of segments; 8 whole overwrites of a 32 MiB vdisk with unique
    // data are 256 MiB: without the cleaner the store fills up and writes fail.
    let mut rng = TestRng::new(0xc1ea);
    overwrite_on_a_small_flash("160M", || rng.bytes(MIB as usize));
}

#[test]
fn the_cleaner_keeps_up_with_blocks_that_alternate_compressed_and_split() {
    if skip_unless_strata(&current_test()) || daemon_kind() != Kind::Strata {
        return;
    }
    // Every other block is half zeros: its frame (about 2.1 KB) does not
    // fit the gap a split frame's body would leave when skipping to a page
    // boundary. Such data must take no more flash than whole frames would
    // (so the frame after it is stored whole), and the cleaner, which
    // counts split frames' tails and alignment when it plans its copies,
    // must still free segments holding nothing live when only one slot is
    // free: on this small flash the store otherwise runs out of space.
    let mut rng = TestRng::new(0xa17e);
    overwrite_on_a_small_flash("100M", || {
        let mut mib = rng.bytes(MIB as usize);
        for block in mib.chunks_mut(8192) {
            block[2048..4096].fill(0);
        }
        mib
    });
}

/// Overwrites a 32 MiB writethrough vdisk on a flash of `flash_size` 8
/// times with MiBs from `data`, killing and restarting strata-host after
/// every third pass, and checks every byte after each pass.
fn overwrite_on_a_small_flash(flash_size: &str, mut data: impl FnMut() -> Vec<u8>) {
    let size = 32 * MIB;
    let mut daemon = Daemon::start_with_args(
        VdiskOptions::new(size).writethrough(),
        &["--flash-size", flash_size],
    );
    let mut model = vec![0u8; size as usize];
    for pass in 0..8 {
        {
            let mut client = Client::open(&daemon, 1);
            overwrite_whole_disk_with(&daemon, client.q(), &mut model, 1, &mut data);
        }
        if pass % 3 == 2 {
            daemon.kill_and_restart();
        }
        check_after_crash(&daemon, &model, &[]);
    }
}

#[test]
fn a_vdisk_opened_on_another_host_moves_there_with_every_acknowledged_write() {
    if skip_unless_pool(&current_test()) {
        return;
    }
    // Host A serves db and logs. Host B, another identity with a flash of
    // its own, opens db: the pool fences A for db alone, and B adopts db's
    // state from A's commit and the rest of A's NVLOG before it serves.
    // With an hour between destages, the one round runs when the NVLOG
    // passes a quarter of its quota (while db is first filled), so db's
    // state is partly in A's commit, partly in A's log only, including
    // blocks whose frames A logged for logs (db's writes of them were
    // dedupe hits).
    let db_size = 24 * MIB;
    let logs_size = 4 * MIB;
    let mut a = Daemon::start_target(
        Target::StrataHost,
        vec![
            VdiskOptions::new(db_size).named("db").writethrough(),
            VdiskOptions::new(logs_size).named("logs").writethrough(),
        ],
        &["--destage-interval", "3600"],
    );
    let mut db = vec![0u8; db_size as usize];
    let mut logs = vec![0u8; logs_size as usize];
    let mut rng = TestRng::new(0xad0b7);
    let mut db_client = Client::open(&a, 1);
    let whole: Vec<(u64, Vec<u8>)> = (0..db_size / MIB)
        .map(|i| (i * MIB, rng.bytes(MIB as usize)))
        .collect();
    write_all(&a, db_client.q(), &whole, &mut db);
    a.wait_for_counter("nvlog_destaged_through", 1, BACKGROUND_TIMEOUT);

    let mut logs_client = Client::connect_retry(a.vdisk(1).socket(), 1, false);
    let shared = rng.bytes(MIB as usize);
    write_all(&a, logs_client.q(), &[(MIB, shared.clone())], &mut logs);
    write_all(&a, db_client.q(), &[(5 * MIB, shared)], &mut db);
    write_scattered(db_client.q(), &mut rng, &mut db, 24);
    zero_random_mib(db_client.q(), &mut rng, &mut db);
    // Writes in flight when B takes db: each may or may not land.
    let in_flight = scattered_writes(&mut rng, db_size, 16);
    let _pending = db_client.q().submit(&Req::writes(&in_flight));

    let mut b = a.start_on_host("other-host", &[0]);
    // A flush before any write: nothing of B's is waiting to be durable.
    Client::open(&b, 1)
        .q()
        .flush()
        .expect("a flush as B's first request");
    check_after_crash(&b, &db, &in_flight);
    {
        let mut client = Client::open(&b, 1);
        for (offset, data) in &in_flight {
            let got = client.q().read(*offset, data.len()).expect("read back");
            db[*offset as usize..*offset as usize + data.len()].copy_from_slice(&got);
        }
    }
    // A can no longer write db, and says why; its logs carry on.
    drop(db_client);
    let mut db_client = Client::connect_retry(a.socket(), 1, false);
    assert!(
        db_client.q().write(0, &[0xEE; 4096]).is_err(),
        "A still acknowledged a write of db after B took it; A's log:\n{}",
        a.log()
    );
    drop(db_client);
    assert!(
        a.log().contains("moved to another host"),
        "A does not say why its db writes fail; its log:\n{}",
        a.log()
    );
    write_scattered(logs_client.q(), &mut rng, &mut logs, 16);
    logs_client
        .q()
        .check(&logs, 0, logs_size, "A's logs after db moved");
    drop(logs_client);

    // B's own log holds db now: B writes more and restarts on an empty
    // flash without A's help.
    {
        let mut client = Client::open(&b, 1);
        write_scattered(client.q(), &mut rng, &mut db, 24);
    }
    b.kill_and_restart_on_empty_flash();
    check_after_crash(&b, &db, &[]);

    // A restarts (its flash lost too) and opens db again, taking it back
    // with B's writes; B's writes fail from then on.
    a.kill_and_restart_on_empty_flash();
    check_after_crash(&a, &db, &[]);
    let mut logs_client = Client::connect_retry(a.vdisk(1).socket(), 1, false);
    logs_client
        .q()
        .check(&logs, 0, logs_size, "A's logs after its restart");
    drop(logs_client);
    let mut b_client = Client::open(&b, 1);
    assert!(
        b_client.q().write(0, &[0xDD; 4096]).is_err(),
        "B still acknowledged a write of db after A took it back; B's log:\n{}",
        b.log()
    );
    drop(b_client);
    drop(b);
}
