//! One virtqueue's worker: pops requests from the avail ring, hands them to
//! the engine, and completes them into the used ring.
//!
//! Each queue has its own thread (vhost-user-backend's epoll worker) and its
//! own [`QueueWorker`], so queues share nothing on the I/O path. The worker
//! sits behind a mutex only so that `GET_VRING_BASE` and shutdown, which run
//! on other threads, can drain it; on the I/O path the lock is uncontended.

use std::io;
use std::sync::Arc;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap, Permissions,
};

use crate::engine::{BlockOp, EngineQueue, IoBuf};
use crate::request::{self, Descriptor, Request, RequestKind};
use crate::vdisk::Vdisk;

/// Guest memory as the daemon maps it.
pub type GuestMem = GuestMemoryMmap<()>;
/// The shared handle to the current guest memory map.
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;
/// A virtqueue with its kick and call eventfds.
pub type Vring = VringRwLock<GuestMemAtomic>;
/// Largest queue size a driver may choose.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// A request between pop and completion.
#[derive(Default)]
struct Slot {
    head: u16,
    req: Request,
    /// Engine operations not yet completed.
    pending: u32,
    failed: bool,
    /// Bytes the device wrote into the chain, status byte included.
    used_len: u32,
    /// Keeps the memory map the buffers point into alive until completion.
    mem: Option<GuestMemoryLoadGuard<GuestMem>>,
}

/// The worker of one virtqueue.
pub struct QueueWorker {
    vdisk: Arc<Vdisk>,
    index: u16,
    engine: Box<dyn EngineQueue>,
    mem: GuestMemAtomic,
    vring: Option<Vring>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    stopped: bool,
    needs_signal: bool,
    scratch: Vec<Descriptor>,
    bufs: Vec<IoBuf>,
    completions: Vec<(u32, io::Result<()>)>,
}

impl QueueWorker {
    /// A worker for queue `index` of `vdisk`, reading guest memory through `mem`.
    pub fn new(
        vdisk: Arc<Vdisk>,
        index: u16,
        engine: Box<dyn EngineQueue>,
        mem: GuestMemAtomic,
    ) -> Self {
        QueueWorker {
            vdisk,
            index,
            engine,
            mem,
            vring: None,
            slots: Vec::new(),
            free: Vec::new(),
            stopped: false,
            needs_signal: false,
            scratch: Vec::new(),
            bufs: Vec::new(),
            completions: Vec::new(),
        }
    }

