//! The gateway's [`Backend`]: every op goes to its owning node and shard over the wire
//! protocol, through `kvmesh_net`'s cluster-aware [`Client`] (ring owner, then shard).
//!
//! A `Client` carries one request at a time per connection, so each executor keeps a pool of
//! idle clients: a call takes one (or connects a new one), runs, and gives it back; a client
//! whose connection failed is dropped, so the next call reconnects. The ops of one call are
//! grouped by owning shard and pipelined: one request per shard, all sent before any reply is
//! awaited ([`Client::execute_many`]).
//!
//! Membership changes: a client says which topology epoch it routes by, and when a node on a
//! newer one answers `STATUS_MOVED` it learns the topology again from that node and sends those
//! ops again (bounded, see `kvmesh_net::client`), so gRPC callers see neither MOVED nor an
//! error. The Topology answer is learned afresh on each call; its `ring_version` is the
//! cluster's topology epoch.

use std::cell::RefCell;
use std::time::Duration;

use kvmesh_net::Client;
use kvmesh_proto::distributed_cache::{KvNode, KvTopologyResponse};
use kvmesh_proto::wire::{Op, OpResult, Status as WireStatus};

use super::config::Peer;
use crate::grpc::backend::LocalFuture;
use crate::grpc::status::Error;
use crate::grpc::Backend;

/// The ring's version of a cluster that runs no agreed topology (a node alone), as a node's own
/// gRPC front-end answers it (`node::grpc_backend::RING_VERSION`).
const RING_VERSION: u64 = 1;

pub struct RemoteBackend {
    /// The cluster's members, as `--peers` gives them; any of them can introduce the rest.
    peers: Vec<Peer>,
    timeout: Duration,
    idle: RefCell<Vec<Client>>,
}

impl RemoteBackend {
    pub fn new(peers: Vec<Peer>, timeout: Duration) -> Self {
        RemoteBackend {
            peers,
            timeout,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// An idle client, or a new one connected through the first peer that answers.
    async fn client(&self) -> Result<Client, String> {
        if let Some(client) = self.idle.borrow_mut().pop() {
            return Ok(client);
        }
        self.connect_any().await
    }

    /// A new client, connected through the first peer that answers.
    async fn connect_any(&self) -> Result<Client, String> {
        let mut failures = Vec::new();
        for peer in &self.peers {
            match self.connect(peer).await {
                Ok(client) => return Ok(client),
                Err(why) => failures.push(why),
            }
        }
        Err(format!(
            "no member of --peers answers: {}",
            failures.join("; ")
        ))
    }

    /// A client introduced by `peer`, checked against `--peers`: the node there must be the
    /// one named, and, unless the cluster runs an agreed topology (whose members change by
    /// themselves, so `--peers` only helps find it), its member list must be the one given.
    async fn connect(&self, peer: &Peer) -> Result<Client, String> {
        let client = Client::connect(peer.addr, self.timeout)
            .await
            .map_err(|e| format!("node {} at {}: {e}", peer.id, peer.addr))?;
        let id = client.topology().node_id;
        if id != peer.id {
            return Err(format!(
                "--peers names node {} at {}, but the node there is node {id}",
                peer.id, peer.addr
            ));
        }
        if client.epoch() > 0 {
            return Ok(client);
        }
        let mut theirs: Vec<u32> = client.members().iter().map(|m| m.0).collect();
        let mut ours: Vec<u32> = self.peers.iter().map(|p| p.id).collect();
        theirs.sort_unstable();
        ours.sort_unstable();
        if theirs != ours {
            return Err(format!(
                "node {id} at {} has the members {theirs:?}, but --peers names {ours:?}",
                peer.addr
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
        let (moved, epoch) = (client.moved_answers(), client.epoch());
        let results = match client.execute_many(ops).await {
            Ok(results) => results,
            // The client dropped the failed connection; the others stay usable.
            Err(e) => vec![unavailable(&e.to_string()); n],
        };
        if client.moved_answers() > moved {
            tracing::info!(
                "answered MOVED: learned the topology of epoch {} (was {epoch})",
                client.epoch()
            );
        }
        self.idle.borrow_mut().push(client);
        results
    }

    async fn topology(&self) -> Result<KvTopologyResponse, Error> {
        let unavailable = |message: String| Error::Op {
            status: WireStatus::Unavailable,
            message,
        };
        // Learned afresh: an idle client's topology may be older (it refreshes on MOVED only).
        let mut client = self.connect_any().await.map_err(unavailable)?;
        let map = client.map().await.map_err(|e| unavailable(e.to_string()))?;
        let nodes = client
            .members()
            .into_iter()
            .zip(map.topologies())
            .map(|((id, addr), t)| KvNode {
                id,
                host: addr.ip().to_string(),
                wire_port: u32::from(addr.port()),
                shard_ports: t.shard_ports.clone(),
                shard_hash: t.shard_hash.clone(),
            })
            .collect();
        self.idle.borrow_mut().push(client);
        Ok(KvTopologyResponse {
            ring_version: map.epoch().max(RING_VERSION),
            nodes,
        })
    }
}

impl Backend for RemoteBackend {
    fn execute(&self, ops: Vec<Op>) -> LocalFuture<'_, Vec<OpResult>> {
        Box::pin(self.run(ops))
    }

    fn topology(&self) -> LocalFuture<'_, Result<KvTopologyResponse, Error>> {
        Box::pin(self.topology())
    }
}

fn unavailable(why: &str) -> OpResult {
    OpResult {
        status: WireStatus::Unavailable as i32,
        message: why.to_string(),
        ..OpResult::default()
    }
}
