//! strata-host against a hostile vhost-user-blk frontend.
//!
//! Every test starts its own daemon on a scratch image and talks to it with
//! [`support::vhost_frontend::TestDevice`], which writes descriptor chains
//! straight into shared guest memory. Each malformed request is checked for
//! the exact status byte the device writes, for the used length it reports,
//! for writes to guest memory it had no right to make and, for writes, that
//! the image was left alone. After every case a well-formed read on the same
//! connection must still succeed and the daemon must still be running.
//!
//! strata-host's contract: a malformed request that still has a usable status
//! byte completes with `VIRTIO_BLK_S_IOERR` (`VIRTIO_BLK_S_UNSUPP` for an
//! unknown request type); one without a usable status byte is not executed
//! and reports nothing (used length 0, or not returned at all); a chain that
//! cannot be walked to its end (loops, broken indirect tables) is never
//! answered with OK and never gets a status byte written into a
//! device-readable buffer; the daemon never crashes, hangs or drops the
//! connection.
//!
//! With `STRATA_TEST_DAEMON=qsd` the same cases run against
//! qemu-storage-daemon; where it answers differently the qsd expectation is
//! spelled out with [`Expect::or_qsd`].

// Each test binary uses a subset of the shared helpers.
#[allow(dead_code)]
mod support;

use std::ops::Range;

use support::daemon::{
    probe_pattern, Daemon, Target, VdiskOptions, DISK_SECTORS, PROBE_LEN, PROBE_SECTOR, SECTOR,
};
use support::data::pattern;
use support::vhost_frontend::{
    chain, Desc, FrontendOptions, TestDevice, UsedElem, WaitError, DATA_START, DESC_SIZE,
    F_INDIRECT, F_WRITE, MEM_BASE, MEM_END, QUEUE_SIZE, STATUS_SENTINEL, S_IOERR, S_OK, S_UNSUPP,
    T_IN, T_OUT,
};

/// What a case must do to pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Returned on the used ring with exactly this status byte; the used
    /// length is at most the chain's device-writable bytes and nothing outside
    /// its writable buffers changed.
    Status(u8),
    /// No usable status byte: if the chain is returned its used length is 0,
    /// and nothing outside its writable buffers changed.
    NoStatus,
    /// Malformed beyond a definite answer (loops, broken indirect tables): the
    /// status byte is either left alone or IOERR, never OK, and nothing
    /// outside the chain's writable buffers changed.
    NotOk,
    /// (qsd only) The daemon gave up on the connection. The process must
    /// still be running and serve a new connection.
    Disconnect,
}

impl Expect {
    /// This expectation for strata-host, `qsd` for qemu-storage-daemon.
    fn or_qsd(self, qsd: Expect) -> Expectation {
        Expectation { strata: self, qsd }
    }

    /// Panics unless `obs` satisfies this expectation.
    fn verify(self, name: &str, obs: &Observed) {
        let ctx = format!("{name}: expected {self:?}, observed {obs:?}");
        assert!(
            !obs.disk_changed || self == Expect::Status(S_OK),
            "{ctx}: a rejected request modified the image"
        );
        assert!(
            obs.stray_write.is_none(),
            "{ctx}: device wrote guest memory outside the chain's writable buffers"
        );
        if self == Expect::Disconnect {
            assert!(obs.disconnected, "{ctx}");
            return;
        }
        assert!(!obs.disconnected, "{ctx}: daemon dropped the connection");
        if let Some(len) = obs.used_len {
            assert!(
                u64::from(len) <= obs.writable_bytes,
                "{ctx}: used length exceeds the chain's writable bytes"
            );
        }
        match self {
            Expect::Status(status) => {
                assert!(obs.used_len.is_some(), "{ctx}: chain never returned");
                assert_eq!(obs.status, Some(status), "{ctx}");
            }
            Expect::NoStatus => {
                assert!(matches!(obs.used_len, None | Some(0)), "{ctx}");
            }
            Expect::NotOk => {
                assert!(
                    matches!(obs.status, None | Some(STATUS_SENTINEL) | Some(S_IOERR)),
                    "{ctx}"
                );
            }
            Expect::Disconnect => unreachable!(),
        }
    }
}

/// Per-target expectations of a case.
#[derive(Clone, Copy, Debug)]
struct Expectation {
    strata: Expect,
    qsd: Expect,
}

impl From<Expect> for Expectation {
    fn from(both: Expect) -> Self {
        Expectation {
            strata: both,
            qsd: both,
        }
    }
}

