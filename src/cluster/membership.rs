//! One shard's view of the member list, and the handshake's checks. Pure: no sockets, no clock.
//!
//! Every node of a cluster is first started with the same `--peers ID=HOST:PORT,...` list
//! (itself included) and the same `--cluster NAME`; from then on the list follows the agreed
//! topology ([`Membership::with_topology`]), stamped with its epoch. Two nodes talk only after a handshake
//! (`OP_HELLO`) in which each shows the other its cluster name, id, address, shard ports, member
//! list and protocol version; [`Membership::check_hello`] says exactly why a peer is refused.

use std::net::{SocketAddr, ToSocketAddrs};

use kvmesh_net::ring::{NodeId, Ring};
use kvmesh_proto::wire::{Hello, Member, Topology};

/// The version of the node-to-node protocol; a peer speaking another is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The cluster name when `--cluster` is not given.
pub const DEFAULT_CLUSTER: &str = "kvmesh";

/// Who is in the cluster and which node this is.
#[derive(Clone, Debug)]
pub struct Membership {
    /// `--cluster`: peers with another name are refused.
    pub cluster: String,
    /// This node's id.
    pub me: NodeId,
    /// `--advertise`: the address peers and clients reach this node's wire port at.
    pub advertise: SocketAddr,
    /// Every member, this node included, in ascending id order.
    pub members: Vec<(NodeId, SocketAddr)>,
    /// The epoch of the agreed topology this list comes from; 0 when the node runs no topology
    /// Raft group (a node alone), and until its group has applied the first entry.
    pub epoch: u64,
    /// The cluster's id (`topology::cluster_id`): from `--peers` at start, from the agreed
    /// topology once applied; 0 while unknown (a node alone, or started with `--join`).
    pub cluster_id: u64,
    ring: Ring,
    /// During a membership change: the ring it moves to. Writes go to the owners under both
    /// rings; reads use `ring` until the change finishes.
    pending: Option<Ring>,
    /// Every node taking part, this one included: the members and a joining node.
    all: Vec<(NodeId, SocketAddr)>,
}

impl Membership {
    /// A cluster of `members` (this node, `me`, among them), or why the list cannot work.
    pub fn new(
        cluster: &str,
        me: NodeId,
        advertise: SocketAddr,
        mut members: Vec<(NodeId, SocketAddr)>,
    ) -> Result<Self, String> {
        if cluster.is_empty() {
            return Err("--cluster must not be empty".into());
        }
        members.sort_by_key(|m| m.0);
        if let Some(w) = members.windows(2).find(|w| w[0].1 == w[1].1) {
            return Err(format!(
                "--peers gives nodes {} and {} the same address {}",
                w[0].0, w[1].0, w[0].1
            ));
        }
        let ids: Vec<NodeId> = members.iter().map(|m| m.0).collect();
        let ring = Ring::new(&ids).map_err(|e| format!("--peers: {e}"))?;
        match members.iter().find(|m| m.0 == me) {
            None => {
                return Err(format!(
                "--peers does not list this node's id {me}: list every member, this node included"
            ))
            }
            Some(&(_, addr)) if addr != advertise => {
                return Err(format!(
                "--peers gives this node ({me}) the address {addr}, but it advertises {advertise} \
                     (--advertise, default --listen): they must agree"
            ))
            }
            Some(_) => {}
        }
        let cluster_id = match members.len() {
            0 | 1 => 0,
            _ => super::topology::cluster_id(
                &members
                    .iter()
                    .map(|&(id, addr)| super::topology::Member { id, addr })
                    .collect::<Vec<_>>(),
            ),
        };
        Ok(Self {
            cluster: cluster.to_string(),
            me,
            advertise,
            cluster_id,
            all: members.clone(),
            members,
            epoch: 0,
            ring,
            pending: None,
        })
    }

    /// This node's view of an agreed topology (`node::raft`), or of the member list a cluster
    /// answered a join with (`epoch` 0). This node need not be a member: a joining node routes
    /// by the members' ring until its join finishes.
    pub fn with_topology(
        &self,
        topology: &super::topology::Topology,
    ) -> Result<Membership, String> {
        let pairs = |ms: &[super::topology::Member]| -> Vec<(NodeId, SocketAddr)> {
            ms.iter().map(|m| (m.id, m.addr)).collect()
        };
        let members = pairs(&topology.members);
        let ids: Vec<NodeId> = members.iter().map(|m| m.0).collect();
        let ring = Ring::new(&ids).map_err(|e| format!("epoch {}: {e}", topology.epoch))?;
        let pending = match &topology.transition {
            None => None,
            Some(t) => {
                let ids: Vec<NodeId> = t.new.iter().map(|m| m.id).collect();
                Some(Ring::new(&ids).map_err(|e| format!("epoch {}: {e}", topology.epoch))?)
            }
        };
        let mut all = pairs(&topology.all_members());
        if !all.iter().any(|m| m.0 == self.me) {
            all.push((self.me, self.advertise));
            all.sort_by_key(|m| m.0);
        }
        Ok(Membership {
            cluster: self.cluster.clone(),
            me: self.me,
            advertise: self.advertise,
            members,
            epoch: topology.epoch,
            cluster_id: match topology.cluster_id {
                0 => self.cluster_id,
                id => id,
            },
            ring,
            pending,
            all,
        })
    }

    /// The ring a running membership change moves to.
    pub fn pending_ring(&self) -> Option<&Ring> {
        self.pending.as_ref()
    }

    /// Whether this node is one of the members (a joining node is not, until its join
    /// finishes).
    pub fn is_member(&self) -> bool {
        self.members.iter().any(|m| m.0 == self.me)
    }

