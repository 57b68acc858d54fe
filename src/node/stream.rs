//! The data plane of a membership change: a shard streams the keys it is the source of (see
//! `kvmesh_net::moves`) to their new owners, and, once the change is finished, drops the keys
//! its node no longer owns.
//!
//! [`stream_shard`] runs on the shard's own executor, next to its requests:
//!
//! 1. a counting pass scans the store in steps of [`SCAN_SLOTS`] slots, yielding between
//!    steps, and plans each key: what this shard must send is its share of the theoretical
//!    minimum ([`MoveCost`]), and its progress total;
//! 2. the streaming pass scans again the same way and appends each key this node sends (its
//!    key and version only, so a step holds no values) to a batch per destination shard (the
//!    shard the destination node's shard hash gives);
//! 3. a batch goes once it holds [`BATCH_BYTES`] or [`BATCH_OPS`] (or at the end), after the
//!    throttle allows it (this shard's share of `--stream-rate`, resends included), with at
//!    most [`window::WINDOW`] batches in flight per destination node, waited for in the order
//!    they finish, so a destination that is down holds up only its own batches;
//!    a batch that fails (the destination is down, slow or refuses for now) is resent, with
//!    backoff and a WARN every few failures, until its destination acknowledges every op of
//!    it; its answer is awaited for `max(--forward-timeout, 10 s)` (the destination fsyncs);
//! 4. right before each send and each resend, every entry of the batch is read again from the
//!    store and becomes a versioned replica put (`Op.replica`, its version, its remaining TTL
//!    now), or is skipped when it was removed, expired or rewritten since the scan: a stale
//!    copy could undo a remove or a touch on the new owner, and the newer state gets there
//!    through the coordinators' old ∪ new routing.
//!
//! A replica write is acknowledged only once the destination's log holds it as `--fsync`
//! promises, and it applies by last-writer-wins: a client write that raced the stream and
//! reached the new owner first is never overwritten by an older streamed copy.
//!
//! The scan contract (`kvmesh_engine::scan`) gives every entry that is live for the whole scan
//! at least once, also when entries move in the store and while a snapshot scans it too. A
//! key written during the stream is not guaranteed to be streamed: writes during a transition
//! go to the new owners as well (the coordinators' old ∪ new routing), which is what makes the
//! union complete.
//!
//! Streamed ops go over connections of their own, one per destination shard, opened from the
//! addresses in [`Move::addrs`]: a joining node is not a peer of this node yet. Each starts
//! with this node's hello marked `stream`, so the destination counts it as a peer's connection
//! (never against its client limit) and checks protocol version, cluster and identity but not
//! the member lists, which legitimately differ during a change. The source waits for the
//! answer and checks the same of the destination (its id, as the move names it, and its shard
//! ports): a node that is not the one the move names ends the stream with
//! [`StreamError::WrongDestination`] before it acknowledges anything.

// The test hook ships only in debug builds (the tests) or with the `test-hooks` feature.
#[path = "stream_batch.rs"]
mod batch;
#[path = "stream_drop.rs"]
mod drop;
#[cfg(any(debug_assertions, feature = "test-hooks"))]
#[path = "stream_hook.rs"]
pub mod hook;
#[path = "stream_progress.rs"]
pub mod progress;
#[path = "stream_receive.rs"]
pub mod receive;
#[path = "stream_sender.rs"]
mod sender;
#[path = "stream_throttle.rs"]
mod throttle;
#[path = "stream_window.rs"]
mod window;

pub use drop::{drop_unowned, Dropped};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use kvmesh_engine::Cursor;
use kvmesh_net::moves::{self, MoveCost};
use kvmesh_net::ring::{NodeId, Ring, RingError};

use super::server::ShardCtx;
use batch::{batch_budget, Batch, Item};
use sender::Sender;
use window::Window;

/// Slots scanned per step before the executor serves requests again (as a snapshot does).
pub const SCAN_SLOTS: usize = 4096;
/// Encoded bytes per batch at most, or `--max-frame` less [`FRAME_MARGIN`] if smaller (a batch
/// also ends at [`BATCH_OPS`] ops), except that an entry larger than this goes in a batch of
/// its own. Checked again, exactly, when a batch goes (values may have grown since the scan),
/// and a batch the destination refuses as too large a frame is split in halves.
pub const BATCH_BYTES: usize = 256 << 10;
/// Room left in a frame for the request around the ops.
pub const FRAME_MARGIN: usize = 1024;
/// Ops per batch at most.
pub const BATCH_OPS: usize = 1024;

/// A wire address and the shard ports of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The node's wire port (`--listen` / `--advertise`).
    pub addr: SocketAddr,
    /// Its shard ports, shard order. Empty: asked from the node (`OP_TOPOLOGY`) at first use.
    pub shard_ports: Vec<u16>,
}

