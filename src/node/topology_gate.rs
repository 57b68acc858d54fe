//! Whether a shard may serve clients' data ops yet: a pure decision, tested without a node.
//!
//! A node that runs the agreed topology (clustered, with a data directory) but does not hold
//! it yet must not serve a client's read or write: it would route by a ring it made up (a
//! node started with `--join` knows only itself; a restarted node's other shards know only
//! `--peers`), acknowledge writes nobody else holds, and drop them after the next change.
//! Such a shard answers `STATUS_UNAVAILABLE` until it has applied an agreed topology.
//!
//! A node of a static cluster (`--peers`) starting with an empty data directory is the
//! exception: `--peers` is the very membership its topology group bootstraps with, so it
//! serves at once, as it always did.
//!
//! A node that learns it was removed from the cluster ([`close_removed`]: a peer answered its
//! Raft message `STATUS_REMOVED`, as a node removed while it was down hears when it comes
//! back) refuses clients' data ops from then on, on every shard: its ring is stale.

use std::sync::atomic::{AtomicU64, Ordering};

use kvmesh_proto::wire::{Op, OpCode, OpResult, Status};

use super::reply;
use super::router::Keyed;

/// How a node started, as far as the gate is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// Several nodes (`--peers`) or `--join`.
    pub clustered: bool,
    /// With `--data-dir`: the node runs the agreed topology.
    pub durable: bool,
    /// Started with `--join`.
    pub joining: bool,
    /// Its data directory held a stored topology group when it started.
    pub stored_topology: bool,
}

/// Whether a shard of a node started as `start` waits for an agreed topology before it
/// serves clients' data ops.
pub fn waits_for_topology(start: Start) -> bool {
    start.clustered && start.durable && (start.joining || start.stored_topology)
}

/// The epoch at which a peer said this node was removed; 0 while none did. Process-wide:
/// one node per process, and every shard must refuse.
static REMOVED_AT: AtomicU64 = AtomicU64::new(0);

/// Closes the gate for good on every shard: a peer at `epoch` says this node was removed.
/// Returns whether it was open until now.
pub fn close_removed(epoch: u64) -> bool {
    REMOVED_AT.swap(epoch.max(1), Ordering::Relaxed) == 0
}

/// The answer to `op` if it is refused because this shard `waits` and holds no agreed
/// topology (`agreed_epoch` 0), or because this node was removed from the cluster
/// ([`close_removed`]): a client's keyed op (not one a peer `forwarded`, not a replica write,
/// whose sender routed it by its own agreed topology). `None`: serve it.
pub fn refuse(op: &Op, forwarded: bool, waits: bool, agreed_epoch: u64) -> Option<OpResult> {
    // The common case costs one test and one relaxed load per op.
    let removed = REMOVED_AT.load(Ordering::Relaxed);
    decide(op, forwarded, waits, agreed_epoch, removed)
}

/// Whether [`refuse`] refuses `op` (without building the answer).
pub fn refuses(op: Keyed<'_>, forwarded: bool, waits: bool, agreed_epoch: u64) -> bool {
    let removed = REMOVED_AT.load(Ordering::Relaxed);
    refused(op, forwarded, waits, agreed_epoch, removed)
}

/// [`refuse`], given the epoch this node was `removed` at (0: it was not).
fn decide(
    op: &Op,
    forwarded: bool,
    waits: bool,
    agreed_epoch: u64,
    removed: u64,
) -> Option<OpResult> {
    refused(op.into(), forwarded, waits, agreed_epoch, removed).then(|| match removed {
        0 => reply::status(
            Status::Unavailable,
            "this node does not hold the cluster's agreed topology yet (it is joining, or \
             catching up after a restart): ask again shortly",
        ),
        epoch => reply::status(
            Status::Unavailable,
            format!(
                "this node was removed from the cluster (epoch {epoch}): ask another node; \
                 to bring it back, empty its data directory and start it with --join"
            ),
        ),
    })
}

/// Whether a client's keyed op is refused: this node waits and holds no agreed topology, or
/// it was `removed`.
fn refused(op: Keyed<'_>, forwarded: bool, waits: bool, agreed_epoch: u64, removed: u64) -> bool {
    if forwarded || op.replica || (removed == 0 && (!waits || agreed_epoch != 0)) {
        return false;
    }
    [
        OpCode::OpGet,
        OpCode::OpPut,
        OpCode::OpRemove,
        OpCode::OpTouch,
        OpCode::OpTtl,
    ]
    .iter()
    .any(|&c| c as i32 == op.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_waits() {
        let start = |clustered, durable, joining, stored_topology| Start {
            clustered,
            durable,
            joining,
            stored_topology,
        };
        // A node alone, or a cluster without data directories (no topology group): never.
        assert!(!waits_for_topology(start(false, true, false, true)));
        assert!(!waits_for_topology(start(true, false, true, false)));
        // A static cluster's first start: --peers is the bootstrap membership.
        assert!(!waits_for_topology(start(true, true, false, false)));
        // A joining node, and any restart with a stored topology.
        assert!(waits_for_topology(start(true, true, true, false)));
        assert!(waits_for_topology(start(true, true, true, true)));
        assert!(waits_for_topology(start(true, true, false, true)));
    }

    #[test]
    fn refuses_clients_data_ops_only_until_agreed() {
        let op = |code: OpCode| Op {
            code: code as i32,
            key: b"k".to_vec(),
            ..Op::default()
        };
        let refuse = |op: &Op, forwarded, waits, agreed| decide(op, forwarded, waits, agreed, 0);
        for code in [OpCode::OpGet, OpCode::OpPut, OpCode::OpRemove] {
            let refused = refuse(&op(code), false, true, 0).expect("refused");
            assert_eq!(refused.status(), Status::Unavailable);
            assert!(refused.message.contains("agreed topology"));
            assert!(refuse(&op(code), false, true, 3).is_none(), "agreed");
            assert!(
                refuse(&op(code), false, false, 0).is_none(),
                "does not wait"
            );
            assert!(refuse(&op(code), true, true, 0).is_none(), "forwarded");
            let replica = Op {
                replica: true,
                ..op(code)
            };
            assert!(refuse(&replica, false, true, 0).is_none(), "replica write");
        }
        for code in [
            OpCode::OpStats,
            OpCode::OpTopology,
            OpCode::OpJoin,
            OpCode::OpRaft,
        ] {
            assert!(refuse(&op(code), false, true, 0).is_none(), "{code:?}");
        }
    }

    #[test]
    fn a_removed_node_refuses_clients_data_ops_for_good() {
        let get = Op {
            code: OpCode::OpGet as i32,
            key: b"k".to_vec(),
            ..Op::default()
        };
        for waits in [false, true] {
            let refused = decide(&get, false, waits, 3, 5).expect("refused");
            assert_eq!(refused.status(), Status::Unavailable);
            assert!(refused
                .message
                .contains("removed from the cluster (epoch 5)"));
        }
        assert!(decide(&get, true, true, 3, 5).is_none(), "forwarded");
        let stats = Op {
            code: OpCode::OpStats as i32,
            ..Op::default()
        };
        assert!(decide(&stats, false, true, 3, 5).is_none());
    }
}
