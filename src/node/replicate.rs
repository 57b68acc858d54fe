//! The coordinator's half of replication: after this node's owning shard applied a write and
//! gave it a version, send the versioned write to the key's other owners at once and decide,
//! by `cluster::replication::Tally`, when it may be acknowledged. Owners that miss it get a
//! hint (`cluster::hints`), delivered by [`handoff`] once they are back.
//!
//! A write that fails here (too few owners answered) was still applied by the owners that did
//! answer, and is hinted to the others: like a write whose reply was lost, it may become
//! visible later. The client sees UNAVAILABLE and may retry; a retry gets a newer version.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::StreamExt;
use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{Op, OpCode, OpResult, ShardStats, Status};

use crate::cluster::membership::Membership;
use crate::cluster::replication::{Outcome, Replication, WriteTally};
use crate::cluster::Peers;

use super::fence::Entered;
use super::hint_store::HintStore;
use super::reply;
use super::server::ShardCtx;

/// Whether no client write this node coordinates is sent to another node under `membership`:
/// one owner per key (or one node), and no membership change with pending owners running.
/// [`Plan::note`] then notes nothing, and the local fast path (see `fast`) may serve writes.
pub fn sends_nothing(
    settings: &crate::cluster::replication::Replication,
    membership: &crate::cluster::Membership,
) -> bool {
    (settings.replicas <= 1 || membership.ring().nodes().len() <= 1)
        && membership.pending_ring().is_none()
}

/// Replicated writes of one batch: `(index into the results, the op, the key's other owners,
/// its pending owners)`. Pending owners are the owners under the ring a running membership
/// change moves to that are not owners now: they get every write too, and a write is
/// acknowledged only once each of them applied it on top of `--write-ack`'s count (see
/// `Replication::tally`), so nothing acknowledged during the move is missing when ownership
/// flips and the old owners drop.
#[derive(Default)]
pub struct Plan(Vec<(usize, Op, Vec<NodeId>, Vec<NodeId>)>);

impl Plan {
    /// Moves the writes whose local result is already in `results` (executed by this shard)
    /// into a plan of their own, so they can be sent at once.
    pub fn take_executed(&mut self, results: &[OpResult]) -> Plan {
        let (done, rest) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(i, _, _, _)| {
                results[*i].version_hlc != 0 || results[*i].status() != Status::Ok
            });
        self.0 = rest;
        Plan(done)
    }

    /// Notes op `i` if this node must replicate it: a client write (not itself a replica
    /// write) to a key with owners besides this node.
    pub fn note(&mut self, ctx: &ShardCtx, i: usize, op: &Op) {
        let settings = &ctx.config.replication;
        let membership = ctx.peers.membership();
        let ring = membership.ring();
        if op.replica || !is_write(op.code) || sends_nothing(&ctx.config.replication, &membership) {
            return;
        }
        let others = if settings.replicas <= 1 || ring.nodes().len() <= 1 {
            Vec::new()
        } else {
            settings.other_owners(ring, &op.key, membership.me)
        };
        let pending = match membership.pending_ring() {
            Some(new) => {
                let old = settings.owners(ring, &op.key);
                let mut pending = settings.owners(new, &op.key);
                pending.retain(|n| *n != membership.me && !old.contains(n));
                pending
            }
            None => Vec::new(),
        };
        if !others.is_empty() || !pending.is_empty() {
            self.0.push((i, op.clone(), others, pending));
        }
    }
}

/// Whether `code` is a write: a put, a remove or a touch.
pub fn is_write(code: i32) -> bool {
    [OpCode::OpPut, OpCode::OpRemove, OpCode::OpTouch]
        .iter()
        .any(|&c| c as i32 == code)
}

/// Whether this node owns `key` under the ring it routes by or a running change's new ring.
pub fn owns(membership: &Membership, settings: Replication, key: &[u8]) -> bool {
    let me = membership.me;
    settings.owners(membership.ring(), key).contains(&me)
        || membership
            .pending_ring()
            .is_some_and(|new| settings.owners(new, key).contains(&me))
}

