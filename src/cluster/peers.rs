//! One shard's connections to the other nodes of the cluster: the I/O half of forwarding.
//!
//! Each shard keeps, per peer node, at most one persistent connection per peer shard, opened on
//! first use and shared by every request of this shard ([`kvmesh_net::mux::Mux`]: pipelined,
//! replies matched by id). Every connection starts with a handshake (`OP_HELLO`): the peer's
//! cluster name, id, address and member list must match this node's (the member list only
//! while neither side runs the agreed topology), and it tells this shard the peer's shard
//! ports. The peers follow the agreed topology ([`Peers::apply_topology`]). A connection that fails is replaced by the next request that needs
//! it; after a failed connect or a refusal, requests to that peer fail at once for
//! [`RETRY_AFTER`], so a dead peer costs no connect storm. Every hop is bounded by the
//! node's `--forward-timeout`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use kvmesh_net::mux::{Mux, Reply};
use kvmesh_net::ring::NodeId;
use kvmesh_net::{shard_for, ClientError, Connection};
use kvmesh_proto::wire::{Hello, Op, OpCode, OpResult, Status, Topology};

use super::membership::Membership;

/// How long requests to a peer fail fast after connecting to it failed.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How long the start-up probe keeps trying to reach a peer that is not up yet.
const PROBE_FOR: Duration = Duration::from_secs(60);

/// Why ops for another node got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("node {node} ({addr}) did not answer within {ms} ms")]
    Timeout {
        node: NodeId,
        addr: SocketAddr,
        ms: u128,
    },
    #[error("node {node} ({addr}) is not reachable: {why}")]
    Unreachable {
        node: NodeId,
        addr: SocketAddr,
        why: String,
    },
    /// The handshake failed: one side refused the other, saying why.
    #[error("{0}")]
    Refused(String),
}

/// This shard's links to every other member.
pub struct Peers {
    /// Replaced with each agreed topology (see [`Peers::apply_topology`]).
    membership: RefCell<Rc<Membership>>,
    timeout: Duration,
    /// What this node says in its handshakes: rebuilt with each membership.
    hello: RefCell<Hello>,
    /// This shard's topology (shard ports), for rebuilding the hello.
    topology: Topology,
    /// One link per other node taking part, added with the membership. A link to a node
    /// that left stays (the topology group talks to it until it knows it left); one whose
    /// node moved to another address is replaced.
    links: RefCell<Vec<Rc<Link>>>,
    /// The agreed topology this shard has applied, if the node runs one (`node::raft`).
    agreed: RefCell<Option<Rc<super::topology::Topology>>>,
}

struct Link {
    id: NodeId,
    addr: SocketAddr,
    /// Held while a connection to this peer is being opened, so concurrent requests open one.
    opening: Semaphore,
    state: RefCell<LinkState>,
}

impl Link {
    fn new(id: NodeId, addr: SocketAddr) -> Link {
        Link {
            id,
            addr,
            opening: Semaphore::new(1),
            state: RefCell::new(LinkState::default()),
        }
    }
}

#[derive(Default)]
struct LinkState {
    /// The peer's shard ports, from its handshake.
    shard_ports: Option<Vec<u16>>,
    conns: Vec<Option<Rc<Mux>>>,
    /// After a failure: fail fast until then, with this error.
    backoff: Option<(Instant, PeerError)>,
    /// Believed down: its last request or heartbeat failed (see [`Peers::heartbeat`]).
    down: bool,
    /// Times it went from up to down.
    down_events: u64,
}

/// Ops sent to one peer shard, waiting for their answers.
pub struct Sent {
    node: NodeId,
    addr: SocketAddr,
    reply: Result<Reply, PeerError>,
}

impl Peers {
    pub fn new(membership: Membership, topology: &Topology, timeout: Duration) -> Rc<Self> {
        let hello = membership.hello(topology);
        let links = membership
            .peers()
            .map(|(id, addr)| Rc::new(Link::new(id, addr)))
            .collect();
        Rc::new(Self {
            membership: RefCell::new(Rc::new(membership)),
            hello: RefCell::new(hello),
            topology: topology.clone(),
            timeout,
            links: RefCell::new(links),
            agreed: RefCell::new(None),
        })
    }

