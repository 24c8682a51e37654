//! A queue's verify helper: a thread that checks, decrypts and copies to
//! the guest the flash reads its queue thread hands it when completions
//! arrive faster than one thread keeps up with.
//!
//! A randread of unique data keeps a queue thread busy with two kinds of
//! work: the virtio ring, the map and index lookups and the io_uring
//! submissions on one side; checking, decrypting and copying each frame on
//! the other. When the queue thread reaps a backlog of completions at once
//! (it is falling behind) it keeps a third and hands the rest to the
//! helper, so both kinds overlap on a second core. Fewer completions are
//! always verified on the queue thread: while it keeps up, waking another
//! thread would only add latency (docs/BENCHMARKS.md has the
//! measurements).
//!
//! Reads go to the helper over a channel and come back verified through a
//! list and the queue's eventfd, which the queue thread already waits on.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use strata_common::fingerprint::BLOCK_SIZE;
use vmm_sys_util::eventfd::EventFd;

use super::{BlockReader, FlashRead};

/// What the queue thread and the helper share.
struct Finished {
    /// Verified reads, for the queue thread to complete.
    reads: Mutex<Vec<FlashRead>>,
    eventfd: Arc<EventFd>,
}

impl Finished {
    fn lock(&self) -> MutexGuard<'_, Vec<FlashRead>> {
        // Reads are only moved in and out under the lock: a panic on the
        // other side cannot leave a half-made change behind.
        self.reads.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queue thread's handle on its verify helper.
pub(super) struct VerifyHelper {
    /// `None` once stopping: dropping the sender ends the helper.
    jobs: Option<Sender<Vec<FlashRead>>>,
    finished: Arc<Finished>,
    thread: Option<JoinHandle<()>>,
    /// Reads handed over and not yet taken back.
    outstanding: usize,
}

impl VerifyHelper {
    /// Starts a helper that verifies with `reader` and signals `eventfd`
    /// when reads are finished.
    pub(super) fn start(
        reader: BlockReader,
        eventfd: Arc<EventFd>,
        name: String,
    ) -> io::Result<VerifyHelper> {
        let (jobs, queue) = channel();
        let finished = Arc::new(Finished {
            reads: Mutex::new(Vec::new()),
            eventfd,
        });
        let thread = {
            let finished = finished.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || verify_jobs(&queue, &finished, &reader))?
        };
        Ok(VerifyHelper {
            jobs: Some(jobs),
            finished,
            thread: Some(thread),
            outstanding: 0,
        })
    }

    /// Hands `reads` (completed by the kernel, result set) to the helper.
    /// Gives them back if the helper is gone, for the caller to verify.
    pub(super) fn hand_over(&mut self, reads: Vec<FlashRead>) -> Result<(), Vec<FlashRead>> {
        let count = reads.len();
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(reads);
        };
        match jobs.send(reads) {
            Ok(()) => {
                self.outstanding += count;
                Ok(())
            }
            Err(unsent) => {
                tracing::error!(
                    "the flash read verify helper is gone; verifying on the queue thread"
                );
                Err(unsent.0)
            }
        }
    }

    /// Moves the reads verified so far into `out`.
    pub(super) fn take_finished(&mut self, out: &mut Vec<FlashRead>) {
        let before = out.len();
        out.append(&mut self.finished.lock());
        self.outstanding -= out.len() - before;
    }

    /// Reads handed over and not yet taken back.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether the helper thread has ended (it only does when dropped,
    /// or by a bug): reads it still holds will not come back.
    pub(super) fn is_gone(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for VerifyHelper {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The helper thread: verifies each batch it is handed and gives it back,
/// until the queue drops its end of the channel.
fn verify_jobs(queue: &Receiver<Vec<FlashRead>>, finished: &Finished, reader: &BlockReader) {
    let mut block = Box::new([0; BLOCK_SIZE]);
    while let Ok(mut reads) = queue.recv() {
        for read in &mut reads {
            // A bug that panics in one read must not take the batch with
            // it: the queue would wait for those reads for ever.
            let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reader.verify(read, &mut block);
            }));
            if verified.is_err() {
                tracing::error!(
                    lba = read.lba,
                    "verifying a flash read panicked; the read fails"
                );
                read.error = Some(io::Error::other(format!(
                    "block {}: verifying the flash read failed (a bug: see the log)",
                    read.lba
                )));
            }
        }
        finished.lock().append(&mut reads);
        if let Err(e) = finished.eventfd.write(1) {
            tracing::error!(error = %e, "cannot signal verified flash reads");
        }
    }
}
