//! The local fast path: a plain client request whose ops all run on this shard, served from
//! the read buffer without decoding it into owned messages.
//!
//! A connection offers each buffered frame here first ([`serve`]). It is served here only if
//! the general path (`request::decode`, then `dispatch::start_from`) would run every op of it
//! on this shard's store and nothing else: a plain request (see `kvmesh_net::simple`) that is
//! not behind the node's topology epoch, of `OP_GET`, `OP_PUT` and `OP_REMOVE` ops that the
//! topology gate lets through and that `router::route_in_cluster` routes `Local`, on a node
//! that neither replicates writes (`replicate::sends_nothing`) nor asks a quorum for reads
//! (`quorum_read::asks_nothing`), to a shard whose write-ahead log, if it has one, has not
//! failed. The same functions decide those as on the general path; every op then runs
//! through the same `Shard` method the general path calls (`Shard::get`, `remove`, and
//! `put_outcome`, which `put` wraps), so limits, TTLs, counters, evictions and log records are
//! the same. What differs is only what is allocated: keys and values are borrowed from the
//! read buffer, a get's value is copied from the store straight into the reply, and no
//! `Request`, `Op`, or `OpResult` of a found value or a stored put is built. The reply is byte
//! for byte the general path's: both encode other results through `reply::push_result`; a
//! found value is encoded here (`reply::push_found`), and so is a stored put's version
//! (`reply::push_version`).
//! A property test checks the replies, the log records waited for and the store's state
//! against the general path's store work, with and without a log; a table test checks the
//! decision ([`open`], [`takes`]) case by case.
//!
//! # Durable shards: no reply before its log record
//!
//! On a shard with a log, a write served here is applied and its record appended to the log's
//! pending batch, as on the general path, and a get of a key whose latest change is not yet
//! durable waits for that change (`Shard::get`'s wait). Its reply is encoded into the
//! connection's output at once, *before* the log has answered, so the output is held back:
//! the pass ([`Batch`]) keeps the largest log record its replies wait for, and [`send`], the
//! connection's one write of its output, awaits [`Log::durable`] of that record first. One
//! wait covers every reply of the pass (once a record is durable, so is every earlier one), and
//! group commit gives the pass's requests the same sync. The rule when the log fails first
//! (a full disk, an I/O error): **the output is not sent at all.** It may hold an OK for a
//! write the log never made durable, and it cannot be edited into the general path's precise
//! `UNAVAILABLE` answers, so [`send`] reports [`Sent::NotLogged`] and the connection closes
//! without writing: the client sees its connection closed, never an acknowledgement. That is
//! counted (`kvmesh_connections_closed_unlogged`) and logged once per shard. From then on the
//! fast path is closed on that shard ([`View::log_failed`]): every request goes to the
//! general path, which refuses writes with "log failed, writes refused" and answers reads
//! precisely.
//!
//! Anything else, including a malformed frame, is left to the general path untouched: nothing
//! has run when [`serve`] returns `None`.

use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncWrite, AsyncWriteExt};
use kvmesh_engine::KeyHash;
use kvmesh_net::frame::{self, PREFIX_LEN};
use kvmesh_net::simple::{SimpleOp, SimpleRequest};
use kvmesh_proto::wire::{OpCode, Status};
use kvmesh_wal::Log;
use smallvec::SmallVec;

use super::clock::Clock;
use super::prefetch;
use super::reply;
use super::router::{route_in_cluster_keyed, Keyed, Place, Route};
use super::server::ShardCtx;
use super::shard::{PutOutcome, Shard};
use crate::cluster::replication::Replication;
use crate::cluster::Membership;
use crate::metrics::latency;
use kvmesh_net::ring::NodeId;

