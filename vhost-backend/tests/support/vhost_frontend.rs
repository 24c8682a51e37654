//! A scriptable vhost-user-blk frontend: it plays QEMU's role towards a
//! backend daemon but lets a test put arbitrary (including malformed)
//! descriptor chains on a split virtqueue.
//!
//! Guest memory is one memfd-backed region that is shared with the daemon via
//! `SET_MEM_TABLE` and mapped in this process too, so the test writes the
//! descriptor table, the available ring, request headers and buffers directly
//! and reads the used ring and status bytes back. Layout (guest-physical):
//!
//! ```text
//! MEM_BASE + 0x0000   descriptor table (QUEUE_SIZE * 16 bytes)
//! MEM_BASE + 0x1000   available ring
//! MEM_BASE + 0x2000   used ring
//! DATA_START ..       request headers, buffers, indirect tables (bump-allocated)
//! ```
//!
//! Guest-physical memory below [`MEM_BASE`] and from [`MEM_END`] on does not
//! exist, which gives tests addresses on both sides of the region.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::ErrorKind;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest-physical address where the single memory region starts.
pub const MEM_BASE: u64 = 0x10_0000;
/// Size of the memory region.
pub const MEM_SIZE: u64 = 8 << 20;
/// First guest-physical address past the memory region.
pub const MEM_END: u64 = MEM_BASE + MEM_SIZE;
/// Number of descriptors in the (only) virtqueue.
pub const QUEUE_SIZE: u16 = 64;
/// Start of the bump-allocated area for headers, buffers and indirect tables.
pub const DATA_START: u64 = MEM_BASE + 0x1_0000;

const DESC_TABLE: u64 = MEM_BASE;
const AVAIL_RING: u64 = MEM_BASE + 0x1000;
const USED_RING: u64 = MEM_BASE + 0x2000;
/// Size of one split-ring descriptor.
pub const DESC_SIZE: u32 = 16;

/// What fresh device-writable buffers are filled with.
pub const FILL: u8 = 0xA5;
/// What a status byte holds before the device writes it (not a valid status).
pub const STATUS_SENTINEL: u8 = 0xFF;