/// What happened to a submitted case.
#[derive(Debug)]
struct Observed {
    /// Used length, if the chain came back.
    used_len: Option<u32>,
    /// The status byte afterwards (None if the case has no status byte in
    /// guest memory).
    status: Option<u8>,
    /// The daemon closed the connection instead of answering the probe.
    disconnected: bool,
    /// First changed guest address outside every writable buffer, and how
    /// many bytes changed there.
    stray_write: Option<(u64, usize)>,
    /// The image range named by [`Case::disk_unchanged`] changed.
    disk_changed: bool,
    /// Sum of the lengths of the chain's device-writable descriptors.
    writable_bytes: u64,
}

/// A malformed (or edge-case) request.
struct Case {
    /// Descriptors for the queue's table; `next` is relative to the first.
    chain: Vec<Desc>,
    /// Entries of indirect tables the chain refers to (bookkeeping only:
    /// their writable buffers count as the chain's).
    tables: Vec<Desc>,
    /// Guest address of the byte the device should write the status to.
    status: Option<u64>,
    /// Image byte range that must not change.
    disk: Option<Range<u64>>,
}

impl Case {
    /// A linear chain of `descs`.
    fn linear(descs: &[Desc]) -> Self {
        Self::raw(chain(descs))
    }

    /// `descs` exactly as given (with `next` relative to the first).
    fn raw(descs: Vec<Desc>) -> Self {
        Case {
            chain: descs,
            tables: Vec::new(),
            status: None,
            disk: None,
        }
    }

    /// Declares `desc` (a 1-byte buffer) the status descriptor.
    fn status(mut self, desc: Desc) -> Self {
        self.status = Some(desc.addr);
        self
    }

    /// Declares the entries of an indirect table the chain refers to.
    fn tables(mut self, entries: &[Desc]) -> Self {
        self.tables.extend_from_slice(entries);
        self
    }

    /// Requires the image's sectors `sector..sector + count` to stay as they were.
    fn disk_unchanged(mut self, sector: u64, count: u64) -> Self {
        self.disk = Some(sector * SECTOR..(sector + count) * SECTOR);
        self
    }

    /// Guest ranges the device may write while serving this case.
    fn writable(&self) -> Vec<Range<u64>> {
        self.chain
            .iter()
            .chain(&self.tables)
            .filter(|d| d.is_writable() && d.flags & F_INDIRECT == 0)
            .map(|d| d.addr..d.addr.saturating_add(u64::from(d.len)))
            .collect()
    }
}

/// A well-formed read of [`PROBE_SECTOR`] used to show the daemon still serves.
struct Probe {
    head: u16,
    data: Desc,
    status: Desc,
    ranges: Vec<Range<u64>>,
}

/// A daemon plus a connected frontend.
struct Harness {
    daemon: Daemon,
    dev: Option<TestDevice>,
}

impl Harness {
    /// A writable vdisk.
    fn start() -> Self {
        Self::with_daemon(Daemon::start(VdiskOptions::probe_disk()))
    }

    /// A read-only vdisk.
    fn start_read_only() -> Self {
        Self::with_daemon(Daemon::start(VdiskOptions::probe_disk().read_only()))
    }

    fn with_daemon(daemon: Daemon) -> Self {
        let dev = TestDevice::connect(daemon.socket());
        Harness {
            daemon,
            dev: Some(dev),
        }
    }

    fn dev(&mut self) -> &mut TestDevice {
        self.dev.as_mut().expect("connected")
    }

    /// Puts a probe read on the queue.
    fn submit_probe(&mut self) -> Probe {
        let dev = self.dev();
        let hdr = dev.header(T_IN, PROBE_SECTOR);
        let data = dev.in_buf(PROBE_LEN);
        let status = dev.status_buf();
        let head = dev.submit(&chain(&[hdr, data, status]));
        let ranges = [hdr, data, status]
            .iter()
            .map(|d| d.addr..d.addr + u64::from(d.len))
            .collect();
        Probe {
            head,
            data,
            status,
            ranges,
        }
    }

    /// Checks a completed probe: status OK, full used length, right bytes.
    fn verify_probe(&mut self, what: &str, probe: &Probe, used: UsedElem) {
        let dev = self.dev();
        assert_eq!(dev.byte_at(probe.status.addr), S_OK, "{what}: probe status");
        assert_eq!(used.len as usize, PROBE_LEN + 1, "{what}: probe used len");
        assert!(
            dev.read_mem(probe.data.addr, PROBE_LEN) == probe_pattern(),
            "{what}: probe read returned wrong data"
        );
    }

