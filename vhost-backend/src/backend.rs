//! The vhost-user backend of one vdisk for one frontend connection.
//!
//! vhost-user-backend runs one epoll thread per queue (see
//! `queues_per_thread`); each thread gets the kicks of its queue and the
//! completion eventfd of that queue's engine ring, so a queue's whole I/O
//! path stays on one thread.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queue::{GuestMemAtomic, QueueWorker, Vring, MAX_QUEUE_SIZE};
use crate::vdisk::Vdisk;
use crate::virtio_config::{config_window, WCE_OFFSET};

/// The backend of one vdisk while one frontend is connected.
pub struct VdiskBackend {
    vdisk: Arc<Vdisk>,
    queues: Vec<Mutex<QueueWorker>>,
    /// Per queue: raised to ask the queue thread to shut down.
    shutdown_events: Vec<EventFd>,
    /// Queues that have shut down, and its condition variable.
    shut_down: (Mutex<usize>, Condvar),
}

impl VdiskBackend {
    /// Sets up a queue worker (and engine queue) for every virtqueue.
    pub fn new(vdisk: Arc<Vdisk>, mem: &GuestMemAtomic) -> io::Result<Self> {
        let queues = (0..vdisk.shape.num_queues)
            .map(|index| {
                let engine = vdisk.engine.new_queue(index)?;
                Ok(Mutex::new(QueueWorker::new(
                    vdisk.clone(),
                    index,
                    engine,
                    mem.clone(),
                )))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shutdown_events = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<_>>()?;
        Ok(VdiskBackend {
            vdisk,
            queues,
            shutdown_events,
            shut_down: (Mutex::new(0), Condvar::new()),
        })
    }

    /// The epoll event id of a queue's completions: above every id the
    /// library uses (queues and its exit event).
    fn completion_event(&self) -> u16 {
        self.vdisk.shape.num_queues + 1
    }

    /// The epoll event id of a queue's shutdown request.
    fn shutdown_event(&self) -> u16 {
        self.vdisk.shape.num_queues + 2
    }

    /// Adds each queue's completion and shutdown eventfds to that queue's
    /// epoll thread.
    pub fn register_listeners(
        &self,
        handlers: &[Arc<VringEpollHandler<Arc<VdiskBackend>>>],
    ) -> io::Result<()> {
        for (index, handler) in handlers.iter().enumerate() {
            if let Some(fd) = self.queue(index).completion_fd() {
                handler.register_listener(fd, EventSet::IN, u64::from(self.completion_event()))?;
            }
            handler.register_listener(
                self.shutdown_events[index].as_raw_fd(),
                EventSet::IN,
                u64::from(self.shutdown_event()),
            )?;
        }
        Ok(())
    }

    /// Completes everything in flight on every queue.
    pub fn drain(&self) {
        for index in 0..self.queues.len() {
            self.queue(index).drain(false);
        }
    }

    /// Daemon shutdown: each queue thread takes what the guest already made
    /// available, completes everything and stops taking requests. Waits up
    /// to `deadline` for all queues; returns whether they all finished.
    pub fn shut_down(&self, deadline: Duration) -> bool {
        for event in &self.shutdown_events {
            if let Err(e) = event.write(1) {
                tracing::error!(vdisk = %self.vdisk.name, error = %e, "cannot ask a queue to shut down");
            }
        }
        let (done, all_done) = &self.shut_down;
        let done = done.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (done, timeout) = all_done
            .wait_timeout_while(done, deadline, |n| *n < self.queues.len())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if timeout.timed_out() {
            tracing::error!(vdisk = %self.vdisk.name, finished = *done, queues = self.queues.len(),
                "queues did not finish in-flight I/O in time");
        }
        !timeout.timed_out()
    }

    fn queue(&self, index: usize) -> MutexGuard<'_, QueueWorker> {
        // A poisoned lock means a worker panicked mid-request; its state is
        // still consistent enough to drain, so carry on.
        self.queues[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl VhostUserBackend for VdiskBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.vdisk.shape.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.vdisk.shape.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, _enabled: bool) {
        // Each queue reads the flag from its own vring state.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self
            .vdisk
            .shape
            .config_space(self.vdisk.writeback.load(Ordering::Relaxed));
        config_window(&space, offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        match (offset, buf) {
            (WCE_OFFSET, [wce]) => {
                let writeback = *wce != 0;
                self.vdisk.writeback.store(writeback, Ordering::Relaxed);
                tracing::info!(vdisk = %self.vdisk.name, writeback, "guest set the write cache mode");
                Ok(())
            }
            _ => {
                tracing::warn!(vdisk = %self.vdisk.name, offset, len = buf.len(), "refused a write to read-only config space");
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // Queues read memory through the shared atomic handle, which the
        // library has already updated; requests in flight keep the old map
        // alive through their load guards.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.vdisk.shape.num_queues)
            .map(|q| 1u64 << q)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Lets the library stop the worker threads when this connection's
        // daemon is dropped.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the frontend is about to read the ring's position,
        // so everything accepted must be completed first.
        if let Some(queue) = self.queues.get(queue_index as usize) {
            queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .drain(false);
        }
        Ok(())
    }

    fn reset_device(&self) {
        self.drain();
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "vdisk {}: unexpected epoll events {evset:?}",
                self.vdisk.name
            )));
        }
        let mut queue = self.queue(thread_id);
        if device_event == self.completion_event() {
            queue.on_completion()
        } else if device_event == self.shutdown_event() {
            // One queue per thread: its vring is the thread's only one.
            let _ = self.shutdown_events[thread_id].read();
            if let Some(vring) = vrings.first() {
                queue.shut_down(vring);
            }
            drop(queue);
            let (done, all_done) = &self.shut_down;
            *done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
            all_done.notify_all();
            Ok(())
        } else if let Some(vring) = vrings.get(usize::from(device_event)) {
            queue.on_kick(vring)
        } else {
            Err(io::Error::other(format!(
                "vdisk {}: event {device_event} for an unknown queue",
                self.vdisk.name
            )))
        }
    }
}