/// What the fast path served in one pass over a connection's buffer. A pass is the run of
/// fast-path requests at the front of one inner loop of the connection: it ends at the first
/// request the general path takes, or when the loop stops reading frames, where
/// [`Batch::record`] is called; its replies go out with the connection's next write
/// ([`send`]). Nothing in it awaits, so the shard's state read at its start (see [`Pass`])
/// holds for all of it. The clock is read once for the pass, at its first request served
/// here: that time is the `now_ms` of every op served here (TTLs, expiry, the version clock),
/// and the pass's ops are counted in the latency histograms with the time from then until
/// the last of them is served, or, when its replies wait for the log, until [`send`] has
/// seen that wait end (for each request an upper bound, where the general path measures each
/// request on its own; that time then includes the start of any general-path requests read
/// after the pass).
#[derive(Default)]
pub struct Batch {
    began: Option<(Instant, u64)>,
    kinds: [u32; latency::KINDS.len()],
    /// This pass's [`Pass`], read at its first frame: `Some(None)` when the fast path is
    /// closed for the whole pass.
    pass: Option<Option<Pass>>,
    /// The largest log record a reply of the pass waits for: [`send`] writes nothing before
    /// it is durable.
    wait: Option<u64>,
}

/// What is read once per pass for the fast path's routing: the membership and the agreed
/// topology's epoch (only when the shard waits for one, see `topology_gate`).
struct Pass {
    membership: Rc<Membership>,
    epoch_now: u64,
}

impl Batch {
    /// The pass's `now_ms`, read at its first request served here.
    fn now_ms(&mut self, clock: &Clock) -> u64 {
        self.began.get_or_insert_with(|| clock.now()).1
    }

    /// Ends the pass: the next frame starts a new one. Records its ops in the latency
    /// histograms, unless its replies wait for the log: then [`send`] does, after the wait.
    pub fn record(&mut self, ctx: &ShardCtx) {
        self.pass = None;
        if self.wait.is_none() {
            self.record_latency(ctx);
        }
    }

    /// Adds a request's ops and log wait to the pass.
    fn add(&mut self, served: &Served) {
        for (total, n) in self.kinds.iter_mut().zip(served.kinds) {
            *total += n;
        }
        self.wait = self.wait.max(served.wait);
    }

    fn record_latency(&mut self, ctx: &ShardCtx) {
        if let Some((began, _)) = self.began.take() {
            ctx.metrics
                .borrow_mut()
                .latency
                .record(&self.kinds, began.elapsed());
            self.kinds = Default::default();
        }
    }
}

/// What became of a connection's output ([`send`]).
#[derive(Debug)]
pub enum Sent {
    /// Written.
    Written,
    /// Not written, because the log failed before the record the fast path's replies in it
    /// wait for was durable (why it failed): the connection must close without sending it.
    NotLogged(String),
    /// The write failed: the peer is gone.
    Failed,
}

/// Writes `out`, a connection's output (replies in request order, the general path's and the
/// fast path's of the pass `batch`), to `sink`, once the log record the fast path's replies
/// wait for is durable; the connection's only write of replies. On [`Sent::NotLogged`]
/// nothing was written, the event is counted and logged once per shard, and the caller
/// closes the connection (see the module docs).
pub async fn send<W: AsyncWrite + Unpin>(
    ctx: &ShardCtx,
    batch: &mut Batch,
    out: &[u8],
    sink: &mut W,
) -> Sent {
    let wait = batch.wait.take();
    // Cloned out of the shard: no borrow is held across the await.
    let log = match wait {
        Some(_) => ctx.shard.borrow().log().cloned(),
        None => None,
    };
    let sent = send_when_durable(log.as_ref(), wait, out, sink).await;
    if wait.is_some() {
        batch.record_latency(ctx);
    }
    if let Sent::NotLogged(why) = &sent {
        let mut metrics = ctx.metrics.borrow_mut();
        if metrics.connections_closed_unlogged == 0 {
            tracing::error!(
                "shard {}: closing a connection without sending its replies: the write-ahead \
                 log failed before their records were durable ({why}); writes are refused \
                 from now on (counted in kvmesh_connections_closed_unlogged, logged once)",
                ctx.me
            );
        }
        metrics.connections_closed_unlogged += 1;
    }
    sent
}

/// [`send`]'s rule, without the shard: writes `out` to `sink` once record `wait` of `log` is
/// durable, at once without a wait (or without a log: nothing waits then); writes nothing
/// and returns [`Sent::NotLogged`] if the log fails first.
pub async fn send_when_durable<W: AsyncWrite + Unpin>(
    log: Option<&Log>,
    wait: Option<u64>,
    out: &[u8],
    sink: &mut W,
) -> Sent {
    if let (Some(log), Some(seq)) = (log, wait) {
        if let Err(e) = log.durable(seq).await {
            return Sent::NotLogged(log.failure().unwrap_or_else(|| e.to_string()));
        }
    }
    match sink.write_all(out).await {
        Ok(()) => Sent::Written,
        Err(_) => Sent::Failed,
    }
}

