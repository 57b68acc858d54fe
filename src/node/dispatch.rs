//! Executes a batch of ops arriving at one shard, whatever the front-end: the ops this shard
//! owns run here, the rest go to their owners, batched per owner: over the mesh to another
//! shard of this node, or over a peer connection (`cluster::peers`) to another node.
//!
//! It runs in two steps, so a connection can start every request it has buffered before it
//! waits for any: [`start`] executes the local ops (their writes are applied and logged at
//! once) and sends the forwards; [`Started::finish`] waits for the log records the replies
//! depend on (see `durable`) and for the owners' answers. [`execute`] does both.

use std::time::Instant;

use kvmesh_proto::wire::{Op, OpCode, OpResult, Status};

use crate::cluster::peers::Sent;

use super::durable;
use super::fence;
use super::mesh::Pending;
use super::quorum_read;
use super::replicate;
use super::reply;
use super::router::{route_in_cluster, Place, Rejection, Route};
use super::server::ShardCtx;
use super::stream;

/// Runs `ops` and returns one result per op, in order. Never fails as a whole: an op that could
/// not run gets an error status of its own.
pub async fn execute(ctx: &ShardCtx, ops: Vec<Op>) -> Vec<OpResult> {
    start(ctx, ops).await.finish(ctx).await
}

/// A batch whose local ops have run and whose forwards were sent.
pub struct Started {
    results: Vec<OpResult>,
    /// `(index into results, log record to wait for)` of local ops.
    waits: Vec<(usize, u64)>,
    /// Per owning shard: the indices its answers fill, and the forward (or why it failed).
    remote: Vec<(Vec<usize>, Result<Pending, reply::ForwardError>)>,
    /// Indices of `OP_SNAPSHOT` ops: run, one after another, in `finish`.
    snapshots: Vec<usize>,
    /// Membership changes asked of this node (`OP_JOIN`, `OP_LEAVE`): run in `finish`.
    changes: Vec<(usize, Op)>,
    /// For the latency histograms: when it started, and its ops by kind.
    began: Instant,
    kinds: [u32; crate::metrics::latency::KINDS.len()],
    /// Per peer shard of another node: the indices its answers fill, and the request.
    nodes: Vec<(Vec<usize>, Sent)>,
    /// Reads and writes sent to another node, kept to route again if it answers
    /// `STATUS_MOVED`.
    reroutable: Vec<(usize, Op)>,
    /// Writes this node coordinates that another shard of it executes: sent to the keys'
    /// other owners in `finish`, once that shard answered with their versions.
    replicate: replicate::Plan,
    /// Writes this node coordinates that this shard executed: already sent to the other owners.
    replicating: replicate::InFlight,
    /// Reads that ask a quorum of owners (`--read-from quorum`): the others are asked already.
    reads: quorum_read::Asked,
    /// Its place in the in-flight fence of membership changes, under the epoch it was
    /// planned by (see `fence`).
    fence: fence::Entered,
}

/// Executes the ops this shard owns and sends the others to their owners.
pub async fn start(ctx: &ShardCtx, ops: Vec<Op>) -> Started {
    start_from(ctx, ops, false, 0).await
}