/// Writes for one owner: `(the write's place in the plan, its replica op)`.
type Batch = Vec<(usize, Op)>;

/// One owner's answer to one replicated write: the write's place in the plan, whether the
/// owner is a pending new owner, and why it failed, if it did.
type Answer = (usize, bool, Option<String>);

/// Sends the plan's writes (those the local owner applied) to their other owners, batched per
/// peer shard, and waits until each has `--write-ack` acknowledgements or cannot get them;
/// a write that cannot is answered UNAVAILABLE, saying how many owners applied it.
pub async fn complete(ctx: &ShardCtx, plan: Plan, results: &mut [OpResult], fence: &Entered) {
    send(ctx, plan, results, fence)
        .await
        .finish(ctx, results)
        .await;
}

/// Replica writes on their way: per write, its tally; and the owners' answers as they come.
pub struct InFlight {
    tallies: Vec<Option<(usize, WriteTally, Vec<String>)>>,
    rx: Option<futures_channel::mpsc::UnboundedReceiver<Answer>>,
}

/// Sends the plan's writes that the local owner applied (their results carry a version) to
/// their other owners, batched per peer shard, without waiting: [`InFlight::finish`] waits.
/// Sent as soon as the local owner applied them, before its log made them durable, so a
/// pipelining connection's requests replicate in parallel. Each send keeps a clone of the
/// request's `fence` guard until its owner answered (see `fence`).
pub async fn send(ctx: &ShardCtx, plan: Plan, results: &[OpResult], fence: &Entered) -> InFlight {
    if plan.0.is_empty() {
        return InFlight {
            tallies: Vec::new(),
            rx: None,
        };
    }
    let settings = ctx.config.replication;
    let now = super::now_ms();
    // Per write: (index into results, tally, why owners failed); None when not replicated.
    let mut tallies: Vec<Option<(usize, WriteTally, Vec<String>)>> =
        Vec::with_capacity(plan.0.len());
    // Per (node, whether it is a pending new owner): the writes it gets.
    let mut per_node: Vec<(NodeId, bool, Batch)> = Vec::new();
    // Per write, its replica op: what a failed owner's hint holds.
    let mut replicas: Vec<Option<Op>> = Vec::with_capacity(plan.0.len());
    for (k, (i, op, others, pending)) in plan.0.into_iter().enumerate() {
        let local = &results[i];
        // The local owner refused it (or a touch found no key): its answer stands.
        if local.status() != Status::Ok || local.version_hlc == 0 {
            tallies.push(None);
            replicas.push(None);
            continue;
        }
        let mut tally = settings.tally(others.len() + 1, pending.len());
        tally.record(false, true);
        let replica = Op {
            replica: true,
            version_hlc: local.version_hlc,
            version_node: local.version_node,
            hello: None,
            ..op
        };
        let others = others.into_iter().map(|n| (n, false));
        for (node, is_pending) in others.chain(pending.into_iter().map(|n| (n, true))) {
            match per_node
                .iter_mut()
                .find(|(n, p, _)| *n == node && *p == is_pending)
            {
                Some((_, _, ops)) => ops.push((k, replica.clone())),
                None => per_node.push((node, is_pending, vec![(k, replica.clone())])),
            }
        }
        tallies.push(Some((i, tally, Vec::new())));
        replicas.push(Some(replica));
    }
    let replicas = Rc::new(replicas);
    let (tx, rx) = futures_channel::mpsc::unbounded::<Answer>();
    let within = ctx.config.forward_timeout;
    for (node, is_pending, ops) in per_node {
        ctx.shard.borrow_mut().counters.replica_writes_sent += ops.len() as u64;
        for (ks, sent) in ctx.peers.send_planned(node, ops, fence.epoch()).await {
            let (peers, shard, hints, tx, replicas, fence) = (
                ctx.peers.clone(),
                ctx.shard.clone(),
                ctx.hints.clone(),
                tx.clone(),
                replicas.clone(),
                fence.clone(),
            );
            // Waits apart from the request, so the reply goes as soon as enough owners
            // answered, and an owner that fails later still gets its hint.
            glommio::spawn_local(async move {
                let answered = peers.wait(sent).await;
                for (j, k) in ks.into_iter().enumerate() {
                    let failure = match &answered {
                        Ok(results) => match results.get(j) {
                            Some(r) if r.status() == Status::Ok => None,
                            Some(r) if r.status() == Status::Moved => match replicas.get(k) {
                                Some(Some(op)) => {
                                    let moved = Moved {
                                        from: node,
                                        epoch: r.moved_epoch,
                                        within,
                                        now_ms: now,
                                    };
                                    retarget(&peers, settings, &hints, op, moved).await
                                }
                                // Never acknowledged without a copy.
                                _ => Some(format!(
                                    "node {node} answered MOVED, and there is no replica \
                                     write to route again"
                                )),
                            },
                            Some(r) => Some(format!("node {node}: {}", r.message)),
                            None => Some(format!("node {node}: no answer")),
                        },
                        Err(e) => Some(e.to_string()),
                    };
                    let moved = matches!(&answered, Ok(r) if r.get(j)
                        .is_some_and(|r| r.status() == Status::Moved));
                    if failure.is_some() {
                        shard.borrow_mut().counters.replica_writes_failed += 1;
                        // A MOVED owner is not an owner: `retarget` hinted the owners.
                        if let (Some(Some(op)), false) = (replicas.get(k), moved) {
                            let planned = fence.epoch();
                            hint_planned(&peers, settings, &hints, (node, planned), op, now);
                        }
                    }
                    let _ = tx.unbounded_send((k, is_pending, failure));
                }
                hints.borrow_mut().flush();
                drop(fence);
            })
            .detach();
        }
    }
    drop(tx);
    InFlight {
        tallies,
        rx: Some(rx),
    }
}

