//! The drop pass after a membership change: a shard forgets the keys its node no longer owns.

use std::rc::Rc;

use kvmesh_engine::Cursor;
use kvmesh_net::moves;
use kvmesh_net::ring::Ring;

use super::SCAN_SLOTS;
use crate::node::server::ShardCtx;

/// After the change is finished: drops this shard's keys that this node does not own under
/// `ring` at `replicas`. Run it only for the current epoch's Finish, once every source is done
/// (the control plane fences it by epoch): run early or with a stale ring, it drops copies
/// that no other owner may hold yet. It refuses (drops nothing, says why in the log, returns
/// 0) `replicas == 0` and a ring without this node, which would drop everything. A local drop: each is logged (as an eviction record, which recovery
/// replays by forgetting that version) so a restart does not bring it back, and it is never
/// replicated, so the owners keep theirs. A key rewritten since the scan saw it is kept.
/// Returns how many keys were dropped, once their records are durable.
pub async fn drop_unowned(ctx: &Rc<ShardCtx>, ring: &Ring, replicas: usize) -> u64 {
    let me = ctx.peers.membership().me;
    if replicas == 0 || !ring.nodes().contains(&me) {
        tracing::error!(
            "shard {}: refusing to drop keys no longer owned: the ring {:?} at {replicas} \
             replica(s) would leave node {me} nothing",
            ctx.me,
            ring.nodes()
        );
        return 0;
    }
    let mut dropped = 0;
    let mut last_seq = None;
    let mut cursor = Some(Cursor::START);
    while let Some(at) = cursor {
        let mut unowned = Vec::new();
        cursor =
            ctx.shard
                .borrow_mut()
                .store_mut()
                .scan(at, SCAN_SLOTS, crate::node::now_ms(), |e| {
                    if !moves::owns(ring, replicas, e.key, me) {
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
        }
    }
    if dropped > 0 {
        tracing::info!(
            "shard {}: dropped {dropped} key(s) this node no longer owns",
            ctx.me
        );
    }
    dropped
}
