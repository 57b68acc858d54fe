//! The in-flight fence of a membership change: which requests a shard planned under which
//! topology epoch are still running.
//!
//! A coordinator plans a write with the ring of the epoch it routes by: the owners it sends
//! the write to, and, while a change runs, the change's new owners too. A write planned under
//! the epoch *before* a change began goes to the old owners only; if it reaches a source of the
//! change after that source streamed the key, the new owner is left without it (at
//! `--replicas 1`, an acknowledged write lost once ownership flips and the old owner drops).
//! So a source streams only once every shard of every node taking part reports that it has
//! **drained** the change's epoch: every request it planned under an older epoch finished
//! (Cassandra and Scylla fence a topology change the same way, with token metadata barriers).
//!
//! Each request holds an [`Entered`] guard from planning until its last send to an owner
//! completed or failed (a replica write's answer is awaited apart from the client's reply, so
//! the guard travels into that task too); dropping the guard (a request cancelled with its
//! connection included) leaves the fence. [`Fence::drained`] is what `OP_TOPOLOGY` reports.
//!
//! Thread model: one per shard, used from that shard's executor only (`Cell`s, no locks).
//! The hot path costs one short scan of [`SLOTS`] cells per request and no allocation.

use std::cell::Cell;
use std::rc::Rc;

/// How many distinct epochs are counted apart. Requests of more epochs than this at once
/// (several changes within one request's lifetime) share a slot under the oldest of them,
/// which only makes the fence wait longer, never shorter.
pub const SLOTS: usize = 4;

/// One shard's requests in flight, counted per epoch they were planned under.
#[derive(Debug, Default)]
pub struct Fence {
    /// `(epoch, requests in flight)`; a slot with 0 requests is free.
    slots: [Cell<(u64, u64)>; SLOTS],
}

impl Fence {
    /// Counts a request planned under `epoch` until the returned guard (and every clone of it)
    /// is dropped.
    pub fn enter(self: &Rc<Self>, epoch: u64) -> Entered {
        let slot = self.slot_for(epoch);
        let (e, n) = self.slots[slot].get();
        let e = if n == 0 { epoch } else { e.min(epoch) };
        self.slots[slot].set((e, n + 1));
        Entered {
            fence: self.clone(),
            slot,
            epoch,
        }
    }

    /// The slot counting `epoch`: its own, else a free one, else the one of the oldest epoch.
    fn slot_for(&self, epoch: u64) -> usize {
        let mut free = None;
        let mut oldest = 0;
        for (i, cell) in self.slots.iter().enumerate() {
            let (e, n) = cell.get();
            if n > 0 && e == epoch {
                return i;
            }
            if n == 0 && free.is_none() {
                free = Some(i);
            }
            if n > 0 && e < self.slots[oldest].get().0 {
                oldest = i;
            }
        }
        free.unwrap_or(oldest)
    }

    /// The newest epoch `E` (at most `applied`, the epoch this shard plans new requests under)
    /// such that every request this shard planned under an epoch older than `E` finished.
    pub fn drained(&self, applied: u64) -> u64 {
        self.slots
            .iter()
            .map(Cell::get)
            .filter(|&(_, n)| n > 0)
            .map(|(e, _)| e)
            .fold(applied, u64::min)
    }
}

/// A request counted by its shard's [`Fence`] until dropped. A clone counts once more, so a
/// task that outlives the request (a replica write's answer) keeps the fence up.
#[derive(Debug)]
pub struct Entered {
    fence: Rc<Fence>,
    slot: usize,
    /// The epoch the request was planned under.
    epoch: u64,
}

impl Entered {
    /// The epoch of the topology the request was planned under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Clone for Entered {
    fn clone(&self) -> Self {
        let cell = &self.fence.slots[self.slot];
        let (e, n) = cell.get();
        cell.set((e, n + 1));
        Entered {
            fence: self.fence.clone(),
            slot: self.slot,
            epoch: self.epoch,
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let cell = &self.fence.slots[self.slot];
        let (e, n) = cell.get();
        cell.set((e, n.saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_once_every_older_request_finished() {
        let fence = Rc::new(Fence::default());
        assert_eq!(fence.drained(3), 3, "nothing in flight");
        let old = fence.enter(2);
        let new = fence.enter(3);
        assert_eq!(fence.drained(3), 2, "a request of epoch 2 runs");
        let kept = old.clone();
        drop(old);
        assert_eq!(fence.drained(3), 2, "its replica answer is still awaited");
        drop(kept);
        assert_eq!(fence.drained(3), 3, "only epoch 3 requests run");
        drop(new);
        assert_eq!(fence.drained(4), 4);
    }

    #[test]
    fn more_epochs_than_slots_share_the_oldest_and_wait_longer() {
        let fence = Rc::new(Fence::default());
        let held: Vec<Entered> = (5..5 + SLOTS as u64).map(|e| fence.enter(e)).collect();
        // A fifth epoch joins the slot of the oldest (5).
        let late = fence.enter(20);
        assert_eq!(fence.drained(20), 5);
        drop(held);
        assert_eq!(
            fence.drained(20),
            5,
            "the request of epoch 20 now counts as 5: later"
        );
        drop(late);
        assert_eq!(fence.drained(20), 20);
        // An older request joining a newer slot lowers it: never reported drained too early.
        let a = fence.enter(7);
        let others: Vec<Entered> = (8..8 + SLOTS as u64 - 1).map(|e| fence.enter(e)).collect();
        let older = fence.enter(6);
        assert_eq!(fence.drained(30), 6);
        drop((a, others, older));
        assert_eq!(fence.drained(30), 30);
    }
}
