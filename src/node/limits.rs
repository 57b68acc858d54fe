//! Limits that keep a node up when clients misbehave: how many connections a shard takes
//! (`--max-connections`), how long one may sit idle (`--idle-timeout`), and how many reply bytes
//! a connection may hold for a client that does not read them.
//!
//! Each shard enforces its own share with its own counters; nothing is shared across cores.

use kvmesh_proto::wire::{Response, Status};

use super::server::ShardCtx;

/// Reply bytes a wire connection may hold before it stops taking new requests from its buffer
/// and waits for the client to read (see `conn`). A client that sends but never reads then
/// holds at most about this much, plus its read buffer and one request's replies, of the node.
pub const MAX_UNSENT: usize = 1 << 20;

/// Whether the connection just counted as open puts this shard over its share of
/// `--max-connections`; if so, counts the refusal and returns why, for the client.
pub fn refuse(ctx: &ShardCtx) -> Option<String> {
    let share = ctx.config.shard_max_connections()?;
    let open = ctx.shard.borrow().counters.connections_open;
    if open <= share {
        return None;
    }
    ctx.metrics.borrow_mut().connections_refused += 1;
    Some(format!(
        "connection refused: shard {} of this node already serves {share} client connection(s), \
         its share of --max-connections {}; retry later or on another node",
        ctx.me,
        ctx.config.max_connections.unwrap_or_default()
    ))
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
