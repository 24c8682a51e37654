//! One virtqueue's worker: pops requests from the avail ring, hands them to
//! the engine, and completes them into the used ring.
//!
//! Each queue has its own thread (vhost-user-backend's epoll worker) and its
//! own [`QueueWorker`], so queues share nothing on the I/O path. The worker
//! sits behind a mutex only so that `GET_VRING_BASE` and shutdown, which run
//! on other threads, can drain it; on the I/O path the lock is uncontended.
//!
//! Requests run concurrently and finish in any order, but they are put on
//! the used ring in the order they were taken from the available ring: a
//! request that finishes early waits there for the ones before it. That is
//! what makes a restarted strata-host safe without the inflight-tracking
//! protocol feature: when the daemon dies, QEMU cannot ask where the queue
//! stood and resumes the new daemon at the used ring's index, so everything
//! before that index must be done and everything after it not yet told to
//! the guest (it is simply executed again). Published out of order, a
//! request still running would be skipped (the guest hangs) and one already
//! completed run again after the guest reused its buffers.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use strata_host::request::{self, Descriptor, Request, RequestKind};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap, Permissions,
};

use crate::engine::{BlockOp, EngineQueue, IoBuf};
use crate::vdisk::Vdisk;

/// Guest memory as the daemon maps it.
pub type GuestMem = GuestMemoryMmap<()>;
/// The shared handle to the current guest memory map.
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;
/// A virtqueue with its kick and call eventfds.
pub type Vring = VringRwLock<GuestMemAtomic>;
/// Largest queue size a driver may choose.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Most requests started before they are submitted together.
const SUBMIT_BATCH: usize = 4;
/// Requests in flight from which new ones are submitted in batches.
const BATCH_FROM_IN_FLIGHT: usize = 8;

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
    /// Finished, waiting for the requests taken before it.
    done: bool,
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
    /// Slots of the requests taken and not yet on the used ring, in the
    /// order they were taken.
    taken: VecDeque<u16>,
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
            taken: VecDeque::new(),
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
            // The first kick of a connection (vhost-user-backend kicks
            // every queue it enables): interrupt the guest once. A daemon
            // killed after putting requests on the used ring and before
            // signalling would otherwise leave the guest waiting for them;
            // a spurious interrupt only costs it a look at the ring. A
            // failure here must not keep the kick's requests from running.
            if let Err(e) = vring.signal_used_queue() {
                tracing::warn!(vdisk = %self.vdisk.name, queue = self.index, error = %e, "cannot interrupt the guest on the first kick");
            }
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
        let mut uncommitted = 0;
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
            self.taken.push_back(slot);
            self.start(slot, head, chain.map(Descriptor::from), mem, queue_size);
            uncommitted += 1;
            // Submit at once while the device has little to do; with many
            // requests in flight, up to SUBMIT_BATCH requests share one
            // submission. Batching whole kicks made the device see the
            // queue in waves and cost a third of the IOPS at QD32, while
            // one submission per request spends the queue thread's CPU on
            // system calls and device notifications (docs/BENCHMARKS.md).
            if uncommitted >= SUBMIT_BATCH || self.taken.len() < BATCH_FROM_IN_FLIGHT {
                self.commit();
                uncommitted = 0;
            }
        }
        if uncommitted > 0 {
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
        slot.done = false;
        if let Err(rejection) =
            request::parse(descs, &*mem, &limits, &mut self.scratch, &mut slot.req)
        {
            if let Some(dropped) = self.vdisk.complaints.allow() {
                tracing::warn!(vdisk = %self.vdisk.name, queue = self.index, head, reason = rejection.reason,
                    status = rejection.code, suppressed = dropped, "bad request from the guest");
            }
            slot.used_len = match rejection.status {
                Some(status) if mem.write_obj(rejection.code, status).is_ok() => 1,
                _ => 0,
            };
            slot.done = true;
            self.publish();
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

    /// Writes the status of slot `tag` and publishes whatever is now done
    /// in order.
    fn complete(&mut self, tag: u16) {
        let slot = &mut self.slots[tag as usize];
        let status = if slot.failed {
            VIRTIO_BLK_S_IOERR
        } else {
            VIRTIO_BLK_S_OK
        } as u8;
        if slot.failed {
            slot.used_len = 1;
        }
        if let Some(mem) = slot.mem.take() {
            if let Err(e) = mem.write_obj(status, slot.req.status) {
                tracing::error!(vdisk = %self.vdisk.name, queue = self.index, error = %e, "cannot write the status byte");
            }
        }
        slot.done = true;
        self.publish();
    }

    /// Puts finished requests on the used ring, oldest first, up to the
    /// first one still running (see the [module docs](self)).
    fn publish(&mut self) {
        while let Some(&tag) = self.taken.front() {
            let slot = &mut self.slots[tag as usize];
            if !slot.done {
                break;
            }
            slot.done = false;
            let (head, used_len) = (slot.head, slot.used_len);
            self.taken.pop_front();
            self.add_used(head, used_len);
            self.free.push(tag);
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use strata_common::config::VdiskConfig;
    use vhost_user_backend::VringT;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryAtomic};

    use super::*;
    use crate::engine::{Completion, Engine, EngineInfo};

    /// An engine whose operations finish when the test says so.
    struct HeldEngine;

    impl Engine for HeldEngine {
        fn info(&self) -> EngineInfo {
            EngineInfo {
                capacity: 1 << 20,
                read_only: false,
            }
        }

        fn new_queue(&self, _queue_index: u16) -> io::Result<Box<dyn EngineQueue>> {
            Err(io::Error::other("the test makes its own queue"))
        }
    }

    /// Tags submitted, and tags the test has let finish.
    #[derive(Default)]
    struct Held {
        submitted: Vec<u32>,
        released: Vec<u32>,
    }

    struct HeldQueue(Arc<Mutex<Held>>);

    impl EngineQueue for HeldQueue {
        fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }

        unsafe fn submit(&mut self, _op: BlockOp<'_>, tag: u32) -> io::Result<()> {
            self.0.lock().unwrap().submitted.push(tag);
            Ok(())
        }

        fn commit(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn reap(&mut self, done: Completion<'_>) {
            for tag in std::mem::take(&mut self.0.lock().unwrap().released) {
                done(tag, Ok(()));
            }
        }

        fn drain(&mut self, done: Completion<'_>) {
            self.reap(done);
        }
    }

    /// The heads on the used ring, in ring order.
    fn used_heads(queue: &MockSplitQueue<GuestMem>) -> Vec<u32> {
        let used = queue.used();
        let count = used.idx().load();
        (0..count)
            .map(|i| used.ring().ref_at(usize::from(i)).unwrap().load().id())
            .collect()
    }

    /// Lays out, from descriptor 0 on, one chain per entry: a one-sector
    /// read (`true`: header, data, status) or a malformed chain (`false`:
    /// a status byte and no header). Returns each chain's head.
    fn lay_out(mem: &GuestMem, queue: &MockSplitQueue<GuestMem>, reads: &[bool]) -> Vec<u32> {
        let writable = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        let desc = |addr: u64, len: u32, flags: u16, next: u16| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        };
        let (mut descs, mut heads) = (Vec::new(), Vec::new());
        for (i, &read) in (0u64..).zip(reads) {
            let first = descs.len() as u16;
            heads.push(u32::from(first));
            let status = 0x3_0000 + i;
            if !read {
                descs.push(desc(status, 1, writable, 0));
                continue;
            }
            let header = 0x1_0000 + i * 0x100;
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            bytes[8..].copy_from_slice(&i.to_le_bytes());
            mem.write_slice(&bytes, GuestAddress(header)).unwrap();
            descs.push(desc(header, 16, next, first + 1));
            descs.push(desc(0x2_0000 + i * 0x1000, 512, writable | next, first + 2));
            descs.push(desc(status, 1, writable, 0));
        }
        queue.add_desc_chains(&descs, 0).unwrap();
        heads
    }

    #[test]
    fn requests_finishing_out_of_order_are_published_in_order() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let queue = MockSplitQueue::new(&mem, 16);
        // A read, a malformed chain (rejected at once), then three reads.
        let heads = lay_out(&mem, &queue, &[true, false, true, true, true]);

        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = Vring::new(atomic.clone(), 16).unwrap();
        vring.set_queue_size(16);
        vring
            .set_queue_info(
                queue.desc_table_addr().0,
                queue.avail_addr().0,
                queue.used_addr().0,
            )
            .unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let (mut interrupts, call) = std::io::pipe().unwrap();
        vring.set_call(Some(std::fs::File::from(std::os::fd::OwnedFd::from(call))));

        let config = VdiskConfig::from_spec("name=held,size=1M").unwrap();
        let vdisk = Arc::new(Vdisk::new(&config, Arc::new(HeldEngine)));
        let held = Arc::new(Mutex::new(Held::default()));
        let engine = Box::new(HeldQueue(held.clone()));
        let mut worker = QueueWorker::new(vdisk, 0, engine, atomic);
        worker.on_kick(&vring).unwrap();
        let tags = held.lock().unwrap().submitted.clone();
        assert_eq!(tags.len(), 4, "every read reaches the engine");
        // Closing the call end lets the read below see only what was sent.
        vring.set_call(None);
        let mut sent = Vec::new();
        std::io::Read::read_to_end(&mut interrupts, &mut sent).unwrap();
        assert_eq!(sent.len(), 8, "the first kick interrupts the guest once");
        assert_eq!(
            used_heads(&queue),
            Vec::<u32>::new(),
            "the rejected chain waits for the read before it"
        );

        let release = |tag: u32| held.lock().unwrap().released.push(tag);
        release(tags[1]);
        worker.on_completion().unwrap();
        assert_eq!(
            used_heads(&queue),
            Vec::<u32>::new(),
            "a later read waits for the first"
        );
        release(tags[0]);
        worker.on_completion().unwrap();
        assert_eq!(
            used_heads(&queue),
            heads[..3].to_vec(),
            "the first read, the rejected chain and the finished read follow in order"
        );
        // Draining (a stop or a disconnect) publishes the rest.
        release(tags[3]);
        release(tags[2]);
        worker.drain(false);
        assert_eq!(
            used_heads(&queue),
            heads,
            "a drain publishes everything, in order"
        );
        // The rejected chain was published once, with its status written.
        let status: u8 = mem.read_obj(GuestAddress(0x3_0001)).unwrap();
        assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
    }
}
