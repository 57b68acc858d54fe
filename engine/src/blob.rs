//! One entry's heap block: version, flags, lengths, key, value and (only when the entry has a
//! deadline) its timer-wheel section, in a single allocation behind a thin pointer. Keeping all
//! of it here lets the slab slot stay at 16 bytes; the fields are read together with the key
//! anyway, on the same cache lines.
//!
//! This is the crate's only `unsafe` code: a thin owned pointer to a block whose length is
//! encoded in its own header, like a `Box<[u8]>` that stores its length inside.
#![allow(unsafe_code)]

// Layout of a block. Integers are little-endian and unaligned; the block has alignment 1.
//
//   offset  size  field
//   0       8     hlc         version.hlc
//   8       4     node        version.node
//   12      1     flags       bit 0: tombstone; bit 1: the deadline section is present
//   13      1..10 key_len     LEB128
//   ..      1..10 value_len   LEB128
//   ..      k     key
//   ..      v     value       (empty for a tombstone)
//   -- deadline section, only with a deadline --
//   len-16  8     deadline    ms since the UNIX epoch, never 0
//   len-8   4     wheel_prev  timer-wheel links (slab indices or bucket tags, see wheel.rs)
//   len-4   4     wheel_next
//
// The deadline section sits at the tail so `touch` adds or drops it with `realloc`, which keeps
// key and value in place (glibc grows in place when it can, and moves large blocks by mremap).
// Lengths never change after `new`, which is what makes reading them through the raw pointer
// sound: every header byte read was written by `new`.

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};
use std::slice;

use crate::varint::{self, put_varint, varint_len};
use crate::version::Version;

const FLAGS: usize = 12;
const LENS: usize = 13;
const TOMBSTONE: u8 = 1;
const HAS_DEADLINE: u8 = 2;
const DEADLINE_SECTION: usize = 16;
const UNLINKED: u32 = u32::MAX;

/// Length of the block for an entry of these lengths.
pub(crate) fn block_len(key_len: usize, value_len: usize, has_deadline: bool) -> usize {
    let section = if has_deadline { DEADLINE_SECTION } else { 0 };
    LENS + varint_len(key_len) + varint_len(value_len) + key_len + value_len + section
}

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len, 1)
        .expect("invariant: a block is no longer than the slices it copies")
}

/// Where things are in one block, decoded from its header.
#[derive(Clone, Copy)]
struct Shape {
    flags: u8,
    key_len: usize,
    value_len: usize,
    key_at: usize,
    len: usize,
}

/// An owned heap block (see the layout above).
pub(crate) struct Blob {
    ptr: NonNull<u8>,
}

// SAFETY: a Blob uniquely owns its block, like `Box<[u8]>`; `&Blob` only reads.
unsafe impl Send for Blob {}
// SAFETY: as above, no interior mutability.
unsafe impl Sync for Blob {}

impl Blob {
    /// A block for this entry; `deadline` 0 means none (no deadline section).
    pub(crate) fn new(
        key: &[u8],
        value: &[u8],
        version: Version,
        deadline: u64,
        tombstone: bool,
    ) -> Blob {
        let len = block_len(key.len(), value.len(), deadline != 0);
        let mut head = [0u8; LENS + 20];
        head[..8].copy_from_slice(&version.hlc.to_le_bytes());
        head[8..12].copy_from_slice(&version.node.to_le_bytes());
        head[FLAGS] =
            if tombstone { TOMBSTONE } else { 0 } | if deadline != 0 { HAS_DEADLINE } else { 0 };
        let mut at = LENS;
        at += put_varint(&mut head[at..], key.len());
        at += put_varint(&mut head[at..], value.len());
        let layout = layout(len);
        // SAFETY: `len >= LENS + 2 > 0`.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        // SAFETY: the four copies fill [0, at), [at, at+k), [at+k, at+k+v) and the section, which
        // is exactly [0, len) by `block_len`; sources are distinct live slices.
        unsafe {
            ptr::copy_nonoverlapping(head.as_ptr(), raw, at);
            ptr::copy_nonoverlapping(key.as_ptr(), raw.add(at), key.len());
            ptr::copy_nonoverlapping(value.as_ptr(), raw.add(at + key.len()), value.len());
            if deadline != 0 {
                let section = deadline_section(deadline);
                ptr::copy_nonoverlapping(
                    section.as_ptr(),
                    raw.add(len - DEADLINE_SECTION),
                    DEADLINE_SECTION,
                );
            }
        }
        Blob { ptr }
    }

    fn shape(&self) -> Shape {
        let p = self.ptr.as_ptr();
        // SAFETY: flags and both varints were written by `new` and never change; a varint ends
        // at the first byte below 0x80, which `put_varint` wrote, so no read leaves the block.
        let (flags, key_len, value_len, key_at) = unsafe {
            let mut at = LENS;
            let key_len = varint::read(p, &mut at);
            let value_len = varint::read(p, &mut at);
            (*p.add(FLAGS), key_len, value_len, at)
        };
        let section = if flags & HAS_DEADLINE != 0 {
            DEADLINE_SECTION
        } else {
            0
        };
        Shape {
            flags,
            key_len,
            value_len,
            key_at,
            len: key_at + key_len + value_len + section,
        }
    }