/// One membership change, as the agreed topology describes it.
#[derive(Clone, Debug)]
pub struct Move {
    /// The epoch of the change: every stream op carries it (`Op.stream_epoch`), and a
    /// destination that holds the agreed topology refuses one for a change not running there
    /// ([`receive::refuse`]).
    pub epoch: u64,
    /// The ring before and after the change.
    pub old: Ring,
    pub new: Ring,
    /// Owners per key (`--replicas`).
    pub replicas: usize,
    /// Every member of old ∪ new.
    pub addrs: BTreeMap<NodeId, Endpoint>,
    /// Old members that are down and send nothing (a node removed while down): their keys
    /// come from the other old owners (`moves::plan_key_without`).
    pub down: Vec<NodeId>,
}

impl Move {
    /// The move between two member lists (ids and wire addresses), as `--peers` gives them;
    /// shard ports are asked from each node at first use. An address in `new` wins over one
    /// in `old` for the same id.
    pub fn from_members(
        epoch: u64,
        old: &[(NodeId, SocketAddr)],
        new: &[(NodeId, SocketAddr)],
        replicas: usize,
    ) -> Result<Move, RingError> {
        let ids =
            |members: &[(NodeId, SocketAddr)]| members.iter().map(|m| m.0).collect::<Vec<_>>();
        let addrs = old
            .iter()
            .chain(new)
            .map(|&(id, addr)| {
                let shard_ports = Vec::new();
                (id, Endpoint { addr, shard_ports })
            })
            .collect();
        Ok(Move {
            epoch,
            old: Ring::new(&ids(old))?,
            new: Ring::new(&ids(new))?,
            replicas,
            addrs,
            down: Vec::new(),
        })
    }

    /// This move with the nodes in `down` sending nothing.
    pub fn without(mut self, down: Vec<NodeId>) -> Move {
        self.down = down;
        self
    }
}

/// What one shard's stream did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Moved ring ranges this node is the source of (each shard streams its slice of them).
    pub ranges: u64,
    /// This shard's share of the theoretical minimum, from the counting pass.
    pub planned: MoveCost,
    /// Key copies and their key + value bytes acknowledged by their destinations. A key
    /// written or removed between the two passes can make them differ slightly from `planned`.
    pub keys_acked: u64,
    pub bytes_acked: u64,
    /// Key + value bytes put on the wire, resends included: the real cost, to compare with
    /// `planned.bytes`.
    pub bytes_sent: u64,
    /// Batches (or halves of one split to fit a frame) acknowledged, each once; and attempts
    /// resent after a failure.
    pub batches: u64,
    pub retries: u64,
    /// Ops a destination refused for good (a key or value over its limits): not retried.
    pub refused: u64,
    /// Entries removed, expired or rewritten between the scan and their send: not sent (the
    /// newer state reaches the new owner through the coordinators' routing).
    pub skipped: u64,
}

impl std::fmt::Display for StreamReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ratio = if self.planned.bytes == 0 {
            1.0
        } else {
            self.bytes_sent as f64 / self.planned.bytes as f64
        };
        write!(
            f,
            "{} range(s), {} key copies acknowledged, {} byte(s) streamed vs a minimum of {} \
             ({ratio:.3}×), {} batch(es), {} resent, {} refused, {} changed during the stream",
            self.ranges,
            self.keys_acked,
            self.bytes_sent,
            self.planned.bytes,
            self.batches,
            self.retries,
            self.refused,
            self.skipped
        )
    }
}

/// Why a stream did not finish.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("node {0} receives keys but the move gives no address for it")]
    NoAddress(NodeId),
    #[error("the shard is stopping; the stream did not finish")]
    Stopping,
    #[error("the node at node {node}'s address is not that node of this cluster: {why}")]
    WrongDestination { node: NodeId, why: String },
    /// Every batch was answered, but destinations refused `refused` key copies for good (a key
    /// or value over their limits, no space): those owners lack them, so the source must keep
    /// its copies and the change is not done. `acked` were acknowledged.
    #[error(
        "the destinations refused {refused} key copies for good ({acked} acknowledged): they \
         lack them, so this node must keep its copies (see the WARN lines for why)"
    )]
    Refused { refused: u64, acked: u64 },
}

