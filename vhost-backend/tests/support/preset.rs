//! Writing initial vdisk content through a running daemon with a minimal
//! libblkio client: strata vdisks have no image file a test could fill.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, Errno, ReqFlags};

use super::daemon::STARTUP_TIMEOUT;

/// Writes each `(offset, data)` to the vdisk behind `socket`, flushes, and
/// disconnects.
pub fn write_through_daemon(socket: &Path, writes: &[(u64, Vec<u8>)]) -> blkio::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut blkio = loop {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().expect("UTF-8 socket path"))?;
        match blkio.connect() {
            Err(e) if e.errno() == Errno::CONNREFUSED && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
            Ok(()) => break blkio,
        }
    };
    let mut started = blkio.start()?;
    let len = writes
        .iter()
        .map(|(_, d)| d.len())
        .max()
        .unwrap_or(0)
        .next_multiple_of(4096)
        .max(4096);
    let region = blkio.alloc_mem_region(len)?;
    blkio.map_mem_region(&region)?;
    let queue = &mut started.queues[0];
    let memory = region.addr as *mut u8;
    let wait = |queue: &mut blkio::Blkioq, what: &str| -> blkio::Result<()> {
        let mut done = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(30);
        let n = queue.do_io(&mut done, 1, Some(&mut timeout), None)?;
        if n != 1 {
            return Err(blkio::Error::new(
                Errno::TIMEDOUT,
                format!("{what} timed out"),
            ));
        }
        // SAFETY: do_io initialised the first n entries.
        match unsafe { done[0].assume_init_read() }.ret {
            0 => Ok(()),
            ret => Err(blkio::Error::new(
                Errno::from_raw_os_error(-ret),
                format!("{what} failed"),
            )),
        }
    };
    for (offset, data) in writes {
        // SAFETY: the region is `len` bytes, at least `data.len()`, and
        // nothing is in flight on it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), memory, data.len()) };
        queue.write(*offset, memory, data.len(), 0, ReqFlags::empty());
        wait(queue, &format!("preset write at {offset}"))?;
    }
    queue.flush(0, ReqFlags::empty());
    wait(queue, "preset flush")
}
