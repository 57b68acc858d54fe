//! Hints follow ownership: a hint queued for a node under one topology goes, once the
//! topology changed, to the nodes that must hold the key now (see [`targets`]).
//!
//! The handoff (`replicate::handoff`) re-targets a shard's whole queue once after every epoch
//! it applies ([`retarget_all`]), before it delivers anything planned by that epoch.

use kvmesh_net::moves;
use kvmesh_net::ring::{NodeId, Ring};

use super::server::ShardCtx;

/// Where a hint for `node` about `key` goes under `ring` (and a running change's `pending`
/// ring) at `replicas`, from node `me`: to `node` if it still owns the key, plus the owners
/// the change gains (they get every write, and this one reached neither the stream's source
/// nor them); else to every owner under either ring but `me`. Empty: nobody but `me` owns it,
/// and `me` has it (it coordinated the write).
pub fn targets(
    ring: &Ring,
    pending: Option<&Ring>,
    replicas: usize,
    me: NodeId,
    node: NodeId,
    key: &[u8],
) -> Vec<NodeId> {
    let n = replicas.max(1);
    let now = ring.owners(key, n);
    let gained: Vec<NodeId> = pending
        .map(|p| p.owners(key, n))
        .unwrap_or_default()
        .into_iter()
        .filter(|o| !now.contains(o))
        .collect();
    let mut out = if moves::owns(ring, n, key, node) || gained.contains(&node) {
        vec![node]
    } else {
        now
    };
    for o in gained {
        if !out.contains(&o) {
            out.push(o);
        }
    }
    out.retain(|&o| o != me);
    out
}

/// Re-targets every hint of this shard by [`targets`] under the topology it routes by now.
/// Returns how many hints went elsewhere than their node. A re-targeted hint is kept even
/// past `--hint-max-bytes` (it replaces one already kept), so none is lost here.
pub fn retarget_all(ctx: &ShardCtx) -> u64 {
    let membership = ctx.peers.membership();
    let replicas = ctx.config.replication.replicas;
    let mut store = ctx.hints.borrow_mut();
    let mut moved = 0;
    for node in store.queue.nodes() {
        let hints = store.queue.take(node, usize::MAX);
        let mut kept = Vec::with_capacity(hints.len());
        for (op, at_ms) in hints {
            let to = targets(
                membership.ring(),
                membership.pending_ring(),
                replicas,
                membership.me,
                node,
                &op.key,
            );
            if to == [node] {
                kept.push((op, at_ms));
                continue;
            }
            moved += 1;
            for target in to {
                if target == node {
                    kept.push((op.clone(), at_ms));
                } else {
                    store.push_retargeted(target, op.clone(), at_ms);
                }
            }
        }
        store.queue.give_back(node, kept);
    }
    store.flush();
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_goes_where_the_key_is_owned_now() {
        let old = Ring::new(&[1, 2, 3]).unwrap();
        let new = Ring::new(&[1, 2, 3, 4]).unwrap();
        let keys: Vec<Vec<u8>> = (0..5000).map(|i| format!("k{i}").into_bytes()).collect();
        // A key node 3 owned with node 1, and that node 4 took from node 3.
        let key = keys
            .iter()
            .find(|k| {
                let (o, n) = (old.owners(k, 2), new.owners(k, 2));
                o.contains(&1) && o.contains(&3) && n.contains(&1) && n.contains(&4)
            })
            .expect("such a key");
        // Node 1 held a hint for node 3. After the change finished: to node 4 only.
        assert_eq!(targets(&new, None, 2, 1, 3, key), vec![4]);
        // While the change runs: node 3 still owns it, and node 4 gains it: both.
        assert_eq!(targets(&old, Some(&new), 2, 1, 3, key), vec![3, 4]);
        // Unchanged ownership: where it was.
        assert_eq!(targets(&old, None, 2, 1, 3, key), vec![3]);
        // A hint for a node that owns nothing of it, on a node that is the only other owner.
        let only = keys
            .iter()
            .find(|k| new.owners(k, 1) == [1])
            .expect("a key of node 1");
        assert!(targets(&new, None, 1, 1, 2, only).is_empty());
    }
}