impl InFlight {
    /// Waits until each write has `--write-ack` acknowledgements or cannot get them; a write
    /// that cannot is answered UNAVAILABLE, saying how many owners applied it. A write whose
    /// local result became an error meanwhile (its log failed) keeps that error.
    pub async fn finish(self, ctx: &ShardCtx, results: &mut [OpResult]) {
        let InFlight { mut tallies, rx } = self;
        let Some(mut rx) = rx else {
            return;
        };
        let undecided = |t: &[Option<(usize, WriteTally, Vec<String>)>]| {
            t.iter()
                .flatten()
                .any(|(_, tally, _)| tally.outcome() == Outcome::Pending)
        };
        while undecided(&tallies) {
            let Some((k, is_pending, failure)) = rx.next().await else {
                break;
            };
            if let Some(Some((_, tally, why))) = tallies.get_mut(k) {
                tally.record(is_pending, failure.is_none());
                why.extend(failure);
            }
        }
        let write_ack = ctx.config.replication.write_ack;
        for (i, tally, why) in tallies.into_iter().flatten() {
            if tally.outcome() != Outcome::Done && results[i].status() == Status::Ok {
                results[i] = reply::status(
                    Status::Unavailable,
                    format!(
                        "write applied by {} of the key's owners, {} needed (--write-ack \
                         {write_ack:?}{}); the others get it by hinted handoff: {}",
                        tally.acked(),
                        tally.needed(),
                        match tally.pending() {
                            0 => String::new(),
                            n =>
                                format!(" plus the {n} new owner(s) of a running membership change"),
                        },
                        why.join("; ")
                    ),
                );
            }
        }
    }
}

/// A replica write a node answered `STATUS_MOVED`: it owns the key under neither ring it
/// knows, as of its topology `epoch`.
struct Moved {
    from: NodeId,
    epoch: u64,
    /// How long to wait at most for this node to apply `epoch`.
    within: Duration,
    now_ms: u64,
}

