//! The store: its parts, its reads and its accessors. Writes are in write.rs; eviction and
//! expiry in reclaim.rs.

use std::fmt;
use std::vec::Drain;

use crate::ahead::KeyHash;
use crate::arena::Arena;
use crate::block::Block;
use crate::charge;
use crate::config::Config;
use crate::index::Index;
use crate::lru::Lru;
use crate::outcome::Removal;
use crate::scan::Scans;
use crate::stats::Stats;
use crate::wheel::Wheel;

/// One shard's store: map, exact LRU by bytes, TTLs, versions and tombstones.
///
/// Every operation is O(1) (amortised where the hash index grows or shrinks), apart from
/// `expire`, whose work is proportional to what expired. Time is always passed in as `now_ms`, milliseconds
/// since the UNIX epoch. An entry is expired once `now_ms >= deadline`. Single-threaded: see
/// the crate docs.
pub struct Store {
    pub(crate) config: Config,
    pub(crate) index: Index,
    pub(crate) arena: Arena,
    pub(crate) lru: Lru,
    pub(crate) wheel: Wheel,
    pub(crate) removals: Vec<Removal>,
    pub(crate) stats: Stats,
    /// The scans in progress (scan.rs).
    pub(crate) scans: Scans,
}

impl Store {
    /// An empty store with these limits.
    pub fn new(config: Config) -> Store {
        Store::with_arena(config, Arena::new())
    }

    pub(crate) fn with_arena(config: Config, arena: Arena) -> Store {
        let stats = Stats {
            max_memory: config.max_memory,
            ..Stats::default()
        };
        Store {
            config,
            index: Index::new(),
            arena,
            lru: Lru::new(),
            wheel: Wheel::new(),
            removals: Vec::new(),
            stats,
            scans: Scans::default(),
        }
    }

    /// The live value of `key`, and makes it the most recently used; counts a hit or a miss.
    /// An expired entry is never returned: it is reclaimed on the spot (counted as an
    /// expiration and reported as a [`Removal`]). Tombstones are misses.
    #[inline]
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<&[u8]> {
        let hash = self.key_hash(key);
        self.get_hashed(key, hash, now_ms)
    }

