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

/// The answer to `op` if it is refused because this shard `waits` and holds no agreed
/// topology (`agreed_epoch` 0): a client's keyed op (not one a peer `forwarded`, not a
/// replica write, whose sender routed it by its own agreed topology). `None`: serve it.
pub fn refuse(op: &Op, forwarded: bool, waits: bool, agreed_epoch: u64) -> Option<OpResult> {
    refuses(op.into(), forwarded, waits, agreed_epoch).then(|| {
        reply::status(
            Status::Unavailable,
            "this node does not hold the cluster's agreed topology yet (it is joining, or \
             catching up after a restart): ask again shortly",
        )
    })
}

/// Whether [`refuse`] refuses `op` (without building the answer).
pub fn refuses(op: Keyed<'_>, forwarded: bool, waits: bool, agreed_epoch: u64) -> bool {
    // The common case, a node that does not wait, costs one test per op.
    if !waits || agreed_epoch != 0 || forwarded || op.replica {
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
}
