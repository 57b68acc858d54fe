//! Writes: put, remove and touch, each applied last-writer-wins by [`Version`].

use crate::arena;
use crate::block::{self, block_len, DEADLINE_SECTION};
use crate::charge;
use crate::error::Error;
use crate::outcome::{Applied, Removed};
use crate::store::Store;
use crate::version::Version;

impl Store {
    /// Stores `key → value` with an absolute deadline `expires_at_ms` (0 = never; overwriting
    /// replaces the deadline). Ignored (`Ok(Applied::Stale)`) when a live entry or tombstone
    /// with a version >= `version` is stored; an expired entry counts as absent. Evicts
    /// least-recently-used entries until the new one fits, each reported as a removal.
    ///
    /// Errors (the write is not applied), checked in this order: `EmptyKey`, `KeyTooLarge`,
    /// `ValueTooLarge`, `EntryTooLarge` (the entry *with* a deadline would not fit in
    /// `max_memory` even alone, so a later `touch` can always make room), and
    /// `TooManyEntries` when the store's block addresses are used up and evicting every
    /// other entry did not free one (those evictions are reported all the same).
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: u64,
        version: Version,
        now_ms: u64,
    ) -> Result<Applied, Error> {
        self.check_key(key)?;
        if value.len() > self.config.max_value_len {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.config.max_value_len,
            });
        }
        let largest = charge::for_entry(key.len(), value.len(), true);
        if largest > self.config.max_memory {
            return Err(Error::EntryTooLarge {
                charge: largest,
                max_memory: self.config.max_memory,
            });
        }
        let charge = charge::for_entry(key.len(), value.len(), expires_at_ms != 0);
        let hash = self.index.hash(key);
        let new = NewBlock {
            key,
            value,
            version,
            deadline: expires_at_ms,
            tombstone: false,
        };
        let Some(idx) = self.find(key, hash, now_ms) else {
            self.insert_new(hash, new, charge, now_ms)?;
            self.stats.puts += 1;
            return Ok(Applied::Stored);
        };
        let old = self.arena.block(idx);
        if old.version() >= version {
            self.stats.stale_writes += 1;
            return Ok(Applied::Stale);
        }
        if self.overwrite_in_place(idx, &new) {
            self.stats.puts += 1;
            return Ok(Applied::Stored);
        }
        self.unlink_for_rewrite(idx);
        self.make_slot_to_move(idx, new.len(), now_ms)?;
        if self.arena.block(idx).is_tombstone() {
            self.stats.tombstones -= 1;
            self.stats.keys += 1;
        }
        self.make_room(charge, now_ms);
        let idx = self.rewrite(idx, hash, new);
        self.relink(idx, now_ms);
        self.stats.puts += 1;
        Ok(Applied::Stored)
    }

    /// Removes a live key: `Removed`, or `NotFound` when there is none, or `Stale` (nothing
    /// changes) when a live entry or tombstone with a version >= `version` is stored.
    ///
    /// With `tombstone_grace_ms > 0` it leaves a tombstone carrying `version` until
    /// `now_ms + tombstone_grace_ms`, also when the key was absent (a replica may see the
    /// remove before the put it overrides): invisible to reads, charged
    /// ([`Store::tombstone_charge`]), evictable like any entry, reclaimed by `expire`. A
    /// tombstone that alone would exceed `max_memory` is not kept. The removed entry itself
    /// is not reported as a removal: the caller logs its own remove.
    ///
    /// Errors: `EmptyKey`, `KeyTooLarge`, and `TooManyEntries` when a tombstone finds no
    /// block address even after evicting (as for `put`).
    pub fn remove(&mut self, key: &[u8], version: Version, now_ms: u64) -> Result<Removed, Error> {
        self.check_key(key)?;
        let grace = self.config.tombstone_grace_ms;
        let tomb_charge = Store::tombstone_charge(key.len());
        let keep_tombstone = grace > 0 && tomb_charge <= self.config.max_memory;
        let deadline = now_ms.saturating_add(grace);
        let tombstone = NewBlock {
            key,
            value: b"",
            version,
            deadline,
            tombstone: true,
        };
        let hash = self.index.hash(key);
        let Some(idx) = self.find(key, hash, now_ms) else {
            if keep_tombstone {
                self.insert_new(hash, tombstone, tomb_charge, now_ms)?;
            }
            return Ok(Removed::NotFound);
        };
        let old = self.arena.block(idx);
        if old.version() >= version {
            self.stats.stale_writes += 1;
            return Ok(Removed::Stale);
        }
        let was_live = !old.is_tombstone();
        if keep_tombstone {
            self.unlink_for_rewrite(idx);
            self.make_slot_to_move(idx, tombstone.len(), now_ms)?;
            if was_live {
                self.stats.keys -= 1;
                self.stats.tombstones += 1;
            }
            self.make_room(tomb_charge, now_ms);
            let idx = self.rewrite(idx, hash, tombstone);
            self.relink(idx, now_ms);
        } else {
            self.release(idx);
            self.index.shrink_if_sparse(&self.arena);
        }
        if was_live {
            self.stats.removes += 1;
            Ok(Removed::Removed)
        } else {
            Ok(Removed::NotFound)
        }
    }

    /// Sets a new absolute deadline on a live key (0 = never) and makes it the most recently
    /// used; the entry takes `version`. Returns `Ok(true)` when applied, `Ok(false)`, changing
    /// nothing, when the key is missing, removed or expired or its stored version is >=
    /// `version`.
    ///
    /// Errors: `TooManyEntries` when the block must move and no block address is left even
    /// after evicting (the deadline is not changed; the entry becomes the most recently used).
    /// Adding a deadline enlarges the entry's block (see [`Store::charge`]), which may evict
    /// others.
    pub fn touch(
        &mut self,
        key: &[u8],
        expires_at_ms: u64,
        version: Version,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let hash = self.index.hash(key);
        let Some(idx) = self.find(key, hash, now_ms) else {
            return Ok(false);
        };
        let old = self.arena.block(idx);
        if old.is_tombstone() {
            return Ok(false);
        }
        if old.version() >= version {
            self.stats.stale_writes += 1;
            return Ok(false);
        }
        let body = old.body_len();
        let len = body + DEADLINE_SECTION * usize::from(expires_at_ms != 0);
        self.unlink_for_rewrite(idx);
        self.make_slot_to_move(idx, len, now_ms)?;
        self.make_room(charge::for_block(len), now_ms);
        let idx = self.resize(idx, hash, len, body);
        let mut block = self.arena.block_mut(idx);
        block.set_deadline(expires_at_ms);
        block.set_version(version);
        self.relink(idx, now_ms);
        self.stats.touches += 1;
        Ok(true)
    }

    /// Drops `key`'s record, live entry or tombstone, if its version is <= `version`: no
    /// tombstone is left and no removal is reported. Returns whether a live entry was dropped.
    ///
    /// For replaying a write-ahead log, whose order already decided everything: an eviction
    /// or expiry recorded there happens again exactly, and a put whose deadline passed while
    /// the node was down does not come back.
    pub fn forget(&mut self, key: &[u8], version: Version) -> bool {
        let hash = self.index.hash(key);
        let Some(idx) = self.index.find(&self.arena, hash, key) else {
            return false;
        };
        if self.arena.block(idx).version() > version {
            return false;
        }
        let live = !self.arena.block(idx).is_tombstone();
        self.release(idx);
        self.index.shrink_if_sparse(&self.arena);
        live
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > self.config.max_key_len {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.config.max_key_len,
            });
        }
        Ok(())
    }

    /// Adds a record for a key that has none, evicting to make room first.
    fn insert_new(
        &mut self,
        hash: u64,
        new: NewBlock<'_>,
        charge: u64,
        now_ms: u64,
    ) -> Result<(), Error> {
        self.make_slot(new.len(), now_ms)?;
        self.make_room(charge, now_ms);
        let idx = self.arena.alloc(new.len());
        new.encode(self.arena.slot_mut(idx));
        self.index.insert(&self.arena, hash, idx);
        if new.tombstone {
            self.stats.tombstones += 1;
        } else {
            self.stats.keys += 1;
        }
        self.relink(idx, now_ms);
        Ok(())
    }

    /// For the unlinked entry at `idx`, about to take a new length of `len` bytes: when it
    /// must move to a slot of another size, makes one ready (see `make_slot`). On failure the
    /// entry is linked again, as the most recently used, and nothing else changed but the
    /// evictions.
    fn make_slot_to_move(&mut self, idx: u32, len: usize, now_ms: u64) -> Result<(), Error> {
        if arena::fits_in_place(len, self.arena.slot_len_at(idx)) {
            return Ok(());
        }
        self.make_slot(len, now_ms)
            .inspect_err(|_| self.relink(idx, now_ms))
    }

    /// The common overwrite, done where the entry is: when the live entry at `idx` and `new`
    /// (a live entry) both have no deadline and `new` fits `idx`'s slot, writes `new` over it
    /// in place and makes it the most recently used; returns whether it did. That is what the
    /// general path (unlink, rewrite in the same slot, relink) ends with: the slot decides
    /// the charge (see `charge::for_block`), so the bytes charged, the arena and the wheel do
    /// not change and nothing is evicted; only the LRU links are kept instead of rewritten.
    fn overwrite_in_place(&mut self, idx: u32, new: &NewBlock<'_>) -> bool {
        let old = self.arena.block(idx);
        if new.tombstone
            || new.deadline != 0
            || old.is_tombstone()
            || old.has_deadline()
            || !arena::fits_in_place(new.len(), self.arena.slot_len_at(idx))
        {
            return false;
        }
        block::encode_keeping_links(
            self.arena.slot_mut(idx),
            new.key,
            new.value,
            new.version,
            new.deadline,
            new.tombstone,
        );
        self.lru.bump(&mut self.arena, idx);
        true
    }

    /// Writes `new` over the unlinked entry at `idx`: in its slot when the size class is the
    /// same, else in a new slot that the index then names. Returns where the entry is now.
    fn rewrite(&mut self, idx: u32, hash: u64, new: NewBlock<'_>) -> u32 {
        let at = self.resize(idx, hash, new.len(), 0);
        new.encode(self.arena.slot_mut(at));
        at
    }

    /// Gives the unlinked entry at `idx` a slot for a block of `len` bytes, keeping its first
    /// `keep` bytes: the same slot when the size class is the same, else a new one that the
    /// index then names (call `make_slot_to_move` first). Returns where the entry is now.
    fn resize(&mut self, idx: u32, hash: u64, len: usize, keep: usize) -> u32 {
        if arena::fits_in_place(len, self.arena.slot_len_at(idx)) {
            return idx;
        }
        let at = self.arena.alloc(len);
        self.arena.copy(idx, at, keep);
        self.arena.free(idx);
        self.index.replace(hash, idx, at);
        self.note_move(at);
        at
    }
}

/// A record about to be written into a slot.
#[derive(Clone, Copy)]
struct NewBlock<'a> {
    key: &'a [u8],
    value: &'a [u8],
    version: Version,
    /// 0 = none.
    deadline: u64,
    tombstone: bool,
}

impl NewBlock<'_> {
    fn len(&self) -> usize {
        block_len(self.key.len(), self.value.len(), self.deadline != 0)
    }

    fn encode(&self, slot: &mut [u8]) {
        block::encode(
            slot,
            self.key,
            self.value,
            self.version,
            self.deadline,
            self.tombstone,
        );
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
