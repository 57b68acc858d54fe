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
//!    throttle allows it (this shard's share of `--stream-rate`), with at most [`WINDOW`]
//!    batches in flight;
//!    a batch that fails (the destination is down, slow or refuses for now) is resent, with
//!    backoff, until its destination acknowledges every op of it;
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
//! The scan contract (`kvmesh_engine::scan`) gives every key that is live throughout the
//! stream exactly once. A key written during the stream is not guaranteed to be streamed:
//! writes during a transition go to the new owners as well (the routing's job), which is what
//! makes the union complete.
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
#[cfg(any(debug_assertions, feature = "test-hooks"))]
#[path = "stream_hook.rs"]
pub mod hook;
#[path = "stream_progress.rs"]
pub mod progress;
#[path = "stream_throttle.rs"]
mod throttle;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvmesh_engine::{Cursor, Version};
use kvmesh_net::moves::{self, MoveCost};
use kvmesh_net::mux::Mux;
use kvmesh_net::ring::{NodeId, Ring, RingError};
use kvmesh_net::{shard_for, Connection};
use kvmesh_proto::wire::{Hello, Op, OpCode, OpResult, Status, Topology};

use super::server::ShardCtx;
use super::shard::remaining;
use throttle::Throttle;

/// Slots scanned per step before the executor serves requests again (as a snapshot does).
pub const SCAN_SLOTS: usize = 4096;
/// Encoded bytes per batch at most, or `--max-frame` less [`FRAME_MARGIN`] if smaller (a batch
/// also ends at [`BATCH_OPS`] ops), except that an entry larger than this goes in a batch of
/// its own. Checked again, exactly, when a batch goes (values may have grown since the scan),
/// and a batch the destination refuses as too large a frame is split in halves.
pub const BATCH_BYTES: usize = 256 << 10;
/// Room left in a frame for the request around the ops.
pub const FRAME_MARGIN: usize = 1024;
/// Frame errors a single entry may get before it counts as refused for good.
const FRAME_TRIES: u32 = 3;
/// What an op adds to its key and value once encoded, at most (tags, lengths, TTL, version).
const OP_OVERHEAD: usize = 64;
/// Ops per batch at most.
pub const BATCH_OPS: usize = 1024;
/// Batches of one shard in flight at once, over all destinations.
pub const WINDOW: usize = 4;
/// First and longest wait before a failed batch is resent.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

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
    /// The epoch of the change (for logs).
    pub epoch: u64,
    /// The ring before and after the change.
    pub old: Ring,
    pub new: Ring,
    /// Owners per key (`--replicas`).
    pub replicas: usize,
    /// Every member of old ∪ new.
    pub addrs: BTreeMap<NodeId, Endpoint>,
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
        })
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
    /// Batches acknowledged, and batches resent after a failure.
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
/// source must not report itself done, nor drop its copies. Dropping the future
/// cancels the batches in flight. Run one stream per shard at a time (the progress counters
/// describe one); running the same move again is harmless, only slower.
pub async fn stream_shard(ctx: &Rc<ShardCtx>, mv: &Move) -> Result<StreamReport, StreamError> {
    let me = ctx.peers.membership().me;
    let ranges = moves::moved_ranges(&mv.old, &mv.new, mv.replicas)
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
    let sender = Rc::new(Sender::new(ctx.clone(), mv.addrs.clone()));
    {
        // Progress ends with the stream, also when the caller drops it unfinished.
        let _active = Active(ctx);
        send_all(ctx, mv, me, &sender).await?;
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

/// Marks the shard's stream finished in its progress counters when dropped.
struct Active<'a>(&'a ShardCtx);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.shard.borrow_mut().stream.finish();
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
            .borrow()
            .store()
            .scan(at, SCAN_SLOTS, super::now_ms(), |e| {
                let plan = moves::plan_key(&mv.old, &mv.new, mv.replicas, e.key);
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
    // The batches in flight, oldest first: dropping them (an early return) cancels them.
    let mut window = VecDeque::with_capacity(WINDOW);
    let mut batches: BTreeMap<(NodeId, usize), Batch> = BTreeMap::new();
    let mut throttle = Throttle::new(
        ctx.config.shard_stream_rate(),
        BATCH_BYTES as u64,
        Instant::now(),
    );
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
            .borrow()
            .store()
            .scan(at, SCAN_SLOTS, super::now_ms(), |e| {
                let plan = moves::plan_key(&mv.old, &mv.new, mv.replicas, e.key);
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
                    launch(sender, &mut window, &mut throttle, (node, shard), batch).await?;
                }
            }
        }
        futures_lite::future::yield_now().await;
    }
    for (to, batch) in std::mem::take(&mut batches) {
        if !batch.items.is_empty() {
            launch(sender, &mut window, &mut throttle, to, batch).await?;
        }
    }
    while let Some(task) = window.pop_front() {
        task.await?;
    }
    Ok(())
}

