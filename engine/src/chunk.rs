//! Memory straight from the kernel for the arena's class pages: 2 MiB chunks, each aligned to
//! 2 MiB and marked for transparent huge pages.
//!
//! Why: a lookup touches a block at a random place in the arena (and the LRU touches two more),
//! so with 4 KiB pages nearly every lookup misses the TLB, and in a VM each miss is a
//! two-dimensional page walk. A 2 MiB page covers 15,000 blocks of 136 bytes: 100,000 entries
//! need 7 TLB entries instead of 3,400. `madvise(MADV_HUGEPAGE)` asks for huge pages where the
//! kernel's mode is `madvise` (the default of many distributions) as well as `always`; with
//! `never`, or none free, the chunk is backed by small pages and works the same.
//!
//! The mapping is taken with `mmap`, not from the global allocator: an aligned allocation that
//! size would be zeroed with a `memset` (Rust's `alloc_zeroed` for large alignments), touching
//! every small page before the hint could take effect. A fresh mapping reads as zeros and is
//! backed only where it is written, so a chunk costs resident memory page by page (or 2 MiB at
//! once when the kernel gives it a huge page at the first write).
//!
//! This is the engine's only `unsafe` code: the mapping's lifetime is the `Chunk`'s, and its
//! bytes are reached only through `bytes` and `bytes_mut`, which borrow the chunk.
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// Bytes in a chunk, and its alignment: one x86-64 huge page.
pub(crate) const CHUNK: usize = 2 << 20;

/// `CHUNK` bytes of private anonymous memory, aligned to `CHUNK`, owned like a `Box<[u8]>`.
pub(crate) struct Chunk {
    base: NonNull<u8>,
}

// SAFETY: a `Chunk` owns its mapping exclusively, as a `Box<[u8]>` owns its allocation; shared
// access only reads, through `&self`.
unsafe impl Send for Chunk {}
// SAFETY: as above: `&Chunk` gives out only `&[u8]`.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// A new chunk of zeros. Out of address space or memory, it aborts as a failed allocation
    /// of the global allocator does.
    pub(crate) fn new() -> Chunk {
        // Map twice the size, keep the aligned CHUNK inside and unmap the rest: `mmap` aligns
        // only to 4 KiB.
        let len = 2 * CHUNK;
        // SAFETY: a new private anonymous mapping; it aliases nothing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(layout());
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(CHUNK);
        let (head, tail) = (aligned - start, start + len - (aligned + CHUNK));
        // SAFETY: both ranges lie inside the mapping just made and outside the kept chunk; an
        // empty range is skipped. A failed unmap would only leave address space mapped.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + CHUNK) as *mut libc::c_void, tail);
            }
            // A hint: an error (a kernel without THP) leaves small pages, which work the same.
            libc::madvise(aligned as *mut libc::c_void, CHUNK, libc::MADV_HUGEPAGE);
        }
        Chunk {
            base: NonNull::new(aligned as *mut u8).expect("mmap never maps address 0 here"),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `base` is CHUNK mapped bytes, alive as long as `self`, written only through
        // `bytes_mut`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), CHUNK) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), CHUNK) }
    }

    /// Gives the memory of `bytes[offset..offset + len]` back to the kernel (both multiples of
    /// 4 KiB): it reads as zeros from now on, and is backed again where it is next written.
    pub(crate) fn discard(&mut self, offset: usize, len: usize) {
        let range = &mut self.bytes_mut()[offset..offset + len];
        // SAFETY: the range lies inside this chunk's private anonymous mapping, borrowed
        // mutably above, so nothing reads it while the kernel drops its pages.
        let dropped =
            unsafe { libc::madvise(range.as_mut_ptr().cast(), range.len(), libc::MADV_DONTNEED) };
        if dropped != 0 {
            // Never expected for a mapping of our own; the range must read as zeros anyway.
            range.fill(0);
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: the chunk's own mapping, not used after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), CHUNK) };
    }
}

fn layout() -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(CHUNK, CHUNK).expect("a power of two, below isize::MAX")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_aligned_zeroed_and_zero_again_where_discarded() {
        let mut chunk = Chunk::new();
        assert_eq!(chunk.bytes().as_ptr() as usize % CHUNK, 0);
        assert!(chunk.bytes().iter().all(|&b| b == 0));
        chunk.bytes_mut().fill(7);
        chunk.discard(64 << 10, 64 << 10);
        let bytes = chunk.bytes();
        assert!(bytes[..64 << 10].iter().all(|&b| b == 7));
        assert!(bytes[64 << 10..128 << 10].iter().all(|&b| b == 0));
        assert!(bytes[128 << 10..].iter().all(|&b| b == 7));
    }
}
