//! The local fast path: a plain client request whose ops all run on this shard, served from
//! the read buffer without decoding it into owned messages.
//!
//! A connection offers each buffered frame here first ([`serve`]). It is served here only if
//! the general path (`request::decode`, then `dispatch::start_from`) would run every op of it
//! on this shard's store and nothing else: a plain request (see `kvmesh_net::simple`) that is
//! not behind the node's topology epoch, of `OP_GET`, `OP_PUT` and `OP_REMOVE` ops that the
//! topology gate lets through and that `router::route_in_cluster` routes `Local`, on a node
//! that neither replicates writes (`replicate::sends_nothing`) nor asks a quorum for reads
//! (`quorum_read::asks_nothing`), to a shard without a write-ahead log (so no reply waits for
//! a log record). The same functions decide those as on the general path; every op then runs
//! through the same `Shard` method the general path calls (`Shard::get`, `put`, `remove`), so
//! limits, TTLs, counters and evictions are the same. What differs is only what is allocated:
//! keys and values are borrowed from the read buffer, a get's value is copied from the store
//! straight into the reply, and no `Request`, `Op` or `OpResult` of a found value is built.
//! The reply is byte for byte the general path's: both encode a result through
//! `reply::push_result`, and only a found value is encoded here (`reply::push_found`). A
//! property test checks the replies and the store's state against the general path's store
//! work; a table test checks the decision ([`open`], [`takes`]) case by case.
//!
//! Anything else, including a malformed frame, is left to the general path untouched: nothing
//! has run when [`serve`] returns `None`.

use std::rc::Rc;
use std::time::Instant;

use kvmesh_net::frame::{self, PREFIX_LEN};
use kvmesh_net::simple::{SimpleOp, SimpleRequest};
use kvmesh_proto::wire::{OpCode, Status};

use super::reply;
use super::router::{route_in_cluster_keyed, Keyed, Place, Route};
use super::server::ShardCtx;
use super::shard::Shard;
use crate::cluster::replication::Replication;
use crate::cluster::Membership;
use crate::metrics::latency;
use kvmesh_net::ring::NodeId;

/// What the fast path served in one pass over a connection's buffer. A pass is the run of
/// fast-path requests at the front of one inner loop of the connection: it ends at the first
/// request the general path takes, or when the loop stops reading frames, where
/// [`Batch::record`] is called. Nothing in it awaits, so the shard's state read at its start
/// (see [`Pass`]) holds for all of it. The clock is read once for the pass, at its first
/// request served here: that time is the `now_ms` of every op served here (TTLs, expiry, the
/// version clock), and [`Batch::record`] counts each of these ops in the latency histograms
/// with the time from then until the last of them is served (for each request an upper bound,
/// where the general path measures each request on its own; no general-path await is in it).
#[derive(Default)]
pub struct Batch {
    began: Option<(Instant, u64)>,
    kinds: [u32; latency::KINDS.len()],
    /// This pass's [`Pass`], read at its first frame: `Some(None)` when the fast path is
    /// closed for the whole pass.
    pass: Option<Option<Pass>>,
}

/// What is read once per pass for the fast path's routing: the membership and the agreed
/// topology's epoch (only when the shard waits for one, see `topology_gate`).
struct Pass {
    membership: Rc<Membership>,
    epoch_now: u64,
}

impl Batch {
    /// The pass's `now_ms`, read at its first request served here.
    fn now_ms(&mut self) -> u64 {
        self.began
            .get_or_insert_with(|| (Instant::now(), super::now_ms()))
            .1
    }

    /// Records the pass's ops in the latency histograms, and starts a new pass.
    pub fn record(&mut self, ctx: &ShardCtx) {
        self.pass = None;
        if let Some((began, _)) = self.began.take() {
            ctx.metrics
                .borrow_mut()
                .latency
                .record(&self.kinds, began.elapsed());
            self.kinds = Default::default();
        }
    }
}

/// What decides whether the fast path takes a request: the node's and shard's state, as the
/// general path reads it in `dispatch::start_from`.
pub struct View<'a> {
    /// Whether the shard has a write-ahead log (a write's reply may wait for a log record).
    pub durable: bool,
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

