//! What the gRPC services run on: a [`Backend`] executes wire ops and knows the topology. The
//! node's backend runs them through its dispatch path (`node::grpc_backend`); the gateway's sends
//! them to the owning node over the wire protocol (`gateway::remote`). The services, health and
//! reflection are the same code in both.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kvmesh_proto::distributed_cache::KvTopologyResponse;
use kvmesh_proto::wire::{Op, OpCode, OpResult, Status as WireStatus};

use super::status::Error;

/// A future that stays on the executor that made it.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Held for as long as a connection is open; lets a backend count connections.
pub type ConnectionGuard = Box<dyn Any>;

/// Executes ops for the gRPC services, on one executor.
pub trait Backend: 'static {
    /// Runs `ops` and returns one result per op, in order. Never fails as a whole: an op that
    /// could not run (its owner unreachable, say) gets an error status of its own.
    fn execute(&self, ops: Vec<Op>) -> LocalFuture<'_, Vec<OpResult>>;

    /// The nodes serving the cluster, for `KvMesh/Topology`.
    fn topology(&self) -> LocalFuture<'_, Result<KvTopologyResponse, Error>>;

    /// Counts a request that named no known method.
    fn count_protocol_error(&self) {}

    /// Called for each accepted connection; the guard is dropped when it closes.
    fn connection_opened(&self) -> ConnectionGuard {
        Box::new(())
    }

    /// Why a new connection must be refused (over `--max-connections`), if it must.
    fn refuse_connection(&self) -> Option<String> {
        None
    }

    /// Connections with no call in flight for this long are closed with a GOAWAY.
    fn idle_timeout(&self) -> Option<Duration> {
        None
    }

    /// Counts a connection closed by [`Backend::idle_timeout`].
    fn count_idle_closed(&self) {}

    /// Completes when the executor starts draining for shutdown: connections then get a GOAWAY
    /// and finish the calls they have open.
    fn draining(&self) -> LocalFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// Runs one op.
pub async fn run_one<B: Backend + ?Sized>(backend: &B, op: Op) -> OpResult {
    backend
        .execute(vec![op])
        .await
        .pop()
        .unwrap_or_else(|| OpResult {
            status: WireStatus::Internal as i32,
            message: "the backend returned no result".to_string(),
            ..OpResult::default()
        })
}

/// The result if its op succeeded, else the error a unary call answers with.
pub fn ok(result: OpResult) -> Result<OpResult, Error> {
    match result.status() {
        WireStatus::Ok => Ok(result),
        status => Err(Error::Op {
            status,
            message: result.message,
        }),
    }
}

/// Builds a wire op.
pub fn op(code: OpCode, key: Vec<u8>, value: Vec<u8>, ttl_ms: u64) -> Op {
    Op {
        code: code as i32,
        key,
        value,
        ttl_ms,
        ..Op::default()
    }
}

/// A public-API TTL (seconds, 0 = never, negative refused) as the wire's milliseconds.
pub fn ttl_ms(ttl: i64) -> Result<u64, Error> {
    let seconds = u64::try_from(ttl).map_err(|_| Error::NegativeTtl(ttl))?;
    // Past u64::MAX milliseconds (half a billion years) the key simply never expires.
    Ok(seconds.saturating_mul(1000))
}
