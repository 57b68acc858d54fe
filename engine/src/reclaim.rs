//! Taking entries out: unlinking, eviction to make room, and the background expiry step.

use crate::arena::SMALL_MAX;
use crate::error::Error;
use crate::outcome::{Removal, RemovalKind};
use crate::store::{charge_of, Store};

impl Store {
    /// Background reclaim step: removes up to `max` entries whose deadline is <= `now_ms` and
    /// tombstones whose grace has passed, and returns how many. Live entries are reported as
    /// [`RemovalKind::Expired`]. Its work is proportional to what expired (see the timer wheel
    /// and `Stats::expire_steps`), never to the size of the store. If `now_ms` is earlier than
    /// a previous call's, it reclaims nothing.
    pub fn expire(&mut self, now_ms: u64, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some(idx) = self.wheel.next_due(&mut self.arena, now_ms) else {
                break;
            };
            self.discard(idx, now_ms);
            done += 1;
        }
        self.stats.expire_steps = self.wheel.steps();
        if done > 0 {
            self.index.shrink_if_sparse(&self.arena);
        }
        done
    }

    /// Takes entry `idx` out of the index, the LRU, the wheel and the arena, and settles the
    /// counters; its slot is free afterwards.
    pub(crate) fn release(&mut self, idx: u32) {
        let block = self.arena.block(idx);
        let hash = self.index.hash(block.key());
        let (charge, tombstone, timed) =
            (charge_of(block), block.is_tombstone(), block.has_deadline());
        self.index.remove(hash, idx);
        self.lru.unlink(&mut self.arena, idx);
        if timed {
            self.wheel.remove(&mut self.arena, idx);
        }
        self.stats.bytes_used -= charge;
        if tombstone {
            self.stats.tombstones -= 1;
        } else {
            self.stats.keys -= 1;
        }
        self.arena.free(idx);
        self.stats.arena_bytes = self.arena.resident_bytes();
    }

    /// Drops entry `idx` on the store's own account: a live entry is reported as expired (if
    /// its deadline has passed) or evicted; a tombstone is dropped silently, since its key is
    /// already absent and its remove already logged.
    pub(crate) fn discard(&mut self, idx: u32, now_ms: u64) {
        let block = self.arena.block(idx);
        let removal = if block.is_tombstone() {
            self.stats.tombstones_dropped += 1;
            None
        } else if block.is_dead(now_ms) {
            self.stats.expirations += 1;
            Some(Removal::new(RemovalKind::Expired, block))
        } else {
            self.stats.evictions += 1;
            Some(Removal::new(RemovalKind::Evicted, block))
        };
        self.release(idx);
        self.removals.extend(removal);
    }

    /// Evicts least-recently-used entries until `charge` more bytes fit. Callers ensure
    /// `charge <= max_memory` and have unlinked the entry being rewritten, if any, so it is
    /// never its own victim.
    pub(crate) fn make_room(&mut self, charge: u64, now_ms: u64) {
        while self.stats.bytes_used + charge > self.config.max_memory {
            let Some(victim) = self.lru.oldest() else {
                break;
            };
            self.discard(victim, now_ms);
        }
    }

    /// Evicts least-recently-used entries until the arena can take a block of `len` bytes:
    /// while it has no address left for one, and while a large block, or a class page beyond
    /// its class's first, would take its resident bytes above `max_memory` plus one page per
    /// class in use (the bound documented at [`Store::entry_charge`]). Callers have unlinked
    /// the entry being rewritten, if any, so it is never a victim. With nothing left to
    /// evict, the bound may be passed; a missing address is `TooManyEntries`.
    pub(crate) fn make_slot(&mut self, len: usize, now_ms: u64) -> Result<(), Error> {
        loop {
            let no_address = !self.arena.has_room(len);
            let growth = self.arena.growth_for(len);
            let beyond_first = len > SMALL_MAX || self.arena.class_has_page(len);
            let over = growth > 0
                && beyond_first
                && self.arena.resident_bytes() + growth
                    > self.config.max_memory + self.arena.first_pages_bytes();
            if !no_address && !over {
                return Ok(());
            }
            if no_address && self.arena.release_idle_pages() {
                continue;
            }
            let Some(victim) = self.lru.oldest() else {
                return if no_address {
                    Err(self.too_many_entries())
                } else {
                    Ok(())
                };
            };
            self.discard(victim, now_ms);
        }
    }

    pub(crate) fn too_many_entries(&self) -> Error {
        let (class_bytes, large_blocks) = self.arena.limits();
        Error::TooManyEntries {
            class_bytes,
            large_blocks,
        }
    }

    /// Unlinks entry `idx` from the LRU and the wheel and uncharges it, keeping it indexed and
    /// in its slot, so it can be rewritten (in place or moved); `relink` puts it back.
    pub(crate) fn unlink_for_rewrite(&mut self, idx: u32) {
        let block = self.arena.block(idx);
        let (charge, timed) = (charge_of(block), block.has_deadline());
        self.lru.unlink(&mut self.arena, idx);
        if timed {
            self.wheel.remove(&mut self.arena, idx);
        }
        self.stats.bytes_used -= charge;
    }

    /// Charges entry `idx` and links it as the most recently used (and into the wheel if it
    /// has a deadline).
    pub(crate) fn relink(&mut self, idx: u32, now_ms: u64) {
        let block = self.arena.block(idx);
        let (charge, timed) = (charge_of(block), block.has_deadline());
        self.stats.bytes_used += charge;
        self.stats.arena_bytes = self.arena.resident_bytes();
        debug_assert!(self.stats.bytes_used <= self.config.max_memory);
        self.lru.push_front(&mut self.arena, idx);
        if timed {
            self.wheel.insert(&mut self.arena, idx, now_ms);
        }
    }
}