    /// The engine's completion eventfd, for the worker's epoll.
    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.engine.completion_fd()
    }

    /// Handles a kick: takes every available request and starts it.
    pub fn on_kick(&mut self, vring: &Vring) -> io::Result<()> {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        let event_idx = vring.get_ref().get_queue().event_idx_enabled();
        loop {
            if event_idx {
                vring.disable_notification().map_err(queue_error)?;
            }
            self.pop_all(vring);
            if !event_idx || !vring.enable_notification().map_err(queue_error)? {
                break;
            }
        }
        // Whatever already completed (all of it, for the syscall engine).
        self.complete_ready()
    }

    /// Handles the engine's completion event.
    pub fn on_completion(&mut self) -> io::Result<()> {
        self.engine.clear_completion_event();
        self.complete_ready()
    }

    fn complete_ready(&mut self) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        self.engine
            .reap(&mut |tag, result| completions.push((tag, result)));
        self.finish(&mut completions);
        self.completions = completions;
        self.signal()
    }

    /// Daemon shutdown, on the queue's own thread: takes every request the
    /// guest has already made available, completes all of them, and then
    /// takes no more.
    pub fn shut_down(&mut self, vring: &Vring) {
        let started = {
            let state = vring.get_ref();
            state.get_queue().ready() && state.is_enabled()
        };
        if started {
            self.vring.get_or_insert_with(|| vring.clone());
            self.pop_all(vring);
        }
        self.drain(true);
    }

    /// Waits for everything in flight and completes it; with `stop`, takes
    /// no new requests afterwards.
    pub fn drain(&mut self, stop: bool) {
        self.stopped |= stop;
        let mut completions = std::mem::take(&mut self.completions);
        self.engine
            .drain(&mut |tag, result| completions.push((tag, result)));
        self.finish(&mut completions);
        self.completions = completions;
        if let Err(e) = self.signal() {
            tracing::warn!(vdisk = %self.vdisk.name, queue = self.index, error = %e, "cannot signal the guest while draining");
        }
    }

    fn pop_all(&mut self, vring: &Vring) {
        let queue_size = vring.get_ref().get_queue().size();
        while !self.stopped {
            let Some(slot) = self.take_slot() else {
                // Unreachable in practice: a queue cannot hold more chains
                // than MAX_QUEUE_SIZE, the most slots there are.
                break;
            };
            let mem = self.mem.memory();
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                self.free.push(slot);
                break;
            };
            let head = chain.head_index();
            self.start(slot, head, chain.map(Descriptor::from), mem, queue_size);
            // Start each request at once rather than one submission per
            // kick: batching whole kicks makes the device see the queue in
            // waves and cost a third of the IOPS at QD32 (docs/BENCHMARKS.md).
            self.commit();
        }
    }

    fn commit(&mut self) {
        if let Err(e) = self.engine.commit() {
            tracing::error!(vdisk = %self.vdisk.name, queue = self.index, error = %e, "submitting I/O failed");
        }
    }

    fn take_slot(&mut self) -> Option<u16> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        if self.slots.len() < MAX_QUEUE_SIZE {
            self.slots.push(Slot::default());
            return Some((self.slots.len() - 1) as u16);
        }
        None
    }

    /// Parses and submits one request.
    fn start(
        &mut self,
        tag: u16,
        head: u16,
        descs: impl Iterator<Item = Descriptor>,
        mem: GuestMemoryLoadGuard<GuestMem>,
        queue_size: u16,
    ) {
        let limits = self.vdisk.limits(queue_size);
        let slot = &mut self.slots[tag as usize];
        slot.head = head;
        slot.pending = 0;
        slot.failed = false;
        slot.used_len = 1;
        if let Err(rejection) =
            request::parse(descs, &*mem, &limits, &mut self.scratch, &mut slot.req)
        {
            if let Some(dropped) = self.vdisk.complaints.allow() {
                tracing::warn!(vdisk = %self.vdisk.name, queue = self.index, head, reason = rejection.reason,
                    status = rejection.code, suppressed = dropped, "bad request from the guest");
            }
            let used_len = match rejection.status {
                Some(status) if mem.write_obj(rejection.code, status).is_ok() => 1,
                _ => 0,
            };
            self.add_used(head, used_len);
            self.free.push(tag);
            return;
        }
        slot.mem = Some(mem);
        let result = self.submit(tag);
        let slot = &mut self.slots[tag as usize];
        if let Err(e) = result {
            slot.failed = true;
            self.log_failure(tag, &e);
        }
        if self.slots[tag as usize].pending == 0 {
            self.complete(tag);
        }
    }

    /// Sends slot `tag`'s request to the engine.
    fn submit(&mut self, tag: u16) -> io::Result<()> {
        let slot = &mut self.slots[tag as usize];
        let Some(mem) = slot.mem.as_ref() else {
            return Err(io::Error::other("request without guest memory"));
        };
        let req = &slot.req;
        let op = match req.kind {
            RequestKind::Read | RequestKind::Write => {
                host_buffers(mem, &req.data, &mut self.bufs)?;
                if req.kind == RequestKind::Read {
                    slot.used_len = req.data_len + 1;
                    BlockOp::Read {
                        offset: req.offset,
                        bufs: &self.bufs,
                    }
                } else {
                    BlockOp::Write {
                        offset: req.offset,
                        bufs: &self.bufs,
                        durable: !self
                            .vdisk
                            .writeback
                            .load(std::sync::atomic::Ordering::Relaxed),
                    }
                }
            }
            RequestKind::Flush => BlockOp::Flush,
            RequestKind::GetId => {
                slot.used_len = write_serial(mem, &req.data, &self.vdisk.serial)? + 1;
                return Ok(());
            }
            RequestKind::Discard | RequestKind::WriteZeroes => {
                for range in &req.ranges {
                    let op = if req.kind == RequestKind::Discard {
                        BlockOp::Discard {
                            offset: range.offset,
                            len: range.len,
                        }
                    } else {
                        BlockOp::WriteZeroes {
                            offset: range.offset,
                            len: range.len,
                            unmap: range.unmap,
                        }
                    };
                    // SAFETY: discard and write-zeroes carry no buffers.
                    unsafe { self.engine.submit(op, u32::from(tag))? };
                    slot.pending += 1;
                }
                return Ok(());
            }
        };
        // SAFETY: the buffers point into guest memory kept mapped by
        // `slot.mem` until the completion for `tag` is handled in `finish`,
        // and the guest gave them to the device until it is told the request
        // is done.
        unsafe { self.engine.submit(op, u32::from(tag))? };
        slot.pending += 1;
        Ok(())
    }

    /// Applies engine completions to their requests.
    fn finish(&mut self, completions: &mut Vec<(u32, io::Result<()>)>) {
        for (tag, result) in completions.drain(..) {
            let tag = tag as u16;
            let Some(slot) = self.slots.get_mut(tag as usize) else {
                tracing::error!(vdisk = %self.vdisk.name, queue = self.index, tag, "completion for an unknown request");
                continue;
            };
            slot.pending = slot.pending.saturating_sub(1);
            if let Err(e) = result {
                slot.failed = true;
                self.log_failure(tag, &e);
            }
            if self.slots[tag as usize].pending == 0 {
                self.complete(tag);
            }
        }
    }

    fn log_failure(&self, tag: u16, e: &io::Error) {
        let req = &self.slots[tag as usize].req;
        if let Some(dropped) = self.vdisk.complaints.allow() {
            tracing::error!(vdisk = %self.vdisk.name, queue = self.index, op = ?req.kind, offset = req.offset,
                len = req.data_len, error = %e, suppressed = dropped, "I/O failed");
        }
    }

    /// Writes the status of slot `tag` and puts it on the used ring.
    fn complete(&mut self, tag: u16) {
        let slot = &mut self.slots[tag as usize];
        let status = if slot.failed {
            VIRTIO_BLK_S_IOERR
        } else {
            VIRTIO_BLK_S_OK
        } as u8;
        let (head, mut used_len) = (slot.head, slot.used_len);
        if slot.failed {
            used_len = 1;
        }
        if let Some(mem) = slot.mem.take() {
            if let Err(e) = mem.write_obj(status, slot.req.status) {
                tracing::error!(vdisk = %self.vdisk.name, queue = self.index, error = %e, "cannot write the status byte");
            }
        }
        self.add_used(head, used_len);
        self.free.push(tag);
    }

    fn add_used(&mut self, head: u16, len: u32) {
        let Some(vring) = self.vring.as_ref() else {
            return;
        };
        if let Err(e) = vring.add_used(head, len) {
            tracing::error!(vdisk = %self.vdisk.name, queue = self.index, error = %e, "cannot add to the used ring");
        }
        self.needs_signal = true;
    }

    fn signal(&mut self) -> io::Result<()> {
        if !std::mem::take(&mut self.needs_signal) {
            return Ok(());
        }
        let Some(vring) = self.vring.as_ref() else {
            return Ok(());
        };
        if vring.needs_notification().map_err(queue_error)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

fn queue_error(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

/// Translates guest ranges into host buffers, splitting at region boundaries.
fn host_buffers(
    mem: &GuestMem,
    data: &[(GuestAddress, u32)],
    out: &mut Vec<IoBuf>,
) -> io::Result<()> {
    out.clear();
    for &(addr, len) in data {
        let slices = mem
            .get_slices(addr, len as usize, Permissions::ReadWrite)
            .map_err(|e| io::Error::other(format!("guest buffer {addr:?}+{len}: {e}")))?;
        for slice in slices {
            let slice =
                slice.map_err(|e| io::Error::other(format!("guest buffer {addr:?}+{len}: {e}")))?;
            out.push(IoBuf {
                ptr: slice.ptr_guard_mut().as_ptr(),
                len: slice.len(),
            });
        }
    }
    Ok(())
}

/// Writes the serial into the GET_ID buffers; returns how many bytes it wrote.
fn write_serial(mem: &GuestMem, data: &[(GuestAddress, u32)], serial: &[u8]) -> io::Result<u32> {
    // The driver expects 20 bytes, NUL-padded.
    let mut id = [0u8; crate::vdisk::SERIAL_LEN];
    id[..serial.len()].copy_from_slice(serial);
    let mut written = 0usize;
    for &(addr, len) in data {
        let take = (len as usize).min(id.len() - written);
        if take == 0 {
            break;
        }
        mem.write_slice(&id[written..written + take], addr)
            .map_err(|e| io::Error::other(format!("GET_ID buffer {addr:?}: {e}")))?;
        written += take;
    }
    Ok(written as u32)
}
