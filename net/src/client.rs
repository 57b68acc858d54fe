//! The cluster-aware wire client, used by the CLI, the gateway and the load generator.
//!
//! [`Client`] sits on [`Connection`]s (one per shard it talks to): it learns the cluster's members and each member's topology, and sends each key straight to its
//! owner's owning shard port. [`ClusterMap`] is the same routing, pure, for clients that open
//! their connections up front.
//!
//! It runs on the glommio executor of the thread that created it. Every read, write and
//! connect is bounded by the timeout given at connect time.
//!
//! Stale topology: a `Client` says, in every request, the epoch of the topology it routes by
//! (`Request.epoch`). A node on a newer topology answers its key ops `STATUS_MOVED` without
//! running them; the client then learns the topology again from that node and sends those ops
//! again, at most [`MAX_REFRESHES`] times per call, then fails with [`ClientError::Moved`].

use std::net::SocketAddr;
use std::time::Duration;

use kvmesh_proto::wire::{Op, OpCode, OpResult, ShardStats, Status, Topology};

pub use crate::connection::{fetch_topology, op, ClientError, Connection};
use crate::ring::{NodeId, Ring};
use crate::routing::shard_for;

/// How many times one call learns the topology again after `STATUS_MOVED` answers before it
/// gives up with [`ClientError::Moved`]. Each membership change moves the epoch twice (begin,
/// finish), so this covers a couple of changes racing one call.
pub const MAX_REFRESHES: usize = 5;

/// A cluster- and topology-aware client: each key goes to its owner on the ring, and there to
/// its owning shard's own port, so no request pays a hop between nodes or shards.
///
/// It learns the member list from the node it first contacts, and each member's shard ports
/// by asking that member, on first use. A connection that fails is dropped and reopened by the
/// next call that needs it.
pub struct Client {
    /// The topology of the node first contacted.
    topology: Topology,
    ring: Ring,
    /// One per member, in ascending id order (as `ring.nodes()`).
    nodes: Vec<NodeLink>,
    timeout: Duration,
    /// The epoch of `topology` (0: the node runs no agreed topology), sent in every request.
    epoch: u64,
    /// How many op results came back `STATUS_MOVED` (each was sent again after a refresh).
    moved: u64,
}

struct NodeLink {
    id: NodeId,
    addr: SocketAddr,
    topology: Option<Topology>,
    shards: Vec<Option<Connection>>,
}

/// Ops of one call owned by one (member index, shard): the indices of their results, and the
/// ops themselves.
type Group = ((usize, usize), Vec<usize>, Vec<Op>);

/// One member's counters, or why it could not be asked.
pub struct MemberStats {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub shards: Result<Vec<ShardStats>, ClientError>,
}