/// What decides whether the fast path takes a request: the node's and shard's state, as the
/// general path reads it in `dispatch::start_from`.
pub struct View<'a> {
    /// Whether the shard's write-ahead log has failed: it then refuses writes, and only the
    /// general path answers each op precisely (see the module docs).
    pub log_failed: bool,
    pub replication: &'a Replication,
    pub membership: &'a Membership,
    /// Whether the shard refuses clients' data ops until it holds an agreed topology, and
    /// that topology's epoch (0: none yet).
    pub gated: bool,
    pub epoch_now: u64,
    /// This shard, of `shards`, and the node's key limit.
    pub me: usize,
    pub shards: usize,
    pub max_key_len: usize,
    pub live: &'a dyn Fn(NodeId) -> bool,
}

/// Whether the fast path may take any request under `view`: no failed log, no replicated
/// write, no quorum read. Holds for a whole pass.
pub fn open(view: &View<'_>) -> bool {
    !view.log_failed
        && super::replicate::sends_nothing(view.replication, view.membership)
        && super::quorum_read::asks_nothing(view.replication, view.membership.ring())
}

/// Whether, the fast path being [`open`], it takes `request`: not behind the topology epoch,
/// and every op [`is_simple`], let through by the topology gate and routed `Local`.
pub fn takes(view: &View<'_>, request: &SimpleRequest<'_>) -> bool {
    if request.ops().is_empty() {
        return false;
    }
    // A client routing by an older topology gets STATUS_MOVED from the general path.
    if request.epoch != 0 && request.epoch < view.membership.epoch {
        return false;
    }
    let place = Place {
        ring: view.membership.ring(),
        node: view.membership.me,
        replicas: view.replication.replicas,
        live: view.live,
    };
    request.ops().iter().all(|op| {
        let keyed = keyed(op);
        is_simple(op.code)
            && !super::topology_gate::refuses(keyed, false, view.gated, view.epoch_now)
            && route_in_cluster_keyed(keyed, &place, false, view.me, view.shards, view.max_key_len)
                == Route::Local
    })
}

/// The most frames one call of [`serve`] parses before it serves any: its read-ahead window
/// (at pipeline 16, one client's burst).
pub const RUN: usize = 16;

