//! The node-wide board where each shard publishes what it reports of the in-flight fence (see
//! `fence`): the topology epoch it applied and the epoch it drained. A source shard reads its
//! own node's other shards here, not over the network: a client connection to a sibling's
//! wire port can be refused by `--max-connections` under client load, and would cost a TCP
//! connection per sibling per look.
//!
//! Thread model: shared by every shard's executor (`Arc`); each shard writes only its own
//! entry, every few milliseconds (`publish_every`), never per request. An entry is one
//! `Mutex`, so a reader never sees the epoch of one publication with the drain of another.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often each shard publishes its entry.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// An entry not published for this long is stale: its shard's executor is stuck (or has not
/// started publishing). A stale shard counts as applied but not drained, so the fence's
/// bounded wait applies to it instead of an unbounded one.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// What one shard last published.
#[derive(Debug, Clone, Copy)]
struct Entry {
    epoch: u64,
    drained: u64,
    at: Instant,
}

/// What a reader makes of a shard's entry for a change at some epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The shard applied the epoch (or is stale: see [`STALE_AFTER`]).
    pub applied: bool,
    /// The shard applied the epoch and finished every request planned before it.
    pub drained: bool,
}

/// One entry per shard of this node.
#[derive(Debug)]
pub struct FenceBoard {
    entries: Box<[Mutex<Option<Entry>>]>,
}

impl FenceBoard {
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(FenceBoard {
            entries: (0..shards).map(|_| Mutex::new(None)).collect(),
        })
    }

    /// Shard `shard` applied topology `epoch` and drained `drained` (see `fence::Fence`).
    pub fn publish(&self, shard: usize, epoch: u64, drained: u64) {
        if let Some(entry) = self.entries.get(shard) {
            let entry_now = Entry {
                epoch,
                drained,
                at: Instant::now(),
            };
            *entry.lock().unwrap_or_else(PoisonError::into_inner) = Some(entry_now);
        }
    }

    /// What shard `shard` reports of the change at `epoch`, as of `now`.
    pub fn seen(&self, shard: usize, epoch: u64, now: Instant) -> Seen {
        let entry = self
            .entries
            .get(shard)
            .and_then(|e| *e.lock().unwrap_or_else(PoisonError::into_inner));
        match entry {
            Some(e) if now.saturating_duration_since(e.at) <= STALE_AFTER => Seen {
                applied: e.epoch >= epoch,
                drained: e.epoch >= epoch && e.drained >= epoch,
            },
            // Never published, or stuck: the bounded wait for the drain applies.
            _ => Seen {
                applied: true,
                drained: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_counts_as_drained_only_once_it_applied_and_drained_the_epoch() {
        let board = FenceBoard::new(2);
        board.publish(1, 4, 3);
        assert_eq!(
            board.seen(1, 4, Instant::now()),
            Seen {
                applied: true,
                drained: false
            }
        );
        board.publish(1, 4, 4);
        assert!(board.seen(1, 4, Instant::now()).drained);
        let newer = board.seen(1, 5, Instant::now());
        assert!(!newer.applied && !newer.drained);
    }

    #[test]
    fn a_silent_or_stuck_shard_is_applied_but_not_drained_so_the_bound_applies() {
        let board = FenceBoard::new(2);
        let silent = board.seen(0, 1, Instant::now());
        assert!(silent.applied && !silent.drained);
        board.publish(1, 9, 9);
        let later = Instant::now() + STALE_AFTER + Duration::from_millis(1);
        let stuck = board.seen(1, 1, later);
        assert!(stuck.applied && !stuck.drained, "stale: {stuck:?}");
        assert!(board.seen(1, 1, Instant::now()).drained);
        let missing = board.seen(7, 1, Instant::now());
        assert!(missing.applied && !missing.drained);
    }
}