impl Client {
    /// Connects to any wire port of any member and learns the cluster's member list.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let mut first = Connection::connect(addr, timeout).await?;
        let topology = fetch_topology(&mut first).await?;
        check_shard_ports(addr, &topology)?;
        let members = members(&topology, addr)?;
        let ids: Vec<NodeId> = members.iter().map(|m| m.0).collect();
        let ring = Ring::new(&ids).map_err(|e| ClientError::Topology(e.to_string()))?;
        let mut nodes: Vec<NodeLink> = members
            .into_iter()
            .map(|(id, member_addr)| NodeLink {
                id,
                // The contacted node is reached on the host the caller reached it at.
                addr: if id == topology.node_id {
                    SocketAddr::new(addr.ip(), member_addr.port())
                } else {
                    member_addr
                },
                topology: None,
                shards: Vec::new(),
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        let me = nodes
            .iter_mut()
            .find(|n| n.id == topology.node_id)
            .ok_or_else(|| {
                ClientError::Topology(format!(
                    "node {} at {addr} is not in its own member list",
                    topology.node_id
                ))
            })?;
        me.shards = (0..topology.shards).map(|_| None).collect();
        // Keep the first connection if it already is a shard's own port.
        if let Some(i) = topology
            .shard_ports
            .iter()
            .position(|&p| u32::from(addr.port()) == p)
        {
            me.shards[i] = Some(first);
        }
        me.topology = Some(topology.clone());
        let epoch = topology.epoch;
        if let Some(conn) = me.shards.iter_mut().flatten().next() {
            conn.set_epoch(epoch);
        }
        Ok(Self {
            topology,
            ring,
            nodes,
            timeout,
            epoch,
            moved: 0,
        })
    }

    /// The epoch of the topology this client routes by (0: the cluster runs no agreed
    /// topology, a node alone).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many op results came back `STATUS_MOVED` since it connected: each was sent again
    /// after the client learned the newer topology.
    pub fn moved_answers(&self) -> u64 {
        self.moved
    }

    /// Learns the topology again from member `i` (a node that answered `STATUS_MOVED`, so on a
    /// newer topology): every connection is dropped and reopened on first use.
    async fn refresh(&mut self, i: usize) -> Result<(), ClientError> {
        let addr = self.nodes[i].addr;
        let fresh = Client::connect(addr, self.timeout).await?;
        let moved = self.moved;
        *self = fresh;
        self.moved = moved;
        Ok(())
    }

    /// The topology of the node first contacted.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The members, in id order, with the address each is reached at.
    pub fn members(&self) -> Vec<(NodeId, SocketAddr)> {
        self.nodes.iter().map(|n| (n.id, n.addr)).collect()
    }

    /// Learns every member's topology (asking those not asked yet) and returns the whole map.
    pub async fn map(&mut self) -> Result<ClusterMap, ClientError> {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            self.learn(i).await?;
            let link = &self.nodes[i];
            let topology = link.topology.clone().expect("learned above");
            nodes.push((link.id, link.addr.ip(), topology));
        }
        Ok(ClusterMap {
            ring: self.ring.clone(),
            nodes,
            epoch: self.epoch,
        })
    }

    /// Asks member `i` for its topology, once.
    async fn learn(&mut self, i: usize) -> Result<(), ClientError> {
        let link = &mut self.nodes[i];
        if link.topology.is_some() {
            return Ok(());
        }
        let mut conn = Connection::connect(link.addr, self.timeout).await?;
        let topology = fetch_topology(&mut conn).await?;
        check_shard_ports(link.addr, &topology)?;
        if topology.node_id != link.id {
            return Err(ClientError::Topology(format!(
                "the member list gives {} as node {}, but that node says it is node {}",
                link.addr, link.id, topology.node_id
            )));
        }
        link.shards = (0..topology.shards).map(|_| None).collect();
        link.topology = Some(topology);
        Ok(())
    }

    /// The connection to shard `shard` of member `i` (its own port), opened on first use.
    async fn conn(&mut self, i: usize, shard: usize) -> Result<&mut Connection, ClientError> {
        self.learn(i).await?;
        let link = &mut self.nodes[i];
        let slot = &mut link.shards[shard];
        if slot.is_none() {
            let topology = link.topology.as_ref().expect("learned above");
            let port = topology.shard_ports[shard] as u16;
            let addr = SocketAddr::new(link.addr.ip(), port);
            let mut conn = Connection::connect(addr, self.timeout).await?;
            conn.set_epoch(self.epoch);
            *slot = Some(conn);
        }
        Ok(slot.as_mut().expect("connection was just opened"))
    }

    /// Where `key` lives: (member index, shard of that member).
    async fn locate(&mut self, key: &[u8]) -> Result<(usize, usize), ClientError> {
        let owner = self.ring.owner(key);
        let i = self
            .nodes
            .binary_search_by_key(&owner, |n| n.id)
            .map_err(|_| ClientError::Topology(format!("ring owner {owner} is not a member")))?;
        self.learn(i).await?;
        let shards = self.nodes[i].shards.len();
        Ok((i, shard_for(key, shards)))
    }

