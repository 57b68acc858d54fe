//! Reading ahead for a batch of gets: a key hashed once, and the lines a coming get will touch
//! named before it runs.
//!
//! A caller that holds several requests at once (a pipelining connection's buffered frames)
//! hashes each key with [`Store::key_hash`], calls [`Store::prefetch_get`] for every key, then
//! runs the gets in order with [`Store::get_hashed`]. The lookups of the first pass are
//! independent of each other, so the CPU overlaps their cache misses, and the lines the gets
//! then write (the LRU neighbours' links) and copy (the value) are already on their way. The
//! second pass is the plain get: same order, same replies, same exact LRU. The store stays free
//! of `unsafe`: it only names addresses, the caller issues the prefetch instructions.

use crate::block::NIL;
use crate::store::Store;

/// A key's hash under one store's index, from [`Store::key_hash`]. Opaque, so it cannot be
/// made up. A hash of another key, or from another store, can only make the key look absent
/// (or find it by chance): the lookup still compares the key, so it never returns another
/// key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash(pub(crate) u64);

impl Store {
    /// `key`'s hash under this store's index: what [`Store::get_hashed`] and
    /// [`Store::prefetch_get`] take, so a key read ahead is hashed only once.
    #[inline]
    pub fn key_hash(&self, key: &[u8]) -> KeyHash {
        KeyHash(self.index.hash(key))
    }

    /// A hint for a coming [`Store::get`] of `key` (`hash` its [`Store::key_hash`]): looks the
    /// key up and passes `prefetch` the start of each cache line that get will then read or
    /// write beyond the lookup's own: the value's first and last bytes and the LRU neighbours'
    /// links (a [`Store::put`] that overwrites `key` touches the same lines, so a coming put may
    /// take the same hint). Changes nothing: not the LRU order, not the counters, not an expired
    /// entry. The
    /// addresses are for a prefetch instruction only: valid now, they may be stale (a block
    /// freed or moved) by the time the get runs, which only makes the hint useless.
    #[inline]
    pub fn prefetch_get(&self, key: &[u8], hash: KeyHash, mut prefetch: impl FnMut(*const u8)) {
        let Some(idx) = self.index.find(&self.arena, hash.0, key) else {
            return;
        };
        let block = self.arena.block(idx);
        let value = block.value();
        prefetch(value.as_ptr());
        prefetch(value.as_ptr().wrapping_add(value.len().saturating_sub(1)));
        for neighbour in [block.lru_prev(), block.lru_next()] {
            if neighbour != NIL {
                prefetch(self.arena.block(neighbour).0.as_ptr());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Hlc, Store};

    const NOW: u64 = 1_700_000_000_000;

    fn store(keys: u32) -> Store {
        let mut store = Store::new(Config {
            max_memory: 32 << 10,
            ..Config::default()
        });
        let mut clock = Hlc::new(1);
        for i in 0..keys {
            let key = i.to_le_bytes();
            // Every third key expires at NOW + 1.
            let deadline = if i % 3 == 0 { NOW + 1 } else { 0 };
            store
                .put(&key, &[i as u8; 100], deadline, clock.now(NOW), NOW)
                .expect("fits");
        }
        store
    }

    /// `prefetch_get` changes nothing, and `get_hashed` is `get`, hit or miss, live or
    /// expired, with the hash computed once.
    #[test]
    fn read_ahead_is_invisible() {
        let (mut plain, mut ahead) = (store(100), store(100));
        let later = NOW + 2;
        for i in (0..120u32).rev() {
            let key = i.to_le_bytes();
            let hash = ahead.key_hash(&key);
            let before = ahead.stats().clone();
            let mut named = 0;
            ahead.prefetch_get(&key, hash, |p| {
                assert!(!p.is_null());
                named += 1;
            });
            assert_eq!(ahead.stats(), &before, "key {i}: nothing counted");
            assert!(!ahead.has_removals(), "key {i}: nothing expired");
            // A key present names its value (twice) and, but for the list's ends, two
            // neighbours; a missing one names nothing.
            assert!(i >= 100 && named == 0 || i < 100 && (3..=4).contains(&named));
            assert_eq!(
                ahead.get_hashed(&key, hash, later).map(<[u8]>::to_vec),
                plain.get(&key, later).map(<[u8]>::to_vec),
                "key {i}"
            );
            assert_eq!(ahead.stats(), plain.stats());
            let removed = |s: &mut Store| {
                s.drain_removals()
                    .map(|r| r.key().to_vec())
                    .collect::<Vec<_>>()
            };
            assert_eq!(removed(&mut ahead), removed(&mut plain));
        }
        // The same LRU order: an entry that needs nearly all the memory evicts the others,
        // least recently used first.
        let order = |s: &mut Store| {
            let mut clock = Hlc::new(2);
            let big = vec![0u8; 30 << 10];
            s.put(b"big", &big, 0, clock.now(later), later)
                .expect("fits");
            s.drain_removals()
                .map(|r| r.key().to_vec())
                .collect::<Vec<_>>()
        };
        let evicted = order(&mut ahead);
        assert!(evicted.len() > 30, "{} evicted", evicted.len());
        assert_eq!(evicted, order(&mut plain));
    }

    /// A hash from another store (another seed) or of another key finds the key or misses it,
    /// never another key's value.
    #[test]
    fn a_wrong_hash_never_finds_another_value() {
        let (mut one, other) = (store(10), store(10));
        for i in 1..10u32 {
            let key = i.to_le_bytes();
            let value = [i as u8; 100];
            let wrong = [other.key_hash(&key), one.key_hash(&(i - 1).to_le_bytes())];
            for hash in wrong {
                let got = one.get_hashed(&key, hash, NOW);
                assert!(got.is_none() || got == Some(&value[..]), "key {i}");
            }
        }
    }
}
