//! The exact LRU order: a doubly linked list through the blocks' `lru_prev`/`lru_next`
//! addresses (see block.rs). Every operation is O(1) and allocates nothing.

use crate::arena::Arena;
use crate::block::NIL;

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

    /// Links an unlinked block as the most recently used.
    pub(crate) fn push_front(&mut self, arena: &mut Arena, idx: u32) {
        let old = self.head;
        let mut block = arena.block_mut(idx);
        block.set_lru_prev(NIL);
        block.set_lru_next(old);
        if old == NIL {
            self.tail = idx;
        } else {
            arena.block_mut(old).set_lru_prev(idx);
        }
        self.head = idx;
    }

    pub(crate) fn unlink(&mut self, arena: &mut Arena, idx: u32) {
        let mut block = arena.block_mut(idx);
        let (prev, next) = (block.get().lru_prev(), block.get().lru_next());
        block.set_lru_prev(NIL);
        block.set_lru_next(NIL);
        if prev == NIL {
            self.head = next;
        } else {
            arena.block_mut(prev).set_lru_next(next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            arena.block_mut(next).set_lru_prev(prev);
        }
    }

    /// Makes `idx`, a linked block, the most recently used: what `unlink` then `push_front`
    /// do, with the links that both would write only once.
    pub(crate) fn bump(&mut self, arena: &mut Arena, idx: u32) {
        let head = self.head;
        if head == idx {
            return;
        }
        let mut block = arena.block_mut(idx);
        let (prev, next) = (block.get().lru_prev(), block.get().lru_next());
        block.set_lru_prev(NIL);
        block.set_lru_next(head);
        // Not the head, so linked after one: `prev` is a block, and so is `head`.
        arena.block_mut(prev).set_lru_next(next);
        if next == NIL {
            self.tail = prev;
        } else {
            arena.block_mut(next).set_lru_prev(prev);
        }
        arena.block_mut(head).set_lru_prev(idx);
        self.head = idx;
    }

    /// The least recently used entry.
    pub(crate) fn oldest(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_blocks::insert;

    fn order(lru: &Lru, arena: &Arena) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = lru.head;
        while at != NIL {
            out.push(at);
            at = arena.block(at).lru_next();
        }
        let mut back = Vec::new();
        let mut at = lru.tail;
        while at != NIL {
            back.push(at);
            at = arena.block(at).lru_prev();
        }
        back.reverse();
        assert_eq!(out, back, "forward and backward links agree");
        out
    }

    #[test]
    fn push_bump_unlink() {
        let mut arena = Arena::new();
        let mut lru = Lru::new();
        assert_eq!(lru.oldest(), None);
        let ids: Vec<u32> = (0..4u8)
            .map(|i| {
                let idx = insert(&mut arena, &[i], 0);
                lru.push_front(&mut arena, idx);
                idx
            })
            .collect();
        let at = |order: &[usize]| order.iter().map(|&i| ids[i]).collect::<Vec<_>>();
        assert_eq!(order(&lru, &arena), at(&[3, 2, 1, 0]));
        lru.bump(&mut arena, ids[0]);
        assert_eq!(order(&lru, &arena), at(&[0, 3, 2, 1]));
        lru.bump(&mut arena, ids[0]);
        assert_eq!(order(&lru, &arena), at(&[0, 3, 2, 1]));
        lru.unlink(&mut arena, ids[2]);
        assert_eq!(order(&lru, &arena), at(&[0, 3, 1]));
        assert_eq!(lru.oldest(), Some(ids[1]));
        for i in [1, 0, 3] {
            lru.unlink(&mut arena, ids[i]);
        }
        assert!(order(&lru, &arena).is_empty());
        assert_eq!(lru.oldest(), None);
    }
}