    /// Runs one op on the shard, of the member, that owns its key. When that member cannot
    /// be reached, the op goes to the next members clockwise on the ring in turn (each serves
    /// it if it holds the key as a replica, or passes it to an owner that is up), and the
    /// first member's error is returned only when none answers. An op answered `STATUS_MOVED`
    /// is sent again after a refresh of the topology (see the module's doc).
    pub async fn execute(&mut self, op: Op) -> Result<OpResult, ClientError> {
        let mut refreshes = 0;
        loop {
            let (i, result) = self.execute_once(&op).await?;
            if result.status() != Status::Moved {
                return Ok(result);
            }
            self.moved += 1;
            if refreshes == MAX_REFRESHES {
                return Err(ClientError::Moved {
                    epoch: result.moved_epoch,
                    refreshes,
                });
            }
            refreshes += 1;
            self.refresh(i).await?;
        }
    }

    /// [`Client::execute`] on the current topology: the result, and the member that answered.
    async fn execute_once(&mut self, op: &Op) -> Result<(usize, OpResult), ClientError> {
        let mut first = None;
        for id in self.ring.owners(&op.key, self.nodes.len()) {
            let Ok(i) = self.nodes.binary_search_by_key(&id, |n| n.id) else {
                continue;
            };
            let called = match self.learn(i).await {
                Ok(()) => {
                    let shard = shard_for(&op.key, self.nodes[i].shards.len());
                    self.call_at(i, shard, op.clone()).await
                }
                Err(e) => Err(e),
            };
            match called {
                Ok(result) => return Ok((i, result)),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or_else(|| ClientError::Topology("the cluster has no members".into())))
    }

    /// Runs one op on shard `shard` of member `i`.
    async fn call_at(&mut self, i: usize, shard: usize, op: Op) -> Result<OpResult, ClientError> {
        let conn = self.conn(i, shard).await?;
        let addr = conn.addr();
        let mut results = conn.call(vec![op]).await.inspect_err(|_| {
            // A failed connection is not reused: the next call reconnects.
            self.nodes[i].shards[shard] = None;
        })?;
        results.pop().ok_or(ClientError::Protocol {
            addr,
            what: "empty reply".into(),
        })
    }

    /// Runs `ops` on the shards, of the members, that own their keys, and returns one result
    /// per op, in order. The ops are grouped by owning shard and pipelined: one request per
    /// shard, all sent before any reply is awaited. A connection that fails is dropped (the
    /// next call reconnects) and fails the whole call. Ops answered `STATUS_MOVED` are sent
    /// again after a refresh of the topology (see the module's doc).
    pub async fn execute_many(&mut self, ops: Vec<Op>) -> Result<Vec<OpResult>, ClientError> {
        let mut results = vec![OpResult::default(); ops.len()];
        let mut todo: Vec<usize> = (0..ops.len()).collect();
        let mut refreshes = 0;
        loop {
            let answered = self.execute_many_once(&ops, &todo).await?;
            let mut again = Vec::new();
            let mut from = None;
            let mut epoch = 0;
            for (k, (i, result)) in todo.into_iter().zip(answered) {
                if result.status() == Status::Moved {
                    again.push(k);
                    from.get_or_insert(i);
                    epoch = epoch.max(result.moved_epoch);
                }
                results[k] = result;
            }
            let Some(from) = from else {
                return Ok(results);
            };
            self.moved += again.len() as u64;
            if refreshes == MAX_REFRESHES {
                return Err(ClientError::Moved { epoch, refreshes });
            }
            refreshes += 1;
            self.refresh(from).await?;
            todo = again;
        }
    }

    /// [`Client::execute_many`] of the ops `todo` indexes, on the current topology: per op of
    /// `todo`, in order, the member that answered and its result.
    async fn execute_many_once(
        &mut self,
        ops: &[Op],
        todo: &[usize],
    ) -> Result<Vec<(usize, OpResult)>, ClientError> {
        // One per owning (member, shard), in order of first appearance.
        let mut groups: Vec<Group> = Vec::new();
        let n = todo.len();
        for (i, op) in todo.iter().map(|&k| ops[k].clone()).enumerate() {
            let at = self.locate(&op.key).await?;
            match groups.iter_mut().find(|(g, _, _)| *g == at) {
                Some((_, idx, ops)) => {
                    idx.push(i);
                    ops.push(op);
                }
                None => groups.push((at, vec![i], vec![op])),
            }
        }
        let mut ids = Vec::with_capacity(groups.len());
        for ((i, shard), _, ops) in &mut groups {
            let conn = self.conn(*i, *shard).await?;
            ids.push(conn.queue(std::mem::take(ops)));
            let flushed = conn.flush().await;
            self.forget_on_error(*i, *shard, flushed)?;
        }
        let mut results = vec![(0, OpResult::default()); n];
        for (((i, shard), idx, _), id) in groups.into_iter().zip(ids) {
            let conn = self.conn(i, shard).await?;
            let addr = conn.addr();
            let response = conn.recv().await;
            let response = self.forget_on_error(i, shard, response)?;
            if response.id != id || response.results.len() != idx.len() {
                self.nodes[i].shards[shard] = None;
                return Err(ClientError::Protocol {
                    addr,
                    what: format!(
                        "asked request {id} with {} ops, got request {} with {} results",
                        idx.len(),
                        response.id,
                        response.results.len()
                    ),
                });
            }
            for (k, result) in idx.into_iter().zip(response.results) {
                results[k] = (i, result);
            }
        }
        Ok(results)
    }

    /// Passes `result` on; on an error, first drops the connection it came from.
    fn forget_on_error<T>(
        &mut self,
        i: usize,
        shard: usize,
        result: Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if result.is_err() {
            self.nodes[i].shards[shard] = None;
        }
        result
    }

    /// The connection to shard `shard` of the node first contacted (its own port), for ops
    /// that address a shard rather than a key (snapshots, stats).
    pub async fn contacted_shard(&mut self, shard: usize) -> Result<&mut Connection, ClientError> {
        let me = self.contacted();
        if shard >= self.topology.shards as usize {
            return Err(ClientError::Topology(format!(
                "node {} has {} shards, not {}",
                self.topology.node_id,
                self.topology.shards,
                shard + 1
            )));
        }
        self.conn(me, shard).await
    }

    /// The index, into `nodes`, of the node first contacted.
    fn contacted(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == self.topology.node_id)
            .expect("the contacted node is a member")
    }