    /// [`Store::get`], with `key`'s hash computed before ([`Store::key_hash`], see
    /// [`Store::prefetch_get`]). A hash of another key, or from another store, can make the
    /// key look absent (a counted miss), never return another key's value ([`KeyHash`]).
    pub fn get_hashed(&mut self, key: &[u8], hash: KeyHash, now_ms: u64) -> Option<&[u8]> {
        match self.find(key, hash.0, now_ms) {
            Some(idx) if !self.arena.block(idx).is_tombstone() => {
                self.stats.hits += 1;
                self.lru.bump(&mut self.arena, idx);
                Some(self.arena.block(idx).value())
            }
            _ => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// The deadline of a live key without touching the LRU order or the counters: `None` when
    /// missing, removed or expired, `Some(0)` when it never expires.
    pub fn expires_at(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        let idx = self.index.find(&self.arena, self.index.hash(key), key)?;
        let block = self.arena.block(idx);
        (!block.is_tombstone() && !block.is_dead(now_ms)).then(|| block.deadline())
    }

    /// Evictions and expirations since the last drain, oldest first, so the WAL can log them
    /// like removes. Each [`Removal`] owns a copy of the dropped key. Drain after each call
    /// that can evict or expire (`put`, `remove`, `touch`, `get`, `expire`): undrained
    /// removals hold memory that is not charged.
    pub fn drain_removals(&mut self) -> Drain<'_, Removal> {
        self.removals.drain(..)
    }

    /// Whether evictions or expirations wait to be drained ([`Store::drain_removals`]).
    #[inline]
    pub fn has_removals(&self) -> bool {
        !self.removals.is_empty()
    }

    /// The store's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Live entries held, including expired ones not reclaimed yet; tombstones not counted.
    pub fn len(&self) -> usize {
        self.stats.keys as usize
    }

    /// True when no live entry is held.
    pub fn is_empty(&self) -> bool {
        self.stats.keys == 0
    }

    /// Bytes charged for everything held, never above `Config::max_memory`.
    pub fn bytes_used(&self) -> u64 {
        self.stats.bytes_used
    }

    /// The limits this store was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes charged against `Config::max_memory` for an entry with these lengths and no
    /// deadline ([`Store::charge`] covers both cases):
    ///
    /// ```text
    /// charge = 12                    hash-index share: 5 B per bucket (u32 + control byte)
    ///                                  at hashbrown's lowest load after growth, 7/16 → 11.4
    ///        + slot(block)           the block's place in the store's arena:
    ///                                  round_up(max(block, 24), 8) up to 1024 bytes,
    ///                                  above that its own page as glibc malloc takes it,
    ///                                  max(32, round_up(block + 8, 16)) below 128 KiB,
    ///                                  round_up(that + 8, 4096) from 128 KiB (mmap),
    ///                                  + 16 (its slot in the large-block table)
    /// block  = 20                    LRU prev/next (u32 each) + version (hlc 8 + node 4)
    ///        + varint(key_len × 4 + flags)              LEB128: 1 byte below 32-byte keys
    ///        + varint(value_len)                        LEB128: 1 byte below 128
    ///        + key_len + value_len
    ///        + 16 if has_deadline    deadline 8 + timer-wheel prev/next (u32 each)
    /// ```
    ///
    /// For a 12- to 14-byte key and a 100-byte value without deadline: 12 + 136 = 148 bytes.
    /// A tombstone is charged as an entry with an empty value and a deadline
    /// ([`Store::tombstone_charge`]). Not charged: the fixed-size wheel (≈3 KiB), free slots
    /// in the class pages (the unused tail of a page, slots left by removed entries or by
    /// entries rewritten to another size), the page table's and the large-block table's spare
    /// capacity, index capacity left behind by mass removal until it shrinks, and
    /// fragmentation of the global allocator. The large-block term models glibc malloc, the
    /// system allocator; a binary that installs another `#[global_allocator]` must re-check it
    /// with the bench.
    ///
    /// Free slots are not charged, but they are bounded: the arena's resident bytes
    /// ([`Stats::arena_bytes`]: its class pages and large blocks) stay at most `max_memory`
    /// plus one 64 KiB page per size class in use, because a write that needs a new page
    /// beyond its class's first, or a large block, while that bound would be passed evicts
    /// least-recently-used entries until a slot or page is freed (a class page whose last
    /// entry goes is handed back). So value sizes that change over time cannot hold memory
    /// in pages of sizes no longer written.
    pub fn entry_charge(key_len: usize, value_len: usize) -> u64 {
        charge::for_entry(key_len, value_len, false)
    }

    /// Bytes charged for an entry with these lengths, with or without a deadline (formula at
    /// [`Store::entry_charge`]).
    pub fn charge(key_len: usize, value_len: usize, has_deadline: bool) -> u64 {
        charge::for_entry(key_len, value_len, has_deadline)
    }

    /// Bytes charged for a tombstone of a key this long.
    pub fn tombstone_charge(key_len: usize) -> u64 {
        charge::for_entry(key_len, 0, true)
    }

    /// The record (live entry or tombstone) for `key`; one whose deadline or grace has passed
    /// is reclaimed here and counts as absent.
    pub(crate) fn find(&mut self, key: &[u8], hash: u64, now_ms: u64) -> Option<u32> {
        let idx = self.index.find(&self.arena, hash, key)?;
        if self.arena.block(idx).is_dead(now_ms) {
            self.discard(idx, now_ms);
            return None;
        }
        Some(idx)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A shard creates its store on its own executor, but a `Store` may also be built elsewhere
/// and moved there.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Store>();
};

/// The charge of the entry held in `block`.
pub(crate) fn charge_of(block: Block<'_>) -> u64 {
    charge::for_block(block.len())
}
