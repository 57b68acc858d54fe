//! One entry's block: its LRU links, version, flags, lengths, key, value and (only when the
//! entry has a deadline) its timer-wheel section, in one slot of the arena (arena.rs). A pure
//! codec over a byte slice: the arena hands out the slot, this file says what is in it.
//!
//! Keeping everything an entry has in one place means a lookup touches one slot: the hash
//! index names the slot directly, and the LRU and wheel links are read next to the key.

// Layout of a block. Integers are little-endian and unaligned.
//
//   offset  size  field
//   0       4     lru_prev    arena address towards the most recently used end (NIL: none)
//   4       4     lru_next    towards the least recently used end (NIL: none); in a free
//                             slot, the next free slot of its size class
//   8       8     hlc         version.hlc
//   16      4     node        version.node
//   20      1..10 key_flags   LEB128 of key_len << 2 | flags; flags bit 0: tombstone, bit 1:
//                             the deadline section is present. Both sit in this first byte.
//                             Keys are never empty, so the byte is never 0 in a block in use;
//                             0 marks a free slot (and never-used, zeroed arena bytes), which
//                             is how a scan tells them apart.
//   ..      1..10 value_len   LEB128
//   ..      k     key
//   ..      v     value       (empty for a tombstone)
//   -- deadline section, only with a deadline --
//   len-16  8     deadline    ms since the UNIX epoch, never 0
//   len-8   4     wheel_prev  timer-wheel links (arena addresses or bucket tags, see wheel.rs)
//   len-4   4     wheel_next
//
// A slot may be longer than its block (size classes round up to 8 bytes); the block's own
// length comes from its header, so the bytes after it are never read.

use crate::varint::{self, put_varint, varint_len};
use crate::version::Version;

/// "No block": the end of a list.
pub(crate) const NIL: u32 = u32::MAX;

const LRU_PREV: usize = 0;
const LRU_NEXT: usize = 4;
const HLC: usize = 8;
const NODE: usize = 16;
/// Where the lengths start; the first byte also holds the flags (and is 0 in a free slot).
const LENS: usize = 20;
const TOMBSTONE: u8 = 1;
const HAS_DEADLINE: u8 = 2;
const FLAG_BITS: u32 = 2;
/// Bytes of the deadline section, when there is one.
pub(crate) const DEADLINE_SECTION: usize = 16;
const UNLINKED: u32 = u32::MAX;

/// Length of the block for an entry of these lengths.
pub(crate) fn block_len(key_len: usize, value_len: usize, has_deadline: bool) -> usize {
    let section = if has_deadline { DEADLINE_SECTION } else { 0 };
    LENS + varint_len(key_len << FLAG_BITS | 3)
        + varint_len(value_len)
        + key_len
        + value_len
        + section
}

/// Writes a whole block at the start of `buf` (at least `block_len` bytes long): in use, LRU
/// and wheel links unset; `deadline` 0 means none (no deadline section).
pub(crate) fn encode(
    buf: &mut [u8],
    key: &[u8],
    value: &[u8],
    version: Version,
    deadline: u64,
    tombstone: bool,
) {
    buf[LRU_PREV..LRU_PREV + 4].copy_from_slice(&NIL.to_le_bytes());
    buf[LRU_NEXT..LRU_NEXT + 4].copy_from_slice(&NIL.to_le_bytes());
    encode_keeping_links(buf, key, value, version, deadline, tombstone);
}

/// What [`encode`] writes, but the LRU links at the start of `buf` are left as they are: for
/// a block rewritten in its own slot while it stays in the LRU list.
pub(crate) fn encode_keeping_links(
    buf: &mut [u8],
    key: &[u8],
    value: &[u8],
    version: Version,
    deadline: u64,
    tombstone: bool,
) {
    buf[HLC..HLC + 8].copy_from_slice(&version.hlc.to_le_bytes());
    buf[NODE..NODE + 4].copy_from_slice(&version.node.to_le_bytes());
    let flags =
        if tombstone { TOMBSTONE } else { 0 } | if deadline != 0 { HAS_DEADLINE } else { 0 };
    let mut at = LENS;
    at += put_varint(&mut buf[at..], key.len() << FLAG_BITS | usize::from(flags));
    at += put_varint(&mut buf[at..], value.len());
    buf[at..at + key.len()].copy_from_slice(key);
    at += key.len();
    buf[at..at + value.len()].copy_from_slice(value);
    at += value.len();
    if deadline != 0 {
        buf[at..at + DEADLINE_SECTION].copy_from_slice(&deadline_section(deadline));
    }
}

/// Where things are in one block, decoded from its header.
#[derive(Clone, Copy)]
struct Shape {
    key_len: usize,
    value_len: usize,
    key_at: usize,
    len: usize,
}

#[inline]
fn shape(b: &[u8]) -> Shape {
    let mut at = LENS;
    let key_flags = varint::read(b, &mut at);
    let key_len = key_flags >> FLAG_BITS;
    let value_len = varint::read(b, &mut at);
    let section = if key_flags & usize::from(HAS_DEADLINE) != 0 {
        DEADLINE_SECTION
    } else {
        0
    };
    Shape {
        key_len,
        value_len,
        key_at: at,
        len: at + key_len + value_len + section,
    }
}

