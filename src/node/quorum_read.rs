//! Quorum reads (`--read-from quorum`) and read repair. The owner that receives a read (from
//! a client, or forwarded by a node that is not an owner) reads its own copy with its version
//! (a replica read, `Op.replica`), asks the key's other owners for theirs at once, and answers
//! with the newest version among the first majority to answer (a tombstone's version counts:
//! a newer remove hides an older value). Every owner that answered with an older version, or
//! with none, is then sent the newest as a versioned replica write, in the background.

use std::rc::Rc;

use futures_lite::StreamExt;
use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{Op, OpCode, OpResult, Status};

use crate::cluster::replication::{needed, Outcome, Tally, WriteAck};
use crate::cluster::Peers;

use super::fence::Entered;
use super::mesh::Mesh;
use super::reply;
use super::server::ShardCtx;

/// Whether no client read is a quorum read on a node of `ring`: reads from one owner
/// (`--read-from`), one owner per key, or one node. [`Reads::note`] then takes over nothing,
/// and the local fast path (see `fast`) may serve reads.
pub fn asks_nothing(
    settings: &crate::cluster::replication::Replication,
    ring: &kvmesh_net::ring::Ring,
) -> bool {
    settings.read_from != crate::cluster::replication::ReadFrom::Quorum
        || settings.replicas <= 1
        || ring.nodes().len() <= 1
}

/// Quorum reads of one batch: `(index into the results, the key, its other owners)`.
#[derive(Default)]
pub struct Reads(Vec<(usize, Vec<u8>, Vec<NodeId>)>);

impl Reads {
    /// Takes over `op` (routed to this node as an owner) if it is a client read that must ask
    /// a quorum: turns it into a read of this node's own copy, with its version.
    pub fn note(&mut self, ctx: &ShardCtx, i: usize, op: &mut Op) {
        let settings = &ctx.config.replication;
        let membership = ctx.peers.membership();
        let ring = membership.ring();
        if op.replica || op.code != OpCode::OpGet as i32 || asks_nothing(settings, ring) {
            return;
        }
        let others = settings.other_owners(ring, &op.key, membership.me);
        if !others.is_empty() {
            op.replica = true;
            self.0.push((i, op.key.clone(), others));
        }
    }
}

/// Whose copy an answer is: this node's, or a peer's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum From {
    Here,
    Peer(NodeId),
}

/// A copy's version, `(0, 0)` when the owner has none.
fn version(r: &OpResult) -> (u64, u32) {
    (r.version_hlc, r.version_node)
}

/// An owner's answer is usable when it found the key, or knows it is not there.
fn usable(r: &OpResult) -> bool {
    matches!(r.status(), Status::Ok | Status::NotFound)
}

/// Answers from other owners: `(read, owner, its copy if usable)`.
type Answers = futures_channel::mpsc::UnboundedReceiver<(usize, NodeId, Option<OpResult>)>;

/// Quorum reads whose other owners were asked, waiting for their answers.
pub struct Asked {
    reads: Reads,
    rx: Option<Answers>,
}

/// Asks the other owners of each read for their copies, without waiting (the local copy is
/// not needed for that): [`Asked::finish`] waits. Sent from `dispatch::start_from`, so a
/// pipelining connection's reads ask in parallel. Stamped with the epoch `planned` the reads
/// were planned under: an owner past it that does not own the key answers MOVED (not usable)
/// rather than a not-found that would count toward the quorum.
pub async fn ask(ctx: &ShardCtx, reads: Reads, planned: u64) -> Asked {
    if reads.0.is_empty() {
        return Asked { reads, rx: None };
    }
    ctx.shard.borrow_mut().counters.quorum_reads += reads.0.len() as u64;
    let mut per_node: Vec<(NodeId, Vec<(usize, Op)>)> = Vec::new();
    for (k, (_, key, others)) in reads.0.iter().enumerate() {
        let op = Op {
            replica: true,
            ..kvmesh_net::client::op(OpCode::OpGet, key, b"", 0)
        };
        for &node in others {
            match per_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, ops)) => ops.push((k, op.clone())),
                None => per_node.push((node, vec![(k, op.clone())])),
            }
        }
    }
    let (tx, rx) = futures_channel::mpsc::unbounded();
    for (node, ops) in per_node {
        for (ks, sent) in ctx.peers.send_planned(node, ops, planned).await {
            let (peers, tx) = (ctx.peers.clone(), tx.clone());
            glommio::spawn_local(async move {
                let answered = peers.wait(sent).await;
                for (j, k) in ks.into_iter().enumerate() {
                    let answer = answered.as_ref().ok().and_then(|r| r.get(j)).cloned();
                    let _ = tx.unbounded_send((k, node, answer.filter(usable)));
                }
            })
            .detach();
        }
    }
    Asked {
        reads,
        rx: Some(rx),
    }
}

