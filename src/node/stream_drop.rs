//! The drop pass after a membership change: a shard forgets the keys its node no longer owns.

use std::rc::Rc;

use kvmesh_engine::Cursor;
use kvmesh_net::moves;
use kvmesh_net::ring::{NodeId, Ring};

use super::SCAN_SLOTS;
use crate::node::server::ShardCtx;

/// After the change is finished: drops this shard's keys that this node does not own under
/// `ring` at `replicas`. Run it only for the current epoch's Finish, once every source is done
/// (the control plane fences it by epoch): run early or with a stale ring, it drops copies
/// that no other owner may hold yet. It refuses (drops nothing, says why in the log, returns
/// 0) `replicas == 0` and a ring without this node, which would drop everything.
///
/// Fenced against the next change: at every step it also keeps what this node owns under
/// the agreed topology it routes by now (its ring and, while a change runs, the ring it moves
/// to: keys streamed here for that change), and it stops, keeping the rest, as soon as this
/// shard applies another epoch than the one it started at (the next Finish runs it again).
///
/// A local drop: each is logged (as an eviction record, which recovery replays by forgetting
/// that version) so a restart does not bring it back, and it is never replicated, so the
/// owners keep theirs. A key rewritten since the scan saw it is kept. Returns how many keys
/// were dropped, once their records are durable, and whether the pass went to the end.
pub async fn drop_unowned(ctx: &Rc<ShardCtx>, ring: &Ring, replicas: usize) -> Dropped {
    let start = ctx.peers.membership();
    let me = start.me;
    if replicas == 0 || !ring.nodes().contains(&me) {
        tracing::error!(
            "shard {}: refusing to drop keys no longer owned: the ring {:?} at {replicas} \
             replica(s) would leave node {me} nothing",
            ctx.me,
            ring.nodes()
        );
        return Dropped::default();
    }
    #[cfg(debug_assertions)]
    crate::node::hold_hook::hold_drop().await;
    let mut dropped = 0;
    let mut complete = true;
    let mut last_seq = None;
    let mut cursor = Some(Cursor::START);
    while let Some(at) = cursor {
        let now = ctx.peers.membership();
        if now.epoch != start.epoch {
            tracing::info!(
                "shard {}: the drop of keys no longer owned stopped: epoch {} applied since it \
                 began at epoch {}",
                ctx.me,
                now.epoch,
                start.epoch
            );
            complete = false;
            break;
        }
        let mut rings = vec![ring];
        if now.epoch > 0 {
            rings.push(now.ring());
            rings.extend(now.pending_ring());
        }
        let mut unowned = Vec::new();
        cursor =
            ctx.shard
                .borrow_mut()
                .store_mut()
                .scan(at, SCAN_SLOTS, crate::node::now_ms(), |e| {
                    if !keeps(&rings, replicas, e.key, me) {
                        unowned.push((e.key.to_vec(), e.version));
                    }
                });
        {
            let mut shard = ctx.shard.borrow_mut();
            for (key, version) in unowned {
                if let Some(seq) = shard.drop_local(&key, version) {
                    dropped += 1;
                    shard.stream.keys_dropped += 1;
                    last_seq = seq.or(last_seq);
                }
            }
        }
        futures_lite::future::yield_now().await;
    }
    let log = ctx.shard.borrow().log().cloned();
    if let (Some(log), Some(seq)) = (log, last_seq) {
        if let Err(e) = log.durable(seq).await {
            tracing::error!(
                "shard {}: the drop of keys no longer owned is not durable: {e}",
                ctx.me
            );
            complete = false;
        }
    }
    if dropped > 0 {
        tracing::info!(
            "shard {}: dropped {dropped} key(s) this node no longer owns",
            ctx.me
        );
    }
    Dropped {
        keys: dropped,
        completed_at: complete.then_some(start.epoch),
    }
}

/// What a drop pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Keys dropped, their records durable.
    pub keys: u64,
    /// The epoch it ran at, when it went through the whole store (not stopped by another
    /// epoch, not refused, its records durable).
    pub completed_at: Option<u64>,
}

/// Whether node `me` keeps `key`: it owns it under one of `rings` at `replicas`.
fn keeps(rings: &[&Ring], replicas: usize, key: &[u8], me: NodeId) -> bool {
    rings
        .iter()
        .any(|ring| moves::owns(ring, replicas, key, me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_any_current_ring_gives_it() {
        // A join of node 4 finished (ring 1-4); a leave of node 1 runs (pending ring 2-4):
        // node 2 keeps what it owns under either, and drops only what it owns under neither.
        let done = Ring::new(&[1, 2, 3, 4]).unwrap();
        let pending = Ring::new(&[2, 3, 4]).unwrap();
        let keys: Vec<Vec<u8>> = (0..2000).map(|i| format!("k{i}").into_bytes()).collect();
        let gained = keys
            .iter()
            .find(|k| !moves::owns(&done, 1, k, 2) && moves::owns(&pending, 1, k, 2))
            .expect("a key node 2 gains by the leave");
        assert!(
            !keeps(&[&done], 1, gained, 2),
            "unfenced: it would be dropped"
        );
        assert!(keeps(&[&done, &done, &pending], 1, gained, 2));
        let neither = keys
            .iter()
            .find(|k| !moves::owns(&done, 1, k, 2) && !moves::owns(&pending, 1, k, 2))
            .expect("a key node 2 owns under neither ring");
        assert!(!keeps(&[&done, &done, &pending], 1, neither, 2));
        let owned = keys.iter().find(|k| moves::owns(&done, 1, k, 2)).unwrap();
        assert!(keeps(&[&done], 1, owned, 2));
    }
}