/// Serves the run of plain local requests (see the module docs) at the front of `buf`, at
/// most [`RUN`] frames, appending their reply frames to `out` (which must then go out through
/// [`send`]) and their ops and log waits to `batch`; returns the bytes of the frames served
/// and the bytes of the values their replies hold (what the general path's
/// `Started::reply_bytes` counts). It stops before a frame once the replies served hold
/// `budget` value bytes or more; it serves the first frame whatever the budget. `None`: the
/// first frame is not such a request, nothing ran and nothing was appended; the general path
/// decodes it (an incomplete one included). Whether the fast path is [`open`] is decided once
/// per pass, before any frame is parsed.
///
/// Every frame of the run is parsed before any runs, so the keys of its gets and puts are
/// known up front: each is looked up ahead and its lines prefetched (see `read_ahead`), then
/// the requests run in order as they would one by one. The cache misses of the run's requests
/// overlap instead of following each other.
pub fn serve(
    ctx: &ShardCtx,
    buf: &[u8],
    max_frame: usize,
    budget: usize,
    out: &mut Vec<u8>,
    batch: &mut Batch,
) -> Option<(usize, usize)> {
    let live = |node| ctx.peers.is_live(node);
    let pass = batch
        .pass
        .get_or_insert_with(|| {
            let membership = ctx.peers.membership();
            let epoch_now = if ctx.waits_for_topology {
                ctx.peers.agreed().map_or(0, |t| t.epoch)
            } else {
                0
            };
            let log_failed = ctx
                .shard
                .borrow()
                .log()
                .is_some_and(|log| log.failure().is_some());
            open(&view(ctx, log_failed, &membership, epoch_now, &live)).then_some(Pass {
                membership,
                epoch_now,
            })
        })
        .as_ref()?;
    // `log_failed` is false: the pass is open.
    let view = view(ctx, false, &pass.membership, pass.epoch_now, &live);
    let Ok(Some(len)) = frame::peek_len(buf, max_frame) else {
        return None;
    };
    let body = buf.get(PREFIX_LEN..PREFIX_LEN + len)?;
    let mut first = SimpleRequest::default();
    if !first.parse(body) || !takes(&view, &first) {
        return None;
    }
    let first_end = PREFIX_LEN + len;
    if !matches!(frame::peek_len(&buf[first_end..], max_frame), Ok(Some(next))
        if buf.len() >= first_end + PREFIX_LEN + next)
    {
        // A frame alone (pipeline 1): nothing to read ahead.
        let now_ms = batch.now_ms(&ctx.clock);
        let served = execute(
            &mut ctx.shard.borrow_mut(),
            &first,
            &mut std::iter::empty(),
            now_ms,
            out,
        )?;
        batch.add(&served);
        return Some((first_end, served.reply_bytes));
    }
    // Inline, and each later request is parsed where it stays (a parsed request is ~400
    // bytes, not worth moving twice).
    let mut requests = SmallVec::<[SimpleRequest<'_>; RUN]>::new();
    requests.push(first);
    let mut ends = [0usize; RUN];
    ends[0] = first_end;
    let mut at = first_end;
    while requests.len() < RUN {
        let Ok(Some(len)) = frame::peek_len(&buf[at..], max_frame) else {
            break;
        };
        let Some(body) = buf.get(at + PREFIX_LEN..at + PREFIX_LEN + len) else {
            break;
        };
        requests.push(SimpleRequest::default());
        let parsed = requests
            .last_mut()
            .is_some_and(|request| request.parse(body));
        if !parsed || requests.last().is_none_or(|request| !takes(&view, request)) {
            requests.pop();
            break;
        }
        at += PREFIX_LEN + len;
        ends[requests.len() - 1] = at;
    }
    let now_ms = batch.now_ms(&ctx.clock);
    let mut shard = ctx.shard.borrow_mut();
    let ahead = read_ahead(&shard, requests.iter());
    let mut hashes = ahead.iter().map_while(|h| *h);
    let (mut used, mut reply_bytes) = (0, 0);
    for (request, &end) in requests.iter().zip(&ends) {
        if used > 0 && reply_bytes >= budget {
            break;
        }
        // Every op is simple (`takes`), so this runs.
        let Some(served) = execute(&mut shard, request, &mut hashes, now_ms, out) else {
            break;
        };
        batch.add(&served);
        (used, reply_bytes) = (end, reply_bytes + served.reply_bytes);
    }
    (used > 0).then_some((used, reply_bytes))
}

/// The most gets, and the most puts, of a run read ahead; later gets hash their keys when they
/// run.
const AHEAD: usize = 16;

/// Hashes the keys of the first [`AHEAD`] gets of `requests`, in order, looks each up and
/// prefetches the lines its get will touch (`Store::prefetch_get`); returns the hashes, for
/// [`execute`] to use in the same order (`None` after the last). Then does the same for the
/// first [`AHEAD`] puts, whose overwrite of a present key touches the same lines (its value, the
/// LRU neighbours), without keeping their hashes: a put hashes its key again, which costs less
/// than threading a second stream of hashes through [`execute`]. Gets and puts are each read
/// ahead only in a run of two or more: with one there is nothing to overlap, and the lookup
/// would be paid twice.
fn read_ahead<'a, 'b: 'a>(
    shard: &Shard,
    requests: impl Iterator<Item = &'a SimpleRequest<'b>> + Clone,
) -> [Option<KeyHash>; AHEAD] {
    let mut hashes = [None; AHEAD];
    let ops = requests.flat_map(|r| r.ops());
    let gets = ops.clone().filter(|op| op.code == GET);
    let puts = ops.filter(|op| op.code == PUT);
    let store = shard.store();
    if gets.clone().nth(1).is_some() {
        for (slot, op) in hashes.iter_mut().zip(gets) {
            let hash = store.key_hash(op.key);
            *slot = Some(hash);
            store.prefetch_get(op.key, hash, prefetch::line);
        }
    }
    if puts.clone().nth(1).is_some() {
        for op in puts.take(AHEAD) {
            store.prefetch_get(op.key, store.key_hash(op.key), prefetch::line);
        }
    }
    hashes
}