/// Streams this shard's keys for which this node is the source to their destinations' owning
/// shards, batched, at this shard's share of `--stream-rate`, as versioned replica writes
/// (last-writer-wins, so racing client writes never go back in time). Returns once every batch
/// was acknowledged durably by its destination; retries a destination that is down, for as
/// long as it takes (until the shard stops: [`StreamError::Stopping`]). Ops a destination
/// refuses for good end it in [`StreamError::Refused`] once every batch was answered: the
/// source must not report itself done, nor drop its copies. Correct only while coordinators
/// write to the owners of old ∪ new: an entry changed during the stream is skipped here (see
/// the module docs) and reaches the new owner only through that routing. Dropping the future
/// cancels the batches in flight. Run one stream per shard at a time (the progress counters
/// describe one); running the same move again is harmless, only slower.
pub async fn stream_shard(ctx: &Rc<ShardCtx>, mv: &Move) -> Result<StreamReport, StreamError> {
    let me = ctx.peers.membership().me;
    let ranges = moves::moved_ranges_without(&mv.old, &mv.new, mv.replicas, &mv.down)
        .iter()
        .filter(|r| r.plan.is_sent_by(me))
        .count() as u64;
    let planned = count(ctx, mv, me).await;
    for node in planned.1.iter() {
        if !mv.addrs.contains_key(node) {
            return Err(StreamError::NoAddress(*node));
        }
    }
    let planned = planned.0;
    ctx.shard
        .borrow_mut()
        .stream
        .begin(ranges, planned, Instant::now());
    tracing::info!(
        "shard {}: epoch {}: streaming {} key copies ({} bytes) of {ranges} range(s) to their \
         new owners",
        ctx.me,
        mv.epoch,
        planned.copies,
        planned.bytes
    );
    let sender = Rc::new(Sender::new(ctx.clone(), mv.addrs.clone(), mv.epoch));
    {
        // Progress ends with the stream, also when the caller drops it unfinished.
        let active = Active(ctx, std::cell::Cell::new(false));
        let sent = send_all(ctx, mv, me, &sender).await;
        active
            .1
            .set(sent.is_ok() && sender.report.borrow().refused == 0);
        sent?;
    }
    let report = {
        let mut r = sender.report.borrow().clone();
        r.ranges = ranges;
        r.planned = planned;
        r
    };
    if report.refused > 0 {
        tracing::error!(
            "shard {}: epoch {}: stream failed: {report}",
            ctx.me,
            mv.epoch
        );
        return Err(StreamError::Refused {
            refused: report.refused,
            acked: report.keys_acked,
        });
    }
    tracing::info!(
        "shard {}: epoch {}: stream done: {report}",
        ctx.me,
        mv.epoch
    );
    Ok(report)
}

/// Marks the shard's stream done (when its flag was set) or failed in its progress counters
/// when dropped.
struct Active<'a>(&'a ShardCtx, std::cell::Cell<bool>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.shard.borrow_mut().stream.finish(self.1.get());
    }
}

/// The counting pass: this shard's planned cost, and every destination it will send to.
async fn count(ctx: &ShardCtx, mv: &Move, me: NodeId) -> (MoveCost, Vec<NodeId>) {
    let mut cost = MoveCost::default();
    let mut destinations: Vec<NodeId> = Vec::new();
    let mut cursor = Some(Cursor::START);
    while let Some(at) = cursor {
        cursor = ctx
            .shard
            .borrow_mut()
            .store_mut()
            .scan(at, SCAN_SLOTS, super::now_ms(), |e| {
                let plan = moves::plan_key_without(&mv.old, &mv.new, mv.replicas, &mv.down, e.key);
                if plan.is_sent_by(me) {
                    cost.add(&plan, e.key.len(), e.value.len());
                    for d in &plan.destinations {
                        if !destinations.contains(d) {
                            destinations.push(*d);
                        }
                    }
                }
            });
        futures_lite::future::yield_now().await;
    }
    (cost, destinations)
}

/// The streaming pass: scan, batch per destination shard, send through the window.
async fn send_all(
    ctx: &Rc<ShardCtx>,
    mv: &Move,
    me: NodeId,
    sender: &Rc<Sender>,
) -> Result<(), StreamError> {
    // The batches in flight: dropping the window (an early return) cancels them.
    let mut window = Window::new(sender.clone());
    let mut batches: BTreeMap<(NodeId, usize), Batch> = BTreeMap::new();
    let budget = batch_budget(ctx.config.max_frame);
    let mut cursor = Some(Cursor::START);
    while let Some(at) = cursor {
        if !ctx.serving.is_serving() {
            return Err(StreamError::Stopping);
        }
        // Only what identifies each entry: its value is read when its batch goes.
        let mut found: Vec<(Item, Vec<NodeId>)> = Vec::new();
        cursor = ctx
            .shard
            .borrow_mut()
            .store_mut()
            .scan(at, SCAN_SLOTS, super::now_ms(), |e| {
                let plan = moves::plan_key_without(&mv.old, &mv.new, mv.replicas, &mv.down, e.key);
                if plan.is_sent_by(me) {
                    let item = Item {
                        key: e.key.to_vec(),
                        version: e.version,
                        len: e.key.len() + e.value.len(),
                    };
                    found.push((item, plan.destinations));
                }
            });
        for (item, destinations) in found {
            for node in destinations {
                let shard = sender.shard_of(node, &item.key).await?;
                let ready = batches
                    .entry((node, shard))
                    .or_default()
                    .push(item.clone(), budget);
                for batch in ready {
                    window.push((node, shard), batch).await?;
                }
            }
        }
        futures_lite::future::yield_now().await;
    }
    for (to, batch) in std::mem::take(&mut batches) {
        if !batch.items.is_empty() {
            window.push(to, batch).await?;
        }
    }
    window.drain().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_from_member_lists() {
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7100".parse().unwrap();
        let mv = Move::from_members(3, &[(1, a)], &[(1, a), (2, b)], 2).unwrap();
        assert_eq!((mv.old.nodes(), mv.new.nodes()), (&[1][..], &[1, 2][..]));
        assert_eq!(mv.addrs.len(), 2);
        assert_eq!(mv.addrs[&2].addr, b);
        assert!(Move::from_members(3, &[], &[(1, a)], 1).is_err());
    }
}
