//! A vdisk as the daemon serves it: its engine, device shape and the state
//! that outlives any one vhost-user connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use strata_common::config::{CacheMode, VdiskConfig};
use strata_host::request::Limits;

use crate::engine::Engine;
use crate::virtio_config::{DeviceShape, MAX_RANGES, MAX_RANGE_SECTORS, SEG_MAX};

/// Length of the virtio-blk serial (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;

/// One served vdisk.
pub struct Vdisk {
    /// Its name, used in every log line about it.
    pub name: String,
    /// The GET_ID answer: the name, truncated to 20 bytes.
    pub serial: Vec<u8>,
    /// Where its bytes live.
    pub engine: Arc<dyn Engine>,
    /// What the guest sees.
    pub shape: DeviceShape,
    /// The guest's write-cache setting (WCE): writes complete before they
    /// are durable, and FLUSH makes them so.
    pub writeback: AtomicBool,
    /// Rate limit for complaints about guest requests.
    pub complaints: RateLimit,
}

impl Vdisk {
    /// A vdisk for `config` over `engine`.
    pub fn new(config: &VdiskConfig, engine: Arc<dyn Engine>) -> Self {
        let info = engine.info();
        let serial = config.name.as_bytes()[..config.name.len().min(SERIAL_LEN)].to_vec();
        Vdisk {
            name: config.name.clone(),
            serial,
            engine,
            shape: DeviceShape {
                capacity: info.capacity,
                block_size: config.block_size,
                num_queues: config.queues,
                read_only: config.read_only || info.read_only,
            },
            writeback: AtomicBool::new(config.cache == CacheMode::Writeback),
            complaints: RateLimit::new(10),
        }
    }

    /// The bounds requests on a queue of `queue_size` are checked against.
    pub fn limits(&self, queue_size: u16) -> Limits {
        Limits {
            capacity: self.shape.capacity,
            read_only: self.shape.read_only,
            max_ranges: MAX_RANGES,
            max_range_sectors: MAX_RANGE_SECTORS,
            // Linux sends up to seg_max + 2 descriptors through an indirect
            // table even when that exceeds a small queue.
            max_descriptors: usize::from(queue_size).max(SEG_MAX as usize + 2),
        }
    }
}

/// Lets through at most `per_second` events each second and counts the rest,
/// so a hostile guest cannot flood the log.
pub struct RateLimit {
    per_second: u64,
    start: Instant,
    /// Second (since `start`) and count in it, packed as second << 32 | count.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limit of `per_second` events a second.
    pub fn new(per_second: u64) -> Self {
        RateLimit {
            per_second,
            start: Instant::now(),
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log this event; if so, also how many were dropped before it.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(self.start.elapsed().as_secs())
    }

    /// [`RateLimit::allow`] at `second` seconds after creation.
    fn allow_at(&self, second: u64) -> Option<u64> {
        let second = second & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (win, count) = (current >> 32, current & 0xffff_ffff);
            let next = if win == second {
                if count >= self.per_second {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                current + 1
            } else {
                second << 32 | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let limit = RateLimit::new(3);
        let first: Vec<_> = (0..5).map(|_| limit.allow_at(7)).collect();
        assert_eq!(first, vec![Some(0), Some(0), Some(0), None, None]);
        assert_eq!(
            limit.allow_at(8),
            Some(2),
            "the next second reports the two dropped"
        );
        assert_eq!(limit.allow_at(8), Some(0));
    }
}
