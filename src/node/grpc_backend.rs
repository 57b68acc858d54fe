//! The node's [`Backend`] for the gRPC front-end: ops run through the node's one dispatch path
//! (so forwarding, limits and durability apply exactly as for the wire protocol), and the
//! topology is this node's.

use std::rc::Rc;
use std::time::Duration;

use kvmesh_proto::distributed_cache::{KvNode, KvTopologyResponse};
use kvmesh_proto::wire::{Op, OpResult};

use super::dispatch;
use super::server::ShardCtx;
use crate::grpc::backend::{ConnectionGuard, LocalFuture};
use crate::grpc::status::Error;
use crate::grpc::Backend;

/// The ring's version of a node that runs no agreed topology (a node alone).
pub const RING_VERSION: u64 = 1;

/// One shard's backend.
pub struct NodeBackend(pub Rc<ShardCtx>);

impl Backend for NodeBackend {
    fn execute(&self, ops: Vec<Op>) -> LocalFuture<'_, Vec<OpResult>> {
        Box::pin(dispatch::execute(&self.0, ops))
    }

    fn topology(&self) -> LocalFuture<'_, Result<KvTopologyResponse, Error>> {
        Box::pin(async move {
            let ctx = &self.0;
            let membership = ctx.peers.membership();
            let mut nodes = Vec::with_capacity(membership.members.len());
            for &(id, addr) in &membership.members {
                let shard_ports = if id == membership.me {
                    ctx.config.shard_ports()
                } else {
                    // A member this node cannot reach now is listed without its shard ports.
                    let ports = ctx.peers.shard_ports_of(id).await.unwrap_or_default();
                    ports.into_iter().map(u32::from).collect()
                };
                nodes.push(KvNode {
                    id,
                    host: addr.ip().to_string(),
                    wire_port: u32::from(addr.port()),
                    shard_ports,
                    shard_hash: kvmesh_net::routing::SHARD_HASH_NAME.to_string(),
                });
            }
            Ok(KvTopologyResponse {
                // The agreed topology's epoch: it changes with every membership change.
                ring_version: membership.epoch.max(RING_VERSION),
                nodes,
            })
        })
    }

    fn count_protocol_error(&self) {
        self.0.shard.borrow_mut().counters.protocol_errors += 1;
    }

    fn connection_opened(&self) -> ConnectionGuard {
        Box::new(self.0.connection_opened())
    }

    fn refuse_connection(&self) -> Option<String> {
        super::limits::refuse(&self.0)
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.0.config.idle_timeout
    }

    fn count_idle_closed(&self) {
        super::limits::idle_closed(&self.0);
    }

    fn draining(&self) -> LocalFuture<'_, ()> {
        Box::pin(self.0.serving.draining())
    }
}