    /// Runs one case and checks it against `expect` for the current target.
    fn check(&mut self, name: &str, case: Case, expect: impl Into<Expectation>) {
        let expect = expect.into();
        let expect = match self.daemon.target() {
            Target::StrataHost => expect.strata,
            Target::Qsd => expect.qsd,
        };
        let disk_before = case
            .disk
            .clone()
            .and_then(|r| self.daemon.read_image(r.start, (r.end - r.start) as usize));
        let before = self.dev().snapshot();

        let head = self.dev().submit(&case.chain);
        let probe = self.submit_probe();
        let disconnected = match self.dev().wait(probe.head) {
            Ok(used) => {
                self.verify_probe(name, &probe, used);
                false
            }
            Err(WaitError::Disconnected) => true,
            Err(e) => panic!("{name}: probe failed ({e:?}); log:\n{}", self.daemon.log()),
        };
        // A request that must complete gets its own deadline: it may still be
        // doing I/O after the probe finished.
        let used = if !disconnected && matches!(expect, Expect::Status(_)) {
            let used = self.dev().wait(head);
            Some(used.unwrap_or_else(|e| panic!("{name}: case not completed: {e:?}")))
        } else {
            self.dev().poll_used(head)
        };

        let writable = case.writable();
        let mut allowed = writable.clone();
        allowed.extend(probe.ranges.iter().cloned());
        let after = self.dev().snapshot();
        let status = case
            .status
            .filter(|a| (MEM_BASE..MEM_END).contains(a))
            .map(|a| self.dev().byte_at(a));
        let disk_changed = match (&case.disk, disk_before) {
            (Some(r), Some(old)) => {
                self.daemon.read_image(r.start, (r.end - r.start) as usize) != Some(old)
            }
            _ => false,
        };
        let obs = Observed {
            used_len: used.map(|u| u.len),
            status,
            disconnected,
            stray_write: stray_write(&before, &after, &allowed),
            disk_changed,
            writable_bytes: writable.iter().map(|r| r.end - r.start).sum(),
        };
        eprintln!("{:?} {name}: {obs:?}", self.daemon.target());

        self.daemon.assert_running();
        let bogus = self.dev().bogus_used().to_vec();
        assert!(
            bogus.is_empty(),
            "{name}: device returned unknown chains {bogus:?}"
        );
        expect.verify(name, &obs);
        if disconnected {
            // Close our end first so a single-client server accepts again.
            self.dev = None;
            self.dev = Some(TestDevice::connect(self.daemon.socket()));
            let probe = self.submit_probe();
            let used = self
                .dev()
                .wait(probe.head)
                .unwrap_or_else(|e| panic!("{name}: probe after reconnecting: {e:?}"));
            self.verify_probe(name, &probe, used);
        }
    }
}

/// First guest address (from [`DATA_START`]) whose byte differs between the
/// snapshots outside `allowed`, with the number of such bytes.
fn stray_write(before: &[u8], after: &[u8], allowed: &[Range<u64>]) -> Option<(u64, usize)> {
    let mut first = None;
    let mut count = 0;
    for (offset, (old, new)) in (0u64..).zip(before.iter().zip(after)) {
        let addr = DATA_START + offset;
        if old != new && !allowed.iter().any(|r| r.contains(&addr)) {
            first.get_or_insert(addr);
            count += 1;
        }
    }
    first.map(|addr| (addr, count))
}

/// Header, data and status descriptors of a well-formed read.
fn read_parts(dev: &mut TestDevice, sector: u64, len: usize) -> [Desc; 3] {
    [dev.header(T_IN, sector), dev.in_buf(len), dev.status_buf()]
}

/// Header, data and status descriptors of a well-formed write of a pattern.
fn write_parts(dev: &mut TestDevice, sector: u64, len: usize) -> [Desc; 3] {
    [
        dev.header(T_OUT, sector),
        dev.out_buf(&pattern(sector ^ 0x77, len)),
        dev.status_buf(),
    ]
}

// ---- well-formed requests (sanity for the frontend itself) ---------------------