/// The nodes a write to `key` must reach under the topology this node routes by now: its
/// owners under the ring and a running change's new ring, this node left out.
pub fn current_targets(membership: &Membership, settings: Replication, key: &[u8]) -> Vec<NodeId> {
    let mut targets = settings.owners(membership.ring(), key);
    if let Some(new) = membership.pending_ring() {
        for n in settings.owners(new, key) {
            if !targets.contains(&n) {
                targets.push(n);
            }
        }
    }
    targets.retain(|&n| n != membership.me);
    targets
}

/// Sends a replica write that `moved.from` answered `STATUS_MOVED` to the key's owners under
/// the topology this node has once it applied `moved.epoch` (waiting at most `moved.within`;
/// else it is hinted to that node, and re-targeted with the hints), that node left out; an
/// owner that fails gets a hint. Replica writes are idempotent (last
/// writer wins), so sending one again is safe. Returns why it failed, if it did.
async fn retarget(
    peers: &Peers,
    settings: Replication,
    hints: &RefCell<HintStore>,
    op: &Op,
    moved: Moved,
) -> Option<String> {
    let give_up = std::time::Instant::now() + moved.within;
    while peers.membership().epoch < moved.epoch {
        if std::time::Instant::now() > give_up {
            // Kept for that node: the handoff re-targets it once this node applied the epoch.
            hint(hints, moved.from, op.clone(), moved.now_ms);
            return Some(format!(
                "node {} answered MOVED (epoch {}) and this node has not caught up",
                moved.from, moved.epoch
            ));
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let mut targets = current_targets(&peers.membership(), settings, &op.key);
    targets.retain(|&n| n != moved.from);
    // Sent to every owner before waiting for any: one slow owner delays the others by no
    // more than its own forward timeout.
    let mut sends = Vec::with_capacity(targets.len());
    for node in targets {
        for (_, sent) in peers.send(node, vec![(0, op.clone())]).await {
            sends.push((node, sent));
        }
    }
    let mut failed = Vec::new();
    for (node, sent) in sends {
        let answered = peers.wait(sent).await;
        if !matches!(&answered, Ok(r) if r.first().is_some_and(|r| r.status() == Status::Ok)) {
            hint(hints, node, op.clone(), moved.now_ms);
            failed.push(node);
        }
    }
    (!failed.is_empty()).then(|| {
        format!(
            "node {} answered MOVED; the key's owners {failed:?} under epoch {} missed it",
            moved.from,
            peers.membership().epoch
        )
    })
}

fn hint(hints: &RefCell<HintStore>, node: NodeId, op: Op, now_ms: u64) {
    let mut hints = hints.borrow_mut();
    if !hints.push(node, op, now_ms) {
        // The first drop, then one line per thousand: a long outage must not flood the log.
        let dropped = hints.queue.dropped;
        if dropped % 1000 == 1 {
            tracing::warn!(
                "hint for node {node} dropped ({} so far): the hint queue is full \
                 (--hint-max-bytes); that owner stays behind for those keys until they are \
                 written again",
                dropped
            );
        }
    }
}

/// Hints `op` for `node`, an owner under the topology of epoch `planned` the write was planned
/// by. If this shard applied a newer epoch since, the handoff may already have re-targeted
/// its hints for that epoch: so this one is re-targeted now (`hint_targets::targets`), to
/// the key's owners under the topology this node routes by.
fn hint_planned(
    peers: &Peers,
    settings: Replication,
    hints: &RefCell<HintStore>,
    (node, planned): (NodeId, u64),
    op: &Op,
    now_ms: u64,
) {
    let membership = peers.membership();
    if membership.epoch == planned {
        hint(hints, node, op.clone(), now_ms);
        return;
    }
    let to = super::hint_targets::targets(
        membership.ring(),
        membership.pending_ring(),
        settings.replicas,
        membership.me,
        node,
        &op.key,
    );
    for target in to {
        hint(hints, target, op.clone(), now_ms);
    }
}

/// Adds this shard's replication state to its stats: hints and peers.
pub fn annotate(ctx: &ShardCtx, stats: &mut ShardStats) {
    let store = ctx.hints.borrow();
    let hints = &store.queue;
    let (queued, bytes) = hints.held();
    stats.hints_queued = queued;
    stats.hints_bytes = bytes;
    stats.hints_delivered = hints.delivered;
    stats.hints_dropped = hints.dropped;
    let (down, events) = ctx.peers.down_counts();
    stats.peers_down = down;
    stats.peer_down_events = events;
}

/// Hints delivered per request.
const HANDOFF_BATCH: usize = 256;

/// Delivers this shard's hints to owners that are back, every `every`, and drops those
/// older than `--hint-max-age` (counted and logged). Runs until dropped.
///
/// After every topology epoch it applies, it first re-targets its hints to the keys' current
/// owners (`hint_targets`), and its deliveries count in the in-flight fence under the epoch
/// they were targeted by (see `fence`).
pub async fn handoff(ctx: Rc<ShardCtx>, every: Duration) {
    let mut targeted_at = 0;
    loop {
        glommio::timer::sleep(every).await;
        let epoch = ctx.peers.membership().epoch;
        if epoch != targeted_at {
            let moved = super::hint_targets::retarget_all(&ctx);
            if moved > 0 {
                tracing::info!(
                    "shard {}: {moved} hint(s) re-targeted to the keys' owners under topology \
                     epoch {epoch}",
                    ctx.me
                );
            }
            targeted_at = epoch;
        }
        // Every hint is targeted under `targeted_at`: a hint made since under an older epoch
        // was re-targeted when it was made (`hint_planned`).
        let _fence = ctx.fence.enter(targeted_at);
        #[cfg(debug_assertions)]
        if super::hold_hook::holds_hints() {
            continue;
        }
        let expired = ctx.hints.borrow_mut().queue.expire(super::now_ms());
        if expired > 0 {
            tracing::warn!(
                "shard {}: dropped {expired} hint(s) older than --hint-max-age; their owners \
                 stay behind for those keys until they are written again",
                ctx.me
            );
        }
        let nodes = ctx.hints.borrow().queue.nodes();
        for node in nodes {
            if !ctx.peers.is_live(node) {
                continue;
            }
            if !deliver(&ctx, node, targeted_at).await {
                break;
            }
        }
        ctx.hints.borrow_mut().settle();
    }
}

/// Sends `node` its hints, targeted under topology `epoch` (and stamped with it, so an owner
/// that moved on answers MOVED), a batch at a time, until none are left or one fails.
/// Returns false if this shard applied another epoch meanwhile: it stops then, so the next
/// round re-targets the rest first (and the fence held under `epoch` is not held across a
/// change).
async fn deliver(ctx: &ShardCtx, node: NodeId, epoch: u64) -> bool {
    let mut total = 0;
    let mut current = true;
    loop {
        if ctx.peers.membership().epoch != epoch {
            current = false;
            break;
        }
        let batch = ctx.hints.borrow_mut().queue.take(node, HANDOFF_BATCH);
        if batch.is_empty() {
            break;
        }
        let ops: Vec<(usize, Op)> = batch.iter().map(|(op, _)| op.clone()).enumerate().collect();
        let mut failed = Vec::new();
        for (idx, sent) in ctx.peers.send_planned(node, ops, epoch).await {
            match ctx.peers.wait(sent).await {
                Ok(results) => {
                    for (j, i) in idx.into_iter().enumerate() {
                        if results.get(j).is_some_and(|r| r.status() == Status::Ok) {
                            total += 1;
                        } else {
                            failed.push(batch[i].clone());
                        }
                    }
                }
                Err(_) => failed.extend(idx.into_iter().map(|i| batch[i].clone())),
            }
        }
        let stop = !failed.is_empty();
        {
            let hints = &mut ctx.hints.borrow_mut().queue;
            hints.delivered += (batch.len() - failed.len()) as u64;
            hints.give_back(node, failed);
        }
        if stop {
            break;
        }
        glommio::yield_if_needed().await;
    }
    if total > 0 {
        tracing::info!("shard {}: delivered {total} hint(s) to node {node}", ctx.me);
    }
    current
}