/// A block read in place: the bytes from its start to (at least) its end.
#[derive(Clone, Copy)]
pub(crate) struct Block<'a>(pub(crate) &'a [u8]);

impl<'a> Block<'a> {
    /// Length of the block in bytes.
    pub(crate) fn len(self) -> usize {
        shape(self.0).len
    }

    #[inline]
    pub(crate) fn key(self) -> &'a [u8] {
        let s = shape(self.0);
        &self.0[s.key_at..s.key_at + s.key_len]
    }

    #[inline]
    pub(crate) fn value(self) -> &'a [u8] {
        let s = shape(self.0);
        let at = s.key_at + s.key_len;
        &self.0[at..at + s.value_len]
    }

    pub(crate) fn version(self) -> Version {
        Version {
            hlc: u64::from_le_bytes(arr(&self.0[HLC..HLC + 8])),
            node: u32::from_le_bytes(arr(&self.0[NODE..NODE + 4])),
        }
    }

    pub(crate) fn is_tombstone(self) -> bool {
        self.0[LENS] & TOMBSTONE != 0
    }

    /// True for a block in use, false for a free or never-used slot.
    pub(crate) fn in_use(self) -> bool {
        self.0[LENS] != 0
    }

    pub(crate) fn has_deadline(self) -> bool {
        self.0[LENS] & HAS_DEADLINE != 0
    }

    /// The deadline, or 0 when the entry has none.
    #[inline]
    pub(crate) fn deadline(self) -> u64 {
        if !self.has_deadline() {
            return 0;
        }
        let end = shape(self.0).len;
        u64::from_le_bytes(arr(&self.0[end - 16..end - 8]))
    }

    /// True when the deadline has passed at `now_ms` (deadline <= now).
    #[inline]
    pub(crate) fn is_dead(self, now_ms: u64) -> bool {
        let d = self.deadline();
        d != 0 && d <= now_ms
    }

    /// Length of the block without its deadline section: header, key and value.
    pub(crate) fn body_len(self) -> usize {
        let s = shape(self.0);
        s.key_at + s.key_len + s.value_len
    }

    pub(crate) fn lru_prev(self) -> u32 {
        u32::from_le_bytes(arr(&self.0[LRU_PREV..LRU_PREV + 4]))
    }

    pub(crate) fn lru_next(self) -> u32 {
        u32::from_le_bytes(arr(&self.0[LRU_NEXT..LRU_NEXT + 4]))
    }

    /// Timer-wheel links; only meaningful while the entry has a deadline.
    pub(crate) fn wheel_links(self) -> (u32, u32) {
        debug_assert!(self.has_deadline());
        let n = shape(self.0).len;
        (
            u32::from_le_bytes(arr(&self.0[n - 8..n - 4])),
            u32::from_le_bytes(arr(&self.0[n - 4..n])),
        )
    }
}

/// A block written in place.
pub(crate) struct BlockMut<'a>(pub(crate) &'a mut [u8]);

impl BlockMut<'_> {
    pub(crate) fn get(&self) -> Block<'_> {
        Block(self.0)
    }

    /// Marks the slot free: the first length byte becomes 0 (see the layout).
    pub(crate) fn set_free(&mut self) {
        self.0[LENS] = 0;
    }

    pub(crate) fn set_version(&mut self, version: Version) {
        self.0[HLC..HLC + 8].copy_from_slice(&version.hlc.to_le_bytes());
        self.0[NODE..NODE + 4].copy_from_slice(&version.node.to_le_bytes());
    }

    pub(crate) fn set_lru_prev(&mut self, prev: u32) {
        self.0[LRU_PREV..LRU_PREV + 4].copy_from_slice(&prev.to_le_bytes());
    }

    pub(crate) fn set_lru_next(&mut self, next: u32) {
        self.0[LRU_NEXT..LRU_NEXT + 4].copy_from_slice(&next.to_le_bytes());
    }

    /// Sets the deadline (0 = none) of a block whose slot has room for the result: adds,
    /// rewrites or drops the section after the value. The wheel links are reset, so unlink
    /// the entry from the wheel first.
    pub(crate) fn set_deadline(&mut self, deadline: u64) {
        let end = self.get().body_len();
        if deadline == 0 {
            self.0[LENS] &= !HAS_DEADLINE;
        } else {
            self.0[end..end + DEADLINE_SECTION].copy_from_slice(&deadline_section(deadline));
            self.0[LENS] |= HAS_DEADLINE;
        }
    }

    pub(crate) fn set_wheel_prev(&mut self, prev: u32) {
        let n = self.get().len();
        self.0[n - 8..n - 4].copy_from_slice(&prev.to_le_bytes());
    }

    pub(crate) fn set_wheel_next(&mut self, next: u32) {
        let n = self.get().len();
        self.0[n - 4..n].copy_from_slice(&next.to_le_bytes());
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
#[path = "block_tests.rs"]
mod tests;
