//! What one entry is charged against `Config::max_memory`. The formula is documented on
//! [`Store::entry_charge`](crate::Store::entry_charge); `benches/store.rs` measures it against a counting
//! allocator at one million entries.

use crate::arena::{self, LARGE_ENTRY_BYTES, SMALL_MAX};
use crate::block;

/// The hash-index slot: hashbrown spends one `u32` plus one control byte per bucket, 5 bytes,
/// and keeps at least 7/16 of its buckets full as it grows (it doubles at 7/8), so one entry's
/// share is at most 5 × 16/7 = 11.4 bytes, rounded up. After mass removal the share can reach
/// about twice that until the table shrinks (see `Index::shrink_if_sparse`).
pub(crate) const INDEX_BYTES: u64 = 12;

/// glibc malloc's mmap threshold (`M_MMAP_THRESHOLD` default, 128 KiB).
const MMAP_THRESHOLD: u64 = 128 << 10;

/// Bytes glibc malloc really takes for a request of `n` bytes: an 8-byte header, rounded up to
/// 16, at least 32; at and above the mmap threshold, the chunk plus 8 rounded up to a 4 KiB
/// page. (glibc may raise the threshold at run time and serve large blocks from the heap,
/// which costs less than this, so this stays an upper bound.)
pub(crate) fn heap_block(n: usize) -> u64 {
    let chunk = ((n as u64 + 8 + 15) & !15).max(32);
    if chunk >= MMAP_THRESHOLD {
        (chunk + 8).div_ceil(4096) * 4096
    } else {
        chunk
    }
}

/// What the arena spends on a block of `block_len` bytes: its size-class slot, or for a large
/// block its own allocation as glibc malloc takes it plus its slot in the large-block table.
pub(crate) fn arena_block(block_len: usize) -> u64 {
    if block_len <= SMALL_MAX {
        arena::slot_len(block_len) as u64
    } else {
        heap_block(block_len) + LARGE_ENTRY_BYTES
    }
}

/// Charge of an entry whose block is `block_len` bytes.
pub(crate) fn for_block(block_len: usize) -> u64 {
    INDEX_BYTES + arena_block(block_len)
}

/// Charge of an entry with these lengths.
pub(crate) fn for_entry(key_len: usize, value_len: usize, has_deadline: bool) -> u64 {
    for_block(block::block_len(key_len, value_len, has_deadline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_block_follows_glibc_chunk_sizes() {
        // (requested, glibc chunk)
        let table = [
            (1, 32),
            (24, 32),
            (25, 48),
            (120, 128),
            (121, 144),
            (127, 144),
            (131_040, 131_056), // just below the mmap threshold: a heap chunk
            (131_064, 135_168), // chunk 131 072 + 8 → 33 pages
            (16 << 20, (16 << 20) + 4096),
        ];
        for (n, chunk) in table {
            assert_eq!(heap_block(n), chunk, "{n}");
        }
    }

    #[test]
    fn a_typical_entry() {
        // 12-byte key, 100-byte value, no deadline: block = 20 + 1 + 1 + 112 = 134 bytes,
        // in the 136-byte class; a 14-byte key (kvmesh-bench's) fills it exactly.
        assert_eq!(block::block_len(12, 100, false), 134);
        assert_eq!(for_entry(12, 100, false), 12 + 136);
        assert_eq!(for_entry(14, 100, false), 12 + 136);
        // With a deadline: 150 bytes → the 152-byte class.
        assert_eq!(for_entry(12, 100, true), 12 + 152);
    }

    #[test]
    fn arena_block_follows_the_size_classes_then_malloc() {
        // (block length, bytes spent)
        let table = [
            (23, 24),
            (24, 24),
            (25, 32),
            (135, 136),
            (1_024, 1_024),
            (1_025, 1_040 + LARGE_ENTRY_BYTES),
            (200_000, 200_704 + LARGE_ENTRY_BYTES),
        ];
        for (len, spent) in table {
            assert_eq!(arena_block(len), spent, "{len}");
        }
    }
}
