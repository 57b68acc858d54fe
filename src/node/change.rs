//! A membership change's lifecycle on one node, around the agreed topology (`node::raft`):
//!
//! 1. **Begin.** A node started with `--join` asks a member (`OP_JOIN`); `kvmesh leave` asks
//!    the leaving node itself (`OP_LEAVE`). The asked shard 0 proposes `BeginJoin` or
//!    `BeginLeave` and answers once the agreed topology shows the change running, or why it
//!    cannot (another change runs: BUSY, the joiner asks again; a leave below `--replicas`:
//!    REFUSED).
//! 2. **Stream.** Every shard of every member of the old ring runs `stream::stream_shard`
//!    for the change once ([`lifecycle`]); meanwhile writes go to the owners under both rings
//!    (`replicate`). When all its shards are done, shard 0 proposes `SourceDone`.
//! 3. **Finish.** The leader proposes `Finish` once every source reported. Every node then
//!    routes by the new ring, and every shard drops the keys its node no longer owns
//!    (`stream::drop_unowned`). A node that left stops itself.
//! 4. **Or abort.** `kvmesh abort` (`OP_ABORT`, any member) proposes `Abort`: the old members
//!    stay, at a new epoch. A stream of the aborted change stops ([`unless_superseded`]); every
//!    member runs the drop pass for the old ring (copies streamed for the change go), and a
//!    joining node, no member, stops as a node that left does. The leader logs what a running
//!    change waits for every 10 s.
//!
//! Every proposal is made again until its effect shows in the agreed topology: a proposal is
//! lost when the leader changes, and the state machine ignores a repeated one.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_net::ring::NodeId;
use kvmesh_net::Connection;
use kvmesh_proto::wire::{self, Op, OpCode, OpResult, Status};

use crate::cluster::topology::{Change, Command, Member, Refused, Topology};
use crate::cluster::topology_wire::{member_to_wire, topology_to_wire};
use crate::cluster::Peers;

use super::config::NodeConfig;
use super::durable;
use super::mesh::{Control, Mesh};
use super::reply;
use super::server::ShardCtx;
use super::stream;

mod drain;
mod request;

use drain::all_drained;
pub use drain::{annotate, publish_loop};
pub use request::{answer, join};

/// How often the lifecycle looks at the agreed topology.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// How long before a proposal whose effect did not show is made again.
const PROPOSE_AGAIN: Duration = Duration::from_secs(1);
/// How long a node that left keeps serving after the change finished, so that every member
/// routes by the new ring before it goes.
const LEAVE_GRACE: Duration = Duration::from_secs(1);
/// How long a node that left waits for its shards' hints to be delivered before it stops.
const HINTS_WITHIN: Duration = Duration::from_secs(30);
/// How long a node that left waits at most for its removal from the Raft group.
const REMOVAL_WAIT: Duration = Duration::from_secs(30);
/// How often the leader logs what a running change waits for.
const WAITS_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long an `OP_JOIN` or `OP_LEAVE` waits for its change to be agreed.
const AGREE_WITHIN: Duration = Duration::from_secs(5);
/// How long one request to join may take at most (the seed tries for `AGREE_WITHIN`).
const ASK_WITHIN: Duration = Duration::from_secs(15);

/// Shard 0's record of which of its node's shards finished a step of a change (streaming;
/// delivering their hints when the node left), per epoch.
#[derive(Debug, Default)]
pub struct Streamed {
    epoch: u64,
    shards: BTreeSet<usize>,
}

impl Streamed {
    pub fn note(&mut self, epoch: u64, shard: usize) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.shards.clear();
        }
        self.shards.insert(shard);
    }

    fn all_done(&self, epoch: u64, shards: usize) -> bool {
        self.epoch == epoch && self.shards.len() == shards
    }
}

/// Which change a shard saw running, so that no change finishes unseen: the lifecycle looks
/// at the agreed topology every [`LOOK_EVERY`], and a `Finish` and the next `Begin` can both
/// land between two looks.
#[derive(Debug, Default)]
pub struct Watch {
    /// The epoch the running change began at.
    running: Option<u64>,
}

impl Watch {
    /// Takes the agreed `epoch` and whether a change runs at it; returns the epoch the change
    /// that finished since the last look began at (its drop pass is due), if one did.
    pub fn look(&mut self, epoch: u64, changing: bool) -> Option<u64> {
        let finished = self.running.filter(|&began| epoch > began);
        if finished.is_some() {
            self.running = None;
        }
        if changing {
            self.running = Some(epoch);
        }
        finished
    }
}

