//! Address space for the arena's class pages, reserved from the kernel at once and made usable
//! 2 MiB at a time, each such chunk aligned to 2 MiB and marked for transparent huge pages.
//!
//! Why: a lookup touches a block at a random place in the arena (and the LRU touches two more),
//! so with 4 KiB pages nearly every lookup misses the TLB, and in a VM each miss is a
//! two-dimensional page walk. A 2 MiB page covers about 15,000 blocks of 136 bytes: the
//! blocks of 100,000 entries need 7 TLB entries instead of about 3,300 (the hash index stays
//! on the global allocator). `madvise(MADV_HUGEPAGE)` asks for huge pages where the kernel's
//! mode is `madvise` (the default of many distributions) as well as `always`; with `never`,
//! or none free, the memory is backed by small pages and works the same.
//!
//! The whole range is one mapping, reserved with no access (which costs no memory and is not
//! charged to the commit limit) and opened chunk by chunk in order, so it stays a single
//! kernel mapping however large the store grows (a mapping per chunk would meet
//! `vm.max_map_count` at about 128 GiB). It is mapped with `mmap` rather than taken from the
//! global allocator: an aligned allocation that size would be zeroed with a `memset`, backing
//! every small page before the hint could apply. Opened memory reads as zeros and is backed
//! where it is first written: 2 MiB at once when the kernel gives the chunk a huge page.
//!
//! This is the engine's only `unsafe` code: the mapping lives as long as the `Region`, and its
//! bytes are reached only through `bytes` and `bytes_mut`, which borrow it.
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// Bytes in a chunk, and its alignment: one x86-64 huge page.
pub(crate) const CHUNK: usize = 2 << 20;

/// Up to `reserved` bytes of private anonymous memory aligned to `CHUNK`, of which the first
/// `open` can be read and written; owned like a `Box<[u8]>`.
pub(crate) struct Region {
    base: NonNull<u8>,
    reserved: usize,
    open: usize,
}

// SAFETY: a `Region` owns its mapping exclusively, as a `Box<[u8]>` owns its allocation;
// shared access only reads, through `&self`.
unsafe impl Send for Region {}
// SAFETY: as above: `&Region` gives out only `&[u8]`.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves room for `max` bytes (rounded up to whole chunks), none of it open yet.
    /// Without address space left it aborts, as a failed allocation of the global allocator
    /// does.
    pub(crate) fn new(max: usize) -> Region {
        let reserved = max.max(1).next_multiple_of(CHUNK);
        // One chunk more than needed, so an aligned start lies inside; the rest is unmapped.
        let len = reserved + CHUNK;
        // SAFETY: a new private anonymous mapping with no access; it aliases nothing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(layout(len));
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(CHUNK);
        let (head, tail) = (aligned - start, start + len - (aligned + reserved));
        // SAFETY: both ranges lie inside the mapping just made and outside the kept part; an
        // empty one is skipped. A failed unmap would only leave address space reserved.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + reserved) as *mut libc::c_void, tail);
            }
        }
        Region {
            base: NonNull::new(aligned as *mut u8).expect("mmap never maps address 0 here"),
            reserved,
            open: 0,
        }
    }

    /// Opens the next chunk: `bytes` grows by `CHUNK` bytes of zeros. Panics past the
    /// reservation (callers count their pages); out of memory it aborts like the allocator.
    pub(crate) fn open_chunk(&mut self) {
        assert!(
            self.open < self.reserved,
            "invariant: callers stay within the reservation"
        );
        // SAFETY: the chunk lies inside this region's reservation and is not open, so nothing
        // refers to it; giving it access and the hint changes no byte anyone can see.
        let opened = unsafe {
            let at = self.base.as_ptr().add(self.open).cast::<libc::c_void>();
            let opened = libc::mprotect(at, CHUNK, libc::PROT_READ | libc::PROT_WRITE);
            // A hint: an error (a kernel without THP) leaves small pages, which work the same.
            libc::madvise(at, CHUNK, libc::MADV_HUGEPAGE);
            opened
        };
        if opened != 0 {
            // Only when the commit limit (vm.overcommit_memory=2) refuses the memory.
            std::alloc::handle_alloc_error(layout(CHUNK));
        }
        self.open += CHUNK;
    }

    /// The open bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the first `open` bytes from `base` are mapped readable and writable, alive
        // as long as `self`, written only through `bytes_mut`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.open) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.open) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region's own mapping, not used after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.reserved) };
    }
}

fn layout(len: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(len, CHUNK).expect("a power-of-two alignment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_open_aligned_in_order_and_zeroed() {
        let mut region = Region::new(3 * CHUNK - 1);
        assert!(region.bytes().is_empty());
        region.open_chunk();
        assert_eq!(region.bytes().as_ptr() as usize % CHUNK, 0);
        region.bytes_mut().fill(7);
        region.open_chunk();
        region.open_chunk();
        let bytes = region.bytes();
        assert_eq!(bytes.len(), 3 * CHUNK);
        assert!(bytes[..CHUNK].iter().all(|&b| b == 7));
        assert!(bytes[CHUNK..].iter().all(|&b| b == 0));
    }

    #[test]
    #[should_panic(expected = "within the reservation")]
    fn no_chunk_opens_past_the_reservation() {
        let mut region = Region::new(CHUNK);
        region.open_chunk();
        region.open_chunk();
    }
}