    /// A cluster of this node alone.
    #[cfg(test)]
    pub fn single(me: NodeId, advertise: SocketAddr) -> Self {
        Self::new(DEFAULT_CLUSTER, me, advertise, vec![(me, advertise)])
            .expect("a one-member list is valid")
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn is_multi_node(&self) -> bool {
        self.members.len() > 1
    }

    /// The address the member list gives node `id` (a joining node's included).
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.all.iter().find(|m| m.0 == id).map(|m| m.1)
    }

    /// The other nodes taking part: the other members, and a joining node.
    pub fn peers(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.all.iter().copied().filter(|m| m.0 != self.me)
    }

    /// The member list as the wire protocol carries it.
    pub fn wire_members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|&(id, addr)| Member {
                id,
                addr: addr.to_string(),
            })
            .collect()
    }

    /// What this node says about itself in a handshake.
    pub fn hello(&self, topology: &Topology) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            node_id: self.me,
            addr: self.advertise.to_string(),
            shards: topology.shards,
            shard_ports: topology.shard_ports.clone(),
            members: self.wire_members(),
            epoch: self.epoch,
            stream: false,
            cluster_id: self.cluster_id,
        }
    }

    /// Why `hello` is not a peer this node may talk to, if it is not. `expected` is the id the
    /// caller dialed (when this node is the one connecting).
    pub fn check_hello(&self, hello: &Hello, expected: Option<NodeId>) -> Result<(), String> {
        self.check_identity(hello, expected)?;
        self.check_listed(hello)
    }

    /// Why `hello` is not a node of this cluster that this node may stream to or from, if it
    /// is not: protocol version, cluster name, the id dialed (`expected`), not this node, shard
    /// ports that match its shard count. The member lists are not compared: during a
    /// membership change they legitimately differ.
    pub fn check_identity(&self, hello: &Hello, expected: Option<NodeId>) -> Result<(), String> {
        let who = format!("node {} at {}", hello.node_id, hello.addr);
        let me = self.me;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "{who} speaks protocol version {}, node {me} speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ));
        }
        if hello.cluster != self.cluster {
            return Err(format!(
                "{who} is in cluster {:?}, node {me} is in cluster {:?} (--cluster)",
                hello.cluster, self.cluster
            ));
        }
        if hello.cluster_id != 0 && self.cluster_id != 0 && hello.cluster_id != self.cluster_id {
            return Err(format!(
                "{who} is in another cluster named {:?}: it was bootstrapped apart from node \
                 {me}'s (cluster id {:#018x}, not {:#018x}); start it with --join, or with an \
                 empty data directory and this cluster's --peers",
                self.cluster, hello.cluster_id, self.cluster_id
            ));
        }
        if let Some(expected) = expected {
            if hello.node_id != expected {
                return Err(format!(
                    "the member list gives {} as node {expected}, but the node there says it is \
                     node {}",
                    self.addr_of(expected).map_or("?".into(), |a| a.to_string()),
                    hello.node_id
                ));
            }
        }
        if hello.node_id == self.me {
            return Err(format!(
                "{who} has the id of node {me} itself (at {})",
                self.advertise
            ));
        }
        check_ports(hello, &who)
    }

    /// Why `hello`'s node is not in this node's member list as it says, if it is not.
    fn check_listed(&self, hello: &Hello) -> Result<(), String> {
        let who = format!("node {} at {}", hello.node_id, hello.addr);
        let me = self.me;
        // With an agreed topology, member lists change by themselves and a node that is
        // joining is not listed yet: the topology group, not the handshake, decides who is in.
        let agreed = self.epoch > 0 || hello.epoch > 0;
        let Some(listed) = self.addr_of(hello.node_id) else {
            if agreed {
                return Ok(());
            }
            return Err(format!(
                "{who} is not in node {me}'s member list (--peers {})",
                peers_flag(&self.members)
            ));
        };
        if hello.addr != listed.to_string() {
            return Err(format!(
                "{who}: the member list gives node {} the address {listed}",
                hello.node_id
            ));
        }
        if !agreed && hello.members != self.wire_members() {
            let theirs: Vec<String> = hello
                .members
                .iter()
                .map(|m| format!("{}={}", m.id, m.addr))
                .collect();
            return Err(format!(
                "{who} has another member list (--peers {}; node {me} has --peers {})",
                theirs.join(","),
                peers_flag(&self.members)
            ));
        }
        Ok(())
    }
}

fn check_ports(hello: &Hello, who: &str) -> Result<(), String> {
    if hello.shards == 0 || hello.shard_ports.len() != hello.shards as usize {
        return Err(format!(
            "{who} reports {} shards but {} shard ports",
            hello.shards,
            hello.shard_ports.len()
        ));
    }
    Ok(())
}

/// `--peers` as it would be written for `members`.
pub fn peers_flag(members: &[(NodeId, SocketAddr)]) -> String {
    let parts: Vec<String> = members.iter().map(|(id, a)| format!("{id}={a}")).collect();
    parts.join(",")
}

/// Parses `--peers ID=HOST:PORT,...` (host names are resolved once, here).
pub fn parse_peers(text: &str) -> Result<Vec<(NodeId, SocketAddr)>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("--peers entry {part:?} is not ID=HOST:PORT"))?;
            let id: NodeId = id
                .parse()
                .map_err(|e| format!("--peers entry {part:?}: bad node id: {e}"))?;
            let addr = addr
                .to_socket_addrs()
                .map_err(|e| format!("--peers entry {part:?}: bad address: {e}"))?
                .next()
                .ok_or_else(|| {
                    format!("--peers entry {part:?}: the address resolves to nothing")
                })?;
            Ok((id, addr))
        })
        .collect()
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
