//! The exact LRU order: a doubly linked list through the slab slots' `prev`/`next` indices.
//! Every operation is O(1) and allocates nothing.

use crate::slab::{Slab, NIL};

/// Ends of the list; `head` is the most recently used entry.
pub(crate) struct Lru {
    head: u32,
    tail: u32,
}

impl Lru {
    pub(crate) fn new() -> Lru {
        Lru {
            head: NIL,
            tail: NIL,
        }
    }

    /// Links an unlinked slot as the most recently used.
    pub(crate) fn push_front(&mut self, slab: &mut Slab, idx: u32) {
        let old = self.head;
        let slot = slab.slot_mut(idx);
        slot.prev = NIL;
        slot.next = old;
        if old == NIL {
            self.tail = idx;
        } else {
            slab.slot_mut(old).prev = idx;
        }
        self.head = idx;
    }

    pub(crate) fn unlink(&mut self, slab: &mut Slab, idx: u32) {
        let slot = slab.slot_mut(idx);
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        if prev == NIL {
            self.head = next;
        } else {
            slab.slot_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            slab.slot_mut(next).prev = prev;
        }
    }

    /// Makes `idx` the most recently used.
    pub(crate) fn bump(&mut self, slab: &mut Slab, idx: u32) {
        if self.head != idx {
            self.unlink(slab, idx);
            self.push_front(slab, idx);
        }
    }

    /// The least recently used entry.
    pub(crate) fn oldest(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Blob;
    use crate::version::Version;

    fn order(lru: &Lru, slab: &Slab) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = lru.head;
        while at != NIL {
            out.push(at);
            at = slab.slot(at).next;
        }
        let mut back = Vec::new();
        let mut at = lru.tail;
        while at != NIL {
            back.push(at);
            at = slab.slot(at).prev;
        }
        back.reverse();
        assert_eq!(out, back, "forward and backward links agree");
        out
    }

    #[test]
    fn push_bump_unlink() {
        let mut slab = Slab::new();
        let mut lru = Lru::new();
        assert_eq!(lru.oldest(), None);
        for i in 0..4u8 {
            let idx = slab.insert(Blob::new(&[i], b"", Version::ZERO, 0, false));
            lru.push_front(&mut slab, idx);
        }
        assert_eq!(order(&lru, &slab), [3, 2, 1, 0]);
        lru.bump(&mut slab, 0);
        assert_eq!(order(&lru, &slab), [0, 3, 2, 1]);
        lru.bump(&mut slab, 0);
        assert_eq!(order(&lru, &slab), [0, 3, 2, 1]);
        lru.unlink(&mut slab, 2);
        assert_eq!(order(&lru, &slab), [0, 3, 1]);
        assert_eq!(lru.oldest(), Some(1));
        for idx in [1, 0, 3] {
            lru.unlink(&mut slab, idx);
        }
        assert_eq!(order(&lru, &slab), []);
        assert_eq!(lru.oldest(), None);
    }
}
