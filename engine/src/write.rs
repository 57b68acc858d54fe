//! Writes: put, remove and touch, each applied last-writer-wins by [`Version`].

use crate::blob::Blob;
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
    /// `max_memory` even alone, so a later `touch` can always make room), and for a new key
    /// `TooManyEntries`.
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
        let Some(idx) = self.find(key, hash, now_ms) else {
            self.insert_new(
                hash,
                Blob::new(key, value, version, expires_at_ms, false),
                charge,
                now_ms,
            )?;
            self.stats.puts += 1;
            return Ok(Applied::Stored);
        };
        let old = self.slab.blob(idx);
        if old.version() >= version {
            self.stats.stale_writes += 1;
            return Ok(Applied::Stale);
        }
        if old.is_tombstone() {
            self.stats.tombstones -= 1;
            self.stats.keys += 1;
        }
        self.unlink_for_rewrite(idx);
        self.make_room(charge, now_ms);
        let blob = self.slab.blob_mut(idx);
        if !blob.rewrite(value, version, expires_at_ms, false) {
            *blob = Blob::new(key, value, version, expires_at_ms, false);
        }
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
    /// Errors: `EmptyKey`, `KeyTooLarge`, and `TooManyEntries` when a new tombstone finds no
    /// slot.
    pub fn remove(&mut self, key: &[u8], version: Version, now_ms: u64) -> Result<Removed, Error> {
        self.check_key(key)?;
        let grace = self.config.tombstone_grace_ms;
        let tomb_charge = Store::tombstone_charge(key.len());
        let keep_tombstone = grace > 0 && tomb_charge <= self.config.max_memory;
        let deadline = now_ms.saturating_add(grace);
        let hash = self.index.hash(key);
        let Some(idx) = self.find(key, hash, now_ms) else {
            if keep_tombstone {
                self.insert_new(
                    hash,
                    Blob::new(key, b"", version, deadline, true),
                    tomb_charge,
                    now_ms,
                )?;
            }
            return Ok(Removed::NotFound);
        };
        let old = self.slab.blob(idx);
        if old.version() >= version {
            self.stats.stale_writes += 1;
            return Ok(Removed::Stale);
        }
        let was_live = !old.is_tombstone();
        if keep_tombstone {
            if was_live {
                self.stats.keys -= 1;
                self.stats.tombstones += 1;
            }
            self.unlink_for_rewrite(idx);
            self.make_room(tomb_charge, now_ms);
            let blob = self.slab.blob_mut(idx);
            if !blob.rewrite(b"", version, deadline, true) {
                *blob = Blob::new(key, b"", version, deadline, true);
            }
            self.relink(idx, now_ms);
        } else {
            drop(self.release(idx));
            self.index.shrink_if_sparse(&self.slab);
        }
        if was_live {
            self.stats.removes += 1;
            Ok(Removed::Removed)
        } else {
            Ok(Removed::NotFound)
        }
    }

    /// Sets a new absolute deadline on a live key (0 = never) and makes it the most recently
    /// used; the entry takes `version`. Returns false, changing nothing, when the key is
    /// missing, removed or expired, or when its stored version is >= `version`. Adding a
    /// deadline enlarges the entry's block (see [`Store::charge`]), which may evict others.
    pub fn touch(&mut self, key: &[u8], expires_at_ms: u64, version: Version, now_ms: u64) -> bool {
        let hash = self.index.hash(key);
        let Some(idx) = self.find(key, hash, now_ms) else {
            return false;
        };
        let blob = self.slab.blob(idx);
        if blob.is_tombstone() {
            return false;
        }
        if blob.version() >= version {
            self.stats.stale_writes += 1;
            return false;
        }
        let charge = charge::for_entry(key.len(), blob.value().len(), expires_at_ms != 0);
        self.unlink_for_rewrite(idx);
        self.make_room(charge, now_ms);
        let blob = self.slab.blob_mut(idx);
        blob.set_deadline(expires_at_ms);
        blob.set_version(version);
        self.relink(idx, now_ms);
        self.stats.touches += 1;
        true
    }

    /// Drops `key`'s record, live entry or tombstone, if its version is <= `version`: no
    /// tombstone is left and no removal is reported. Returns whether a live entry was dropped.
    ///
    /// For replaying a write-ahead log, whose order already decided everything: an eviction
    /// or expiry recorded there happens again exactly, and a put whose deadline passed while
    /// the node was down does not come back.
    pub fn forget(&mut self, key: &[u8], version: Version) -> bool {
        let hash = self.index.hash(key);
        let Some(idx) = self.index.find(&self.slab, hash, key) else {
            return false;
        };
        if self.slab.blob(idx).version() > version {
            return false;
        }
        let live = !self.slab.blob(idx).is_tombstone();
        drop(self.release(idx));
        self.index.shrink_if_sparse(&self.slab);
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
    fn insert_new(&mut self, hash: u64, blob: Blob, charge: u64, now_ms: u64) -> Result<(), Error> {
        if !self.slab.has_room() {
            return Err(Error::TooManyEntries {
                max: self.slab.limit().into(),
            });
        }
        let tombstone = blob.is_tombstone();
        self.make_room(charge, now_ms);
        let idx = self.slab.insert(blob);
        self.index.insert(&self.slab, hash, idx);
        if tombstone {
            self.stats.tombstones += 1;
        } else {
            self.stats.keys += 1;
        }
        self.relink(idx, now_ms);
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
