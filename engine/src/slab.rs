//! The slab: every entry's 16-byte slot, named by a `u32` index that the hash index, the LRU
//! list and the timer wheel use instead of pointers.
//!
//! Slots live in fixed chunks of 4096 (64 KiB) that are never reallocated, so the slab never
//! copies itself (no latency spike at a doubling) and wastes at most one partly used chunk.
//! Freed slots are reused first, through a free list threaded through `next`.

use crate::blob::Blob;

/// "No slot": the end of a list.
pub(crate) const NIL: u32 = u32::MAX;
/// Indices at and above this are reserved for the timer wheel's bucket tags (see wheel.rs).
pub(crate) const MAX_SLOTS: u32 = 0xFFFF_0000;

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// One entry's slot. A free slot has no blob and `next` links the free list.
pub(crate) struct Slot {
    pub(crate) blob: Option<Blob>,
    /// Towards the most recently used end of the LRU list.
    pub(crate) prev: u32,
    /// Towards the least recently used end (or the next free slot).
    pub(crate) next: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() as u64 == crate::charge::SLOT_BYTES);

pub(crate) struct Slab {
    chunks: Vec<Vec<Slot>>,
    /// Slots ever handed out; slots below are in use or on the free list.
    high: u32,
    free: u32,
    limit: u32,
}

impl Slab {
    pub(crate) fn new() -> Slab {
        Slab::with_limit(MAX_SLOTS)
    }

    pub(crate) fn with_limit(limit: u32) -> Slab {
        Slab {
            chunks: Vec::new(),
            high: 0,
            free: NIL,
            limit: limit.min(MAX_SLOTS),
        }
    }

    /// The most slots this slab can hold.
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Slots ever handed out: every slot index in use is below it.
    pub(crate) fn high(&self) -> u32 {
        self.high
    }

    /// True when `insert` will succeed.
    pub(crate) fn has_room(&self) -> bool {
        self.free != NIL || self.high < self.limit
    }

    /// Stores `blob` in a free slot (check `has_room` first) and returns its index.
    pub(crate) fn insert(&mut self, blob: Blob) -> u32 {
        if self.free != NIL {
            let idx = self.free;
            let slot = self.slot_mut(idx);
            let next_free = slot.next;
            *slot = Slot {
                blob: Some(blob),
                prev: NIL,
                next: NIL,
            };
            self.free = next_free;
            return idx;
        }
        assert!(
            self.high < self.limit,
            "invariant: callers check has_room before insert"
        );
        let idx = self.high;
        if idx as usize % CHUNK == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = self
            .chunks
            .last_mut()
            .expect("invariant: a chunk was pushed above");
        chunk.push(Slot {
            blob: Some(blob),
            prev: NIL,
            next: NIL,
        });
        self.high += 1;
        idx
    }

    /// Frees slot `idx` and hands back its blob. Unlink it from every list first.
    pub(crate) fn remove(&mut self, idx: u32) -> Blob {
        let free = self.free;
        let slot = self.slot_mut(idx);
        let blob = slot.blob.take().expect("invariant: removing a slot in use");
        slot.prev = NIL;
        slot.next = free;
        self.free = idx;
        blob
    }

    pub(crate) fn slot(&self, idx: u32) -> &Slot {
        &self.chunks[(idx >> CHUNK_BITS) as usize][idx as usize & (CHUNK - 1)]
    }

    pub(crate) fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        &mut self.chunks[(idx >> CHUNK_BITS) as usize][idx as usize & (CHUNK - 1)]
    }

    /// The blob of a slot in use; the index, LRU and wheel only ever hold such slots.
    pub(crate) fn blob(&self, idx: u32) -> &Blob {
        self.slot(idx)
            .blob
            .as_ref()
            .expect("invariant: linked slots hold a blob")
    }

    pub(crate) fn blob_mut(&mut self, idx: u32) -> &mut Blob {
        self.slot_mut(idx)
            .blob
            .as_mut()
            .expect("invariant: linked slots hold a blob")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Version;

    fn blob(tag: u8) -> Blob {
        Blob::new(&[tag], b"", Version::ZERO, 0, false)
    }

    #[test]
    fn freed_slots_are_reused_last_freed_first() {
        let mut slab = Slab::new();
        let ids: Vec<u32> = (0..5).map(|i| slab.insert(blob(i))).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(slab.remove(1).key(), [1]);
        assert_eq!(slab.remove(3).key(), [3]);
        assert_eq!(slab.insert(blob(7)), 3);
        assert_eq!(slab.insert(blob(8)), 1);
        assert_eq!(slab.insert(blob(9)), 5);
        assert_eq!(slab.blob(1).key(), [8]);
    }

    #[test]
    fn grows_across_chunks() {
        let mut slab = Slab::new();
        for i in 0..(CHUNK as u32 * 2 + 3) {
            assert_eq!(slab.insert(blob(i as u8)), i);
        }
        assert_eq!(slab.blob(CHUNK as u32 + 1).key(), [(CHUNK + 1) as u8]);
        assert_eq!(slab.chunks.len(), 3);
    }

    #[test]
    fn limit_is_enforced() {
        let mut slab = Slab::with_limit(2);
        slab.insert(blob(0));
        slab.insert(blob(1));
        assert!(!slab.has_room());
        slab.remove(0);
        assert!(slab.has_room());
    }
}