    /// The value of `key`, or `None` when it is missing or expired.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let result = self.execute(op(OpCode::OpGet, key, &[], 0)).await?;
        match result.status() {
            Status::Ok => Ok(Some(result.value)),
            Status::NotFound => Ok(None),
            status => Err(refused(status, result.message)),
        }
    }

    /// Stores `value` under `key`, expiring after `ttl` (`None` = never).
    pub async fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), ClientError> {
        let ttl_ms = ttl.map_or(0, |d| d.as_millis().max(1) as u64);
        let result = self.execute(op(OpCode::OpPut, key, value, ttl_ms)).await?;
        match result.status() {
            Status::Ok => Ok(()),
            status => Err(refused(status, result.message)),
        }
    }

    /// Removes `key`; `true` when a live key was removed.
    pub async fn remove(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        let result = self.execute(op(OpCode::OpRemove, key, &[], 0)).await?;
        match result.status() {
            Status::Ok => Ok(result.found),
            status => Err(refused(status, result.message)),
        }
    }

    /// The counters of every shard of the node first contacted, in shard order.
    pub async fn stats(&mut self) -> Result<Vec<ShardStats>, ClientError> {
        let me = self.contacted();
        self.member_stats(me).await
    }

    /// Every member's counters, or why that member could not be asked now.
    pub async fn cluster_stats(&mut self) -> Vec<MemberStats> {
        let mut all = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            let shards = self.member_stats(i).await;
            if shards.is_err() {
                let link = &mut self.nodes[i];
                link.shards.iter_mut().for_each(|c| *c = None);
            }
            all.push(MemberStats {
                id: self.nodes[i].id,
                addr: self.nodes[i].addr,
                shards,
            });
        }
        all
    }

    async fn member_stats(&mut self, i: usize) -> Result<Vec<ShardStats>, ClientError> {
        self.learn(i).await?;
        let nr = self.nodes[i].shards.len();
        let mut all = Vec::with_capacity(nr);
        for shard in 0..nr {
            let conn = self.conn(i, shard).await?;
            let addr = conn.addr();
            let result = conn
                .call(vec![op(OpCode::OpStats, &[], &[], 0)])
                .await?
                .pop()
                .ok_or(ClientError::Protocol {
                    addr,
                    what: "empty reply".into(),
                })?;
            let stats = result.stats.ok_or(ClientError::Protocol {
                addr,
                what: "stats reply without stats".into(),
            })?;
            all.push(*stats);
        }
        Ok(all)
    }
}