/// The [`View`] of shard `ctx` under `membership`.
fn view<'a>(
    ctx: &'a ShardCtx,
    log_failed: bool,
    membership: &'a Membership,
    epoch_now: u64,
    live: &'a dyn Fn(NodeId) -> bool,
) -> View<'a> {
    View {
        log_failed,
        replication: &ctx.config.replication,
        membership,
        gated: ctx.waits_for_topology,
        epoch_now,
        me: ctx.me,
        shards: ctx.config.shards,
        max_key_len: ctx.config.max_key_len,
        live,
    }
}

const GET: i32 = OpCode::OpGet as i32;
const PUT: i32 = OpCode::OpPut as i32;
const REMOVE: i32 = OpCode::OpRemove as i32;

/// Whether ops of this code may take the fast path.
pub fn is_simple(code: i32) -> bool {
    matches!(code, GET | PUT | REMOVE)
}

/// What routing looks at in a plain op (never a replica write).
pub fn keyed<'a>(op: &SimpleOp<'a>) -> Keyed<'a> {
    Keyed {
        code: op.code,
        key: op.key,
        replica: false,
    }
}

/// What [`execute`] served.
#[derive(Debug, PartialEq, Eq)]
pub struct Served {
    /// The request's ops by latency kind.
    pub kinds: [u32; latency::KINDS.len()],
    /// The bytes of the values read.
    pub reply_bytes: usize,
    /// The largest log record its reply waits for (`None`: none, or no log): the reply must
    /// not be sent before that record is durable (see [`send`]).
    pub wait: Option<u64>,
}

/// Runs `request`'s ops, owned by `shard`, and appends its reply frame to `out`. `None` (and
/// nothing ran) when an op is not [`is_simple`].
///
/// `hashes` holds the hashes of the request's gets' keys ([`Store::key_hash`], in order), as
/// far as they were computed ahead: each get takes the next, or hashes its key itself once
/// they run out.
///
/// [`Store::key_hash`]: kvmesh_engine::Store::key_hash
pub fn execute(
    shard: &mut Shard,
    request: &SimpleRequest<'_>,
    hashes: &mut impl Iterator<Item = KeyHash>,
    now_ms: u64,
    out: &mut Vec<u8>,
) -> Option<Served> {
    if !request.ops().iter().all(|op| is_simple(op.code)) {
        return None;
    }
    let mut kinds = [0u32; latency::KINDS.len()];
    let mut reply_bytes = 0;
    // A record is durable once it and every earlier one are: the largest covers them all.
    let mut wait = None;
    let start = reply::begin_response(request.id, out);
    for op in request.ops() {
        kinds[latency::kind(op.code)] += 1;
        let waits = match op.code {
            GET => {
                let hash = hashes
                    .next()
                    .unwrap_or_else(|| shard.store().key_hash(op.key));
                let (found, waits) = shard.get_hashed(op.key, hash, now_ms, |value| match value {
                    Some(value) => {
                        reply::push_found(value, out);
                        value.len()
                    }
                    None => {
                        reply::push_result(&reply::status(Status::NotFound, ""), out);
                        0
                    }
                });
                reply_bytes += found;
                waits
            }
            PUT => match shard.put_outcome(op.key, op.value, op.ttl_ms, now_ms) {
                PutOutcome::Stored {
                    version,
                    wait: put_wait,
                } => {
                    reply::push_version(version.hlc, version.node, out);
                    put_wait
                }
                PutOutcome::Other(executed) => {
                    reply::push_result(&executed.result, out);
                    executed.wait
                }
            },
            // OP_REMOVE, the last simple op (checked above).
            _ => {
                let executed = shard.remove(op.key, now_ms);
                reply::push_result(&executed.result, out);
                executed.wait
            }
        };
        wait = wait.max(waits);
    }
    reply::end_response(start, out);
    Some(Served {
        kinds,
        reply_bytes,
        wait,
    })
}

#[cfg(test)]
#[path = "fast_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fast_send_tests.rs"]
mod send_tests;