/// [`start`] for a request that another node `forwarded`: its ops are served by this node,
/// never sent to another (see `router::route_in_cluster`). When the sender routed by an older
/// topology `epoch` than this node's, its reads are answered `STATUS_MOVED` instead (see
/// [`super::change::moved`]). A client's request (not `forwarded`) with an older non-zero
/// `epoch` has all its key ops answered `STATUS_MOVED` without running them, so the client
/// learns the new topology and sends them again; `epoch` 0 never is.
pub async fn start_from(ctx: &ShardCtx, ops: Vec<Op>, forwarded: bool, epoch: u64) -> Started {
    let (began, now) = ctx.clock.now();
    let mut kinds = [0u32; crate::metrics::latency::KINDS.len()];
    for op in &ops {
        kinds[crate::metrics::latency::kind(op.code)] += 1;
    }
    let membership = ctx.peers.membership();
    // Counted until its last send to an owner finished: a change's sources wait for it.
    let fence = ctx.fence.enter(membership.epoch);
    let behind = epoch != 0 && epoch < membership.epoch;
    let stale = forwarded && behind;
    // A client's data op waits for the agreed topology (see `topology_gate`).
    let gated = ctx.waits_for_topology;
    let epoch_now = if gated {
        ctx.peers.agreed().map_or(0, |t| t.epoch)
    } else {
        0
    };
    let mut reroutable = Vec::new();
    let mut for_nodes: Vec<(u32, Vec<(usize, Op)>)> = Vec::new();
    let mut results = vec![OpResult::default(); ops.len()];
    let mut waits = Vec::new();
    let mut snapshots = Vec::new();
    let mut changes = Vec::new();
    // (owning shard, indices into `results`, ops) for ops this shard does not own.
    let mut remote: Vec<(usize, Vec<usize>, Vec<_>)> = Vec::new();
    let mut plan = replicate::Plan::default();
    let mut reads = quorum_read::Reads::default();
    let live = |node| ctx.peers.is_live(node);
    let place = Place {
        ring: membership.ring(),
        node: membership.me,
        replicas: ctx.config.replication.replicas,
        live: &live,
    };
    let changing = membership.pending_ring().is_some();
    {
        let mut shard = ctx.shard.borrow_mut();
        for (i, mut op) in ops.into_iter().enumerate() {
            if let Some(refused) = super::topology_gate::refuse(&op, forwarded, gated, epoch_now) {
                results[i] = refused;
                continue;
            }
            let route = route_in_cluster(
                &op,
                &place,
                forwarded,
                ctx.me,
                ctx.config.shards,
                ctx.config.max_key_len,
            );
            if forwarded {
                shard.counters.node_forwarded_in += 1;
            }
            if behind
                && !forwarded
                && !op.replica
                && matches!(route, Route::Local | Route::Forward(_) | Route::Remote(_))
            {
                results[i] = super::change::moved(membership.epoch);
                continue;
            }
            if matches!(route, Route::Local | Route::Forward(_)) {
                if stale && super::change::is_reroutable(&op) {
                    results[i] = super::change::moved(membership.epoch);
                    continue;
                }
                // A write (a replica's too) from a node on an older ring, for a key this node
                // owns under neither its ring nor a running change's new one: stored, nobody
                // would ever read or drop it. The sender routes it again.
                // So is a quorum read's replica read: a non-owner's not-found must not count.
                let replica_read = op.replica && op.code == OpCode::OpGet as i32;
                if stale
                    && (replicate::is_write(op.code) || replica_read)
                    && !replicate::owns(&membership, ctx.config.replication, &op.key)
                {
                    results[i] = super::change::moved(membership.epoch);
                    continue;
                }
                // A stream copy for a change that is over here, or of a key not ours.
                if op.stream_epoch != 0 {
                    let replication = ctx.config.replication;
                    if let Some(refused) = stream::receive::refuse(&op, &membership, replication) {
                        results[i] = refused;
                        continue;
                    }
                }
                reads.note(ctx, i, &mut op);
            }
            match route {
                Route::Here if op.code == OpCode::OpSnapshot as i32 => snapshots.push(i),
                Route::Change => changes.push((i, op)),
                Route::Local | Route::Here => {
                    let executed = shard.execute(&op, now);
                    results[i] = executed.result;
                    if let Some(stats) = results[i].stats.as_mut() {
                        replicate::annotate(ctx, stats);
                    }
                    if let Some(topology) = results[i].topology.as_mut() {
                        super::change::annotate(ctx, &membership, topology);
                    }
                    if route == Route::Local {
                        plan.note(ctx, i, &op);
                    }
                    waits.extend(executed.wait.map(|seq| (i, seq)));
                }
                Route::Hello => results[i] = ctx.peers.answer_hello(op.hello.as_deref()),
                Route::Raft => {
                    results[i] = match &ctx.raft {
                        Some(raft) => raft.receive(&op.value),
                        None => reply::status(
                            Status::Unavailable,
                            "this shard runs no topology Raft group (only shard 0 of a \
                             multi-node cluster does)",
                        ),
                    }
                }
                Route::Remote(node) => {
                    shard.counters.node_forwarded_out += 1;
                    // Kept to route again if the receiver answers MOVED: reads, and, while a
                    // change runs, writes (a write is answered MOVED only by a node past a
                    // change this node has not seen finish). No copy of a write otherwise:
                    // a MOVED one is then answered UNAVAILABLE and the client retries.
                    if super::change::is_reroutable(&op)
                        || (changing && replicate::is_write(op.code))
                    {
                        reroutable.push((i, op.clone()));
                    }
                    match for_nodes.iter_mut().find(|(n, _)| *n == node) {
                        Some((_, ops)) => ops.push((i, op)),
                        None => for_nodes.push((node, vec![(i, op)])),
                    }
                }
                Route::Reject(rejection) => {
                    if matches!(rejection, Rejection::UnknownOperation(_)) {
                        shard.counters.protocol_errors += 1;
                    }
                    results[i] = reply::rejection(rejection);
                }
                Route::Forward(owner) => {
                    shard.counters.forwarded_out += 1;
                    plan.note(ctx, i, &op);
                    match remote.iter_mut().find(|(s, _, _)| *s == owner) {
                        Some((_, idx, ops)) => {
                            idx.push(i);
                            ops.push(op);
                        }
                        None => remote.push((owner, vec![i], vec![op])),
                    }
                }
            }
        }
    }
    #[cfg(debug_assertions)]
    for (_, _, ops) in &remote {
        super::hold_hook::hold(ops.iter()).await;
    }
    // Send every batch before waiting for any, so the owners work in parallel.
    let mut sent = Vec::with_capacity(remote.len());
    for (owner, idx, ops) in remote {
        sent.push((idx, ctx.mesh.send(owner, ops, now).await));
    }
    let mut nodes = Vec::new();
    #[cfg(debug_assertions)]
    for (_, ops) in &for_nodes {
        super::hold_hook::hold(ops.iter().map(|(_, op)| op)).await;
    }
    for (node, ops) in for_nodes {
        let planned = ctx.peers.send_planned(node, ops, membership.epoch);
        nodes.extend(planned.await);
    }
    let executed = plan.take_executed(&results);
    let replicating = replicate::send(ctx, executed, &results, &fence).await;
    let reads = quorum_read::ask(ctx, reads, fence.epoch()).await;
    Started {
        results,
        waits,
        remote: sent,
        snapshots,
        changes,
        began,
        kinds,
        nodes,
        reroutable,
        replicate: plan,
        replicating,
        reads,
        fence,
    }
}