/// Where every key of a cluster lives, once every member's topology is known: what a client
/// that opens its connections up front (the load generator) routes with. Pure.
#[derive(Clone, Debug)]
pub struct ClusterMap {
    ring: Ring,
    /// (id, host, topology), in id order.
    nodes: Vec<(NodeId, std::net::IpAddr, Topology)>,
    /// The epoch of the topology the member list came from (0: none agreed).
    epoch: u64,
}

impl ClusterMap {
    /// The epoch of the topology this map was learned from (0: the cluster runs no agreed
    /// topology). A client that routes by the map and sends it in `Request.epoch` must handle
    /// `STATUS_MOVED` (learn a new map and send again); one that sends 0 is never answered so.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every shard port of every member, member by member in id order, shards in order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .flat_map(|(_, host, t)| {
                t.shard_ports
                    .iter()
                    .map(move |&p| SocketAddr::new(*host, p as u16))
            })
            .collect()
    }

    /// The index, into [`ClusterMap::endpoints`], of the shard port that owns `key`.
    pub fn endpoint_for(&self, key: &[u8]) -> usize {
        let owner = self.ring.owner(key);
        let mut base = 0;
        for (id, _, t) in &self.nodes {
            if *id == owner {
                return base + shard_for(key, t.shards as usize);
            }
            base += t.shards as usize;
        }
        unreachable!("the ring is built from these members")
    }

    /// The topologies, in id order.
    pub fn topologies(&self) -> impl Iterator<Item = &Topology> {
        self.nodes.iter().map(|n| &n.2)
    }
}

/// The members a topology lists, or the node alone when it lists none.
fn members(
    topology: &Topology,
    addr: SocketAddr,
) -> Result<Vec<(NodeId, SocketAddr)>, ClientError> {
    if topology.members.is_empty() {
        return Ok(vec![(topology.node_id, addr)]);
    }
    topology
        .members
        .iter()
        .map(|m| {
            let member_addr = m.addr.parse().map_err(|e| {
                ClientError::Topology(format!("member {} has address {:?}: {e}", m.id, m.addr))
            })?;
            Ok((m.id, member_addr))
        })
        .collect()
}

fn check_shard_ports(addr: SocketAddr, topology: &Topology) -> Result<(), ClientError> {
    let nr = topology.shards as usize;
    if nr == 0 || topology.shard_ports.len() != nr {
        return Err(ClientError::Protocol {
            addr,
            what: format!(
                "topology lists {} shards but {} shard ports",
                nr,
                topology.shard_ports.len()
            ),
        });
    }
    Ok(())
}

fn refused(status: Status, message: String) -> ClientError {
    ClientError::Refused { status, message }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