/// A batch on its way, in a task of its own.
type InFlight = glommio::Task<Result<(), StreamError>>;

/// Waits for the throttle and for room in the window (the oldest batch in flight to be
/// acknowledged, when [`WINDOW`] are), then sends `batch` to shard `to.1` of node `to.0` in a
/// task of its own.
async fn launch(
    sender: &Rc<Sender>,
    window: &mut VecDeque<InFlight>,
    throttle: &mut Throttle,
    to: (NodeId, usize),
    batch: Batch,
) -> Result<(), StreamError> {
    let wait = throttle.take(batch.bytes as u64, Instant::now());
    if !wait.is_zero() {
        glommio::timer::sleep(wait).await;
    }
    if window.len() >= WINDOW {
        if let Some(oldest) = window.pop_front() {
            oldest.await?;
        }
    }
    let sender = sender.clone();
    window.push_back(glommio::spawn_local(async move {
        sender.deliver(to.0, to.1, batch).await
    }));
    Ok(())
}

/// One entry as the scan saw it: its key, its version and its key + value bytes then. Its op
/// is built from the store only when its batch goes (see [`Sender::fresh`]).
#[derive(Clone, Debug)]
struct Item {
    key: Vec<u8>,
    version: Version,
    len: usize,
}

/// Entries for one destination shard, their key + value bytes, and their encoded size at most.
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    bytes: usize,
    encoded: usize,
}

impl Batch {
    /// Adds `item`; returns the batches ready to go: this one first when `item` would take it
    /// past `budget` encoded bytes, then the one holding `item` once it is full.
    fn push(&mut self, item: Item, budget: usize) -> Vec<Batch> {
        let mut ready = Vec::new();
        let encoded = item.len + OP_OVERHEAD;
        if !self.items.is_empty() && self.encoded + encoded > budget {
            ready.push(std::mem::take(self));
        }
        self.bytes += item.len;
        self.encoded += encoded;
        self.items.push(item);
        if self.encoded >= budget || self.items.len() >= BATCH_OPS {
            ready.push(std::mem::take(self));
        }
        ready
    }
}

/// The encoded bytes a batch may take: [`BATCH_BYTES`], or less to fit `max_frame`.
fn batch_budget(max_frame: usize) -> usize {
    BATCH_BYTES
        .min(max_frame.saturating_sub(FRAME_MARGIN))
        .max(1)
}

/// The encoded size of `ops` in a request, exactly (the request's own fields aside).
fn encoded_len(ops: &[Op]) -> usize {
    use prost::Message;
    ops.iter()
        .map(|op| {
            let len = op.encoded_len();
            1 + prost::encoding::encoded_len_varint(len as u64) + len
        })
        .sum()
}

/// The stream's connections, one per destination shard, and its running report.
struct Sender {
    ctx: Rc<ShardCtx>,
    addrs: BTreeMap<NodeId, Endpoint>,
    ports: RefCell<BTreeMap<NodeId, Vec<u16>>>,
    conns: RefCell<BTreeMap<(NodeId, usize), Rc<Mux>>>,
    report: RefCell<StreamReport>,
}