impl Asked {
    /// Answers each read with the newest copy among a majority of its owners (this one's
    /// copy, now in `results`, included), and starts the repairs.
    pub async fn finish(self, ctx: &ShardCtx, results: &mut [OpResult], fence: &Entered) {
        let Asked { reads, rx } = self;
        let Some(mut rx) = rx else {
            return;
        };
        // Per read: its tally and the answers so far.
        let mut state: Vec<(Tally, Vec<(From, OpResult)>)> = reads
            .0
            .iter()
            .map(|(i, _, others)| {
                let owners = others.len() + 1;
                let mut tally = Tally::new(owners, needed(WriteAck::Quorum, owners));
                let local = &results[*i];
                tally.record(usable(local));
                let answers = if usable(local) {
                    vec![(From::Here, local.clone())]
                } else {
                    Vec::new()
                };
                (tally, answers)
            })
            .collect();
        while state.iter().any(|(t, _)| t.outcome() == Outcome::Pending) {
            let Some((k, node, answer)) = rx.next().await else {
                break;
            };
            if let Some((tally, answers)) = state.get_mut(k) {
                tally.record(answer.is_some());
                answers.extend(answer.map(|a| (From::Peer(node), a)));
            }
        }
        for ((i, _, _), (tally, answers)) in reads.0.iter().zip(&state) {
            results[*i] = match answers.iter().max_by_key(|(_, r)| version(r)) {
                Some((_, newest)) if tally.outcome() == Outcome::Done => newest.clone(),
                _ => reply::status(
                    Status::Unavailable,
                    format!(
                        "read answered by {} of the key's owners, {} needed (--read-from quorum)",
                        tally.acked(),
                        tally.needed()
                    ),
                ),
            };
        }
        repair(ctx, reads, state, rx, fence.clone());
    }
}

/// Starts the repair of these reads' stale owners in the background.
fn repair(
    ctx: &ShardCtx,
    reads: Reads,
    state: Vec<(Tally, Vec<(From, OpResult)>)>,
    rx: Answers,
    fence: Entered,
) {
    // Late answers still take part in the repair.
    let job = Repair {
        peers: ctx.peers.clone(),
        mesh: ctx.mesh.clone(),
        shard: ctx.shard.clone(),
        me: ctx.me,
        shards: ctx.config.shards,
        settings: ctx.config.replication,
        _fence: fence,
    };
    let keys: Vec<Vec<u8>> = reads.0.into_iter().map(|(_, key, _)| key).collect();
    let answers: Vec<Vec<(From, OpResult)>> = state.into_iter().map(|(_, a)| a).collect();
    glommio::spawn_local(job.run(keys, answers, rx)).detach();
}

struct Repair {
    peers: Rc<Peers>,
    mesh: Rc<Mesh>,
    shard: Rc<std::cell::RefCell<super::shard::Shard>>,
    me: usize,
    shards: usize,
    settings: crate::cluster::replication::Replication,
    /// The read's place in the in-flight fence: its repairs are writes planned by its ring.
    _fence: Entered,
}