#[test]
fn well_formed_write_then_read_round_trips() {
    let mut h = Harness::start();
    let data = pattern(1, 4096);
    let dev = h.dev();
    assert_eq!(dev.write(8, &data), (S_OK, 1), "write status, used len");
    let read = dev.read(8, data.len());
    assert_eq!((read.status, read.used_len), (S_OK, 4097));
    assert!(read.data == data, "read returned different bytes");
    assert!(
        h.daemon
            .read_image(8 * SECTOR, data.len())
            .is_none_or(|image| image == data),
        "image holds different bytes"
    );

    // The same through scattered buffers of uneven sizes.
    let data = pattern(2, 4096);
    let dev = h.dev();
    let hdr = dev.header(T_OUT, 100);
    let parts = [
        dev.out_buf(&data[..512]),
        dev.out_buf(&data[512..1536]),
        dev.out_buf(&data[1536..]),
    ];
    let status = dev.status_buf();
    dev.request(&chain(&[hdr, parts[0], parts[1], parts[2], status]));
    assert_eq!(dev.byte_at(status.addr), S_OK);
    let hdr = dev.header(T_IN, 100);
    let parts = [dev.in_buf(256), dev.in_buf(3584), dev.in_buf(256)];
    let status = dev.status_buf();
    let used = dev.request(&chain(&[hdr, parts[0], parts[1], parts[2], status]));
    assert_eq!((dev.byte_at(status.addr), used.len), (S_OK, 4097));
    let back: Vec<u8> = parts
        .iter()
        .flat_map(|d| dev.read_mem(d.addr, d.len as usize))
        .collect();
    assert!(back == data, "scattered read returned different bytes");
    assert!(h
        .daemon
        .read_image(100 * SECTOR, data.len())
        .is_none_or(|image| image == data));
}

#[test]
fn well_formed_requests_without_event_idx() {
    let daemon = Daemon::start(VdiskOptions::probe_disk());
    let mut dev = TestDevice::connect_with(
        daemon.socket(),
        FrontendOptions {
            event_idx: false,
            indirect: true,
        },
    );
    // Several rounds, so completions after the first also notify.
    for round in 0..4u64 {
        let data = pattern(10 + round, 2048);
        assert_eq!(dev.write(round * 4, &data).0, S_OK);
        let read = dev.read(round * 4, data.len());
        assert_eq!(read.status, S_OK);
        assert!(read.data == data, "round {round}: wrong bytes");
    }
}

#[test]
fn well_formed_indirect_requests() {
    let mut h = Harness::start();
    let dev = h.dev();
    assert!(
        dev.has_indirect(),
        "device does not offer VIRTIO_RING_F_INDIRECT_DESC"
    );
    let data = pattern(3, 1024);
    let entries = chain(&[dev.header(T_OUT, 40), dev.out_buf(&data), dev.status_buf()]);
    let table = dev.indirect_table(&entries);
    dev.request(&[table]);
    assert_eq!(dev.byte_at(entries[2].addr), S_OK);

    // The device must ignore VRING_DESC_F_WRITE on the descriptor that
    // refers to an indirect table (virtio 1.2, 2.7.5.3.2).
    let entries = chain(&read_parts(dev, 40, 1024));
    let mut table = dev.indirect_table(&entries);
    table.flags |= F_WRITE;
    let used = dev.request(&[table]);
    assert_eq!((dev.byte_at(entries[2].addr), used.len), (S_OK, 1025));
    assert!(dev.read_mem(entries[1].addr, 1024) == data, "wrong bytes");
}

#[test]
fn last_sector_is_readable_and_writable() {
    let mut h = Harness::start();
    let data = pattern(4, 512);
    let dev = h.dev();
    assert_eq!(dev.write(DISK_SECTORS - 1, &data).0, S_OK);
    let read = dev.read(DISK_SECTORS - 8, 4096);
    assert_eq!(read.status, S_OK);
    assert!(
        read.data[4096 - 512..] == data,
        "wrong bytes in the last sector"
    );
}

// ---- request header ------------------------------------------------------------

#[test]
fn header_shorter_than_16_bytes() {
    let mut h = Harness::start();
    for len in [0, 1, 8, 15] {
        let [hdr, data, status] = read_parts(h.dev(), 0, 512);
        let case = Case::linear(&[hdr.with_len(len), data, status]).status(status);
        // qsd refuses zero-sized buffers outright and silently drops short
        // headers without completing them.
        let qsd = if len == 0 {
            Expect::Disconnect
        } else {
            Expect::NoStatus
        };
        h.check(
            &format!("{len}-byte header"),
            case,
            Expect::Status(S_IOERR).or_qsd(qsd),
        );
    }
}

#[test]
fn header_in_device_writable_descriptor() {
    let mut h = Harness::start();
    let [hdr, data, status] = read_parts(h.dev(), 0, 512);
    let case = Case::linear(&[hdr.flip_direction(), data, status]).status(status);
    h.check(
        "writable header",
        case,
        Expect::Status(S_IOERR).or_qsd(Expect::NoStatus),
    );
}

// ---- data direction --------------------------------------------------------------

