//! The gateway's [`Backend`]: every op goes to its owning node and shard over the wire
//! protocol, through `kvmesh_net`'s topology-aware [`Client`].
//!
//! A `Client` carries one request at a time per connection, so each executor keeps a pool of
//! idle clients: a call takes one (or connects a new one), runs, and gives it back; a client
//! whose connection failed is dropped, so the next call reconnects. The ops of one call are
//! grouped by owning shard and pipelined: one request per shard, all sent before any reply is
//! awaited.

use std::cell::RefCell;

use kvmesh_net::client::ClientError;
use kvmesh_net::Client;
use kvmesh_proto::distributed_cache::{KvNode, KvTopologyResponse};
use kvmesh_proto::wire::{Op, OpResult, Status as WireStatus};

use super::config::Peer;
use crate::grpc::backend::LocalFuture;
use crate::grpc::status::Error;
use crate::grpc::Backend;

/// The ring's version while membership cannot change.
const RING_VERSION: u64 = 1;

pub struct RemoteBackend {
    peer: Peer,
    timeout: std::time::Duration,
    idle: RefCell<Vec<Client>>,
}

impl RemoteBackend {
    pub fn new(peer: Peer, timeout: std::time::Duration) -> Self {
        RemoteBackend {
            peer,
            timeout,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// An idle client, or a new one connected to the peer.
    async fn client(&self) -> Result<Client, String> {
        if let Some(client) = self.idle.borrow_mut().pop() {
            return Ok(client);
        }
        let client = Client::connect(self.peer.addr, self.timeout)
            .await
            .map_err(|e| format!("node {} at {}: {e}", self.peer.id, self.peer.addr))?;
        let id = client.topology().node_id;
        if id != self.peer.id {
            return Err(format!(
                "--peers names node {} at {}, but the node there is node {id}",
                self.peer.id, self.peer.addr
            ));
        }
        Ok(client)
    }

    async fn run(&self, ops: Vec<Op>) -> Vec<OpResult> {
        let n = ops.len();
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(why) => return vec![unavailable(&why); n],
        };
        match run_on(&mut client, ops).await {
            Ok(results) => {
                self.idle.borrow_mut().push(client);
                results
            }
            Err(e) => {
                let why = format!("node {} at {}: {e}", self.peer.id, self.peer.addr);
                vec![unavailable(&why); n]
            }
        }
    }
}

impl Backend for RemoteBackend {
    fn execute(&self, ops: Vec<Op>) -> LocalFuture<'_, Vec<OpResult>> {
        Box::pin(self.run(ops))
    }

    fn topology(&self) -> LocalFuture<'_, Result<KvTopologyResponse, Error>> {
        Box::pin(async move {
            let client = self.client().await.map_err(|why| Error::Op {
                status: WireStatus::Unavailable,
                message: why,
            })?;
            let t = client.topology();
            let node = KvNode {
                id: t.node_id,
                host: self.peer.addr.ip().to_string(),
                wire_port: u32::from(self.peer.addr.port()),
                shard_ports: t.shard_ports.clone(),
                shard_hash: t.shard_hash.clone(),
            };
            self.idle.borrow_mut().push(client);
            Ok(KvTopologyResponse {
                ring_version: RING_VERSION,
                nodes: vec![node],
            })
        })
    }
}

/// Runs `ops` on their owning shards: one pipelined request per shard, results in op order.
async fn run_on(client: &mut Client, ops: Vec<Op>) -> Result<Vec<OpResult>, ClientError> {
    let shards = client.topology().shards as usize;
    // (shard, indices into the results, ops), in order of first appearance.
    let mut groups: Vec<(usize, Vec<usize>, Vec<Op>)> = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let shard = kvmesh_net::shard_for(&op.key, shards);
        match groups.iter_mut().find(|(s, _, _)| *s == shard) {
            Some((_, idx, ops)) => {
                idx.push(i);
                ops.push(op);
            }
            None => groups.push((shard, vec![i], vec![op])),
        }
    }
    let mut ids = Vec::with_capacity(groups.len());
    for (shard, _, ops) in &mut groups {
        let conn = client.shard(*shard).await?;
        ids.push(conn.queue(std::mem::take(ops)));
        conn.flush().await?;
    }
    let mut results = vec![OpResult::default(); groups.iter().map(|g| g.1.len()).sum()];
    for ((shard, idx, _), id) in groups.into_iter().zip(ids) {
        let conn = client.shard(shard).await?;
        let response = conn.recv().await?;
        if response.id != id || response.results.len() != idx.len() {
            return Err(ClientError::Protocol {
                addr: conn.addr(),
                what: format!(
                    "asked request {id} with {} ops, got request {} with {} results",
                    idx.len(),
                    response.id,
                    response.results.len()
                ),
            });
        }
        for (i, result) in idx.into_iter().zip(response.results) {
            results[i] = result;
        }
    }
    Ok(results)
}

fn unavailable(why: &str) -> OpResult {
    OpResult {
        status: WireStatus::Unavailable as i32,
        message: why.to_string(),
        ..OpResult::default()
    }
}