/// Whether the fast path may take any request under `view`: no log, no replicated write, no
/// quorum read. Holds for a whole pass.
pub fn open(view: &View<'_>) -> bool {
    !view.durable
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

/// Serves the frame at the front of `buf` if it is a plain local request (see the module
/// docs), appending its reply frame to `out` and its ops to `batch`; returns the bytes of the
/// frame and the bytes of the values its reply holds (what the general path's
/// `Started::reply_bytes` counts). `None`: nothing ran and nothing was appended; the general
/// path decodes the frame (an incomplete one included). Whether the fast path is [`open`] is
/// decided once per pass, before any frame is parsed.
pub fn serve(
    ctx: &ShardCtx,
    buf: &[u8],
    max_frame: usize,
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
            let durable = ctx.shard.borrow().log().is_some();
            open(&view(ctx, durable, &membership, epoch_now, &live)).then_some(Pass {
                membership,
                epoch_now,
            })
        })
        .as_ref()?;
    let Ok(Some(len)) = frame::peek_len(buf, max_frame) else {
        return None;
    };
    let body = buf.get(PREFIX_LEN..PREFIX_LEN + len)?;
    let mut request = SimpleRequest::default();
    // `durable` is false: the pass is open.
    let view = view(ctx, false, &pass.membership, pass.epoch_now, &live);
    if !request.parse(body) || !takes(&view, &request) {
        return None;
    }
    let now_ms = batch.now_ms();
    let (kinds, reply_bytes) = execute(&mut ctx.shard.borrow_mut(), &request, now_ms, out)?;
    for (total, n) in batch.kinds.iter_mut().zip(kinds) {
        *total += n;
    }
    Some((PREFIX_LEN + len, reply_bytes))
}

/// The [`View`] of shard `ctx` under `membership`.
fn view<'a>(
    ctx: &'a ShardCtx,
    durable: bool,
    membership: &'a Membership,
    epoch_now: u64,
    live: &'a dyn Fn(NodeId) -> bool,
) -> View<'a> {
    View {
        durable,
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

/// Runs `request`'s ops, owned by `shard`, and appends its reply frame to `out`; returns its
/// ops by latency kind and the bytes of the values read. `None` (and nothing ran) when an op
/// is not [`is_simple`], or when the shard has a write-ahead log: a reply may then have to
/// wait for a log record, which only the general path does.
pub fn execute(
    shard: &mut Shard,
    request: &SimpleRequest<'_>,
    now_ms: u64,
    out: &mut Vec<u8>,
) -> Option<([u32; latency::KINDS.len()], usize)> {
    if shard.log().is_some() || !request.ops().iter().all(|op| is_simple(op.code)) {
        return None;
    }
    let mut kinds = [0u32; latency::KINDS.len()];
    let mut reply_bytes = 0;
    let start = reply::begin_response(request.id, out);
    for op in request.ops() {
        kinds[latency::kind(op.code)] += 1;
        // Without a log no result waits (`Executed::wait` is always `None`, asserted below):
        // a reply served here must never acknowledge a write before its log record.
        match op.code {
            GET => {
                let (found, wait) = shard.get(op.key, now_ms, |value| match value {
                    Some(value) => {
                        reply::push_found(value, out);
                        value.len()
                    }
                    None => {
                        reply::push_result(&reply::status(Status::NotFound, ""), out);
                        0
                    }
                });
                debug_assert!(wait.is_none(), "no log, so no wait");
                reply_bytes += found;
            }
            PUT => {
                let executed = shard.put(op.key, op.value, op.ttl_ms, now_ms);
                debug_assert!(executed.wait.is_none(), "no log, so no wait");
                reply::push_result(&executed.result, out);
            }
            // OP_REMOVE, the last simple op (checked above).
            _ => {
                let executed = shard.remove(op.key, now_ms);
                debug_assert!(executed.wait.is_none(), "no log, so no wait");
                reply::push_result(&executed.result, out);
            }
        }
    }
    reply::end_response(start, out);
    Some((kinds, reply_bytes))
}

#[cfg(test)]
#[path = "fast_tests.rs"]
mod tests;