#[test]
fn out_data_in_device_writable_descriptor() {
    let mut h = Harness::start();
    let [hdr, data, status] = write_parts(h.dev(), 16, 512);
    let case = Case::linear(&[hdr, data.flip_direction(), status])
        .status(status)
        .disk_unchanged(16, 1);
    h.check(
        "write payload device-writable",
        case,
        Expect::Status(S_IOERR).or_qsd(Expect::Status(S_OK)),
    );
}

#[test]
fn in_data_in_device_readable_descriptor() {
    let mut h = Harness::start();
    let [hdr, data, status] = read_parts(h.dev(), PROBE_SECTOR, 512);
    let case = Case::linear(&[hdr, data.flip_direction(), status]).status(status);
    h.check(
        "read payload device-readable",
        case,
        Expect::Status(S_IOERR).or_qsd(Expect::Status(S_OK)),
    );
}

// ---- status descriptor -------------------------------------------------------------

#[test]
fn missing_status_descriptor() {
    let mut h = Harness::start();
    let hdr = h.dev().header(T_IN, 0);
    h.check("header only", Case::linear(&[hdr]), Expect::NoStatus);

    let [hdr, data, _] = write_parts(h.dev(), 24, 512);
    let case = Case::linear(&[hdr, data]).disk_unchanged(24, 1);
    h.check("write without status", case, Expect::NoStatus);
}

#[test]
fn zero_length_status_descriptor() {
    let mut h = Harness::start();
    let hdr = h.dev().header(T_IN, 0);
    let status = h.dev().status_buf();
    let case = Case::linear(&[hdr, status.with_len(0)]);
    h.check(
        "0-byte status",
        case,
        Expect::NoStatus.or_qsd(Expect::Disconnect),
    );

    let [hdr, data, status] = write_parts(h.dev(), 24, 512);
    let case = Case::linear(&[hdr, data, status.with_len(0)]).disk_unchanged(24, 1);
    h.check(
        "write with 0-byte status",
        case,
        Expect::NoStatus.or_qsd(Expect::Disconnect),
    );
}

#[test]
fn read_only_status_descriptor() {
    let mut h = Harness::start();
    let hdr = h.dev().header(T_IN, 0);
    let status = h.dev().status_buf();
    let case = Case::linear(&[hdr, status.flip_direction()]);
    h.check("read-only status", case, Expect::NoStatus);

    let [hdr, data, status] = write_parts(h.dev(), 24, 512);
    let case = Case::linear(&[hdr, data, status.flip_direction()]).disk_unchanged(24, 1);
    h.check("write with read-only status", case, Expect::NoStatus);
}

// ---- guest addresses -----------------------------------------------------------------

#[test]
fn buffers_outside_guest_memory() {
    let mut h = Harness::start();
    let bad_data_addrs = [
        ("data just past memory", MEM_END),
        ("data below memory", 0),
        ("data straddling end of memory", MEM_END - 256),
        ("data wrapping the address space", u64::MAX - 255),
    ];
    for (name, addr) in bad_data_addrs {
        let [hdr, data, status] = read_parts(h.dev(), 0, 512);
        let case = Case::linear(&[hdr, data.with_addr(addr), status]).status(status);
        h.check(
            &format!("read: {name}"),
            case,
            Expect::Status(S_IOERR).or_qsd(Expect::Disconnect),
        );
        let [hdr, data, status] = write_parts(h.dev(), 32, 512);
        let case = Case::linear(&[hdr, data.with_addr(addr), status])
            .status(status)
            .disk_unchanged(32, 1);
        h.check(
            &format!("write: {name}"),
            case,
            Expect::Status(S_IOERR).or_qsd(Expect::Disconnect),
        );
    }

    for (name, addr) in [
        ("header past memory", MEM_END),
        ("header straddling end", MEM_END - 8),
    ] {
        let [hdr, data, status] = read_parts(h.dev(), 0, 512);
        let case = Case::linear(&[hdr.with_addr(addr), data, status]).status(status);
        h.check(
            name,
            case,
            Expect::Status(S_IOERR).or_qsd(Expect::Disconnect),
        );
    }

    let [hdr, data, status] = read_parts(h.dev(), 0, 512);
    let case = Case::linear(&[hdr, data, status.with_addr(MEM_END)]);
    h.check(
        "status past memory",
        case,
        Expect::NoStatus.or_qsd(Expect::Disconnect),
    );
}

// ---- arithmetic overflow -----------------------------------------------------------------

