//! Hinted handoff, the queue: versioned writes an owner missed, kept by the coordinator's
//! shard until that owner is back, bounded by bytes and by age. Pure: time is passed in;
//! `node::handoff` delivers them.
//!
//! The queue lives in memory; `hint_log` keeps a copy on disk so a coordinator that is killed
//! delivers its hints after its restart. When a bound is exceeded the hint is dropped, counted
//! and logged; the owner then stays behind for that key until the key is written again or a
//! quorum read repairs it (anti-entropy repair is future work).

use std::collections::{HashMap, VecDeque};

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::Op;

/// Bytes a hint is charged: its key and value plus a fixed overhead for the rest.
pub fn charge(op: &Op) -> u64 {
    (op.key.len() + op.value.len() + 64) as u64
}

struct Hint {
    op: Op,
    at_ms: u64,
}

/// One shard's hints, per owner that missed them, oldest first.
pub struct Hints {
    max_bytes: u64,
    max_age_ms: u64,
    queues: HashMap<NodeId, VecDeque<Hint>>,
    bytes: u64,
    pub delivered: u64,
    pub dropped: u64,
}

impl Hints {
    /// A queue holding at most `max_bytes` (see [`charge`]) of hints, each at most
    /// `max_age_ms` old.
    pub fn new(max_bytes: u64, max_age_ms: u64) -> Hints {
        Hints {
            max_bytes,
            max_age_ms,
            queues: HashMap::new(),
            bytes: 0,
            delivered: 0,
            dropped: 0,
        }
    }

    /// Keeps `op` (a replica write) for `node`; false, and counted as dropped, when it does
    /// not fit in the byte bound.
    pub fn push(&mut self, node: NodeId, op: Op, now_ms: u64) -> bool {
        let bytes = charge(&op);
        if self.bytes + bytes > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        self.bytes += bytes;
        self.queues
            .entry(node)
            .or_default()
            .push_back(Hint { op, at_ms: now_ms });
        true
    }

    /// Keeps `op` for `node` even past the byte bound: for a hint re-targeted to the key's
    /// current owners, which replaces one already kept (the bound is exceeded by at most the
    /// extra copies for a key with several new owners, until they are delivered).
    pub fn push_retargeted(&mut self, node: NodeId, op: Op, now_ms: u64) {
        self.bytes += charge(&op);
        self.queues
            .entry(node)
            .or_default()
            .push_back(Hint { op, at_ms: now_ms });
    }

    /// Drops every hint older than the age bound; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> u64 {
        let mut n = 0;
        for queue in self.queues.values_mut() {
            while queue
                .front()
                .is_some_and(|h| now_ms.saturating_sub(h.at_ms) > self.max_age_ms)
            {
                if let Some(h) = queue.pop_front() {
                    self.bytes -= charge(&h.op);
                    n += 1;
                }
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        self.dropped += n;
        n
    }

    /// The owners that have hints waiting.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.queues.keys().copied().collect()
    }

    /// Takes up to `max` of `node`'s oldest hints for delivery, with the times they were
    /// made; give back the ones that failed with [`Hints::give_back`].
    pub fn take(&mut self, node: NodeId, max: usize) -> Vec<(Op, u64)> {
        let Some(queue) = self.queues.get_mut(&node) else {
            return Vec::new();
        };
        let n = max.min(queue.len());
        let taken: Vec<(Op, u64)> = queue.drain(..n).map(|h| (h.op, h.at_ms)).collect();
        if queue.is_empty() {
            self.queues.remove(&node);
        }
        for (op, _) in &taken {
            self.bytes -= charge(op);
        }
        taken
    }

    /// Puts back, at the front and in their order, hints whose delivery failed.
    pub fn give_back(&mut self, node: NodeId, hints: Vec<(Op, u64)>) {
        let queue = self.queues.entry(node).or_default();
        for (op, at_ms) in hints.into_iter().rev() {
            self.bytes += charge(&op);
            queue.push_front(Hint { op, at_ms });
        }
    }

    /// Every hint held, as `(owner, op, made at)`, per owner oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Op, u64)> + '_ {
        self.queues
            .iter()
            .flat_map(|(&node, q)| q.iter().map(move |h| (node, &h.op, h.at_ms)))
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// `(hints held, their bytes)`.
    pub fn held(&self) -> (u64, u64) {
        let n = self.queues.values().map(|q| q.len() as u64).sum();
        (n, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str) -> Op {
        Op {
            key: key.as_bytes().to_vec(),
            value: vec![0; 36],
            ..Op::default()
        }
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        // Each hint is charged 1 + 36 + 64 = 101 bytes.
        let mut h = Hints::new(250, 1_000);
        assert!(h.push(2, op("a"), 0));
        assert!(h.push(3, op("b"), 500));
        assert!(!h.push(2, op("c"), 600), "over the byte bound");
        assert_eq!((h.held(), h.dropped), ((2, 202), 1));
        assert_eq!(h.expire(1_000), 0);
        assert_eq!(h.expire(1_001), 1, "a is older than 1000 ms");
        assert_eq!((h.held(), h.dropped, h.nodes()), ((1, 101), 2, vec![3]));
    }

    #[test]
    fn a_retargeted_hint_is_kept_past_the_byte_bound() {
        let mut h = Hints::new(250, 1_000);
        assert!(h.push(2, op("a"), 0));
        assert!(h.push(2, op("b"), 0));
        // The full store re-targets node 2's hints to nodes 3 and 4: none is lost.
        let taken = h.take(2, usize::MAX);
        for (o, at) in taken {
            h.push_retargeted(3, o.clone(), at);
            h.push_retargeted(4, o, at);
        }
        assert_eq!((h.held(), h.dropped), ((4, 404), 0));
        assert!(!h.push(5, op("c"), 0), "a new hint still meets the bound");
    }

    #[test]
    fn take_and_give_back_keep_the_order() {
        let mut h = Hints::new(10_000, 1_000);
        for k in ["a", "b", "c"] {
            h.push(2, op(k), 0);
        }
        let first = h.take(2, 2);
        assert_eq!(first.len(), 2);
        assert_eq!(h.held().0, 1);
        h.give_back(2, first);
        let all: Vec<Vec<u8>> = h.take(2, 10).into_iter().map(|(o, _)| o.key).collect();
        assert_eq!(all, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(h.held(), (0, 0));
        assert!(h.nodes().is_empty());
    }
}