/// Whether `op` is answered `STATUS_MOVED` by a node on a newer topology than its sender's
/// (see `Request.epoch`): the reads, which must not be served by a node that may have dropped
/// the key. Writes are served (the receiver replicates them to the owners it knows).
pub fn is_reroutable(op: &Op) -> bool {
    !op.replica
        && [OpCode::OpGet, OpCode::OpTtl, OpCode::OpTouch]
            .iter()
            .any(|&c| c as i32 == op.code)
}

/// The answer to an op routed by an older topology than this node's `epoch`.
pub fn moved(epoch: u64) -> OpResult {
    OpResult {
        status: Status::Moved as i32,
        message: format!("routed by an older topology than this node's (epoch {epoch})"),
        moved_epoch: epoch,
        ..OpResult::default()
    }
}

/// Routes again the ops another node answered `STATUS_MOVED`, once this node has applied
/// the topology that node has (at most `--forward-timeout` later: else they are answered
/// UNAVAILABLE).
pub async fn reroute_moved(ctx: &ShardCtx, kept: Vec<(usize, Op)>, results: &mut [OpResult]) {
    let moved: Vec<(usize, Op)> = kept
        .into_iter()
        .filter(|(i, _)| results[*i].status() == Status::Moved)
        .collect();
    let Some(epoch) = moved.iter().map(|(i, _)| results[*i].moved_epoch).max() else {
        return;
    };
    let give_up = Instant::now() + ctx.config.forward_timeout;
    while ctx.peers.membership().epoch < epoch {
        if Instant::now() > give_up {
            for (i, _) in &moved {
                results[*i] = reply::status(
                    Status::Unavailable,
                    format!("this node has not caught up with topology epoch {epoch} yet"),
                );
            }
            return;
        }
        glommio::timer::sleep(LOOK_EVERY / 5).await;
    }
    let (idx, ops): (Vec<usize>, Vec<Op>) = moved.into_iter().unzip();
    let answers = Box::pin(super::dispatch::execute(ctx, ops)).await;
    for (i, answer) in idx.into_iter().zip(answers) {
        results[i] = answer;
    }
}

/// Runs `work` unless the agreed topology moves past `epoch` first (the change was aborted:
/// a change cannot finish before this shard's stream did), then `None` and `work` is dropped
/// (a stream dropped cancels its batches in flight).
async fn unless_superseded<T>(
    ctx: &ShardCtx,
    epoch: u64,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let superseded = async {
        loop {
            glommio::timer::sleep(LOOK_EVERY).await;
            if ctx.peers.agreed().is_some_and(|t| t.epoch != epoch) {
                return None;
            }
        }
    };
    futures_lite::future::or(async { Some(work.await) }, superseded).await
}