    fn bytes(&self) -> &[u8] {
        let len = self.shape().len;
        // SAFETY: the block is `len` initialised bytes owned by self.
        unsafe { slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.shape().len;
        // SAFETY: as in `bytes`, and `&mut self` makes the access unique.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }

    /// Length of the whole block in bytes (what was asked of the allocator).
    pub(crate) fn len(&self) -> usize {
        self.shape().len
    }

    pub(crate) fn key(&self) -> &[u8] {
        let s = self.shape();
        &self.bytes()[s.key_at..s.key_at + s.key_len]
    }

    pub(crate) fn value(&self) -> &[u8] {
        let s = self.shape();
        let at = s.key_at + s.key_len;
        &self.bytes()[at..at + s.value_len]
    }

    pub(crate) fn version(&self) -> Version {
        let b = self.bytes();
        Version {
            hlc: u64::from_le_bytes(arr(&b[0..8])),
            node: u32::from_le_bytes(arr(&b[8..12])),
        }
    }

    pub(crate) fn set_version(&mut self, version: Version) {
        let b = self.bytes_mut();
        b[0..8].copy_from_slice(&version.hlc.to_le_bytes());
        b[8..12].copy_from_slice(&version.node.to_le_bytes());
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.shape().flags & TOMBSTONE != 0
    }

    /// The deadline, or 0 when the entry has none.
    pub(crate) fn deadline(&self) -> u64 {
        let s = self.shape();
        if s.flags & HAS_DEADLINE == 0 {
            return 0;
        }
        u64::from_le_bytes(arr(&self.bytes()[s.len - 16..s.len - 8]))
    }

    /// True when the deadline has passed at `now_ms` (deadline <= now).
    pub(crate) fn is_dead(&self, now_ms: u64) -> bool {
        let d = self.deadline();
        d != 0 && d <= now_ms
    }

    /// Sets the deadline (0 = none), adding or dropping the section by `realloc` when its
    /// presence changes. Unlink the entry from the wheel first: the links are reset.
    pub(crate) fn set_deadline(&mut self, deadline: u64) {
        let s = self.shape();
        let had = s.flags & HAS_DEADLINE != 0;
        match (had, deadline != 0) {
            (true, true) => {
                let b = self.bytes_mut();
                b[s.len - 16..].copy_from_slice(&deadline_section(deadline));
            }
            (false, false) => {}
            (false, true) => {
                let new_len = s.len + DEADLINE_SECTION;
                self.realloc(s.len, new_len);
                let section = deadline_section(deadline);
                // SAFETY: the block now has `new_len` bytes; write the new tail before the flag
                // makes `shape` count it, so no slice ever covers uninitialised bytes.
                unsafe {
                    let p = self.ptr.as_ptr();
                    ptr::copy_nonoverlapping(section.as_ptr(), p.add(s.len), DEADLINE_SECTION);
                    *p.add(FLAGS) = s.flags | HAS_DEADLINE;
                }
            }
            (true, false) => {
                // SAFETY: FLAGS < len. Clear the flag before shrinking so `shape` never claims
                // bytes beyond the block.
                unsafe { *self.ptr.as_ptr().add(FLAGS) = s.flags & !HAS_DEADLINE };
                self.realloc(s.len, s.len - DEADLINE_SECTION);
            }
        }
    }

    fn realloc(&mut self, old_len: usize, new_len: usize) {
        // SAFETY: `ptr` was allocated with `layout(old_len)` by the global allocator and
        // `new_len > 0`.
        let raw = unsafe { alloc::realloc(self.ptr.as_ptr(), layout(old_len), new_len) };
        self.ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout(new_len)));
    }

    /// Rewrites the entry in place when the new one has the same layout (same value length and
    /// deadline presence; the key is unchanged). Returns false, changing nothing, otherwise.
    pub(crate) fn rewrite(
        &mut self,
        value: &[u8],
        version: Version,
        deadline: u64,
        tombstone: bool,
    ) -> bool {
        let s = self.shape();
        if s.value_len != value.len() || (s.flags & HAS_DEADLINE != 0) != (deadline != 0) {
            return false;
        }
        self.set_version(version);
        let b = self.bytes_mut();
        b[FLAGS] = if tombstone {
            s.flags | TOMBSTONE
        } else {
            s.flags & !TOMBSTONE
        };
        let at = s.key_at + s.key_len;
        b[at..at + value.len()].copy_from_slice(value);
        if deadline != 0 {
            b[s.len - 16..].copy_from_slice(&deadline_section(deadline));
        }
        true
    }

    /// Timer-wheel links; only meaningful while the entry has a deadline.
    pub(crate) fn wheel_links(&self) -> (u32, u32) {
        let b = self.bytes();
        let n = b.len();
        debug_assert!(b[FLAGS] & HAS_DEADLINE != 0);
        (
            u32::from_le_bytes(arr(&b[n - 8..n - 4])),
            u32::from_le_bytes(arr(&b[n - 4..])),
        )
    }

    pub(crate) fn set_wheel_prev(&mut self, prev: u32) {
        let b = self.bytes_mut();
        let n = b.len();
        b[n - 8..n - 4].copy_from_slice(&prev.to_le_bytes());
    }

    pub(crate) fn set_wheel_next(&mut self, next: u32) {
        let b = self.bytes_mut();
        let n = b.len();
        b[n - 4..].copy_from_slice(&next.to_le_bytes());
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        // SAFETY: allocated by the global allocator with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout(self.shape().len)) }
    }
}

fn deadline_section(deadline: u64) -> [u8; DEADLINE_SECTION] {
    let mut s = [0u8; DEADLINE_SECTION];
    s[..8].copy_from_slice(&deadline.to_le_bytes());
    s[8..12].copy_from_slice(&UNLINKED.to_le_bytes());
    s[12..].copy_from_slice(&UNLINKED.to_le_bytes());
    s
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    b.try_into()
        .expect("invariant: callers slice exactly N bytes")
}

#[cfg(test)]
#[path = "blob_tests.rs"]
mod tests;
