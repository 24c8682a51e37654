//! The virtio-blk device as the guest sees it: feature bits and the
//! configuration space (`struct virtio_blk_config`), encoded by hand in
//! little-endian so no unsafe byte casting is needed.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Most data segments in one request (VIRTIO_BLK_F_SEG_MAX). With the header
/// and status a request then fits QEMU's default queue of 128 entries.
///
/// VIRTIO_BLK_F_SIZE_MAX is deliberately not offered: the engines have no
/// segment size limit, and SeaBIOS computes its per-request block count as
/// `(u16)(size_max * seg_max / block_size)`, which wraps to 0 for large
/// values and makes it loop forever on zero-length reads.
pub const SEG_MAX: u32 = 126;
/// Most segments in one discard or write-zeroes request.
pub const MAX_RANGES: u32 = 32;
/// Most sectors in one discard or write-zeroes segment (1 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;
/// Byte offset of the `wce` field: the only field a driver may write.
pub const WCE_OFFSET: u32 = 32;
/// Size of the configuration space we expose.
pub const CONFIG_LEN: usize = 60;

/// The device's shape, from which features and config space follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceShape {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Writes refused.
    pub read_only: bool,
}

impl DeviceShape {
    /// The virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let mut bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_MQ,
        ]
        .iter()
        .fold(0u64, |acc, b| acc | 1 << b);
        if self.read_only {
            bits |= 1 << VIRTIO_BLK_F_RO;
        } else {
            bits |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        bits
    }

    /// The configuration space with write cache `wce` (1 = writeback).
    pub fn config_space(&self, wce: bool) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let sectors_per_block = self.block_size / 512;
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.capacity / 512).to_le_bytes());
        // 8..12 size_max: not offered, left zero.
        put(12, &SEG_MAX.to_le_bytes());
        // 16..20 geometry: left zero, the guest computes its own.
        put(20, &self.block_size.to_le_bytes());
        put(24, &[0, 0]); // physical_block_exp, alignment_offset
        put(26, &1u16.to_le_bytes()); // min_io_size, in logical blocks
        put(28, &0u32.to_le_bytes()); // opt_io_size: no preference
        put(32, &[u8::from(wce), 0]);
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_RANGES.to_le_bytes()); // max_discard_seg
        put(44, &sectors_per_block.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1, 0, 0, 0]); // write_zeroes_may_unmap
        c
    }
}

/// Reads `size` bytes at `offset` of a config space; bytes past its end read as zero.
pub fn config_window(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let start = (offset as usize).min(space.len());
    let end = (offset as usize)
        .saturating_add(size as usize)
        .min(space.len());
    out[..end - start].copy_from_slice(&space[start..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> DeviceShape {
        DeviceShape {
            capacity: 1 << 30,
            block_size: 4096,
            num_queues: 4,
            read_only: false,
        }
    }

    #[test]
    fn config_space_layout() {
        let c = shape().config_space(true);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            2 * 1024 * 1024
        );
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        assert_eq!(shape().config_space(false)[32], 0);
    }

    #[test]
    fn features_follow_read_only() {
        let rw = shape().features();
        let ro = DeviceShape {
            read_only: true,
            ..shape()
        }
        .features();
        assert_eq!(rw & 1 << VIRTIO_BLK_F_RO, 0);
        assert_ne!(rw & 1 << VIRTIO_BLK_F_DISCARD, 0);
        assert_ne!(ro & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(ro & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
    }

    #[test]
    fn config_window_clamps() {
        let c = shape().config_space(true);
        assert_eq!(config_window(&c, 0, 8), c[0..8].to_vec());
        assert_eq!(config_window(&c, 56, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(config_window(&c, u32::MAX, 4), vec![0; 4]);
    }
}
