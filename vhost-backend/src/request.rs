//! Parsing virtio-blk requests out of descriptor chains.
//!
//! Everything here treats the chain as hostile: lengths may overflow,
//! addresses may lie outside guest memory, directions may be wrong. The parser
//! never panics; it returns either a [`Request`] ready to execute or a
//! [`Rejection`] that says which status to report and why.
//!
//! Layout is not assumed (VIRTIO_F_VERSION_1 implies any layout): the 16-byte
//! header is the first bytes of the device-readable part, the status is the
//! last byte of the device-writable part, and the data is what lies between.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes per virtio sector, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (type, ioprio, sector).
const HEADER_LEN: u32 = 16;
/// Size of one discard / write-zeroes segment.
const RANGE_LEN: u32 = 16;
/// The write-zeroes "unmap" flag.
const WRITE_ZEROES_UNMAP: u32 = 1;

/// One descriptor of a chain as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device may write it (VIRTQ_DESC_F_WRITE).
    pub device_writable: bool,
    /// It names a next descriptor (VIRTQ_DESC_F_NEXT). True on the last
    /// descriptor walked means the walk was cut short: a loop, or a chain
    /// longer than the queue.
    pub has_next: bool,
}

impl From<virtio_queue::desc::split::Descriptor> for Descriptor {
    fn from(d: virtio_queue::desc::split::Descriptor) -> Self {
        Descriptor {
            addr: d.addr().0,
            len: d.len(),
            device_writable: d.is_write_only(),
            has_next: d.has_next(),
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestKind {
    /// VIRTIO_BLK_T_IN.
    #[default]
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID.
    GetId,
    /// VIRTIO_BLK_T_DISCARD.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes,
}

/// A byte range of the vdisk named by a discard or write-zeroes segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Write-zeroes may deallocate (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
    pub unmap: bool,
}

/// A validated request. Reused between requests to avoid allocating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestKind,
    /// Byte offset into the vdisk (IN and OUT).
    pub offset: u64,
    /// Guest buffers of the data, in order: read into them (IN, GET_ID) or
    /// written from them (OUT). Every range was checked to be guest memory.
    pub data: Vec<(GuestAddress, u32)>,
    /// Total bytes in `data`.
    pub data_len: u32,
    /// Discard and write-zeroes ranges.
    pub ranges: Vec<ByteRange>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a request is not executed, and where (if anywhere) to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The status byte's address, if the chain has a usable one.
    pub status: Option<GuestAddress>,
    /// VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP.
    pub code: u8,
    /// What was wrong, for the log.
    pub reason: &'static str,
}

/// What the parser needs to know about the vdisk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Most segments in one discard or write-zeroes request.
    pub max_ranges: u32,
    /// Most sectors in one discard or write-zeroes segment.
    pub max_range_sectors: u32,
    /// Most descriptors in one chain: the queue size.
    pub max_descriptors: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RangeWire {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}

// SAFETY: plain old data of integers with no padding (8 + 4 + 4 bytes).
unsafe impl ByteValued for RangeWire {}

/// Parses one chain into `req`.
///
/// `descs` is the chain as yielded by the queue (which already bounds its
/// length and follows indirect tables); `scratch` is reused storage.
pub fn parse<M: GuestMemory>(
    descs: impl Iterator<Item = Descriptor>,
    mem: &M,
    limits: &Limits,
    scratch: &mut Vec<Descriptor>,
    req: &mut Request,
) -> Result<(), Rejection> {
    scratch.clear();
    scratch.extend(descs);
    req.data.clear();
    req.ranges.clear();
    req.data_len = 0;

    let first_writable = scratch
        .iter()
        .position(|d| d.device_writable)
        .unwrap_or(scratch.len());
    let (readable, writable) = scratch.split_at(first_writable);

    // A walk cut short (loop, over-long chain) is not a request at all, and
    // its "last" descriptor is arbitrary: never write into it.
    if scratch.last().is_some_and(|d| d.has_next) {
        return Err(Rejection {
            status: None,
            code: VIRTIO_BLK_S_IOERR as u8,
            reason: "descriptor chain loops or is longer than the queue",
        });
    }

    // Status: the last byte of the chain, which must be device-writable.
    let status = last_byte(scratch).filter(|a| mem.check_range(*a, 1, Permissions::Write));
    let reject = |code: u32, reason| Rejection {
        status,
        code: code as u8,
        reason,
    };
    let status = status.ok_or(reject(VIRTIO_BLK_S_IOERR, "no writable status byte"))?;
    req.status = status;
    if scratch.len() > limits.max_descriptors {
        // An indirect table may be longer than the queue; the spec forbids it.
        return Err(reject(
            VIRTIO_BLK_S_IOERR,
            "descriptor chain longer than the queue",
        ));
    }
    if writable.iter().any(|d| !d.device_writable) {
        return Err(reject(
            VIRTIO_BLK_S_IOERR,
            "device-readable descriptor after a writable one",
        ));
    }
    if scratch
        .iter()
        .any(|d| !mem.check_range(GuestAddress(d.addr), d.len as usize, access(d)))
    {
        return Err(reject(
            VIRTIO_BLK_S_IOERR,
            "descriptor outside guest memory",
        ));
    }

    let mut header = [0u8; HEADER_LEN as usize];
    let read_len = gather(readable, 0, &mut header, mem);
    if read_len < header.len() {
        return Err(reject(VIRTIO_BLK_S_IOERR, "request header too short"));
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);

    let out_len = total_len(readable).saturating_sub(u64::from(HEADER_LEN));
    let in_len = total_len(writable).saturating_sub(1);

    req.kind = match kind {
        VIRTIO_BLK_T_IN => RequestKind::Read,
        VIRTIO_BLK_T_OUT => RequestKind::Write,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        VIRTIO_BLK_T_DISCARD => RequestKind::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => RequestKind::WriteZeroes,
        _ => return Err(reject(VIRTIO_BLK_S_UNSUPP, "unknown request type")),
    };
    let writes = matches!(
        req.kind,
        RequestKind::Write | RequestKind::Discard | RequestKind::WriteZeroes
    );
    if writes && limits.read_only {
        return Err(reject(VIRTIO_BLK_S_IOERR, "write to a read-only vdisk"));
    }

    match req.kind {
        RequestKind::Read | RequestKind::Write => {
            let (data_descs, skip, len, stray) = if req.kind == RequestKind::Read {
                (writable, 0, in_len, out_len)
            } else {
                (readable, HEADER_LEN, out_len, in_len)
            };
            if stray != 0 {
                return Err(reject(
                    VIRTIO_BLK_S_IOERR,
                    "data buffer in the wrong direction",
                ));
            }
            if len % SECTOR_SIZE != 0 {
                return Err(reject(
                    VIRTIO_BLK_S_IOERR,
                    "data length not a multiple of 512",
                ));
            }
            let len =
                u32::try_from(len).map_err(|_| reject(VIRTIO_BLK_S_IOERR, "data too long"))?;
            let offset = sector
                .checked_mul(SECTOR_SIZE)
                .filter(|o| {
                    o.checked_add(u64::from(len))
                        .is_some_and(|end| end <= limits.capacity)
                })
                .ok_or(reject(
                    VIRTIO_BLK_S_IOERR,
                    "sectors past the end of the vdisk",
                ))?;
            req.offset = offset;
            req.data_len = len;
            collect_data(data_descs, skip, len, &mut req.data);
        }
        RequestKind::Flush => {}
        RequestKind::GetId => {
            let len = u32::try_from(in_len).unwrap_or(u32::MAX);
            req.data_len = len;
            collect_data(writable, 0, len, &mut req.data);
        }
        RequestKind::Discard | RequestKind::WriteZeroes => {
            if in_len != 0 {
                return Err(reject(
                    VIRTIO_BLK_S_IOERR,
                    "data buffer in the wrong direction",
                ));
            }
            if out_len == 0 || out_len % u64::from(RANGE_LEN) != 0 {
                return Err(reject(
                    VIRTIO_BLK_S_IOERR,
                    "discard/write-zeroes data not whole 16-byte segments",
                ));
            }
            let count = out_len / u64::from(RANGE_LEN);
            if count > u64::from(limits.max_ranges) {
                return Err(reject(
                    VIRTIO_BLK_S_IOERR,
                    "too many discard/write-zeroes segments",
                ));
            }
            for i in 0..count {
                let mut wire = RangeWire::default();
                let at = u64::from(HEADER_LEN) + i * u64::from(RANGE_LEN);
                gather(readable, at, wire.as_mut_slice(), mem);
                let flags = u32::from_le(wire.flags);
                let allowed = if req.kind == RequestKind::WriteZeroes {
                    WRITE_ZEROES_UNMAP
                } else {
                    0
                };
                if flags & !allowed != 0 {
                    return Err(reject(
                        VIRTIO_BLK_S_UNSUPP,
                        "unsupported discard/write-zeroes flags",
                    ));
                }
                let num_sectors = u32::from_le(wire.num_sectors);
                if num_sectors > limits.max_range_sectors {
                    return Err(reject(
                        VIRTIO_BLK_S_IOERR,
                        "discard/write-zeroes segment too long",
                    ));
                }
                let len = u64::from(num_sectors) * SECTOR_SIZE;
                let offset = u64::from_le(wire.sector)
                    .checked_mul(SECTOR_SIZE)
                    .filter(|o| o.checked_add(len).is_some_and(|end| end <= limits.capacity))
                    .ok_or(reject(
                        VIRTIO_BLK_S_IOERR,
                        "sectors past the end of the vdisk",
                    ))?;
                req.ranges.push(ByteRange {
                    offset,
                    len,
                    unmap: flags & WRITE_ZEROES_UNMAP != 0,
                });
            }
        }
    }
    Ok(())
}

/// The access the device needs to a descriptor's memory.
fn access(d: &Descriptor) -> Permissions {
    if d.device_writable {
        Permissions::Write
    } else {
        Permissions::Read
    }
}

/// Total length of descriptors, in u64 so no sum can overflow.
fn total_len(descs: &[Descriptor]) -> u64 {
    descs.iter().map(|d| u64::from(d.len)).sum()
}

/// Address of the chain's last byte, if the last non-empty descriptor is
/// device-writable.
fn last_byte(descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.iter().rev().find(|d| d.len > 0)?;
    if !last.device_writable {
        return None;
    }
    last.addr
        .checked_add(u64::from(last.len) - 1)
        .map(GuestAddress)
}

/// Copies bytes starting `skip` bytes into `descs` into `out`; returns how many.
fn gather<M: GuestMemory>(descs: &[Descriptor], skip: u64, out: &mut [u8], mem: &M) -> usize {
    let mut skip = skip;
    let mut filled = 0;
    for d in descs {
        if filled == out.len() {
            break;
        }
        let len = u64::from(d.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = ((len - skip) as usize).min(out.len() - filled);
        // Ranges were checked against guest memory before this is called.
        if mem
            .read_slice(&mut out[filled..filled + take], GuestAddress(d.addr + skip))
            .is_err()
        {
            break;
        }
        filled += take;
        skip = 0;
    }
    filled
}

/// Appends the `len` bytes that start `skip` bytes into `descs` as guest ranges.
fn collect_data(descs: &[Descriptor], skip: u32, len: u32, out: &mut Vec<(GuestAddress, u32)>) {
    let mut skip = skip;
    let mut left = len;
    for d in descs {
        if left == 0 {
            break;
        }
        if skip >= d.len {
            skip -= d.len;
            continue;
        }
        let take = (d.len - skip).min(left);
        if take > 0 {
            out.push((GuestAddress(d.addr + u64::from(skip)), take));
        }
        left -= take;
        skip = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("guest memory")
    }

    fn limits() -> Limits {
        Limits {
            capacity: 1 << 20,
            read_only: false,
            max_ranges: 4,
            max_range_sectors: 1 << 16,
            max_descriptors: 16,
        }
    }

    fn header(mem: &GuestMemoryMmap<()>, at: u64, kind: u32, sector: u64) -> Descriptor {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).expect("write header");
        Descriptor {
            addr: at,
            len: 16,
            device_writable: false,
            has_next: true,
        }
    }

    fn d(addr: u64, len: u32, device_writable: bool) -> Descriptor {
        Descriptor {
            addr,
            len,
            device_writable,
            has_next: true,
        }
    }

    fn run(
        mem: &GuestMemoryMmap<()>,
        chain: &[Descriptor],
        limits: &Limits,
    ) -> Result<Request, Rejection> {
        let mut req = Request::default();
        let mut scratch = Vec::new();
        // Well-formed chains end in a descriptor without NEXT.
        let mut chain = chain.to_vec();
        if let Some(last) = chain.last_mut() {
            last.has_next = false;
        }
        parse(chain.into_iter(), mem, limits, &mut scratch, &mut req).map(|()| req)
    }

    #[test]
    fn well_formed_read_and_write() {
        let m = mem();
        let r = run(
            &m,
            &[
                header(&m, 0, VIRTIO_BLK_T_IN, 8),
                d(4096, 4096, true),
                d(100, 1, true),
            ],
            &limits(),
        )
        .expect("read");
        assert_eq!(
            (r.kind, r.offset, r.data_len),
            (RequestKind::Read, 4096, 4096)
        );
        assert_eq!(r.data, vec![(GuestAddress(4096), 4096)]);
        assert_eq!(r.status, GuestAddress(100));

        let w = run(
            &m,
            &[
                header(&m, 0, VIRTIO_BLK_T_OUT, 1),
                d(4096, 512, false),
                d(8192, 1024, false),
                d(100, 1, true),
            ],
            &limits(),
        )
        .expect("write");
        assert_eq!(
            (w.kind, w.offset, w.data_len),
            (RequestKind::Write, 512, 1536)
        );
        assert_eq!(
            w.data,
            vec![(GuestAddress(4096), 512), (GuestAddress(8192), 1024)]
        );
    }

    #[test]
    fn any_layout_header_data_status_in_shared_descriptors() {
        let m = mem();
        // Header and write data in one descriptor; status in its own.
        let mut buf = [0u8; 16 + 512];
        buf[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        buf[8..16].copy_from_slice(&3u64.to_le_bytes());
        m.write_slice(&buf, GuestAddress(0)).expect("write");
        let w = run(&m, &[d(0, 528, false), d(1000, 1, true)], &limits()).expect("write");
        assert_eq!(w.data, vec![(GuestAddress(16), 512)]);
        assert_eq!(w.offset, 3 * 512);
        // Read data and status in one writable descriptor.
        let r = run(
            &m,
            &[header(&m, 0, VIRTIO_BLK_T_IN, 0), d(4096, 513, true)],
            &limits(),
        )
        .expect("read");
        assert_eq!(r.data, vec![(GuestAddress(4096), 512)]);
        assert_eq!(r.status, GuestAddress(4096 + 512));
    }

    fn rejected(chain: &[Descriptor], m: &GuestMemoryMmap<()>, limits: &Limits) -> Rejection {
        run(m, chain, limits).expect_err("must be rejected")
    }

    #[test]
    fn malformed_chains_get_the_right_status() {
        let m = mem();
        let l = limits();
        // Each case gets its own header address, since all are built first.
        let next = std::cell::Cell::new(0x2000u64);
        let header = |m: &GuestMemoryMmap<()>, _: u64, kind: u32, sector: u64| {
            next.set(next.get() + 32);
            header(m, next.get(), kind, sector)
        };
        let st = d(100, 1, true);
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        let cases: Vec<(Vec<Descriptor>, u8, &str)> = vec![
            (vec![d(0, 8, false), st], ioerr, "header too short"),
            (
                vec![d(0, 16, true), d(200, 1, true)],
                ioerr,
                "header too short",
            ),
            (
                vec![header(&m, 0, VIRTIO_BLK_T_IN, 0), d(4096, 512, false), st],
                ioerr,
                "wrong direction",
            ),
            (
                vec![header(&m, 0, VIRTIO_BLK_T_OUT, 0), d(4096, 512, true), st],
                ioerr,
                "wrong direction",
            ),
            (
                vec![header(&m, 0, VIRTIO_BLK_T_IN, 0), d(4096, 100, true), st],
                ioerr,
                "multiple of 512",
            ),
            (
                vec![header(&m, 0, VIRTIO_BLK_T_IN, 2048), d(4096, 512, true), st],
                ioerr,
                "past the end",
            ),
            (
                vec![
                    header(&m, 0, VIRTIO_BLK_T_IN, 2047),
                    d(4096, 1024, true),
                    st,
                ],
                ioerr,
                "past the end",
            ),
            (
                vec![
                    header(&m, 0, VIRTIO_BLK_T_IN, u64::MAX),
                    d(4096, 512, true),
                    st,
                ],
                ioerr,
                "past the end",
            ),
            (
                vec![
                    header(&m, 0, VIRTIO_BLK_T_IN, 0),
                    d(MEM - 10, 512, true),
                    st,
                ],
                ioerr,
                "outside guest memory",
            ),
            (
                vec![
                    header(&m, 0, VIRTIO_BLK_T_IN, 0),
                    d(u64::MAX - 5, u32::MAX, true),
                    st,
                ],
                ioerr,
                "outside guest memory",
            ),
            (
                vec![header(&m, 0, 99, 0), st],
                VIRTIO_BLK_S_UNSUPP as u8,
                "unknown request type",
            ),
            (
                [vec![d(0, 1, false); 16], vec![st]].concat(),
                ioerr,
                "longer than the queue",
            ),
            (
                vec![
                    header(&m, 0, VIRTIO_BLK_T_IN, 0),
                    st,
                    d(4096, 512, false),
                    st,
                ],
                ioerr,
                "after a writable",
            ),
        ];
        for (chain, code, reason) in cases {
            let r = rejected(&chain, &m, &l);
            assert_eq!(r.code, code, "{reason}: {r:?}");
            assert!(r.reason.contains(reason), "{reason}: {r:?}");
            assert!(r.status.is_some(), "{reason}: status must be usable");
        }
    }

    #[test]
    fn missing_or_unusable_status() {
        let m = mem();
        for chain in [
            vec![header(&m, 0, VIRTIO_BLK_T_IN, 0)],
            vec![header(&m, 0, VIRTIO_BLK_T_IN, 0), d(100, 0, true)],
            vec![header(&m, 0, VIRTIO_BLK_T_IN, 0), d(MEM + 5, 1, true)],
            vec![
                header(&m, 0, VIRTIO_BLK_T_IN, 0),
                d(100, 1, true),
                d(4096, 512, false),
            ],
            vec![],
        ] {
            let r = rejected(&chain, &m, &limits());
            assert_eq!(r.status, None, "{chain:?}");
        }
    }

    #[test]
    fn cut_short_walks_are_never_answered() {
        let m = mem();
        let mut scratch = Vec::new();
        let mut req = Request::default();
        // A loop: the walk ends on a descriptor that still names a next one.
        let chain = [
            header(&m, 0, VIRTIO_BLK_T_IN, 0),
            d(4096, 512, true),
            d(100, 1, true),
        ];
        let r = parse(chain.into_iter(), &m, &limits(), &mut scratch, &mut req).expect_err("loop");
        assert_eq!(r.status, None);
        assert!(r.reason.contains("loops"), "{r:?}");
    }

    #[test]
    fn read_only_refuses_writes_but_reads() {
        let m = mem();
        let l = Limits {
            read_only: true,
            ..limits()
        };
        for kind in [
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_T_WRITE_ZEROES,
        ] {
            let r = rejected(
                &[header(&m, 0, kind, 0), d(4096, 512, false), d(100, 1, true)],
                &m,
                &l,
            );
            assert_eq!(r.code, VIRTIO_BLK_S_IOERR as u8);
        }
        run(
            &m,
            &[
                header(&m, 0, VIRTIO_BLK_T_IN, 0),
                d(4096, 512, true),
                d(100, 1, true),
            ],
            &l,
        )
        .expect("read");
        run(
            &m,
            &[header(&m, 0, VIRTIO_BLK_T_FLUSH, 0), d(100, 1, true)],
            &l,
        )
        .expect("flush");
    }

    fn ranges(m: &GuestMemoryMmap<()>, at: u64, segs: &[(u64, u32, u32)]) -> Descriptor {
        for (i, (sector, n, flags)) in segs.iter().enumerate() {
            let w = RangeWire {
                sector: sector.to_le(),
                num_sectors: n.to_le(),
                flags: flags.to_le(),
            };
            m.write_obj(w, GuestAddress(at + 16 * i as u64))
                .expect("write seg");
        }
        d(at, 16 * segs.len() as u32, false)
    }

    #[test]
    fn discard_and_write_zeroes_segments() {
        let m = mem();
        let st = d(100, 1, true);
        let r = run(
            &m,
            &[
                header(&m, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0),
                ranges(&m, 4096, &[(0, 8, 1), (100, 16, 0)]),
                st,
            ],
            &limits(),
        )
        .expect("write zeroes");
        assert_eq!(
            r.ranges,
            vec![
                ByteRange {
                    offset: 0,
                    len: 4096,
                    unmap: true
                },
                ByteRange {
                    offset: 51200,
                    len: 8192,
                    unmap: false
                }
            ]
        );
        type Segments = Vec<(u64, u32, u32)>;
        let bad: Vec<(u32, Segments, u32)> = vec![
            (VIRTIO_BLK_T_DISCARD, vec![(0, 8, 1)], VIRTIO_BLK_S_UNSUPP),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                vec![(0, 8, 2)],
                VIRTIO_BLK_S_UNSUPP,
            ),
            (VIRTIO_BLK_T_DISCARD, vec![(2047, 2, 0)], VIRTIO_BLK_S_IOERR),
            (
                VIRTIO_BLK_T_DISCARD,
                vec![(u64::MAX / 2, 2, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                VIRTIO_BLK_T_DISCARD,
                vec![(0, 1 << 17, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0); 5], VIRTIO_BLK_S_IOERR),
        ];
        for (kind, segs, code) in bad {
            let r = rejected(
                &[header(&m, 0, kind, 0), ranges(&m, 4096, &segs), st],
                &m,
                &limits(),
            );
            assert_eq!(u32::from(r.code), code, "{kind} {segs:?}");
        }
        let r = rejected(
            &[
                header(&m, 0, VIRTIO_BLK_T_DISCARD, 0),
                d(4096, 10, false),
                st,
            ],
            &m,
            &limits(),
        );
        assert!(r.reason.contains("16-byte"), "{r:?}");
    }

    fn arb_desc() -> impl Strategy<Value = Descriptor> {
        (
            prop_oneof![0..MEM + 4096, any::<u64>()],
            prop_oneof![0u32..8192, any::<u32>()],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(addr, len, device_writable, has_next)| Descriptor {
                addr,
                len,
                device_writable,
                has_next,
            })
    }

    proptest! {
        /// Arbitrary chains over arbitrary guest bytes never panic, and what
        /// they yield stays inside guest memory and the vdisk.
        #[test]
        fn arbitrary_chains_are_safe(
            chain in proptest::collection::vec(arb_desc(), 0..8),
            bytes in proptest::collection::vec(any::<u8>(), 64),
            read_only in any::<bool>(),
        ) {
            let m = mem();
            m.write_slice(&bytes, GuestAddress(0)).expect("seed memory");
            m.write_slice(&bytes, GuestAddress(4096)).expect("seed memory");
            let l = Limits { read_only, ..limits() };
            match run(&m, &chain, &l) {
                Ok(r) => {
                    prop_assert!(m.check_range(r.status, 1, Permissions::Write));
                    let sum: u64 = r.data.iter().map(|(_, n)| u64::from(*n)).sum();
                    prop_assert!(sum <= u64::from(r.data_len));
                    for (a, n) in &r.data {
                        prop_assert!(m.check_range(*a, *n as usize, Permissions::Read));
                    }
                    if matches!(r.kind, RequestKind::Read | RequestKind::Write) {
                        prop_assert_eq!(sum, u64::from(r.data_len));
                        prop_assert!(r.offset + u64::from(r.data_len) <= l.capacity);
                        prop_assert!(!(read_only && r.kind == RequestKind::Write));
                    }
                    for g in &r.ranges {
                        prop_assert!(g.offset + g.len <= l.capacity);
                    }
                }
                Err(rej) => {
                    if let Some(s) = rej.status {
                        prop_assert!(m.check_range(s, 1, Permissions::Write));
                    }
                }
            }
        }
    }
}