#[test]
fn sector_arithmetic_overflow() {
    let mut h = Harness::start();
    let sectors = [
        u64::MAX,
        u64::MAX - 1,
        u64::MAX / SECTOR,
        u64::MAX / SECTOR + 1,
        1 << 55,
        DISK_SECTORS.wrapping_neg(),
    ];
    for sector in sectors {
        let [hdr, data, status] = read_parts(h.dev(), sector, 4096);
        let case = Case::linear(&[hdr, data, status]).status(status);
        h.check(
            &format!("read at sector {sector:#x}"),
            case,
            Expect::Status(S_IOERR),
        );

        let [hdr, data, status] = write_parts(h.dev(), sector, 4096);
        let case = Case::linear(&[hdr, data, status]).status(status);
        h.check(
            &format!("write at sector {sector:#x}"),
            case,
            Expect::Status(S_IOERR),
        );
    }
}

#[test]
fn descriptor_lengths_overflow() {
    let mut h = Harness::start();
    // The largest data buffer that keeps the chain within the 2^32-byte
    // limit on a chain's total length (virtio 1.2, 2.7.5.2).
    let huge = u32::MAX - 16 - 1;
    let [hdr, data, status] = read_parts(h.dev(), 0, 512);
    let case = Case::linear(&[hdr, data.with_len(huge), status]).status(status);
    h.check(
        "~4 GiB read buffer",
        case,
        Expect::Status(S_IOERR).or_qsd(Expect::Disconnect),
    );

    let [hdr, data, status] = write_parts(h.dev(), 0, 512);
    let case = Case::linear(&[hdr, data.with_len(huge), status])
        .status(status)
        .disk_unchanged(0, 8);
    h.check(
        "~4 GiB write buffer",
        case,
        Expect::Status(S_IOERR).or_qsd(Expect::Disconnect),
    );

    // Chains over the limit, where a u32 running total wraps.
    let [hdr, data, status] = read_parts(h.dev(), 0, 512);
    let case = Case::linear(&[hdr, data.with_len(u32::MAX), status]).status(status);
    h.check(
        "u32::MAX-byte read buffer",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );

    let dev = h.dev();
    let hdr = dev.header(T_IN, 0);
    let halves = [
        dev.in_buf(512).with_len(1 << 31),
        dev.in_buf(512).with_len(1 << 31),
    ];
    let status = dev.status_buf();
    let case = Case::linear(&[hdr, halves[0], halves[1], status]).status(status);
    h.check(
        "read buffers totalling 2^32 bytes",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );
}

// ---- request size and position --------------------------------------------------------------

#[test]
fn data_length_not_a_multiple_of_512() {
    let mut h = Harness::start();
    for len in [100, 511, 513, 4095] {
        let [hdr, data, status] = read_parts(h.dev(), 0, len);
        h.check(
            &format!("{len}-byte read"),
            Case::linear(&[hdr, data, status]).status(status),
            Expect::Status(S_IOERR),
        );
        let [hdr, data, status] = write_parts(h.dev(), 48, len);
        let case = Case::linear(&[hdr, data, status])
            .status(status)
            .disk_unchanged(48, 9);
        h.check(&format!("{len}-byte write"), case, Expect::Status(S_IOERR));
    }

    // Odd-sized pieces that add up to whole sectors are fine.
    let dev = h.dev();
    let hdr = dev.header(T_IN, PROBE_SECTOR);
    let parts = [dev.in_buf(100), dev.in_buf(412)];
    let status = dev.status_buf();
    let used = dev.request(&chain(&[hdr, parts[0], parts[1], status]));
    assert_eq!((dev.byte_at(status.addr), used.len), (S_OK, 513));
    let mut back = dev.read_mem(parts[0].addr, 100);
    back.extend(dev.read_mem(parts[1].addr, 412));
    assert!(
        back == probe_pattern()[..512],
        "split read returned wrong bytes"
    );
}

#[test]
fn sector_past_capacity() {
    let mut h = Harness::start();
    for sector in [DISK_SECTORS, DISK_SECTORS + 1, DISK_SECTORS + 1000] {
        let [hdr, data, status] = read_parts(h.dev(), sector, 512);
        let case = Case::linear(&[hdr, data, status]).status(status);
        h.check(
            &format!("read at sector {sector}"),
            case,
            Expect::Status(S_IOERR),
        );
        let [hdr, data, status] = write_parts(h.dev(), sector, 512);
        let case = Case::linear(&[hdr, data, status]).status(status);
        h.check(
            &format!("write at sector {sector}"),
            case,
            Expect::Status(S_IOERR),
        );
    }
}

