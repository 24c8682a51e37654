//! Requests from a hostile guest, the way strata-host meets them: the input
//! is guest memory holding a split virtqueue (descriptor table, available
//! ring) and whatever the descriptors point at. virtio-queue walks each
//! chain (indirect tables, loops, over-long chains) and the request parser
//! judges it. Nothing panics, and whatever the parser accepts or rejects
//! only points the daemon at guest memory it may touch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_host::request::{self, Descriptor, Limits, Request, RequestKind};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

const QUEUE_SIZE: u16 = 16;
/// Guest memory: two adjacent regions, then a hole, then a third, so
/// buffers can straddle a region boundary or fall into the hole.
const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x4000), (0x10000, 0x8000)];
/// The descriptor table (16 bytes a descriptor) and the available ring come
/// first, so a few hundred bytes of input already make requests; the used
/// ring, which only the device writes, is out of the input's way.
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x7000;
const CAPACITY: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, contents)) = input.split_first() else {
        return;
    };
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    // The input fills the two adjacent regions from address 0 (queue
    // included), and what is left the third.
    let (low, high) = contents.split_at(contents.len().min(REGIONS[0].1 + REGIONS[1].1));
    mem.write_slice(low, GuestAddress(0))
        .expect("the adjacent regions take the input");
    let high = &high[..high.len().min(REGIONS[2].1)];
    mem.write_slice(high, GuestAddress(REGIONS[2].0))
        .expect("the third region takes the rest");

    let mut queue = Queue::new(QUEUE_SIZE).expect("a queue");
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }

    let limits = Limits {
        capacity: CAPACITY,
        read_only: flags & 1 != 0,
        max_ranges: 4,
        max_range_sectors: 1 << 12,
        max_descriptors: usize::from(QUEUE_SIZE),
    };
    let mut scratch = Vec::new();
    let mut req = Request::default();
    // A guest can make at most a queue's worth of chains available at once.
    for _ in 0..QUEUE_SIZE {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        match request::parse(
            chain.map(Descriptor::from),
            &mem,
            &limits,
            &mut scratch,
            &mut req,
        ) {
            Ok(()) => check_accepted(&req, &limits, &mem),
            Err(rejection) => {
                if let Some(status) = rejection.status {
                    assert!(
                        mem.check_range(status, 1, Permissions::Write),
                        "a rejection's status byte is not guest memory"
                    );
                }
            }
        }
    }
});

/// What the daemon will do with an accepted request stays in guest memory
/// and inside the vdisk.
fn check_accepted(req: &Request, limits: &Limits, mem: &GuestMemoryMmap<()>) {
    assert!(
        mem.check_range(req.status, 1, Permissions::Write),
        "the status byte is not guest memory"
    );
    // The daemon writes into the buffers of reads and GET_ID, and reads
    // those of writes.
    let access = match req.kind {
        RequestKind::Read | RequestKind::GetId => Permissions::Write,
        _ => Permissions::Read,
    };
    let mut total = 0u64;
    for &(addr, len) in &req.data {
        assert!(
            mem.check_range(addr, len as usize, access),
            "a data buffer is not guest memory"
        );
        total += u64::from(len);
    }
    assert_eq!(
        total,
        u64::from(req.data_len),
        "data buffers do not add up to the length"
    );
    match req.kind {
        RequestKind::Read | RequestKind::Write => {
            assert!(
                req.offset + total <= limits.capacity,
                "data past the end of the vdisk"
            );
            assert_eq!(total % 512, 0, "data not whole sectors");
            assert!(
                !(limits.read_only && req.kind == RequestKind::Write),
                "a write to a read-only vdisk was accepted"
            );
        }
        RequestKind::Discard | RequestKind::WriteZeroes => {
            assert!(
                !limits.read_only,
                "a discard or write-zeroes to a read-only vdisk was accepted"
            );
            assert!(
                req.ranges.len() <= limits.max_ranges as usize,
                "too many ranges accepted"
            );
            for range in &req.ranges {
                assert!(
                    range.offset + range.len <= limits.capacity,
                    "a range past the end"
                );
            }
        }
        RequestKind::Flush | RequestKind::GetId => {}
    }
}
