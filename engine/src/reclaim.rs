//! Taking entries out: unlinking, eviction to make room, and the background expiry step.

use crate::blob::Blob;
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
            let Some(idx) = self.wheel.next_due(&mut self.slab, now_ms) else {
                break;
            };
            self.discard(idx, now_ms);
            done += 1;
        }
        self.stats.expire_steps = self.wheel.steps();
        if done > 0 {
            self.index.shrink_if_sparse(&self.slab);
        }
        done
    }

    /// Takes entry `idx` out of the index, the LRU, the wheel and the slab, settles the
    /// counters, and hands back its block.
    pub(crate) fn release(&mut self, idx: u32) -> Blob {
        let blob = self.slab.blob(idx);
        let hash = self.index.hash(blob.key());
        let (charge, tombstone, timed) =
            (charge_of(blob), blob.is_tombstone(), blob.deadline() != 0);
        self.index.remove(hash, idx);
        self.lru.unlink(&mut self.slab, idx);
        if timed {
            self.wheel.remove(&mut self.slab, idx);
        }
        self.stats.bytes_used -= charge;
        if tombstone {
            self.stats.tombstones -= 1;
        } else {
            self.stats.keys -= 1;
        }
        self.slab.remove(idx)
    }

    /// Drops entry `idx` on the store's own account: a live entry is reported as expired (if
    /// its deadline has passed) or evicted; a tombstone is dropped silently, since its key is
    /// already absent and its remove already logged.
    pub(crate) fn discard(&mut self, idx: u32, now_ms: u64) {
        let blob = self.release(idx);
        let kind = if blob.is_tombstone() {
            self.stats.tombstones_dropped += 1;
            return;
        } else if blob.is_dead(now_ms) {
            self.stats.expirations += 1;
            RemovalKind::Expired
        } else {
            self.stats.evictions += 1;
            RemovalKind::Evicted
        };
        self.removals.push(Removal::new(kind, blob));
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

    /// Unlinks entry `idx` from the LRU and the wheel and uncharges it, keeping it indexed and
    /// in its slot, so it can be rewritten in place; `relink` puts it back.
    pub(crate) fn unlink_for_rewrite(&mut self, idx: u32) {
        let blob = self.slab.blob(idx);
        let (charge, timed) = (charge_of(blob), blob.deadline() != 0);
        self.lru.unlink(&mut self.slab, idx);
        if timed {
            self.wheel.remove(&mut self.slab, idx);
        }
        self.stats.bytes_used -= charge;
    }

    /// Charges entry `idx` and links it as the most recently used (and into the wheel if it
    /// has a deadline).
    pub(crate) fn relink(&mut self, idx: u32, now_ms: u64) {
        let blob = self.slab.blob(idx);
        let (charge, timed) = (charge_of(blob), blob.deadline() != 0);
        self.stats.bytes_used += charge;
        debug_assert!(self.stats.bytes_used <= self.config.max_memory);
        self.lru.push_front(&mut self.slab, idx);
        if timed {
            self.wheel.insert(&mut self.slab, idx, now_ms);
        }
    }
}