#[test]
fn request_straddling_end_of_disk() {
    let mut h = Harness::start();
    for (sector, len) in [(DISK_SECTORS - 1, 1024), (DISK_SECTORS - 4, 4096)] {
        let [hdr, data, status] = read_parts(h.dev(), sector, len);
        let case = Case::linear(&[hdr, data, status]).status(status);
        h.check(
            &format!("{len}-byte read at sector {sector}"),
            case,
            Expect::Status(S_IOERR),
        );
        let [hdr, data, status] = write_parts(h.dev(), sector, len);
        let case = Case::linear(&[hdr, data, status])
            .status(status)
            .disk_unchanged(sector, DISK_SECTORS - sector);
        h.check(
            &format!("{len}-byte write at sector {sector}"),
            case,
            Expect::Status(S_IOERR),
        );
    }
}

// ---- request type and vdisk mode --------------------------------------------------------------

#[test]
fn unknown_request_type() {
    let mut h = Harness::start();
    for req_type in [3, 0x99, 0x7fff_ffff, u32::MAX] {
        let dev = h.dev();
        let hdr = dev.header(req_type, 0);
        let status = dev.status_buf();
        h.check(
            &format!("type {req_type:#x} without data"),
            Case::linear(&[hdr, status]).status(status),
            Expect::Status(S_UNSUPP),
        );
        let [_, data, status] = read_parts(h.dev(), 0, 512);
        let hdr = h.dev().header(req_type, 0);
        h.check(
            &format!("type {req_type:#x} with data"),
            Case::linear(&[hdr, data, status]).status(status),
            Expect::Status(S_UNSUPP),
        );
    }
}

#[test]
fn write_to_read_only_vdisk() {
    let mut h = Harness::start_read_only();
    let ro_bit = 1u64 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
    assert_ne!(
        h.dev().device_features() & ro_bit,
        0,
        "VIRTIO_BLK_F_RO not offered"
    );

    for sector in [0, PROBE_SECTOR] {
        let [hdr, data, status] = write_parts(h.dev(), sector, 4096);
        let case = Case::linear(&[hdr, data, status])
            .status(status)
            .disk_unchanged(sector, 8);
        h.check(
            &format!("write at sector {sector}"),
            case,
            Expect::Status(S_IOERR),
        );
    }
    let read = h.dev().read(PROBE_SECTOR, PROBE_LEN);
    assert_eq!(read.status, S_OK);
    assert!(
        read.data == probe_pattern(),
        "read-only vdisk returned wrong bytes"
    );
}

// ---- chain structure -----------------------------------------------------------------------

#[test]
fn descriptor_pointing_to_itself() {
    let mut h = Harness::start();
    let hdr = h.dev().header(T_IN, 0);
    h.check(
        "header chained to itself",
        Case::raw(vec![hdr.then(0)]),
        Expect::NoStatus.or_qsd(Expect::Disconnect),
    );

    let hdr = h.dev().header(T_IN, 0);
    let status = h.dev().status_buf();
    let case = Case::raw(vec![hdr.then(1), status.then(1)]).status(status);
    h.check(
        "status chained to itself",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );
}

#[test]
fn descriptor_chain_loop() {
    let mut h = Harness::start();
    let hdr = h.dev().header(T_IN, 0);
    let status = h.dev().status_buf();
    let case = Case::raw(vec![hdr.then(1), status.then(0)]).status(status);
    h.check(
        "status chained back to header",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );

    let [hdr, data, status] = write_parts(h.dev(), 56, 512);
    let case = Case::raw(vec![hdr.then(1), data.then(2), status.then(0)])
        .status(status)
        .disk_unchanged(56, 1);
    h.check(
        "write chain looping back to header",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );
}

#[test]
fn chain_longer_than_queue_size() {
    let mut h = Harness::start();
    // A cycle through most of the table (the rest is left for the probe):
    // the walk passes QUEUE_SIZE descriptors without reaching an end.
    let dev = h.dev();
    let hdr = dev.header(T_OUT, 64);
    let payload = pattern(5, 512);
    let mut descs = vec![hdr.then(1)];
    for i in 1..QUEUE_SIZE - 8 {
        descs.push(dev.out_buf(&payload).then(i + 1));
    }
    let status = dev.status_buf();
    descs.push(status.then(0));
    let case = Case::raw(descs).status(status).disk_unchanged(64, 64);
    h.check(
        "cycle through most of the table",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );

    // A loop-free indirect table longer than the queue and than the seg_max
    // (126) + 2 that strata-host accepts from Linux.
    let dev = h.dev();
    let mut entries = vec![dev.header(T_OUT, 64)];
    for _ in 0..(2 * QUEUE_SIZE + 8) {
        entries.push(dev.out_buf(&payload));
    }
    let status = dev.status_buf();
    entries.push(status);
    let entries = chain(&entries);
    let table = dev.indirect_table(&entries);
    let case = Case::raw(vec![table])
        .tables(&entries)
        .status(status)
        .disk_unchanged(64, 64);
    h.check(
        "indirect table longer than the queue",
        case,
        Expect::Status(S_IOERR).or_qsd(Expect::Status(S_OK)),
    );
}