    fn link(&self, node: NodeId) -> Option<Rc<Link>> {
        self.links.borrow().iter().find(|l| l.id == node).cloned()
    }

    /// The agreed topology this shard has applied, if any.
    pub fn agreed(&self) -> Option<Rc<super::topology::Topology>> {
        self.agreed.borrow().clone()
    }

    /// The current member list, stamped with the epoch of the agreed topology it comes from.
    pub fn membership(&self) -> Rc<Membership> {
        self.membership.borrow().clone()
    }

    /// Takes on an agreed topology (this shard's view; see `node::raft`), or, with epoch 0,
    /// the member list a cluster answered this node's join with: routes by its members' ring
    /// from now on, and keeps links to every node taking part. An older epoch than the one
    /// applied is ignored (mesh messages may pass each other).
    pub fn apply_topology(&self, wire: &kvmesh_proto::wire::ClusterTopology) {
        let topology = match super::topology_wire::topology_from_wire(wire) {
            Ok(t) if !t.members.is_empty() => t,
            Ok(_) => return,
            Err(e) => {
                tracing::error!("an agreed topology does not decode: {e}");
                return;
            }
        };
        let current = self.membership();
        if topology.epoch < current.epoch {
            return;
        }
        let next = match current.with_topology(&topology) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("cannot route by the agreed topology: {e}");
                return;
            }
        };
        {
            // A link to a node that left stays: the topology group still talks to it until
            // it knows it left (and a moved address gets a new link).
            let mut links = self.links.borrow_mut();
            links.retain(|l| next.addr_of(l.id).is_none_or(|a| a == l.addr));
            for (id, addr) in next.peers() {
                if !links.iter().any(|l| l.id == id) {
                    links.push(Rc::new(Link::new(id, addr)));
                }
            }
        }
        *self.hello.borrow_mut() = next.hello(&self.topology);
        *self.membership.borrow_mut() = Rc::new(next);
        if topology.epoch > 0 {
            *self.agreed.borrow_mut() = Some(Rc::new(topology));
        }
    }

    /// Sends `ops` to shard `shard` of peer `node` (not routed by key): how the topology Raft
    /// group reaches a member's shard 0.
    pub async fn send_to_shard(&self, node: NodeId, shard: usize, ops: Vec<Op>) -> Sent {
        let Some(link) = self.link(node) else {
            let why = format!("node {node} is not a peer of this node");
            return self.failed(node, None, PeerError::Refused(why));
        };
        let ports = match self.shard_ports(&link).await {
            Ok(ports) => ports,
            Err(e) => return self.failed(node, Some(link.addr), e),
        };
        let Some(&port) = ports.get(shard) else {
            let why = format!("node {node} has no shard {shard}");
            return self.failed(node, Some(link.addr), PeerError::Refused(why));
        };
        let addr = SocketAddr::new(link.addr.ip(), port);
        let reply = match self.conn(&link, shard, addr).await {
            Ok(mux) => mux.send(ops, true).map_err(|e| unreachable(node, addr, &e)),
            Err(e) => Err(e),
        };
        Sent { node, addr, reply }
    }

    /// Answers a peer's handshake: this node's own hello, or `STATUS_REFUSED` and why (also
    /// logged, so both sides' operators see it).
    pub fn answer_hello(&self, theirs: Option<&Hello>) -> OpResult {
        match self.check_peer_hello(theirs) {
            Ok(()) => OpResult {
                hello: Some(Box::new(self.hello.borrow().clone())),
                ..OpResult::default()
            },
            Err(why) => {
                tracing::warn!("refused a peer's handshake: {why}");
                OpResult {
                    status: Status::Refused as i32,
                    message: format!(
                        "node {} refused the handshake: {why}",
                        self.membership.borrow().me
                    ),
                    ..OpResult::default()
                }
            }
        }
    }

    /// Why a peer's handshake is refused, if it is: what [`Peers::answer_hello`] checks. A
    /// connection whose hello passes is a peer's (see `node::conn`: only those may carry
    /// `OP_RAFT`).
    pub fn check_peer_hello(&self, theirs: Option<&Hello>) -> Result<(), String> {
        match theirs {
            // A stream's connection during a membership change: the member lists differ.
            Some(hello) if hello.stream => self.membership.borrow().check_identity(hello, None),
            Some(hello) => self.membership.borrow().check_hello(hello, None),
            None => Err("a handshake without a hello".to_string()),
        }
    }

    /// Sends `ops`, all owned by node `node`, to their owning shards there, one request per
    /// peer shard. Returns, per request, the indices (as given) its results fill. The requests
    /// say this node's current epoch.
    pub async fn send(&self, node: NodeId, ops: Vec<(usize, Op)>) -> Vec<(Vec<usize>, Sent)> {
        let epoch = self.membership().epoch;
        self.send_planned(node, ops, epoch).await
    }

    /// [`Peers::send`] for ops routed by the ring of topology `epoch` (the requests say it),
    /// so a receiver on a newer topology that does not own their keys answers
    /// `STATUS_MOVED` even if this node applied a newer epoch since it planned them.
    pub async fn send_planned(
        &self,
        node: NodeId,
        ops: Vec<(usize, Op)>,
        epoch: u64,
    ) -> Vec<(Vec<usize>, Sent)> {
        let Some(link) = self.link(node) else {
            let why = format!("node {node} is not a peer of this node");
            let idx = ops.into_iter().map(|(i, _)| i).collect();
            return vec![(idx, self.failed(node, None, PeerError::Refused(why)))];
        };
        let ports = match self.shard_ports(&link).await {
            Ok(ports) => ports,
            Err(e) => {
                let idx = ops.into_iter().map(|(i, _)| i).collect();
                return vec![(idx, self.failed(node, Some(link.addr), e))];
            }
        };
        // (peer shard, indices, ops)
        let mut groups: Vec<(usize, Vec<usize>, Vec<Op>)> = Vec::new();
        for (i, op) in ops {
            let shard = shard_for(&op.key, ports.len());
            match groups.iter_mut().find(|g| g.0 == shard) {
                Some(g) => {
                    g.1.push(i);
                    g.2.push(op);
                }
                None => groups.push((shard, vec![i], vec![op])),
            }
        }
        let mut sent = Vec::with_capacity(groups.len());
        for (shard, idx, ops) in groups {
            let addr = SocketAddr::new(link.addr.ip(), ports[shard]);
            let reply = match self.conn(&link, shard, addr).await {
                Ok(mux) => mux
                    .send_at(ops, true, epoch)
                    .map_err(|e| unreachable(node, addr, &e)),
                Err(e) => Err(e),
            };
            sent.push((idx, Sent { node, addr, reply }));
        }
        sent
    }

    /// Waits for the answers to `sent`, at most the forward timeout. The outcome updates
    /// whether the peer is believed up ([`Peers::is_live`]).
    pub async fn wait(&self, sent: Sent) -> Result<Vec<OpResult>, PeerError> {
        let Sent { node, addr, reply } = sent;
        let answered = match reply {
            Err(e) => Err(e),
            Ok(reply) => match reply.wait(self.timeout).await {
                Ok(results) => Ok(results),
                Err(ClientError::Timeout(_)) => Err(PeerError::Timeout {
                    node,
                    addr,
                    ms: self.timeout.as_millis(),
                }),
                Err(e) => Err(unreachable(node, addr, &e)),
            },
        };
        match &answered {
            Ok(_) => self.mark(node, None),
            Err(e) => self.mark(node, Some(e)),
        }
        answered
    }

    /// Whether peer `node` is believed up: true until a request or heartbeat to it fails,
    /// and again from the next one that succeeds. This node itself, and unknown ids, are live.
    pub fn is_live(&self, node: NodeId) -> bool {
        self.link(node).is_none_or(|l| !l.state.borrow().down)
    }

    /// `(peers believed down now, times a peer went down)`, for `kvmesh stats`.
    pub fn down_counts(&self) -> (u64, u64) {
        let current = self.ids();
        self.links.borrow().iter().fold((0, 0), |(now, events), l| {
            let state = l.state.borrow();
            let down = state.down && current.contains(&l.id);
            (now + down as u64, events + state.down_events)
        })
    }

    /// The ids of the other nodes taking part.
    pub fn ids(&self) -> Vec<NodeId> {
        self.membership().peers().map(|(id, _)| id).collect()
    }

    /// Records the outcome of a request to `node`: up (`None`) or down, logging each change.
    fn mark(&self, node: NodeId, failure: Option<&PeerError>) {
        let Some(link) = self.link(node) else {
            return;
        };
        let mut state = link.state.borrow_mut();
        match failure {
            None if state.down => {
                state.down = false;
                tracing::info!("peer node {node} at {} is up again", link.addr);
            }
            Some(e) if !state.down => {
                state.down = true;
                state.down_events += 1;
                tracing::warn!("peer node {node} is down: {e}");
            }
            _ => {}
        }
    }

    /// Sends a cheap request (`OP_TOPOLOGY`) to every peer every `every`, so a peer's failure
    /// is noticed within `every` plus the forward timeout even when no request needs it, and
    /// its return within `every` plus [`RETRY_AFTER`]. Runs until dropped.
    pub async fn heartbeat(self: Rc<Self>, every: Duration) {
        loop {
            glommio::timer::sleep(every).await;
            let mut sent = Vec::new();
            for node in self.ids() {
                let op = Op {
                    code: OpCode::OpTopology as i32,
                    ..Op::default()
                };
                sent.extend(self.send(node, vec![(0, op)]).await);
            }
            for (_, sent) in sent {
                let _ = self.wait(sent).await;
            }
        }
    }

    /// Handshakes with every peer once, in the background, logging who answered and who
    /// refused; a peer that is not up yet is retried for a while.
    pub async fn probe(self: Rc<Self>) {
        let start = Instant::now();
        let links = self.links.borrow().clone();
        for link in &links {
            loop {
                match self.shard_ports(link).await {
                    Ok(ports) => {
                        tracing::info!(
                            "peer node {} at {}: handshake ok, {} shard(s)",
                            link.id,
                            link.addr,
                            ports.len()
                        );
                        break;
                    }
                    // Logged where it was found out.
                    Err(PeerError::Refused(_)) => break,
                    Err(_) if start.elapsed() > PROBE_FOR => {
                        tracing::warn!(
                            "peer node {} at {} did not answer within {PROBE_FOR:?} of \
                             start; requests for its keys will try again",
                            link.id,
                            link.addr
                        );
                        break;
                    }
                    Err(_) => glommio::timer::sleep(RETRY_AFTER).await,
                }
            }
        }
    }

    fn failed(&self, node: NodeId, addr: Option<SocketAddr>, e: PeerError) -> Sent {
        Sent {
            node,
            addr: addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            reply: Err(e),
        }
    }

    /// Peer `node`'s shard ports, from a handshake the first time; `None` when it is not a
    /// peer or cannot be reached now.
    pub async fn shard_ports_of(&self, node: NodeId) -> Option<Vec<u16>> {
        let link = self.link(node)?;
        self.shard_ports(&link).await.ok()
    }

    /// The peer's shard ports, from a handshake on its wire port the first time.
    async fn shard_ports(&self, link: &Link) -> Result<Vec<u16>, PeerError> {
        if let Some(ports) = link.state.borrow().shard_ports.clone() {
            return Ok(ports);
        }
        let _opening = self.open_permit(link).await?;
        if let Some(ports) = link.state.borrow().shard_ports.clone() {
            return Ok(ports);
        }
        self.fail_fast(link)?;
        match self.handshake(link, link.addr).await {
            Ok((_conn, theirs)) => {
                let ports: Vec<u16> = theirs.shard_ports.iter().map(|&p| p as u16).collect();
                let mut state = link.state.borrow_mut();
                state.conns = (0..ports.len()).map(|_| None).collect();
                state.shard_ports = Some(ports.clone());
                Ok(ports)
            }
            Err(e) => Err(self.backoff(link, e)),
        }
    }

    /// The open connection to peer shard `shard` at `addr`, opened (with a handshake) if there
    /// is none or it failed.
    async fn conn(
        &self,
        link: &Link,
        shard: usize,
        addr: SocketAddr,
    ) -> Result<Rc<Mux>, PeerError> {
        let open = |state: &LinkState| {
            state
                .conns
                .get(shard)
                .and_then(Option::as_ref)
                .filter(|m| !m.is_closed())
                .cloned()
        };
        if let Some(mux) = open(&link.state.borrow()) {
            return Ok(mux);
        }
        let _opening = self.open_permit(link).await?;
        if let Some(mux) = open(&link.state.borrow()) {
            return Ok(mux);
        }
        self.fail_fast(link)?;
        let (conn, theirs) = self.handshake(link, addr).await.map_err(|e| {
            // Learn the ports afresh next time: the peer may have come back with others.
            link.state.borrow_mut().shard_ports = None;
            self.backoff(link, e)
        })?;
        let mux = Rc::new(Mux::new(conn).map_err(|e| unreachable(link.id, addr, &e))?);
        let mut state = link.state.borrow_mut();
        let ports: Vec<u16> = theirs.shard_ports.iter().map(|&p| p as u16).collect();
        if state.shard_ports.as_ref() != Some(&ports) {
            // The peer restarted with other shards: route by what it says now. An op already
            // sent to the wrong shard is still served there (the peer passes it on inside).
            state.conns = (0..ports.len()).map(|_| None).collect();
            state.shard_ports = Some(ports);
        }
        if shard < state.conns.len() {
            state.conns[shard] = Some(mux.clone());
        }
        Ok(mux)
    }

    async fn open_permit<'a>(
        &self,
        link: &'a Link,
    ) -> Result<glommio::sync::Permit<'a>, PeerError> {
        link.opening
            .acquire_permit(1)
            .await
            .map_err(|e| PeerError::Unreachable {
                node: link.id,
                addr: link.addr,
                why: e.to_string(),
            })
    }

    fn fail_fast(&self, link: &Link) -> Result<(), PeerError> {
        match &link.state.borrow().backoff {
            Some((until, e)) if Instant::now() < *until => Err(e.clone()),
            _ => Ok(()),
        }
    }

    fn backoff(&self, link: &Link, e: PeerError) -> PeerError {
        let mut state = link.state.borrow_mut();
        let repeated =
            matches!(&state.backoff, Some((_, last)) if last.to_string() == e.to_string());
        if matches!(e, PeerError::Refused(_)) && !repeated {
            tracing::error!("{e}");
        }
        state.backoff = Some((Instant::now() + RETRY_AFTER, e.clone()));
        e
    }

    /// Connects to `addr` (a wire port of `link`'s node) and exchanges hellos.
    async fn handshake(
        &self,
        link: &Link,
        addr: SocketAddr,
    ) -> Result<(Connection, Hello), PeerError> {
        let (node, timeout) = (link.id, self.timeout);
        let unreachable_ = |e: ClientError| unreachable(node, addr, &e);
        let mut conn = Connection::connect(addr, timeout)
            .await
            .map_err(unreachable_)?;
        let op = Op {
            code: OpCode::OpHello as i32,
            hello: Some(Box::new(self.hello.borrow().clone())),
            ..Op::default()
        };
        let result = conn
            .call(vec![op])
            .await
            .map_err(unreachable_)?
            .pop()
            .unwrap_or_default();
        match result.status() {
            Status::Ok => {}
            Status::Refused => return Err(PeerError::Refused(result.message)),
            other => {
                return Err(PeerError::Unreachable {
                    node,
                    addr,
                    why: format!("handshake answered {other:?}: {}", result.message),
                })
            }
        }
        let theirs = result.hello.unwrap_or_default();
        self.membership
            .borrow()
            .check_hello(&theirs, Some(node))
            .map_err(|why| {
                PeerError::Refused(format!(
                    "node {} refused node {node} at {addr}: {why}",
                    self.membership.borrow().me
                ))
            })?;
        Ok((conn, *theirs))
    }
}

fn unreachable(node: NodeId, addr: SocketAddr, e: &ClientError) -> PeerError {
    PeerError::Unreachable {
        node,
        addr,
        why: e.to_string(),
    }
}
