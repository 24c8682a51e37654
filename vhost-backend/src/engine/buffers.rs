//! Buffer handling shared by the queue implementations: O_DIRECT alignment,
//! bounce buffers for guests whose buffers are not aligned, and the
//! fallocate modes behind discard and write-zeroes.

use std::io;

use super::{BlockOp, IoBuf};

/// Whether every buffer (address and length) and `offset` meet `align`.
pub fn aligned(offset: u64, bufs: &[IoBuf], align: usize) -> bool {
    offset.is_multiple_of(align as u64)
        && bufs
            .iter()
            .all(|b| (b.ptr as usize).is_multiple_of(align) && b.len.is_multiple_of(align))
}

/// Total bytes in `bufs`.
pub fn total_len(bufs: &[IoBuf]) -> usize {
    bufs.iter().map(|b| b.len).sum()
}

/// A heap buffer whose start is aligned for O_DIRECT.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align`.
    pub fn new(len: usize, align: usize) -> Self {
        let storage = vec![0u8; len + align];
        let start = storage.as_ptr().align_offset(align.max(1));
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The buffer's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Copies `bufs` into this buffer, in order.
    ///
    /// # Safety
    ///
    /// Every buffer must be valid for reads of its length.
    pub unsafe fn gather_from(&mut self, bufs: &[IoBuf]) {
        let mut at = 0;
        let dst = self.as_mut_slice();
        for b in bufs {
            // SAFETY: the caller guarantees `b` is readable for `b.len` bytes,
            // and `dst` is our own storage, so the two cannot overlap.
            let src = unsafe { std::slice::from_raw_parts(b.ptr, b.len) };
            dst[at..at + b.len].copy_from_slice(src);
            at += b.len;
        }
    }

    /// Copies this buffer out to `bufs`, in order.
    ///
    /// # Safety
    ///
    /// Every buffer must be valid for writes of its length.
    pub unsafe fn scatter_to(&mut self, bufs: &[IoBuf]) {
        let mut at = 0;
        let src = self.as_mut_slice();
        for b in bufs {
            // SAFETY: the caller guarantees `b` is writable for `b.len` bytes
            // and nobody else uses it now; `src` is our own storage.
            let dst = unsafe { std::slice::from_raw_parts_mut(b.ptr, b.len) };
            dst.copy_from_slice(&src[at..at + b.len]);
            at += b.len;
        }
    }
}

/// How an operation that changes allocation maps to fallocate(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallocate {
    /// Deallocate; reads return zeros.
    PunchHole,
    /// Zero in place, keeping the allocation.
    ZeroRange,
}

impl Fallocate {
    /// The fallocate mode for `op`, if it is a discard or write-zeroes, with
    /// its offset and length.
    pub fn for_op(op: &BlockOp<'_>) -> Option<(Fallocate, u64, u64)> {
        match *op {
            BlockOp::Discard { offset, len } => Some((Fallocate::PunchHole, offset, len)),
            BlockOp::WriteZeroes { offset, len, unmap } => Some((
                if unmap {
                    Fallocate::PunchHole
                } else {
                    Fallocate::ZeroRange
                },
                offset,
                len,
            )),
            _ => None,
        }
    }

    /// The mode bits for fallocate(2).
    pub fn mode_bits(self) -> i32 {
        match self {
            Fallocate::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Fallocate::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }

    /// What to do when the file system refuses this mode with EOPNOTSUPP:
    /// zeroing in place falls back to punching (reads are zeros either way);
    /// a discard is advisory, so refusing it is success; `None` otherwise.
    pub fn on_unsupported(self, is_discard: bool) -> Option<Fallback> {
        match self {
            Fallocate::ZeroRange => Some(Fallback::Retry(Fallocate::PunchHole)),
            Fallocate::PunchHole if is_discard => Some(Fallback::Succeed),
            Fallocate::PunchHole => None,
        }
    }
}

/// The answer of [`Fallocate::on_unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Try again with another mode.
    Retry(Fallocate),
    /// Report success.
    Succeed,
}

/// Whether an error means the file system lacks the fallocate mode.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_round_trip_and_alignment() {
        let mut a = vec![1u8; 100];
        let mut b = vec![2u8; 28];
        let bufs = [
            IoBuf {
                ptr: a.as_mut_ptr(),
                len: a.len(),
            },
            IoBuf {
                ptr: b.as_mut_ptr(),
                len: b.len(),
            },
        ];
        assert_eq!(total_len(&bufs), 128);
        let mut bounce = AlignedBuf::new(128, 512);
        assert_eq!(bounce.as_mut_slice().as_ptr() as usize % 512, 0);
        // SAFETY: both buffers are live local vectors.
        unsafe { bounce.gather_from(&bufs) };
        assert_eq!(&bounce.as_mut_slice()[98..102], &[1, 1, 2, 2]);
        bounce.as_mut_slice().fill(9);
        // SAFETY: as above, and nothing else touches them.
        unsafe { bounce.scatter_to(&bufs) };
        assert!(a.iter().chain(b.iter()).all(|&x| x == 9));
        assert!(!aligned(0, &bufs, 512));
        assert!(aligned(0, &bufs, 1));
    }

    #[test]
    fn fallocate_fallbacks() {
        assert_eq!(
            Fallocate::ZeroRange.on_unsupported(false),
            Some(Fallback::Retry(Fallocate::PunchHole))
        );
        assert_eq!(
            Fallocate::PunchHole.on_unsupported(true),
            Some(Fallback::Succeed)
        );
        assert_eq!(Fallocate::PunchHole.on_unsupported(false), None);
    }
}