#[test]
fn malformed_indirect_tables() {
    let mut h = Harness::start();
    assert!(
        h.dev().has_indirect(),
        "device does not offer VIRTIO_RING_F_INDIRECT_DESC"
    );

    // Each variant refers to a fresh, valid table for a read.
    type Mangle = fn(&mut TestDevice, Desc) -> Vec<Desc>;
    let variants: [(&str, Mangle, Expectation); 5] = [
        (
            "table length not a multiple of 16",
            |_, t| vec![t.with_len(t.len - 8)],
            Expect::NotOk.or_qsd(Expect::Disconnect),
        ),
        (
            "empty table",
            |_, t| vec![t.with_len(0)],
            Expect::NoStatus.or_qsd(Expect::Disconnect),
        ),
        (
            "table past guest memory",
            |_, t| vec![t.with_addr(MEM_END)],
            Expect::NoStatus.or_qsd(Expect::Disconnect),
        ),
        (
            "table straddling end of memory",
            |_, t| vec![t.with_addr(MEM_END - u64::from(DESC_SIZE))],
            Expect::NoStatus.or_qsd(Expect::Disconnect),
        ),
        (
            // virtio 1.2, 2.7.5.3.1 forbids the driver to set INDIRECT and
            // NEXT together but asks nothing of the device. Both daemons serve
            // the table and ignore NEXT; the descriptor after it stays untouched.
            "indirect descriptor chained to more descriptors",
            |dev, t| {
                let extra = dev.status_buf();
                vec![t.then(1), extra.with_len(0)]
            },
            Expect::Status(S_OK).into(),
        ),
    ];
    for (name, mangle, expect) in variants {
        let dev = h.dev();
        let entries = chain(&read_parts(dev, 0, 512));
        let table = dev.indirect_table(&entries);
        let descs = mangle(dev, table);
        let case = Case::raw(descs).tables(&entries).status(entries[2]);
        h.check(name, case, expect);
    }

    // Broken contents of a well-placed table.
    let dev = h.dev();
    let [hdr, data, status] = read_parts(dev, 0, 512);
    let inner = dev.indirect_table(&[data, status]);
    let entries = [hdr.then(1), inner];
    let table = dev.indirect_table(&entries);
    let case = Case::raw(vec![table])
        .tables(&[data, status])
        .status(status);
    h.check(
        "nested indirect table",
        case,
        Expect::NotOk.or_qsd(Expect::NoStatus),
    );

    let [hdr, data, status] = read_parts(h.dev(), 0, 512);
    let entries = [hdr.then(1), data.then(7), status];
    let table = h.dev().indirect_table(&entries);
    let case = Case::raw(vec![table]).tables(&entries).status(status);
    h.check(
        "next index past the table",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );

    let [hdr, data, status] = read_parts(h.dev(), 0, 512);
    let entries = [hdr.then(1), data.then(2), status.then(0)];
    let table = h.dev().indirect_table(&entries);
    let case = Case::raw(vec![table]).tables(&entries).status(status);
    h.check(
        "loop inside the table",
        case,
        Expect::NotOk.or_qsd(Expect::Disconnect),
    );
}

// ---- connection lifecycle -----------------------------------------------------------------------

/// A frontend that vanishes without any teardown messages (as when QEMU is
/// killed) must not lose acknowledged writes, and the socket must be served
/// again for the next frontend.
#[test]
fn reconnect_after_abrupt_disconnect() {
    let daemon = Daemon::start(VdiskOptions::probe_disk());
    let data = pattern(6, 8192);
    {
        let mut dev = TestDevice::connect(daemon.socket());
        assert_eq!(dev.write(200, &data).0, S_OK);
        // Dropping closes the socket with the queue still enabled.
    }
    let mut dev = TestDevice::connect(daemon.socket());
    let read = dev.read(200, data.len());
    assert_eq!((read.status, read.used_len), (S_OK, 8193));
    assert!(read.data == data, "data read after reconnecting differs");

    // And once more, after a read-only session.
    drop(dev);
    let mut dev = TestDevice::connect(daemon.socket());
    let read = dev.read(200, data.len());
    assert_eq!(read.status, S_OK);
    assert!(
        read.data == data,
        "data read after second reconnect differs"
    );
}
