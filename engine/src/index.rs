//! The hash index: key → arena address, a `hashbrown::HashTable<u32>` hashed with ahash over
//! the key bytes. It stores no hash and no key: probes compare against the key in the block.
//! 5 bytes per bucket (see `charge::INDEX_BYTES`).

use ahash::RandomState;
use hashbrown::HashTable;

use crate::arena::Arena;

pub(crate) struct Index {
    table: HashTable<u32>,
    /// Seeded at random per store, so crafted keys cannot force collisions.
    hasher: RandomState,
}

/// Below this capacity the table is never shrunk: it is too small to matter.
const SHRINK_FLOOR: usize = 1024;

impl Index {
    pub(crate) fn new() -> Index {
        Index {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    pub(crate) fn find(&self, arena: &Arena, hash: u64, key: &[u8]) -> Option<u32> {
        self.table
            .find(hash, |&idx| arena.block(idx).key() == key)
            .copied()
    }

    /// Adds `idx`, whose key is not present yet. Growing rehashes every key (amortised O(1)).
    pub(crate) fn insert(&mut self, arena: &Arena, hash: u64, idx: u32) {
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, idx, |&i| hasher.hash_one(arena.block(i).key()));
    }

    /// Removes `idx`; comparing indices, not keys, spares touching other blocks.
    pub(crate) fn remove(&mut self, hash: u64, idx: u32) {
        match self.table.find_entry(hash, |&i| i == idx) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => debug_assert!(false, "invariant: slot {idx} is indexed"),
        }
    }

    /// Points the entry for `old` at `new` (the entry's block moved).
    pub(crate) fn replace(&mut self, hash: u64, old: u32, new: u32) {
        match self.table.find_mut(hash, |&i| i == old) {
            Some(slot) => *slot = new,
            None => debug_assert!(false, "invariant: block {old} is indexed"),
        }
    }

    /// Makes room for `additional` more keys without growing (no rehash while they go in).
    pub(crate) fn reserve(&mut self, arena: &Arena, additional: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, |&i| hasher.hash_one(arena.block(i).key()));
    }

    /// hashbrown never shrinks on its own, so after mass removal the table would keep its
    /// peak size. Shrink once it is below 1/4 full, to fit what it holds: that restores the
    /// load the charge assumes (>= 7/16), so between shrinks the table holds at most ~2x its
    /// charged share (5 B / (7/32) = 22.9 B per entry just before one). Each shrink is O(len)
    /// and follows at least 3x as many removals, and the gap to the growth point keeps it from
    /// flapping. Called after removes and expiry, not after evictions (which make room for an
    /// insert).
    pub(crate) fn shrink_if_sparse(&mut self, arena: &Arena) {
        let cap = self.table.capacity();
        if cap > SHRINK_FLOOR && self.table.len() * 4 < cap {
            let hasher = &self.hasher;
            self.table
                .shrink_to(self.table.len(), |&i| hasher.hash_one(arena.block(i).key()));
        }
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_blocks::insert;

    #[test]
    fn find_insert_replace_remove_and_shrink() {
        let mut arena = Arena::new();
        let mut index = Index::new();
        let keys: Vec<Vec<u8>> = (0..10_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut ids = Vec::new();
        for key in &keys {
            let idx = insert(&mut arena, key, 0);
            index.insert(&arena, index.hash(key), idx);
            ids.push(idx);
        }
        for (key, &idx) in keys.iter().zip(&ids) {
            assert_eq!(index.find(&arena, index.hash(key), key), Some(idx));
        }
        assert_eq!(index.find(&arena, index.hash(b"nope"), b"nope"), None);
        let moved = insert(&mut arena, &keys[0], 0);
        index.replace(index.hash(&keys[0]), ids[0], moved);
        arena.free(ids[0]);
        ids[0] = moved;
        assert_eq!(
            index.find(&arena, index.hash(&keys[0]), &keys[0]),
            Some(moved)
        );
        let peak = index.capacity();
        for (key, &idx) in keys.iter().zip(&ids).skip(100) {
            index.remove(index.hash(key), idx);
            arena.free(idx);
            index.shrink_if_sparse(&arena);
        }
        assert!(
            index.capacity() < peak / 8,
            "{} vs {peak}",
            index.capacity()
        );
        for (key, &idx) in keys.iter().zip(&ids).take(100) {
            assert_eq!(index.find(&arena, index.hash(key), key), Some(idx));
        }
    }
}
