//! The destination's side of a stream: which stream copies it refuses. A pure decision,
//! tested without a node.
//!
//! A source stops streaming when it learns its change finished or was aborted, but batches
//! already on the wire still arrive. A copy stored after the destination's drop pass for
//! that outcome ran would be an orphan: owned by nobody, never dropped, and served again once
//! a later change makes this node an owner (a key removed meanwhile would come back). So a
//! stream copy says which change it was sent for (`Op.stream_epoch`), and the destination
//! stores it only while that change is the one it runs, and only for a key it owns under the
//! current ring or the change's new one. The check and the store happen in one borrow of the
//! shard, and a shard runs its drop pass only after it applied the change's outcome: a copy
//! is refused, or stored before that pass scans.

use kvmesh_proto::wire::{Op, OpResult, Status};

use crate::cluster::membership::Membership;
use crate::cluster::replication::Replication;
use crate::node::replicate::owns;
use crate::node::reply;

/// The answer to `op` if this node refuses it as a stale stream copy; `None`: store it.
/// Ops that are not stream copies (`stream_epoch` 0) and nodes that hold no agreed topology
/// (epoch 0: a node alone, which only the stream test hook streams to) are not checked. A
/// shard that has not applied the change's epoch yet (it learns it over the mesh a moment
/// after shard 0) answers `STATUS_UNAVAILABLE`, which the sender retries.
pub fn refuse(op: &Op, membership: &Membership, replication: Replication) -> Option<OpResult> {
    if op.stream_epoch == 0 || membership.epoch == 0 {
        return None;
    }
    if membership.epoch < op.stream_epoch {
        return Some(reply::status(
            Status::Unavailable,
            format!(
                "a stream copy for epoch {}, which this shard has not applied yet (epoch {})",
                op.stream_epoch, membership.epoch
            ),
        ));
    }
    let running = membership.pending_ring().is_some() && membership.epoch == op.stream_epoch;
    let why = if !running {
        format!(
            "a stream copy for the change at epoch {}, which is not running here (epoch {})",
            op.stream_epoch, membership.epoch
        )
    } else if !owns(membership, replication, &op.key) {
        "a stream copy of a key this node owns under neither the current ring nor the new one"
            .to_string()
    } else {
        return None;
    };
    Some(reply::status(Status::StaleStream, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topology::{Command, Member, Topology};
    use kvmesh_proto::wire::OpCode;

    fn member(id: u32) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id * 100).parse().unwrap(),
        }
    }

    /// Node 3's view of a cluster of 1 and 2 that node 3 joins: epoch 2 with the join
    /// running, then epoch 3 once it was aborted.
    fn views() -> (Membership, Membership) {
        // Started with --peers naming all three; the agreed topology replaces the list.
        let pairs = (1..=3).map(|id| (id, member(id).addr)).collect();
        let me = Membership::new("c", 3, member(3).addr, pairs).unwrap();
        let mut topology = Topology::initial(vec![member(1), member(2)]).unwrap();
        topology.apply(&Command::BeginJoin(member(3))).unwrap();
        let running = me.with_topology(&topology).unwrap();
        topology.apply(&Command::Abort { epoch: 2 }).unwrap();
        let aborted = me.with_topology(&topology).unwrap();
        (running, aborted)
    }

    fn copy(key: &[u8], stream_epoch: u64) -> Op {
        Op {
            code: OpCode::OpPut as i32,
            key: key.to_vec(),
            replica: true,
            stream_epoch,
            ..Op::default()
        }
    }

    #[test]
    fn a_copy_is_stored_only_for_the_running_change_and_an_owned_key() {
        let (running, aborted) = views();
        let replication = Replication {
            replicas: 1,
            ..Replication::default()
        };
        let new = running.pending_ring().unwrap();
        let (mine, theirs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (0..200)
            .map(|i| format!("key-{i}").into_bytes())
            .partition(|k| replication.owners(new, k).contains(&3));
        assert!(!mine.is_empty() && !theirs.is_empty());

        assert_eq!(refuse(&copy(&mine[0], 2), &running, replication), None);
        let refused = refuse(&copy(&theirs[0], 2), &running, replication).unwrap();
        assert_eq!(refused.status(), Status::StaleStream);
        assert!(
            refused.message.contains("owns under neither"),
            "{refused:?}"
        );
        let refused = refuse(&copy(&mine[0], 1), &running, replication).unwrap();
        assert!(refused
            .message
            .contains("epoch 1, which is not running here (epoch 2)"));
        // A shard that is behind asks for the copy again.
        let later = refuse(&copy(&mine[0], 3), &running, replication).unwrap();
        assert_eq!(later.status(), Status::Unavailable, "{later:?}");
        // Aborted: no change runs, so every copy of that change is refused.
        let refused = refuse(&copy(&mine[0], 2), &aborted, replication).unwrap();
        assert_eq!(refused.status(), Status::StaleStream);
        // Not a stream copy, or a node without the agreed topology: not checked.
        assert_eq!(refuse(&copy(&theirs[0], 0), &aborted, replication), None);
        let alone = Membership::single(3, member(3).addr);
        assert_eq!(refuse(&copy(&theirs[0], 2), &alone, replication), None);
    }
}