impl Repair {
    /// Waits for the remaining answers (each bounded by the forward timeout), then sends the
    /// newest copy of each key to every owner that answered with an older one.
    async fn run(
        self,
        keys: Vec<Vec<u8>>,
        mut answers: Vec<Vec<(From, OpResult)>>,
        mut rx: Answers,
    ) {
        while let Some((k, node, answer)) = rx.next().await {
            if let (Some(list), Some(answer)) = (answers.get_mut(k), answer) {
                list.push((From::Peer(node), answer));
            }
        }
        let mut per_node: Vec<(NodeId, Vec<(usize, Op)>)> = Vec::new();
        let mut here = Vec::new();
        for (key, list) in keys.into_iter().zip(answers) {
            let Some((_, newest)) = list.iter().max_by_key(|(_, r)| version(r)) else {
                continue;
            };
            let Some(fix) = repair_op(&key, newest) else {
                continue;
            };
            for (from, r) in &list {
                if version(r) >= version(newest) {
                    continue;
                }
                match *from {
                    From::Here => here.push(fix.clone()),
                    From::Peer(node) => match per_node.iter_mut().find(|(n, _)| *n == node) {
                        Some((_, ops)) => ops.push((0, fix.clone())),
                        None => per_node.push((node, vec![(0, fix.clone())])),
                    },
                }
            }
        }
        // Only to the nodes that own the key under the topology this node routes by now: a
        // copy written elsewhere would never be read or dropped.
        let membership = self.peers.membership();
        here.retain(|op| super::replicate::owns(&membership, self.settings, &op.key));
        for (node, ops) in &mut per_node {
            ops.retain(|(_, op)| {
                super::replicate::current_targets(&membership, self.settings, &op.key)
                    .contains(node)
            });
        }
        let repaired = (here.len() + per_node.iter().map(|(_, o)| o.len()).sum::<usize>()) as u64;
        if repaired == 0 {
            return;
        }
        self.shard.borrow_mut().counters.read_repairs += repaired;
        for op in here {
            let owner = kvmesh_net::shard_for(&op.key, self.shards);
            if owner == self.me {
                self.shard.borrow_mut().execute(&op, super::now_ms());
            } else if let Ok(pending) = self.mesh.send(owner, vec![op], super::now_ms()).await {
                let _ = self.mesh.wait(pending).await;
            }
        }
        for (node, ops) in per_node {
            for (_, sent) in self.peers.send(node, ops).await {
                let _ = self.peers.wait(sent).await;
            }
        }
    }
}

/// The versioned replica write that brings an owner up to `newest`: a put of its value and
/// remaining TTL, or a remove for a tombstone; none when no owner had a version.
fn repair_op(key: &[u8], newest: &OpResult) -> Option<Op> {
    if newest.version_hlc == 0 {
        return None;
    }
    let op = match newest.status() {
        Status::Ok => kvmesh_net::client::op(OpCode::OpPut, key, &newest.value, newest.ttl_ms),
        _ => kvmesh_net::client::op(OpCode::OpRemove, key, b"", 0),
    };
    Some(Op {
        replica: true,
        version_hlc: newest.version_hlc,
        version_node: newest.version_node,
        ..op
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_writes_the_newest_copy_with_its_version() {
        let put = OpResult {
            value: b"v".to_vec(),
            ttl_ms: 500,
            version_hlc: 7,
            version_node: 2,
            ..OpResult::default()
        };
        let op = repair_op(b"k", &put).unwrap();
        assert_eq!(
            (
                op.code,
                op.value.as_slice(),
                op.ttl_ms,
                op.replica,
                op.version_hlc,
                op.version_node
            ),
            (OpCode::OpPut as i32, &b"v"[..], 500, true, 7, 2)
        );
        let removed = OpResult {
            version_hlc: 9,
            version_node: 1,
            ..reply::status(Status::NotFound, "removed")
        };
        assert_eq!(
            repair_op(b"k", &removed).unwrap().code,
            OpCode::OpRemove as i32
        );
        assert!(repair_op(b"k", &reply::status(Status::NotFound, "")).is_none());
    }
}
