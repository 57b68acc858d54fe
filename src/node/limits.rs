//! Limits that keep a node up when clients misbehave: how many connections a shard takes
//! (`--max-connections`), how long one may sit idle (`--idle-timeout`), and how many reply bytes
//! a connection may hold for a client that does not read them.
//!
//! Each shard enforces its own share with its own counters; nothing is shared across cores.

use std::time::Duration;

use kvmesh_net::frame;
use kvmesh_proto::wire::{OpCode, Request, Response, Status};

use super::server::ShardCtx;

/// Reply bytes a wire connection may hold before it stops taking new requests from its buffer
/// and waits for the client to read (see `conn`). A client that sends but never reads then
/// holds at most about this much, plus its read buffer and one request's replies, of the node.
pub const MAX_UNSENT: usize = 1 << 20;

/// How long a wire connection over the limit has to show it is a peer node's (its first
/// request an `OP_HELLO`) before it is refused. A peer sends its hello right after connecting.
pub const PEER_GRACE: Duration = Duration::from_millis(500);

/// Whether the connection just counted as open puts this shard over its share of
/// `--max-connections`; if so, counts the refusal and returns why, for the client.
pub fn refuse(ctx: &ShardCtx) -> Option<String> {
    if !over_share(ctx) {
        return None;
    }
    Some(refusal(ctx))
}

/// Whether the connections open on this shard exceed its share of `--max-connections`.
pub fn over_share(ctx: &ShardCtx) -> bool {
    ctx.config
        .shard_max_connections()
        .is_some_and(|share| ctx.shard.borrow().counters.connections_open > share)
}

/// Counts a refusal and says why, for the client.
pub fn refusal(ctx: &ShardCtx) -> String {
    ctx.metrics.borrow_mut().connections_refused += 1;
    format!(
        "connection refused: shard {} of this node already serves {} client connection(s), \
         its share of --max-connections {}; retry later or on another node",
        ctx.me,
        ctx.config.shard_max_connections().unwrap_or_default(),
        ctx.config.max_connections.unwrap_or_default()
    )
}

/// Whether `buf` starts with a request whose first op is `OP_HELLO`: a peer node introducing
/// itself. Pure; an incomplete or undecodable frame is not a hello.
pub fn starts_with_hello(buf: &[u8], max_frame: usize) -> bool {
    matches!(
        frame::decode::<Request>(buf, max_frame),
        Ok(Some((request, _))) if request.ops.first().is_some_and(|op| op.code == OpCode::OpHello as i32)
    )
}

/// The frame a refused wire connection gets before it is closed.
pub fn refusal_frame(why: String) -> Response {
    Response {
        error: Status::Busy as i32,
        message: why,
        ..Response::default()
    }
}

/// Counts a connection closed by `--idle-timeout`.
pub fn idle_closed(ctx: &ShardCtx) {
    ctx.metrics.borrow_mut().connections_idle_closed += 1;
}