/// Runs on every shard of a node in a cluster: streams when a change begins, reports it
/// done, finishes it (on the leader), drops what is no longer owned, and stops a node that
/// left. See the module docs.
pub async fn lifecycle(
    ctx: Rc<ShardCtx>,
    streamed: Rc<RefCell<Streamed>>,
    delivered: Rc<RefCell<Streamed>>,
    stop: Arc<AtomicBool>,
) {
    let mut streamed_epoch = 0;
    let mut watch = Watch::default();
    let mut proposed: Option<(Command, Instant)> = None;
    let mut waits_logged: Option<Instant> = None;
    let mut resumed = false;
    loop {
        glommio::timer::sleep(LOOK_EVERY).await;
        let Some(topology) = ctx.peers.agreed() else {
            continue;
        };
        let replicas = ctx.config.replication.replicas;
        if !resumed {
            resumed = true;
            resume_drop(&ctx, &topology, replicas).await;
        }
        if let Some(began) = watch.look(topology.epoch, topology.transition.is_some()) {
            if finished(&ctx, began, replicas, &delivered, &stop).await {
                return;
            }
            continue;
        }
        let membership = ctx.peers.membership();
        let me = membership.me;
        let Some(t) = &topology.transition else {
            continue;
        };
        if streamed_epoch != topology.epoch && t.old.iter().any(|m| m.id == me) {
            let pairs = |ms: &[Member]| -> Vec<(NodeId, SocketAddr)> {
                ms.iter().map(|m| (m.id, m.addr)).collect()
            };
            let mv = match stream::Move::from_members(
                topology.epoch,
                &pairs(&t.old),
                &pairs(&t.new),
                replicas,
            ) {
                Ok(mv) => mv.without(t.down_nodes()),
                Err(e) => {
                    tracing::error!("epoch {}: no move: {e}", topology.epoch);
                    continue;
                }
            };
            let others: Vec<NodeId> = t
                .old
                .iter()
                .chain(&t.new)
                .map(|m| m.id)
                .filter(|&id| id != me && !t.down_nodes().contains(&id))
                .collect();
            let work = async {
                all_drained(&ctx, topology.epoch, &others).await;
                stream::stream_shard(&ctx, &mv).await
            };
            let Some(outcome) = unless_superseded(&ctx, topology.epoch, work).await else {
                tracing::warn!(
                    "shard {}: epoch {}: the change was aborted; its stream stopped",
                    ctx.me,
                    topology.epoch
                );
                continue;
            };
            match outcome {
                Ok(_) => {
                    streamed_epoch = topology.epoch;
                    if ctx.me == 0 {
                        streamed.borrow_mut().note(topology.epoch, 0);
                    } else {
                        let done = Control::StreamDone {
                            epoch: topology.epoch,
                            shard: ctx.me,
                        };
                        ctx.mesh.control(0, done);
                    }
                }
                Err(e) => {
                    tracing::warn!("shard {}: epoch {}: {e}", ctx.me, topology.epoch);
                    continue;
                }
            }
        }
        let Some(raft) = ctx.raft.as_ref() else {
            continue;
        };
        let report = Command::SourceDone {
            epoch: topology.epoch,
            node: me,
        };
        let finish = Command::Finish {
            epoch: topology.epoch,
        };
        if raft.is_leader()
            && !t.pending().is_empty()
            && waits_logged.is_none_or(|at| at.elapsed() > WAITS_LOG_EVERY)
        {
            waits_logged = Some(Instant::now());
            let joining = t.new.iter().filter(|m| !t.old.contains(m));
            tracing::info!(
                "topology: epoch {}: the change ({}) waits for source(s) {:?} to stream to \
                 {:?} (kvmesh abort rolls it back)",
                topology.epoch,
                t.change,
                t.pending(),
                joining.map(|m| m.id).collect::<Vec<_>>()
            );
        }
        let command = if t.pending().contains(&me)
            && streamed
                .borrow()
                .all_done(topology.epoch, ctx.config.shards)
        {
            Some(report)
        } else if topology.finish_due().is_some() && raft.is_leader() {
            Some(finish)
        } else {
            None
        };
        if let Some(command) = command {
            let again = match &proposed {
                Some((c, at)) => *c != command || at.elapsed() > PROPOSE_AGAIN,
                None => true,
            };
            if again {
                if let Err(e) = raft.propose(&command, 0) {
                    tracing::debug!("{e}");
                }
                proposed = Some((command, Instant::now()));
            }
        }
    }
}

/// After the change that began at epoch `began` finished: drops what this node no longer owns
/// (fenced, see `stream::drop_unowned`), reporting the finish's epoch at most meanwhile; or,
/// on a node that left, delivers this shard's hints (at most [`HINTS_WITHIN`]) and, on shard
/// 0, once every shard did, stops the node (returns true).
async fn finished(
    ctx: &Rc<ShardCtx>,
    began: u64,
    replicas: usize,
    delivered: &RefCell<Streamed>,
    stop: &AtomicBool,
) -> bool {
    let membership = ctx.peers.membership();
    if membership.is_member() {
        ctx.dropping_until.set(Some(began + 1));
        drain::publish(ctx);
        let dropped = stream::drop_unowned(ctx, membership.ring(), replicas).await;
        record_drop(ctx, dropped);
        ctx.dropping_until.set(None);
        let dropped = dropped.keys;
        tracing::info!(
            "shard {}: the change of epoch {began} finished; dropped {dropped} key(s) this \
             node no longer owns",
            ctx.me
        );
        return false;
    }
    let since = Instant::now();
    loop {
        let queued = ctx.hints.borrow().queue.held().0;
        match drain(queued, since.elapsed()) {
            Drain::Done => break,
            Drain::Wait => glommio::timer::sleep(LOOK_EVERY * 4).await,
            Drain::GiveUp => {
                tracing::warn!(
                    "shard {}: this node left the cluster with {queued} hint(s) not delivered \
                     after {HINTS_WITHIN:?}: their owners miss those writes until they are \
                     written again or read-repaired",
                    ctx.me
                );
                break;
            }
        }
    }
    if ctx.me != 0 {
        let done = Control::HintsDelivered {
            epoch: began,
            shard: ctx.me,
        };
        ctx.mesh.control(0, done);
        return false;
    }
    delivered.borrow_mut().note(began, 0);
    // Every other shard bounds its own wait; this bound only guards against a lost message.
    let give_up = Instant::now() + HINTS_WITHIN;
    while !delivered.borrow().all_done(began, ctx.config.shards) && Instant::now() < give_up {
        glommio::timer::sleep(LOOK_EVERY).await;
    }
    if ctx.raft.as_ref().is_some_and(|r| r.last_aborted() == began) {
        tracing::warn!(
            "the join was aborted (epoch {}): this node is no member; stopping in \
             {LEAVE_GRACE:?}. Empty its data directory before it joins again",
            membership.epoch
        );
    } else {
        tracing::info!(
            "this node left the cluster (epoch {}); stopping in {LEAVE_GRACE:?}, once its \
             removal from the topology Raft group is committed",
            membership.epoch
        );
    }
    // Every member applies the finish at about the same time; until then one may still route
    // a read here. The group must not count a stopped voter.
    match &ctx.raft {
        Some(raft) => raft.wait_until_removed(LEAVE_GRACE, REMOVAL_WAIT).await,
        None => glommio::timer::sleep(LEAVE_GRACE).await,
    }
    stop.store(true, Ordering::Relaxed);
    true
}