/// `VIRTIO_BLK_S_OK`.
pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// `VIRTIO_BLK_S_IOERR`.
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// `VIRTIO_BLK_T_IN` (read).
pub const T_IN: u32 = VIRTIO_BLK_T_IN;
/// `VIRTIO_BLK_T_OUT` (write).
pub const T_OUT: u32 = VIRTIO_BLK_T_OUT;

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// `VRING_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Default limit for waiting on a completion. Generous because test machines
/// are loaded; a healthy daemon answers in microseconds.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Frontend choices for [`TestDevice::connect_with`].
#[derive(Clone, Copy, Debug)]
pub struct FrontendOptions {
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` if the device offers it.
    pub event_idx: bool,
    /// Negotiate `VIRTIO_RING_F_INDIRECT_DESC` if the device offers it.
    pub indirect: bool,
}

impl Default for FrontendOptions {
    /// Like QEMU: use both ring features when offered.
    fn default() -> Self {
        FrontendOptions {
            event_idx: true,
            indirect: true,
        }
    }
}

/// One split-ring descriptor exactly as the test wants it in guest memory.
///
/// In [`TestDevice::submit`], `next` is relative to the chain's first table
/// slot; inside an indirect table ([`TestDevice::indirect_table`]) it is the
/// table index as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical buffer address.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor (meaningful with [`F_NEXT`]).
    pub next: u16,
}

impl Desc {
    /// A device-readable descriptor.
    pub fn readable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    /// A device-writable descriptor.
    pub fn writable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: F_WRITE,
            next: 0,
        }
    }

    /// Same descriptor with another length.
    pub fn with_len(self, len: u32) -> Self {
        Desc { len, ..self }
    }

    /// Same descriptor at another address.
    pub fn with_addr(self, addr: u64) -> Self {
        Desc { addr, ..self }
    }

    /// Same descriptor with the device-writable flag flipped.
    pub fn flip_direction(self) -> Self {
        Desc {
            flags: self.flags ^ F_WRITE,
            ..self
        }
    }

    /// Same descriptor, chained to `next` (see the type docs for its meaning).
    pub fn then(self, next: u16) -> Self {
        Desc {
            flags: self.flags | F_NEXT,
            next,
            ..self
        }
    }

    /// Whether the device may write the buffer.
    pub fn is_writable(&self) -> bool {
        self.flags & F_WRITE != 0
    }

    /// The descriptor's 16 bytes in guest (little-endian) layout.
    fn to_bytes(self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

/// Links `descs` into a linear chain: every descriptor but the last gets
/// [`F_NEXT`] pointing at its successor.
pub fn chain(descs: &[Desc]) -> Vec<Desc> {
    let last = descs.len().saturating_sub(1);
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i < last {
                let next = u16::try_from(i + 1).expect("chain too long for u16 indices");
                d.then(next)
            } else {
                *d
            }
        })
        .collect()
}

/// An element the device put on the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the returned chain.
    pub id: u32,
    /// Number of bytes the device reports having written.
    pub len: u32,
}

/// Why [`TestDevice::wait`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The chain was returned, but the device never signalled the call
    /// eventfd for it (a guest would hang).
    NotNotified,
    /// The daemon closed the vhost-user connection.
    Disconnected,
}

/// Outcome of a well-formed read issued with [`TestDevice::read`].
#[derive(Debug)]
pub struct ReadResult {
    /// Status byte.
    pub status: u8,
    /// Used length reported by the device.
    pub used_len: u32,
    /// Contents of the data buffer after completion.
    pub data: Vec<u8>,
}

/// A bump allocator over part of guest memory that wraps around when full.
/// Only buffers of completed requests are ever overwritten because tests keep
/// few requests in flight.
struct Bump {
    start: u64,
    end: u64,
    next: u64,
}

impl Bump {
    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(64);
        assert!(
            len <= self.end - self.start,
            "allocation of {len} bytes too large"
        );
        if self.next + len > self.end {
            self.next = self.start;
        }
        let addr = self.next;
        self.next += len;
        addr
    }
}

/// A connected vhost-user-blk frontend with one virtqueue.
pub struct TestDevice {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    kick: EventFd,
    call: EventFd,
    device_features: u64,
    acked_features: u64,
    /// Avail index the next submission publishes under.
    avail_idx: u16,
    /// Used index up to which the used ring has been consumed.
    used_idx: u16,
    /// Where the search for free descriptor table slots starts.
    next_slot: u16,
    /// Table slots taken by each outstanding chain, keyed by head.
    slots: HashMap<u32, Range<u16>>,
    heap: Bump,
    /// Heads submitted and not yet seen on the used ring.
    outstanding: HashSet<u32>,
    /// Used elements harvested but not yet claimed by [`TestDevice::wait`].
    completed: HashMap<u32, UsedElem>,
    /// Used elements whose id was not outstanding (a device bug).
    bogus: Vec<UsedElem>,
}

impl TestDevice {
    /// Connects to `socket` with [`FrontendOptions::default`].
    pub fn connect(socket: &Path) -> Self {
        Self::connect_with(socket, FrontendOptions::default())
    }

    /// Connects to `socket`, negotiates features and sets up queue 0 the way
    /// QEMU does. Panics on any protocol failure.
    pub fn connect_with(socket: &Path, opts: FrontendOptions) -> Self {
        let mut frontend = Frontend::from_stream(connect_socket(socket), 1);
        frontend.set_owner().expect("SET_OWNER");

        let device_features = frontend.get_features().expect("GET_FEATURES");
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_ne!(
            device_features & (1 << VIRTIO_F_VERSION_1),
            0,
            "device does not offer VIRTIO_F_VERSION_1"
        );
        assert_ne!(
            device_features & protocol_bit,
            0,
            "device does not offer VHOST_USER_F_PROTOCOL_FEATURES"
        );

        let offered = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        let protocol = offered & VhostUserProtocolFeatures::REPLY_ACK;
        frontend
            .set_protocol_features(protocol)
            .expect("SET_PROTOCOL_FEATURES");
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later message is acknowledged, so e.g. the queue is known
            // to be enabled before the first kick.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }

        let mut wanted = (1 << VIRTIO_F_VERSION_1) | protocol_bit | (1 << VIRTIO_BLK_F_RO);
        if opts.event_idx {
            wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if opts.indirect {
            wanted |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        let acked_features = device_features & wanted;
        frontend.set_features(acked_features).expect("SET_FEATURES");

        let mem = guest_memory();
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("region info"))
            .collect();
        frontend.set_mem_table(&regions).expect("SET_MEM_TABLE");

        let host_addr = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .expect("ring address inside guest memory") as u64
        };
        let ring = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            // vhost-user passes ring addresses in the frontend's address space.
            desc_table_addr: host_addr(DESC_TABLE),
            used_ring_addr: host_addr(USED_RING),
            avail_ring_addr: host_addr(AVAIL_RING),
            log_addr: None,
        };
        let kick = EventFd::new(EFD_NONBLOCK).expect("kick eventfd");
        let call = EventFd::new(EFD_NONBLOCK).expect("call eventfd");
        frontend
            .set_vring_num(0, QUEUE_SIZE)
            .expect("SET_VRING_NUM");
        frontend.set_vring_base(0, 0).expect("SET_VRING_BASE");
        frontend.set_vring_addr(0, &ring).expect("SET_VRING_ADDR");
        frontend.set_vring_kick(0, &kick).expect("SET_VRING_KICK");
        frontend.set_vring_call(0, &call).expect("SET_VRING_CALL");
        frontend
            .set_vring_enable(0, true)
            .expect("SET_VRING_ENABLE");

        TestDevice {
            frontend,
            mem,
            kick,
            call,
            device_features,
            acked_features,
            avail_idx: 0,
            used_idx: 0,
            next_slot: 0,
            slots: HashMap::new(),
            heap: Bump {
                start: DATA_START,
                end: MEM_END,
                next: DATA_START,
            },
            outstanding: HashSet::new(),
            completed: HashMap::new(),
            bogus: Vec::new(),
        }
    }

    /// Feature bits the device offered.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Whether indirect descriptors were negotiated.
    pub fn has_indirect(&self) -> bool {
        self.acked_features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0
    }

    fn has_event_idx(&self) -> bool {
        self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    // ---- guest memory -------------------------------------------------------

    /// Reserves `len` bytes of guest memory (64-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.heap.alloc(len)
    }

    /// Writes `data` at guest-physical `addr`.
    pub fn write_mem(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .unwrap_or_else(|e| panic!("write guest memory at {addr:#x}: {e}"));
    }

    /// Reads `len` bytes at guest-physical `addr`.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .unwrap_or_else(|e| panic!("read guest memory at {addr:#x}: {e}"));
        buf
    }

    /// Copy of the whole allocatable area `[DATA_START, MEM_END)`, for
    /// detecting device writes where it had none to make.
    pub fn snapshot(&self) -> Vec<u8> {
        self.read_mem(DATA_START, (MEM_END - DATA_START) as usize)
    }

    // ---- request building blocks ----------------------------------------------

    /// A readable 16-byte virtio-blk request header.
    pub fn header(&mut self, req_type: u32, sector: u64) -> Desc {
        let addr = self.alloc(16);
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&req_type.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.write_mem(addr, &raw);
        Desc::readable(addr, 16)
    }

    /// A readable buffer holding `data` (write payload).
    pub fn out_buf(&mut self, data: &[u8]) -> Desc {
        let addr = self.alloc(data.len() as u64);
        self.write_mem(addr, data);
        Desc::readable(addr, len32(data.len()))
    }

    /// A writable buffer of `len` bytes prefilled with [`FILL`] (read payload).
    pub fn in_buf(&mut self, len: usize) -> Desc {
        let addr = self.alloc(len as u64);
        self.write_mem(addr, &vec![FILL; len]);
        Desc::writable(addr, len32(len))
    }

    /// A writable 1-byte status buffer holding [`STATUS_SENTINEL`].
    pub fn status_buf(&mut self) -> Desc {
        let addr = self.alloc(1);
        self.write_mem(addr, &[STATUS_SENTINEL]);
        Desc::writable(addr, 1)
    }

    /// The byte at `addr`; used for status bytes.
    pub fn byte_at(&self, addr: u64) -> u8 {
        self.read_mem(addr, 1)[0]
    }

    /// Writes `entries` as an indirect descriptor table (indices used as is)
    /// and returns the descriptor that refers to it.
    pub fn indirect_table(&mut self, entries: &[Desc]) -> Desc {
        let bytes: Vec<u8> = entries.iter().flat_map(|d| d.to_bytes()).collect();
        let addr = self.alloc(bytes.len() as u64);
        self.write_mem(addr, &bytes);
        Desc {
            addr,
            len: len32(bytes.len()),
            flags: F_INDIRECT,
            next: 0,
        }
    }

    // ---- virtqueue ------------------------------------------------------------

    /// Finds `n` consecutive descriptor table slots not used by any
    /// outstanding chain.
    fn free_slots(&mut self, n: u16) -> Range<u16> {
        let taken = |slot: u16| self.slots.values().any(|r| r.contains(&slot));
        let starts = (self.next_slot..QUEUE_SIZE).chain(0..self.next_slot);
        for start in starts {
            let range = start..start + n;
            if range.end <= QUEUE_SIZE && !range.clone().any(taken) {
                self.next_slot = range.end % QUEUE_SIZE;
                return range;
            }
        }
        panic!(
            "no {n} free descriptor slots; outstanding: {:?}",
            self.slots
        );
    }

    /// Puts `descs` into consecutive free descriptor table slots (relocating
    /// `next` by the first slot's index), publishes the first as a new
    /// available chain and kicks. Returns the head index.
    ///
    /// Slots stay reserved until the device returns the chain, so a chain the
    /// device never returns keeps its slots for the connection's lifetime.
    pub fn submit(&mut self, descs: &[Desc]) -> u16 {
        let n = u16::try_from(descs.len()).expect("too many descriptors");
        assert!(
            (1..=QUEUE_SIZE).contains(&n),
            "a chain needs 1..={QUEUE_SIZE} table slots"
        );
        let slots = self.free_slots(n);
        let head = slots.start;
        for (slot, d) in slots.clone().zip(descs) {
            let placed = Desc {
                next: d.next.wrapping_add(head),
                ..*d
            };
            self.write_mem(
                DESC_TABLE + u64::from(slot) * u64::from(DESC_SIZE),
                &placed.to_bytes(),
            );
        }
        self.slots.insert(u32::from(head), slots);
        self.publish(head);
        head
    }

    /// Makes `head` available and notifies the device.
    fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % QUEUE_SIZE;
        self.write_mem(AVAIL_RING + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Descriptors and the ring entry must be visible before the index.
        fence(Ordering::Release);
        self.mem
            .store(
                self.avail_idx.to_le(),
                GuestAddress(AVAIL_RING + 2),
                Ordering::Release,
            )
            .expect("store avail idx");
        fence(Ordering::SeqCst);
        self.outstanding.insert(u32::from(head));
        self.kick.write(1).expect("kick");
    }

    /// Moves every new used-ring entry into `completed`.
    fn harvest(&mut self) {
        let device_idx = u16::from_le(
            self.mem
                .load::<u16>(GuestAddress(USED_RING + 2), Ordering::Acquire)
                .expect("load used idx"),
        );
        while self.used_idx != device_idx {
            let slot = self.used_idx % QUEUE_SIZE;
            let raw = self.read_mem(USED_RING + 4 + 8 * u64::from(slot), 8);
            let elem = UsedElem {
                id: u32::from_le_bytes(raw[0..4].try_into().unwrap()),
                len: u32::from_le_bytes(raw[4..8].try_into().unwrap()),
            };
            if self.outstanding.remove(&elem.id) {
                self.slots.remove(&elem.id);
                self.completed.insert(elem.id, elem);
            } else {
                self.bogus.push(elem);
            }
            self.used_idx = self.used_idx.wrapping_add(1);
        }
    }

    /// Returns `head`'s used element if the device has already returned it.
    pub fn poll_used(&mut self, head: u16) -> Option<UsedElem> {
        self.harvest();
        self.completed.remove(&u32::from(head))
    }

    /// Used elements that referred to no outstanding chain.
    pub fn bogus_used(&self) -> &[UsedElem] {
        &self.bogus
    }

    /// Waits up to [`WAIT_TIMEOUT`] for the device to return `head`.
    pub fn wait(&mut self, head: u16) -> Result<UsedElem, WaitError> {
        self.wait_timeout(head, WAIT_TIMEOUT)
    }

    /// Waits for the device to return `head`, sleeping in `poll(2)` on the call
    /// eventfd and the vhost-user socket (to notice a disconnect).
    pub fn wait_timeout(&mut self, head: u16, timeout: Duration) -> Result<UsedElem, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(elem) = self.poll_used(head) {
                return Ok(elem);
            }
            if self.has_event_idx() {
                // used_event: ask to be notified about the next used entry,
                // then look again in case it was added before the device
                // could see the request.
                self.write_mem(
                    AVAIL_RING + 4 + 2 * u64::from(QUEUE_SIZE),
                    &self.used_idx.to_le_bytes(),
                );
                fence(Ordering::SeqCst);
                if let Some(elem) = self.poll_used(head) {
                    return Ok(elem);
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(match self.poll_used(head) {
                    Some(_) => WaitError::NotNotified,
                    None => WaitError::Timeout,
                });
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.call.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.frontend.as_raw_fd(),
                    events: libc::POLLRDHUP,
                    revents: 0,
                },
            ];
            let millis = libc::c_int::try_from(remaining.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: `fds` is a valid, writable array of two pollfd structs for
            // the duration of the call, and its length is passed correctly.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                assert_eq!(err.kind(), ErrorKind::Interrupted, "poll: {err}");
                continue;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // Clears the notification; the used ring is the source of truth.
                let _ = self.call.read();
            }
            if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                return self.poll_used(head).ok_or(WaitError::Disconnected);
            }
        }
    }

    /// Submits `descs` and waits for the device to return them; panics on
    /// timeout or disconnect.
    pub fn request(&mut self, descs: &[Desc]) -> UsedElem {
        let head = self.submit(descs);
        self.wait(head)
            .unwrap_or_else(|e| panic!("request {descs:?}: {e:?}"))
    }

    /// A well-formed read of `len` bytes at `sector`.
    pub fn read(&mut self, sector: u64, len: usize) -> ReadResult {
        let hdr = self.header(T_IN, sector);
        let data = self.in_buf(len);
        let status = self.status_buf();
        let used = self.request(&chain(&[hdr, data, status]));
        ReadResult {
            status: self.byte_at(status.addr),
            used_len: used.len,
            data: self.read_mem(data.addr, len),
        }
    }

    /// A well-formed write of `data` at `sector`; returns (status, used length).
    pub fn write(&mut self, sector: u64, data: &[u8]) -> (u8, u32) {
        let hdr = self.header(T_OUT, sector);
        let buf = self.out_buf(data);
        let status = self.status_buf();
        let used = self.request(&chain(&[hdr, buf, status]));
        (self.byte_at(status.addr), used.len)
    }
}

/// Connects to the daemon's socket, retrying while the listener is bound but
/// not yet listening. Control messages get [`WAIT_TIMEOUT`] for replies, so a
/// daemon that stops answering fails the test instead of hanging it.
fn connect_socket(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect {}: {e}", socket.display()),
        }
    };
    stream
        .set_read_timeout(Some(WAIT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WAIT_TIMEOUT)))
        .expect("socket timeouts");
    stream
}

/// `len` as a descriptor length.
fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("buffer longer than a descriptor can describe")
}

/// Creates the guest memory: a memfd of [`MEM_SIZE`] bytes mapped shared at
/// [`MEM_BASE`], so the daemon can map the same pages from the fd.
fn guest_memory() -> GuestMemoryMmap {
    // SAFETY: the name is a valid NUL-terminated string and the flags are valid;
    // the return value is checked before use.
    let fd = unsafe { libc::memfd_create(c"strata-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing
    // else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(MEM_SIZE).expect("size guest memory");
    // from_ranges_with_files maps the file MAP_SHARED, so this process and the
    // daemon see the same pages.
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(MEM_BASE),
        MEM_SIZE as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("map guest memory");
    // Make stray device writes into never-used memory visible.
    let fill = vec![FILL; (MEM_END - DATA_START) as usize];
    mem.write_slice(&fill, GuestAddress(DATA_START))
        .expect("fill guest memory");
    mem
}