impl Sender {
    fn new(ctx: Rc<ShardCtx>, addrs: BTreeMap<NodeId, Endpoint>) -> Self {
        let ports = addrs
            .iter()
            .filter(|(_, e)| !e.shard_ports.is_empty())
            .map(|(&id, e)| (id, e.shard_ports.clone()))
            .collect();
        Self {
            ctx,
            addrs,
            ports: RefCell::new(ports),
            conns: RefCell::default(),
            report: RefCell::default(),
        }
    }

    /// The shard of node `node` that owns `key`, learning its shard ports first if needed
    /// (retrying while the node is down).
    async fn shard_of(&self, node: NodeId, key: &[u8]) -> Result<usize, StreamError> {
        let ports = self.ports_of(node).await?;
        Ok(shard_for(key, ports.len()))
    }

    async fn ports_of(&self, node: NodeId) -> Result<Vec<u16>, StreamError> {
        if let Some(ports) = self.ports.borrow().get(&node) {
            return Ok(ports.clone());
        }
        let addr = self
            .addrs
            .get(&node)
            .ok_or(StreamError::NoAddress(node))?
            .addr;
        let timeout = self.ctx.config.forward_timeout;
        let mut backoff = RETRY_FIRST;
        loop {
            if !self.ctx.serving.is_serving() {
                return Err(StreamError::Stopping);
            }
            let asked = async {
                let mut conn = Connection::connect(addr, timeout).await?;
                kvmesh_net::connection::fetch_topology(&mut conn).await
            };
            match glommio::timer::timeout(timeout, async { Ok(asked.await) }).await {
                Ok(Ok(topology)) if !topology.shard_ports.is_empty() => {
                    let cluster = &self.ctx.peers.membership().cluster;
                    if topology.node_id != node || &topology.cluster != cluster {
                        let why = format!(
                            "{addr} answers as node {} of cluster {:?}, not node {node} of \
                             cluster {cluster:?}",
                            topology.node_id, topology.cluster
                        );
                        return Err(StreamError::WrongDestination { node, why });
                    }
                    let ports: Vec<u16> = topology.shard_ports.iter().map(|&p| p as u16).collect();
                    self.ports.borrow_mut().insert(node, ports.clone());
                    return Ok(ports);
                }
                outcome => {
                    tracing::debug!(
                        "stream: node {node} at {addr} did not say its shard ports: {outcome:?}"
                    );
                }
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// Sends `batch` to shard `shard` of `node` until every op is acknowledged (or refused for
    /// good, or no longer current), resending after failures with backoff. A part too large
    /// for a frame (ours, or the destination's: it refuses the frame) is split in halves; a
    /// single entry too large for the destination's frame is refused for good.
    async fn deliver(&self, node: NodeId, shard: usize, batch: Batch) -> Result<(), StreamError> {
        let mut parts = vec![batch.items];
        while let Some(items) = parts.pop() {
            if let Some((first, second)) = self.deliver_part(node, shard, items).await? {
                parts.push(second);
                parts.push(first);
            }
        }
        Ok(())
    }

    /// Sends `items` until done; or returns them in two halves to send apart, when they do
    /// not fit a frame.
    async fn deliver_part(
        &self,
        node: NodeId,
        shard: usize,
        mut items: Vec<Item>,
    ) -> Result<Option<(Vec<Item>, Vec<Item>)>, StreamError> {
        let limit = self.ctx.config.max_frame.saturating_sub(FRAME_MARGIN);
        let (mut backoff, mut frame_errors) = (RETRY_FIRST, 0);
        loop {
            if !self.ctx.serving.is_serving() {
                return Err(StreamError::Stopping);
            }
            let (ops, mut current) = self.fresh(items);
            if ops.is_empty() {
                return Ok(None);
            }
            if ops.len() > 1 && encoded_len(&ops) > limit {
                let second = current.split_off(current.len() / 2);
                return Ok(Some((current, second)));
            }
            let answered = match self.conn(node, shard).await {
                Ok(mux) => match mux.send(ops.clone(), false) {
                    Ok(reply) => {
                        self.sent(&ops);
                        reply
                            .wait(self.ctx.config.forward_timeout)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(Dial::Failed(why)) => Err(why),
                Err(Dial::Fatal(e)) => return Err(e),
            };
            match answered {
                Ok(results) => {
                    let answers = sort_answers(&ops, &results);
                    self.acked(&answers);
                    if answers.retry.is_empty() {
                        return Ok(None);
                    }
                    tracing::debug!(
                        "stream: node {node} shard {shard} did not take {} op(s) yet",
                        answers.retry.len()
                    );
                    items = pick(current, &answers.retry);
                }
                // The destination refused a frame (its --max-frame is below ours) and closed
                // the connection, failing every request on it with this reason: this part's
                // or another's. Split; a single entry is refused for good only after a few
                // times alone.
                Err(why) if why.contains("FrameTooLarge") && current.len() > 1 => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    let second = current.split_off(current.len() / 2);
                    return Ok(Some((current, second)));
                }
                Err(why) if why.contains("FrameTooLarge") && frame_errors < FRAME_TRIES => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    frame_errors += 1;
                    items = current;
                }
                Err(why) if why.contains("FrameTooLarge") => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    tracing::warn!(
                        "stream: node {node} shard {shard} refused key {:?} for good: {why}",
                        String::from_utf8_lossy(&ops[0].key[..ops[0].key.len().min(64)])
                    );
                    self.acked(&Answers {
                        refused: 1,
                        ..Answers::default()
                    });
                    return Ok(None);
                }
                Err(why) => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    tracing::debug!("stream: batch to node {node} shard {shard} failed: {why}");
                    items = current;
                }
            }
            self.report.borrow_mut().retries += 1;
            self.ctx.shard.borrow_mut().stream.retries += 1;
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// The ops for `items` as the store holds them now, and the items still current. An entry
    /// removed, expired or rewritten (a put or a touch gives it a new version) since the scan
    /// saw it is skipped: its newer state reaches the new owner through the coordinators'
    /// old ∪ new routing, and a stale copy sent now could undo it there. The remaining TTL is
    /// computed at each send, so a resend does not extend it.
    fn fresh(&self, items: Vec<Item>) -> (Vec<Op>, Vec<Item>) {
        let now_ms = super::now_ms();
        let (mut ops, mut current) = (Vec::new(), Vec::new());
        let mut skipped = 0;
        {
            let shard = self.ctx.shard.borrow();
            for item in items {
                match shard.store().peek(&item.key, now_ms) {
                    Some(p) if !p.tombstone && p.version == item.version => {
                        ops.push(Op {
                            code: OpCode::OpPut as i32,
                            key: item.key.clone(),
                            value: p.value.to_vec(),
                            ttl_ms: remaining(p.expires_at_ms, now_ms),
                            replica: true,
                            version_hlc: p.version.hlc,
                            version_node: p.version.node,
                            ..Op::default()
                        });
                        current.push(item);
                    }
                    _ => skipped += 1,
                }
            }
        }
        self.report.borrow_mut().skipped += skipped;
        (ops, current)
    }

    /// `ops` went on the wire: their cost.
    fn sent(&self, ops: &[Op]) {
        let bytes = payload(ops);
        self.report.borrow_mut().bytes_sent += bytes;
        self.ctx.shard.borrow_mut().stream.sent(bytes);
    }

    /// A batch was answered: its progress.
    fn acked(&self, answers: &Answers) {
        let mut report = self.report.borrow_mut();
        report.batches += 1;
        report.keys_acked += answers.acked;
        report.bytes_acked += answers.acked_bytes;
        report.refused += answers.refused;
        self.ctx.shard.borrow_mut().stream.acked(
            answers.acked,
            answers.acked_bytes,
            Instant::now(),
        );
    }

    /// The open connection to shard `shard` of `node`, opened if needed with a handshake
    /// whose answer must show that node of this cluster (see [`check_answer`]).
    async fn conn(&self, node: NodeId, shard: usize) -> Result<Rc<Mux>, Dial> {
        if let Some(mux) = self.conns.borrow().get(&(node, shard)) {
            if !mux.is_closed() {
                return Ok(mux.clone());
            }
        }
        let ports = self.ports_of(node).await.map_err(Dial::Fatal)?;
        let endpoint = self
            .addrs
            .get(&node)
            .ok_or(Dial::Fatal(StreamError::NoAddress(node)))?;
        let port = ports.get(shard).copied().unwrap_or(endpoint.addr.port());
        let addr = SocketAddr::new(endpoint.addr.ip(), port);
        let config = &self.ctx.config;
        let failed = |e: &dyn std::fmt::Display| Dial::Failed(e.to_string());
        let conn = Connection::connect(addr, config.forward_timeout)
            .await
            .map_err(|e| failed(&e))?;
        let mux = Rc::new(Mux::new(conn).map_err(|e| failed(&e))?);
        let hello = Hello {
            stream: true,
            ..config.cluster.hello(&Topology {
                shards: config.shards as u32,
                shard_ports: config.shard_ports(),
                ..Topology::default()
            })
        };
        let op = Op {
            code: OpCode::OpHello as i32,
            hello: Some(hello),
            ..Op::default()
        };
        let answer = mux
            .send(vec![op], false)
            .map_err(|e| failed(&e))?
            .wait(config.forward_timeout)
            .await
            .map_err(|e| failed(&e))?;
        check_answer(self.ctx.peers.membership(), node, &ports, answer.first())?;
        self.conns.borrow_mut().insert((node, shard), mux.clone());
        Ok(mux)
    }
}

/// Why a connection to a destination shard is not usable.
enum Dial {
    /// For now (down, slow, closed): retried.
    Failed(String),
    /// For good: the stream ends with this error.
    Fatal(StreamError),
}

/// Checks a destination's answer to the stream's handshake: it must be OK and carry the hello
/// of node `node` of this cluster, at this protocol version, with the shard ports the stream
/// routes by. Otherwise a reused address or another cluster's node could acknowledge batches,
/// and the source would drop copies no owner holds.
fn check_answer(
    me: &crate::cluster::Membership,
    node: NodeId,
    ports: &[u16],
    answer: Option<&OpResult>,
) -> Result<(), Dial> {
    let wrong = |why: String| Dial::Fatal(StreamError::WrongDestination { node, why });
    let Some(answer) = answer else {
        return Err(Dial::Failed("the handshake got no answer".into()));
    };
    match answer.status() {
        Status::Ok => {}
        Status::Refused => return Err(wrong(answer.message.clone())),
        other => {
            let why = format!("the handshake got {other:?}: {}", answer.message);
            return Err(Dial::Failed(why));
        }
    }
    let Some(hello) = answer.hello.as_ref() else {
        return Err(wrong("its handshake answer carries no hello".into()));
    };
    me.check_identity(hello, Some(node)).map_err(wrong)?;
    let theirs: Vec<u16> = hello.shard_ports.iter().map(|&p| p as u16).collect();
    if theirs != ports {
        return Err(wrong(format!(
            "it has shard ports {theirs:?}, the stream routes by {ports:?}"
        )));
    }
    Ok(())
}

/// A batch's answers, sorted.
#[derive(Debug, Default)]
struct Answers {
    /// Copies acknowledged, and their key + value bytes.
    acked: u64,
    acked_bytes: u64,
    /// Ops refused for good: a limit of the destination that a resend cannot change.
    refused: u64,
    /// Positions in the batch of the ops to resend: failed for now, or not answered.
    retry: Vec<usize>,
}

/// Sorts a batch's ops by their answers.
fn sort_answers(ops: &[Op], results: &[OpResult]) -> Answers {
    let mut answers = Answers::default();
    for (i, op) in ops.iter().enumerate() {
        match results.get(i).map(OpResult::status) {
            Some(Status::Ok) => {
                answers.acked += 1;
                answers.acked_bytes += payload(std::slice::from_ref(op));
            }
            Some(Status::InvalidArgument | Status::NoSpace | Status::UnknownOperation) => {
                answers.refused += 1;
                tracing::warn!(
                    "stream: a destination refused key {:?} for good: {}",
                    String::from_utf8_lossy(&op.key[..op.key.len().min(64)]),
                    results[i].message
                );
            }
            _ => answers.retry.push(i),
        }
    }
    answers
}

/// The items at positions `at` (ascending) of `items`.
fn pick(items: Vec<Item>, at: &[usize]) -> Vec<Item> {
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| at.binary_search(i).is_ok())
        .map(|(_, item)| item)
        .collect()
}

/// Key + value bytes of `ops`.
fn payload(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|o| (o.key.len() + o.value.len()) as u64)
        .sum()
}

/// After the change is finished: drops this shard's keys that this node does not own under
/// `ring` at `replicas`. Run it only for the current epoch's Finish, once every source is done
/// (the control plane fences it by epoch): run early or with a stale ring, it drops copies
/// that no other owner may hold yet. It refuses (drops nothing, says why in the log, returns
/// 0) `replicas == 0` and a ring without this node, which would drop everything. A local drop: each is logged (as an eviction record, which recovery
/// replays by forgetting that version) so a restart does not bring it back, and it is never
/// replicated, so the owners keep theirs. A key rewritten since the scan saw it is kept.
/// Returns how many keys were dropped, once their records are durable.
pub async fn drop_unowned(ctx: &Rc<ShardCtx>, ring: &Ring, replicas: usize) -> u64 {
    let me = ctx.peers.membership().me;
    if replicas == 0 || !ring.nodes().contains(&me) {
        tracing::error!(
            "shard {}: refusing to drop keys no longer owned: the ring {:?} at {replicas} \
             replica(s) would leave node {me} nothing",
            ctx.me,
            ring.nodes()
        );
        return 0;
    }
    let mut dropped = 0;
    let mut last_seq = None;
    let mut cursor = Some(Cursor::START);
    while let Some(at) = cursor {
        let mut unowned = Vec::new();
        cursor = ctx
            .shard
            .borrow()
            .store()
            .scan(at, SCAN_SLOTS, super::now_ms(), |e| {
                if !moves::owns(ring, replicas, e.key, me) {
                    unowned.push((e.key.to_vec(), e.version));
                }
            });
        {
            let mut shard = ctx.shard.borrow_mut();
            for (key, version) in unowned {
                if let Some(seq) = shard.drop_local(&key, version) {
                    dropped += 1;
                    shard.stream.keys_dropped += 1;
                    last_seq = seq.or(last_seq);
                }
            }
        }
        futures_lite::future::yield_now().await;
    }
    let log = ctx.shard.borrow().log().cloned();
    if let (Some(log), Some(seq)) = (log, last_seq) {
        if let Err(e) = log.durable(seq).await {
            tracing::error!(
                "shard {}: the drop of keys no longer owned is not durable: {e}",
                ctx.me
            );
        }
    }
    if dropped > 0 {
        tracing::info!(
            "shard {}: dropped {dropped} key(s) this node no longer owns",
            ctx.me
        );
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize) -> Op {
        Op {
            replica: true,
            version_hlc: 7,
            version_node: 1,
            ..kvmesh_net::client::op(OpCode::OpPut, key.as_bytes(), &vec![b'v'; value_len], 0)
        }
    }

    fn item(key: &[u8], value_len: usize) -> Item {
        Item {
            key: key.to_vec(),
            version: Version::new(7, 1),
            len: key.len() + value_len,
        }
    }

    fn answered(status: Status) -> OpResult {
        OpResult {
            status: status as i32,
            ..OpResult::default()
        }
    }

    #[test]
    fn answers_split_into_done_resend_and_refused() {
        let ops = vec![
            put("a", 1),
            put("b", 1),
            put("c", 1),
            put("d", 1),
            put("e", 1),
        ];
        let results = [
            answered(Status::Ok),
            answered(Status::Unavailable),
            answered(Status::NoSpace),
            answered(Status::Timeout),
        ];
        // "e" got no answer at all: resent too.
        let answers = sort_answers(&ops, &results);
        assert_eq!(answers.retry, [1, 3, 4]);
        assert_eq!(
            (answers.acked, answers.acked_bytes, answers.refused),
            (1, 2, 1)
        );
        let items: Vec<Item> = ops.iter().map(|o| item(&o.key, 1)).collect();
        let keys: Vec<Vec<u8>> = pick(items, &answers.retry)
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, [b"b".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    }

    #[test]
    fn batches_end_at_their_byte_or_op_budget() {
        let sizes = |ready: Vec<Batch>| -> Vec<(usize, usize)> {
            ready.iter().map(|b| (b.items.len(), b.bytes)).collect()
        };
        let budget = batch_budget(17 << 20);
        assert_eq!(budget, BATCH_BYTES);
        let (full, mut b) = (BATCH_BYTES - 2 * OP_OVERHEAD, Batch::default());
        assert_eq!(sizes(b.push(item(b"k", full - 3), budget)), []);
        assert_eq!(sizes(b.push(item(b"k", 1), budget)), [(2, full)]);
        // An entry above the budget goes alone, after what was waiting.
        assert_eq!(sizes(b.push(item(b"a", 10), budget)), []);
        assert_eq!(
            sizes(b.push(item(b"b", 2 * BATCH_BYTES), budget)),
            [(1, 11), (1, 2 * BATCH_BYTES + 1)]
        );
        assert!(b.items.is_empty());
        for i in 0..BATCH_OPS - 1 {
            assert_eq!(sizes(b.push(item(i.to_string().as_bytes(), 0), budget)), []);
        }
        assert_eq!(b.push(item(b"last", 0), budget).len(), 1);
        // A small --max-frame caps the batch below BATCH_BYTES.
        let small = batch_budget(64 << 10);
        assert_eq!(small, (64 << 10) - FRAME_MARGIN);
        let ready = (0..100).flat_map(|i| b.push(item(i.to_string().as_bytes(), 1000), small));
        assert!(ready.into_iter().all(|batch| batch.encoded <= small));
    }

    #[test]
    fn the_encoded_length_bounds_the_estimate() {
        let ops: Vec<Op> = (0..10).map(|i| put(&i.to_string(), 1000)).collect();
        let estimate: usize = ops
            .iter()
            .map(|o| o.key.len() + o.value.len() + OP_OVERHEAD)
            .sum();
        assert!(encoded_len(&ops) <= estimate);
        let request = kvmesh_proto::wire::Request {
            ops: ops.clone(),
            ..Default::default()
        };
        assert_eq!(prost::Message::encoded_len(&request), encoded_len(&ops));
    }

    #[test]
    fn only_the_named_node_of_this_cluster_may_take_a_stream() {
        use crate::cluster::Membership;
        let me = Membership::single(1, "127.0.0.1:7000".parse().unwrap());
        let at = |id| Membership::single(id, "127.0.0.1:7100".parse().unwrap());
        let topology = Topology {
            shards: 1,
            shard_ports: vec![7101],
            ..Topology::default()
        };
        let ok = |hello| OpResult {
            hello: Some(hello),
            ..OpResult::default()
        };
        let fatal = |r: Result<(), Dial>| matches!(r, Err(Dial::Fatal(_)));
        let two = ok(at(2).hello(&topology));
        assert!(check_answer(&me, 2, &[7101], Some(&two)).is_ok());
        assert!(fatal(check_answer(&me, 3, &[7101], Some(&two))));
        assert!(fatal(check_answer(&me, 2, &[7101, 7102], Some(&two))));
        let mut other = at(2);
        other.cluster = "staging".into();
        let other = ok(other.hello(&topology));
        assert!(fatal(check_answer(&me, 2, &[7101], Some(&other))));
        assert!(fatal(check_answer(
            &me,
            2,
            &[7101],
            Some(&OpResult::default())
        )));
        let refused = answered(Status::Refused);
        assert!(fatal(check_answer(&me, 2, &[7101], Some(&refused))));
        let busy = answered(Status::Unavailable);
        assert!(matches!(
            check_answer(&me, 2, &[7101], Some(&busy)),
            Err(Dial::Failed(_))
        ));
    }

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