impl Started {
    /// The bytes of the values its local ops have read so far: what its reply will hold, at
    /// least (forwarded ops' answers are not known yet).
    pub fn reply_bytes(&self) -> usize {
        self.results.iter().map(|r| r.value.len()).sum()
    }

    /// Waits until every local change the results depend on is durable and every owner has
    /// answered; returns the results in op order.
    pub async fn finish(self, ctx: &ShardCtx) -> Vec<OpResult> {
        let Started {
            mut results,
            waits,
            remote,
            snapshots,
            changes,
            began,
            kinds,
            nodes,
            reroutable,
            replicate,
            replicating,
            reads,
            fence,
        } = self;
        for i in snapshots {
            results[i] = match &ctx.snapshots {
                Some(taker) => taker.reply(&ctx.shard).await,
                None => reply::status(
                    Status::InvalidArgument,
                    "snapshots need a data directory: this node runs without --data-dir",
                ),
            };
        }
        for (i, op) in changes {
            results[i] = super::change::answer(ctx, &op).await;
        }
        let log = ctx.shard.borrow().log().cloned();
        durable::settle(ctx.me, log, &mut results, &waits).await;
        for (idx, sent) in remote {
            let answered = match sent {
                Ok(pending) => ctx.mesh.wait(pending).await,
                Err(e) => Err(e),
            };
            match answered {
                Ok(answers) if answers.len() == idx.len() => {
                    for (i, answer) in idx.into_iter().zip(answers) {
                        results[i] = answer;
                    }
                }
                Ok(answers) => {
                    let e = reply::ForwardError::Unreachable {
                        shard: usize::MAX,
                        why: format!("{} answers for {} ops", answers.len(), idx.len()),
                    };
                    for i in idx {
                        results[i] = reply::forward_error(&e);
                    }
                }
                Err(e) => {
                    for i in idx {
                        results[i] = reply::forward_error(&e);
                    }
                }
            }
        }
        for (idx, sent) in nodes {
            match ctx.peers.wait(sent).await {
                Ok(answers) => {
                    for (i, answer) in idx.into_iter().zip(answers) {
                        results[i] = unkept_moved(answer, i, &reroutable);
                    }
                }
                Err(e) => {
                    for i in idx {
                        results[i] = reply::peer_error(&e);
                    }
                }
            }
        }
        super::change::reroute_moved(ctx, reroutable, &mut results).await;
        reads.finish(ctx, &mut results, &fence).await;
        replicating.finish(ctx, &mut results).await;
        replicate::complete(ctx, replicate, &mut results, &fence).await;
        ctx.metrics
            .borrow_mut()
            .latency
            .record(&kinds, began.elapsed());
        results
    }
}

/// A node's `answer` to op `i`, unless it is MOVED for an op this node kept no copy of to route
/// again (a write forwarded while no change ran here): then UNAVAILABLE, which the client
/// retries, by then routed by the newer topology.
fn unkept_moved(answer: OpResult, i: usize, kept: &[(usize, Op)]) -> OpResult {
    if answer.status() != Status::Moved || kept.iter().any(|(j, _)| *j == i) {
        return answer;
    }
    reply::status(
        Status::Unavailable,
        format!(
            "the owner moved on to topology epoch {}, which this node has not applied; retry",
            answer.moved_epoch
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_answer_is_kept_only_for_an_op_kept_to_route_again() {
        let moved = super::super::change::moved(5);
        let kept = vec![(2, Op::default())];
        assert_eq!(
            unkept_moved(moved.clone(), 2, &kept).status(),
            Status::Moved
        );
        let answered = unkept_moved(moved, 1, &kept);
        assert_eq!(answered.status(), Status::Unavailable);
        assert!(answered.message.contains("epoch 5"), "{}", answered.message);
        let ok = OpResult::default();
        assert_eq!(unkept_moved(ok.clone(), 1, &kept), ok);
    }
}
