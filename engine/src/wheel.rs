//! The hierarchical timer wheel that finds expired entries (and tombstones past their grace)
//! without scanning the store.
//!
//! 11 levels of 64 buckets; level `l` buckets span 64^l ms, so together they cover every `u64`
//! deadline at 1 ms resolution. An entry sits at the level of the highest bit in which its
//! deadline differs from the wheel's time `elapsed` (the scheme of tokio's timer wheel), so the
//! lowest non-empty level always holds the earliest bucket, and each level's occupied buckets
//! all lie ahead of `elapsed`. Advancing visits only non-empty buckets (a 64-bit occupancy
//! mask per level) and moves each entry down at most once per level on its way to the `due`
//! list. Entries without a deadline are never in the wheel, so work tracks what expires.
//!
//! Links are intrusive: `wheel_prev`/`wheel_next` in each entry's block (see block.rs), as arena
//! addresses. A bucket's first entry has `wheel_prev = HEAD_TAG | bucket`, so an entry can be
//! unlinked in O(1) without knowing where it is.

use crate::arena::{Arena, MAX_ADDR};
use crate::block::NIL;

const LEVELS: usize = 11;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Bucket id of the list of entries whose deadline is <= `elapsed`.
const DUE: usize = LEVELS * SLOTS;
const HEAD_TAG: u32 = MAX_ADDR;

const _: () = assert!(DUE < (NIL - HEAD_TAG) as usize);

pub(crate) struct Wheel {
    /// Wheel time (ms): buckets up to here have been emptied into `due`.
    elapsed: u64,
    heads: [u32; DUE + 1],
    occupied: [u64; LEVELS],
    /// Entries linked (in buckets or due).
    len: usize,
    /// Work done, see `Stats::expire_steps`.
    steps: u64,
}

impl Wheel {
    pub(crate) fn new() -> Wheel {
        Wheel {
            elapsed: 0,
            heads: [NIL; DUE + 1],
            occupied: [0; LEVELS],
            len: 0,
            steps: 0,
        }
    }

    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }

    /// Links entry `idx`, which has a deadline and is not in the wheel.
    pub(crate) fn insert(&mut self, arena: &mut Arena, idx: u32, now: u64) {
        if self.len == 0 && now > self.elapsed {
            // Nothing to re-file, so wheel time can jump to `now`: entries then land at the
            // lowest level their distance allows, instead of all sharing one high bucket.
            self.elapsed = now;
        }
        self.len += 1;
        self.link(arena, idx);
    }

    fn link(&mut self, arena: &mut Arena, idx: u32) {
        let when = arena.block(idx).deadline();
        debug_assert!(
            when != 0,
            "invariant: only entries with a deadline enter the wheel"
        );
        let bucket = if when <= self.elapsed {
            DUE
        } else {
            let level = level_for(self.elapsed, when);
            let slot = (when >> (SLOT_BITS as usize * level)) as usize & (SLOTS - 1);
            self.occupied[level] |= 1 << slot;
            level * SLOTS + slot
        };
        let old = self.heads[bucket];
        let mut block = arena.block_mut(idx);
        block.set_wheel_prev(HEAD_TAG | bucket as u32);
        block.set_wheel_next(old);
        if old != NIL {
            arena.block_mut(old).set_wheel_prev(idx);
        }
        self.heads[bucket] = idx;
    }

    /// Unlinks entry `idx` from whichever bucket holds it.
    pub(crate) fn remove(&mut self, arena: &mut Arena, idx: u32) {
        self.len -= 1;
        let (prev, next) = arena.block(idx).wheel_links();
        if prev >= HEAD_TAG {
            let bucket = (prev - HEAD_TAG) as usize;
            self.heads[bucket] = next;
            if next == NIL && bucket < DUE {
                self.occupied[bucket / SLOTS] &= !(1 << (bucket % SLOTS));
            }
        } else {
            arena.block_mut(prev).set_wheel_next(next);
        }
        if next != NIL {
            arena.block_mut(next).set_wheel_prev(prev);
        }
    }

    /// An entry whose deadline is <= `now`, advancing the wheel as far as needed to find one;
    /// `None` when nothing more is due. The caller reclaims it (which unlinks it).
    pub(crate) fn next_due(&mut self, arena: &mut Arena, now: u64) -> Option<u32> {
        if now < self.elapsed {
            // The clock went back: entries in `due` may not be expired at `now`. Wait.
            return None;
        }
        loop {
            if self.heads[DUE] != NIL {
                self.steps += 1;
                return Some(self.heads[DUE]);
            }
            match self.next_bucket() {
                Some((bucket, start)) if start <= now => {
                    debug_assert!(
                        start >= self.elapsed,
                        "invariant: buckets lie ahead of elapsed"
                    );
                    self.elapsed = start;
                    self.cascade(arena, bucket);
                }
                _ => {
                    // Nothing left up to `now`: every occupied bucket starts later, so each
                    // entry keeps its level and bucket relative to the new time.
                    self.elapsed = now;
                    return None;
                }
            }
        }
    }

    /// The earliest non-empty bucket and the time it starts.
    fn next_bucket(&self) -> Option<(usize, u64)> {
        let level = self.occupied.iter().position(|&mask| mask != 0)?;
        let slot = self.occupied[level].trailing_zeros() as u64;
        let shift = SLOT_BITS * level as u32;
        // Start of the current level-wide window (64^(level+1) ms), then the slot within it.
        let window = match 1u64.checked_shl(shift + SLOT_BITS) {
            Some(span) => self.elapsed & !(span - 1),
            None => 0,
        };
        Some((level * SLOTS + slot as usize, window + (slot << shift)))
    }

    /// Empties `bucket` and re-files its entries against the new `elapsed`: lower levels, or due.
    fn cascade(&mut self, arena: &mut Arena, bucket: usize) {
        self.steps += 1;
        let mut idx = std::mem::replace(&mut self.heads[bucket], NIL);
        self.occupied[bucket / SLOTS] &= !(1 << (bucket % SLOTS));
        while idx != NIL {
            let (_, next) = arena.block(idx).wheel_links();
            self.link(arena, idx);
            self.steps += 1;
            idx = next;
        }
    }
}

/// Level of the highest bit (at least bit 5) where `when` differs from `elapsed`.
fn level_for(elapsed: u64, when: u64) -> usize {
    let significant = 63 - ((elapsed ^ when) | (SLOTS as u64 - 1)).leading_zeros();
    significant as usize / SLOT_BITS as usize
}

#[cfg(test)]
#[path = "wheel_tests.rs"]
mod tests;
