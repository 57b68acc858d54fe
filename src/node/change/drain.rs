//! The in-flight fence seen from a change's source (see `fence`): what a shard reports in
//! `OP_TOPOLOGY` ([`annotate`]), and the wait before streaming until every shard taking part
//! applied and drained the change's epoch ([`all_drained`]).

use std::time::{Duration, Instant};

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{self, Op, OpCode};

use crate::cluster::membership::Membership;
use crate::cluster::topology_wire::topology_to_wire;

use super::super::server::ShardCtx;
use super::LOOK_EVERY;

/// Fills an `OP_TOPOLOGY` answer with what this shard knows of the cluster: the agreed epoch,
/// the members it routes by and the running change.
///
/// `drained_epoch` is the fence a later change's sources wait for (`all_drained`): at most
/// the epoch of the oldest request still in flight (see `fence`) and, while the shard's drop
/// pass for a finished change runs (or, after a restart, until it ran again if it was cut
/// short), at most the epoch that change finished at.
pub fn annotate(ctx: &ShardCtx, membership: &Membership, topology: &mut wire::Topology) {
    topology.epoch = membership.epoch;
    topology.members = membership.wire_members();
    topology.transition = ctx
        .peers
        .agreed()
        .and_then(|t| topology_to_wire(&t).transition);
    if let Some(raft) = &ctx.raft {
        topology.raft_heard = raft.heard_from();
    }
    topology.drained_epoch = ctx
        .dropping_until
        .get()
        .map_or(topology.epoch, |e| topology.epoch.min(e));
    topology.drained_epoch = ctx.fence.drained(topology.drained_epoch);
}

/// How long a source waits at most, once every shard taking part applied a change's epoch,
/// for the requests they planned under older epochs (see `fence`): every request ends within
/// a few `--forward-timeout`s (each send to an owner is bounded by it), so this bound is only
/// reached by a request stuck beyond its own timeouts, which must not hold up a change forever.
fn drain_within(forward_timeout: Duration) -> Duration {
    (forward_timeout * 5).max(Duration::from_secs(10))
}

/// What one shard reports of a change at `epoch`: whether it applied it, and whether it
/// drained it (every request it planned under an older epoch finished).
fn fenced(topology: Option<&wire::Topology>, epoch: u64) -> (bool, bool) {
    let (at, drained) = topology.map_or((0, 0), |t| (t.epoch, t.drained_epoch));
    (at >= epoch, at >= epoch && drained >= epoch)
}

/// Waits until every shard of every node in `nodes`, and every other shard of this node (read on the node's `fence_board`), has
/// applied topology `epoch` and drained it (see `fence`). A source streams only then: a write
/// planned by a ring from before the change goes to the old owners only, and could reach this
/// source after it streamed the key. Once every shard applied the epoch, the wait for the
/// drain is bounded ([`drain_within`]); a shard still not drained then is logged.
pub(super) async fn all_drained(ctx: &ShardCtx, epoch: u64, nodes: &[NodeId]) {
    let me = ctx.peers.membership().me;
    let mut waiting: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != me).collect();
    waiting.push(me);
    let mut logged = Instant::now();
    let mut applied_since: Option<Instant> = None;
    loop {
        let mut behind = Vec::new();
        let mut all_applied = true;
        for &node in &waiting {
            let (applied, drained) = if node == me {
                own_shards(ctx, epoch)
            } else {
                peer_shards(ctx, node, epoch).await
            };
            all_applied &= applied;
            if !drained {
                behind.push(node);
            }
        }
        waiting = behind;
        if waiting.is_empty() {
            return;
        }
        if all_applied {
            let since = *applied_since.get_or_insert_with(Instant::now);
            let bound = drain_within(ctx.config.forward_timeout);
            if since.elapsed() > bound {
                tracing::warn!(
                    "shard {}: epoch {epoch}: node(s) {waiting:?} still run requests planned \
                     under an older topology after {bound:?}; streaming anyway (a write among \
                     them may miss the new owner)",
                    ctx.me
                );
                return;
            }
        } else {
            // A shard stopped reporting the epoch applied (a node restarting): the bound
            // starts again once every shard applied it.
            applied_since = None;
        }
        if logged.elapsed() > Duration::from_secs(5) {
            logged = Instant::now();
            tracing::info!(
                "shard {}: epoch {epoch}: waiting for node(s) {waiting:?} to apply the change \
                 and finish the requests planned before it, before streaming",
                ctx.me
            );
        }
        glommio::timer::sleep(LOOK_EVERY).await;
    }
}

fn topology_op() -> Op {
    Op {
        code: OpCode::OpTopology as i32,
        ..Op::default()
    }
}

/// Whether every shard of `node` applied and drained `epoch`.
async fn peer_shards(ctx: &ShardCtx, node: NodeId, epoch: u64) -> (bool, bool) {
    let shards = ctx.peers.shard_ports_of(node).await.map_or(0, |p| p.len());
    let (mut applied, mut drained) = (shards > 0, shards > 0);
    for shard in 0..shards {
        let sent = ctx
            .peers
            .send_to_shard(node, shard, vec![topology_op()])
            .await;
        let answered = ctx.peers.wait(sent).await.ok().and_then(|mut r| r.pop());
        let (a, d) = fenced(answered.and_then(|r| r.topology).as_deref(), epoch);
        applied &= a;
        drained &= d;
    }
    (applied, drained)
}

/// Whether every shard of this node (this one included) applied and drained `epoch`. The
/// other shards are read on the node's `fence_board`, where each publishes its own report
/// ([`publish`]): no connection, so no `--max-connections` refusal under client load. A
/// shard that has not published recently counts as applied but not drained, so the bounded
/// wait applies to it.
fn own_shards(ctx: &ShardCtx, epoch: u64) -> (bool, bool) {
    let mine = publish(ctx);
    let (mut applied, mut drained) = fenced(Some(&mine), epoch);
    let now = Instant::now();
    for shard in (0..ctx.config.shards).filter(|&s| s != ctx.me) {
        let seen = ctx.fence_board.seen(shard, epoch, now);
        applied &= seen.applied;
        drained &= seen.drained;
    }
    (applied, drained)
}

/// Publishes this shard's report on the node's `fence_board`, and returns it.
pub(super) fn publish(ctx: &ShardCtx) -> wire::Topology {
    let mut t = wire::Topology::default();
    annotate(ctx, &ctx.peers.membership(), &mut t);
    ctx.fence_board.publish(ctx.me, t.epoch, t.drained_epoch);
    t
}

/// Publishes this shard's report every `fence_board::PUBLISH_EVERY`, for its node's other
/// shards (see [`own_shards`]). Runs for the shard's life.
pub async fn publish_loop(ctx: std::rc::Rc<ShardCtx>) {
    loop {
        publish(&ctx);
        glommio::timer::sleep(super::super::fence_board::PUBLISH_EVERY).await;
    }
}