/// At start-up, with the agreed topology: runs the drop pass again if this shard did not
/// complete one for the last finished change (the node stopped during it; see
/// `durable::dropped`). Until then the shard reports at most the recorded epoch (from its
/// start, see `server`), then that change's epoch, as drained, so no later change's source
/// streams before.
async fn resume_drop(ctx: &Rc<ShardCtx>, topology: &Topology, replicas: usize) {
    let Some(durability) = ctx.config.durability.as_ref() else {
        ctx.dropping_until.set(None);
        return;
    };
    let done = durable::dropped::load(&durability.data_dir, ctx.me);
    // A running change began at `epoch`: the last finished one is the epoch before.
    let due = topology.epoch - u64::from(topology.transition.is_some());
    let membership = ctx.peers.membership();
    // Epoch 1 is the bootstrap: no change has finished, so nothing was ever moved away.
    if done >= due || due <= 1 || !membership.is_member() || membership.epoch == 0 {
        ctx.dropping_until.set(None);
        return;
    }
    tracing::info!(
        "shard {}: its last completed drop pass of keys no longer owned is at epoch {done}, \
         the topology at epoch {due}: running it again",
        ctx.me
    );
    ctx.dropping_until.set(Some(due));
    drain::publish(ctx);
    let dropped = stream::drop_unowned(ctx, membership.ring(), replicas).await;
    record_drop(ctx, dropped);
    ctx.dropping_until.set(None);
}

/// Records a completed drop pass in the data directory (see `durable::dropped`).
fn record_drop(ctx: &ShardCtx, dropped: stream::Dropped) {
    let (Some(durability), Some(epoch)) = (ctx.config.durability.as_ref(), dropped.completed_at)
    else {
        return;
    };
    if let Err(e) = durable::dropped::save(&durability.data_dir, ctx.me, epoch) {
        tracing::warn!(
            "shard {}: the completed drop pass (epoch {epoch}) is not recorded: {e}; it runs \
             again at the next start",
            ctx.me
        );
    }
}

/// What a node that left does about its undelivered hints.
#[derive(Debug, PartialEq, Eq)]
enum Drain {
    /// None are left: stop.
    Done,
    /// Wait for the handoff to deliver them.
    Wait,
    /// Stop anyway, saying how many are lost.
    GiveUp,
}

/// `queued` hints are left on a shard of a node that left, after `waited`.
fn drain(queued: u64, waited: Duration) -> Drain {
    match queued {
        0 => Drain::Done,
        _ if waited >= HINTS_WITHIN => Drain::GiveUp,
        _ => Drain::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_left_waits_for_its_hints_within_a_bound() {
        let early = Duration::from_secs(1);
        assert_eq!(drain(0, early), Drain::Done);
        assert_eq!(drain(3, early), Drain::Wait);
        assert_eq!(drain(3, HINTS_WITHIN), Drain::GiveUp);
        assert_eq!(drain(0, HINTS_WITHIN), Drain::Done);
    }

    #[test]
    fn a_finish_and_the_next_begin_between_two_looks_still_finish_the_first() {
        let mut watch = Watch::default();
        assert_eq!(watch.look(1, false), None);
        assert_eq!(watch.look(2, true), None, "a join begins at 2");
        assert_eq!(watch.look(2, true), None);
        // It finished at 3 and a leave began at 4 before the next look.
        assert_eq!(watch.look(4, true), Some(2));
        assert_eq!(watch.look(4, true), None);
        assert_eq!(watch.look(5, false), Some(4));
        assert_eq!(watch.look(5, false), None);
    }
}
