//! The move plan of a ring change: when the member list changes from `old` to `new`, which node
//! sends each key, and to whom. Pure and deterministic, like [`crate::ring`]: every node computes
//! the same plan from the same two rings, so the nodes agree on who streams what without talking.
//!
//! For a key with owners `O` under `old` and `N` under `new` (each `replicas` long, clamped):
//!
//! ```text
//! destinations = N \ O                         (in N's order: the owners the key gains)
//! source       = the first of O that is in new's member list, if any,
//!                else the first of O           (only a leaving node holds it: it sends)
//!                -- none when destinations is empty
//! ```
//!
//! Exactly one node sends each moved key, once to each destination, so the bytes a full stream
//! moves equal the theoretical minimum `Σ (key + value) × |destinations|` ([`MoveCost`]).
//!
//! A plan *without* some nodes ([`plan_key_without`], [`moved_ranges_without`]: a node removed
//! while it is down) never picks them as a source: the source is the first of `O` that is in
//! new's member list and not down, else the first of `O` not down; a key only down nodes held
//! moves nowhere (it is lost: at one replica, a down node's keys).

use crate::ring::{NodeId, Ring};
use crate::routing::KeyHash;

/// What happens to one key when the ring changes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyMove {
    /// The node that sends the key; `None` when the key gains no owner (nothing moves).
    pub source: Option<NodeId>,
    /// The owners the key gains, in the new ring's owner order; empty when nothing moves.
    pub destinations: Vec<NodeId>,
}

impl KeyMove {
    /// Whether `node` must send this key.
    pub fn is_sent_by(&self, node: NodeId) -> bool {
        self.source == Some(node)
    }
}

/// The plan for one key: see the module docs for the rule. Both rings must place keys with the
/// same hasher (the production rings do).
pub fn plan_key<H: KeyHash>(old: &Ring<H>, new: &Ring<H>, replicas: usize, key: &[u8]) -> KeyMove {
    plan_point(old, new, replicas, &[], old.point(key))
}

/// [`plan_key`] when the nodes in `down` cannot send (see the module docs).
pub fn plan_key_without<H: KeyHash>(
    old: &Ring<H>,
    new: &Ring<H>,
    replicas: usize,
    down: &[NodeId],
    key: &[u8],
) -> KeyMove {
    plan_point(old, new, replicas, down, old.point(key))
}

/// One arc of the hash space, `(after, upto]`, wrapping past 2^64 when `after >= upto` (so
/// `after == upto` is the whole space), whose keys all move the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMove {
    pub after: u64,
    pub upto: u64,
    pub plan: KeyMove,
}

impl RangeMove {
    /// Whether a key hashing to `point` lies in this arc.
    pub fn contains(&self, point: u64) -> bool {
        if self.after < self.upto {
            self.after < point && point <= self.upto
        } else {
            point > self.after || point <= self.upto
        }
    }
}

/// The arcs of the hash space whose keys move when the ring changes from `old` to `new`, each
/// with its plan (the plan of every key in it: [`plan_key`]); adjacent arcs with the same plan
/// are merged. The tokens of both rings cut the space into arcs within which neither ring's
/// owners change, so one point decides each arc. `O((t_old + t_new) × replicas)`.
pub fn moved_ranges<H: KeyHash>(old: &Ring<H>, new: &Ring<H>, replicas: usize) -> Vec<RangeMove> {
    moved_ranges_without(old, new, replicas, &[])
}

/// [`moved_ranges`] when the nodes in `down` cannot send: the arcs of [`plan_key_without`].
pub fn moved_ranges_without<H: KeyHash>(
    old: &Ring<H>,
    new: &Ring<H>,
    replicas: usize,
    down: &[NodeId],
) -> Vec<RangeMove> {
    let mut cuts: Vec<u64> = old.tokens().chain(new.tokens()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut arcs: Vec<RangeMove> = Vec::new();
    for (i, &upto) in cuts.iter().enumerate() {
        let after = if i == 0 {
            cuts[cuts.len() - 1]
        } else {
            cuts[i - 1]
        };
        let plan = plan_point(old, new, replicas, down, upto);
        match arcs.last_mut() {
            Some(last) if last.plan == plan => last.upto = upto,
            _ => arcs.push(RangeMove { after, upto, plan }),
        }
    }
    // The first and last arcs meet at the wrap: one arc if they move alike.
    if arcs.len() > 1 && arcs[0].plan == arcs[arcs.len() - 1].plan {
        if let Some(last) = arcs.pop() {
            arcs[0].after = last.after;
        }
    }
    arcs.retain(|a| a.plan.source.is_some());
    arcs
}

/// The plan of the keys whose hash is `point`.
fn plan_point<H: KeyHash>(
    old: &Ring<H>,
    new: &Ring<H>,
    replicas: usize,
    down: &[NodeId],
    point: u64,
) -> KeyMove {
    let before = old.owners_of_point(point, replicas);
    let destinations: Vec<NodeId> = new
        .owners_of_point(point, replicas)
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    if destinations.is_empty() {
        return KeyMove::default();
    }
    let up = |n: &&NodeId| !down.contains(n);
    let stays = |n: &&NodeId| up(n) && new.nodes().binary_search(n).is_ok();
    let Some(source) = before
        .iter()
        .find(stays)
        .or(before.iter().find(up))
        .copied()
    else {
        return KeyMove::default();
    };
    let source = Some(source);
    KeyMove {
        source,
        destinations,
    }
}

/// Whether `node` owns `key` under `ring` at `replicas`: what the drop pass keeps.
pub fn owns<H: KeyHash>(ring: &Ring<H>, replicas: usize, key: &[u8], node: NodeId) -> bool {
    ring.owners(key, replicas).contains(&node)
}

/// The theoretical minimum cost of a move, summed key by key: every key whose owner set gains
/// nodes must reach each gained node once, so `bytes` is `(key + value) × destinations` summed.
/// A stream that sends each planned copy once moves exactly this many bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveCost {
    /// Keys with at least one destination.
    pub keys: u64,
    /// Key copies to deliver: `Σ |destinations|`.
    pub copies: u64,
    /// `Σ (key + value bytes) × |destinations|`.
    pub bytes: u64,
}

impl MoveCost {
    /// Adds one key of `key_len + value_len` bytes moved as `plan` says.
    pub fn add(&mut self, plan: &KeyMove, key_len: usize, value_len: usize) {
        let copies = plan.destinations.len() as u64;
        if copies == 0 {
            return;
        }
        self.keys += 1;
        self.copies += copies;
        self.bytes += copies * (key_len + value_len) as u64;
    }

    /// The sum of two costs (for adding up shards or nodes).
    pub fn merged(self, other: MoveCost) -> MoveCost {
        MoveCost {
            keys: self.keys + other.keys,
            copies: self.copies + other.copies,
            bytes: self.bytes + other.bytes,
        }
    }
}

#[cfg(test)]
#[path = "moves_tests.rs"]
mod tests;
