//! The agreed cluster topology and the one state machine that changes it. Pure: no I/O, no
//! clock, no randomness, so every node that applies the same committed commands in the same
//! order (the topology Raft group, `node::raft`) holds the same [`Topology`].
//!
//! A topology is a member list stamped with an epoch, plus at most one running change:
//!
//! ```text
//! epoch e   stable: members M
//! BeginJoin(n) / BeginLeave(n)      -> epoch e+1: transition from M (old) to M' (new)
//! SourceDone(e+1, s) for each source s (every member of old streamed what it owes)
//! Finish(e+1)                       -> epoch e+2: stable, members M'
//!   or Abort(e+1)                   -> epoch e+2: stable, members M (`kvmesh abort`)
//! ```
//!
//! Only one change runs at a time: a Begin while a transition runs is refused with
//! [`Refused::Busy`], and the caller retries after the running change finished (so two joins
//! started at once both succeed, one after the other). A leave that would leave fewer members
//! than the replication factor is refused unless forced.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use kvmesh_net::ring::NodeId;

/// One member: its id and the address of its wire port (`--advertise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// What a transition changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join(Member),
    Leave(NodeId),
}

/// A running membership change: the ring moves from `old` to `new` once every member of `old`
/// (each one a source of some keys) reported that it streamed what it owes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub change: Change,
    pub old: Vec<Member>,
    pub new: Vec<Member>,
    /// Sources that finished streaming.
    pub done: BTreeSet<NodeId>,
    /// A leave of a node that is down (`kvmesh leave --id`): it counts as done from the start
    /// and streams nothing; its keys stream from their other old owners
    /// (`kvmesh_net::moves::plan_key_without`).
    pub down: bool,
}

/// The id of a cluster bootstrapped with `members`: FNV-1a (64 bits) of `ID=ADDR,` for each, in
/// id order. Stable across builds (it is stored and compared between nodes); 0 is never
/// returned (it means "unknown" in a hello).
pub fn cluster_id(members: &[Member]) -> u64 {
    let mut members = members.to_vec();
    members.sort_by_key(|m| m.id);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for m in &members {
        for byte in format!("{}={},", m.id, m.addr).bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash.max(1)
}

/// The agreed topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// [`cluster_id`] of the bootstrap members; 0 before the first entry.
    pub cluster_id: u64,
    /// Bumped by every applied Begin and Finish; 1 for a cluster formed from `--peers`.
    pub epoch: u64,
    /// The members, in ascending id order. During a transition: the old members.
    pub members: Vec<Member>,
    pub transition: Option<Transition>,
}

/// One entry of the topology log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The first entry of every log: the members of a cluster formed from `--peers`.
    Bootstrap(Vec<Member>),
    /// Start adding `member` to the ring.
    BeginJoin(Member),
    /// Start removing node `id`. `replicas` is the proposer's `--replicas`, carried in the
    /// entry so every node decides the same; `force` allows going below it. `down`: the node
    /// is down (the proposer could not reach it), so it streams nothing; at `replicas` 1 its
    /// keys are lost, which `force` must allow too.
    BeginLeave {
        id: NodeId,
        replicas: u32,
        force: bool,
        down: bool,
    },
    /// Source `node` streamed every key it owes for the transition of `epoch`.
    SourceDone { epoch: u64, node: NodeId },
    /// End the transition of `epoch`: the new ring is the ring.
    Finish { epoch: u64 },
    /// Abort the transition of `epoch`: the old members stay the members (epoch + 1).
    Abort { epoch: u64 },
}

/// What an applied command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The cluster was formed: epoch 1.
    Bootstrapped,
    /// A transition began; the topology is at a new epoch.
    Began,
    /// A source's report was recorded (or it was recorded already). `all_done`: every source
    /// has reported, so the transition may finish.
    SourceDone { all_done: bool },
    /// The transition finished; the topology is at a new epoch.
    Finished,
    /// The transition was aborted; the topology is at a new epoch, with the old members.
    Aborted,
}

/// Why a command changed nothing. Every node refuses the same command the same way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "a membership change is running (epoch {epoch}: {change}); try again after it finished"
    )]
    Busy { epoch: u64, change: String },
    #[error("the topology was bootstrapped already (epoch {0})")]
    Bootstrapped(u64),
    #[error("no bootstrap member list, or one that repeats an id or address")]
    BadBootstrap,
    #[error("node {0} is a member already")]
    AlreadyMember(NodeId),
    #[error("node {id} at {addr}: the address belongs to member {owner}")]
    AddressTaken {
        id: NodeId,
        addr: SocketAddr,
        owner: NodeId,
    },
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error(
        "removing node {id} would leave {left} member(s), fewer than the replication factor \
         {replicas}; give --force to remove it anyway"
    )]
    BelowReplicas {
        id: NodeId,
        left: usize,
        replicas: u32,
    },
    #[error(
        "node {0} is down and is the only owner of its ranges at --replicas 1: its keys are \
         lost; use --force to remove it anyway"
    )]
    KeysLost(NodeId),
    #[error("node {0} is the last member; a cluster cannot remove its last node")]
    LastMember(NodeId),
    #[error("no membership change runs at epoch {asked} (the topology is at epoch {current})")]
    NoSuchTransition { asked: u64, current: u64 },
    #[error("node {0} is not a source of the running change")]
    NotSource(NodeId),
    #[error("the running change waits for sources {0:?} to finish streaming")]
    SourcesPending(Vec<NodeId>),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Join(m) => write!(f, "node {} at {} joins", m.id, m.addr),
            Change::Leave(id) => write!(f, "node {id} leaves"),
        }
    }
}

impl Topology {
    /// The topology before the log's first entry: epoch 0, no members.
    pub fn empty() -> Self {
        Topology {
            cluster_id: 0,
            epoch: 0,
            members: Vec::new(),
            transition: None,
        }
    }

    /// The topology of a cluster formed from `--peers`: epoch 1, no change running.
    #[cfg(test)] // The tests' shorthand; nodes build it by applying the log.
    pub fn initial(members: Vec<Member>) -> Result<Self, Refused> {
        let mut t = Self::empty();
        t.apply(&Command::Bootstrap(members))?;
        Ok(t)
    }

    /// Applies one committed command. A refused command leaves the topology as it was.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, Refused> {
        if let Command::Bootstrap(members) = command {
            if self.epoch != 0 {
                return Err(Refused::Bootstrapped(self.epoch));
            }
            let mut members = members.clone();
            members.sort_by_key(|m| m.id);
            let repeats = members.windows(2).any(|w| w[0].id == w[1].id)
                || (1..members.len())
                    .any(|i| members[..i].iter().any(|m| m.addr == members[i].addr));
            if members.is_empty() || repeats {
                return Err(Refused::BadBootstrap);
            }
            self.cluster_id = cluster_id(&members);
            self.members = members;
            self.epoch = 1;
            return Ok(Applied::Bootstrapped);
        }
        if self.epoch == 0 {
            return Err(Refused::NoSuchTransition {
                asked: 0,
                current: 0,
            });
        }
        match *command {
            Command::Bootstrap(_) => unreachable!("handled above"),
            Command::BeginJoin(member) => {
                self.idle()?;
                if self.member(member.id).is_some() {
                    return Err(Refused::AlreadyMember(member.id));
                }
                if let Some(owner) = self.members.iter().find(|m| m.addr == member.addr) {
                    return Err(Refused::AddressTaken {
                        id: member.id,
                        addr: member.addr,
                        owner: owner.id,
                    });
                }
                let mut new = self.members.clone();
                new.push(member);
                new.sort_by_key(|m| m.id);
                self.begin(Change::Join(member), new);
                Ok(Applied::Began)
            }
            Command::BeginLeave {
                id,
                replicas,
                force,
                down,
            } => {
                self.idle()?;
                if self.member(id).is_none() {
                    return Err(Refused::NotMember(id));
                }
                let left = self.members.len().saturating_sub(1);
                if left == 0 {
                    return Err(Refused::LastMember(id));
                }
                if left < replicas as usize && !force {
                    return Err(Refused::BelowReplicas { id, left, replicas });
                }
                if down && replicas <= 1 && !force {
                    return Err(Refused::KeysLost(id));
                }
                let new = self
                    .members
                    .iter()
                    .copied()
                    .filter(|m| m.id != id)
                    .collect();
                self.begin(Change::Leave(id), new);
                if let Some(t) = self.transition.as_mut().filter(|_| down) {
                    t.down = true;
                    t.done.insert(id);
                }
                Ok(Applied::Began)
            }
            Command::SourceDone { epoch, node } => {
                let transition = self.transition_at(epoch)?;
                if !transition.old.iter().any(|m| m.id == node) {
                    return Err(Refused::NotSource(node));
                }
                transition.done.insert(node);
                let all_done = transition.pending().is_empty();
                Ok(Applied::SourceDone { all_done })
            }
            Command::Finish { epoch } => {
                let pending = self.transition_at(epoch)?.pending();
                if !pending.is_empty() {
                    return Err(Refused::SourcesPending(pending));
                }
                if let Some(transition) = self.transition.take() {
                    self.members = transition.new;
                }
                self.epoch += 1;
                Ok(Applied::Finished)
            }
            Command::Abort { epoch } => {
                self.transition_at(epoch)?;
                self.transition = None;
                self.epoch += 1;
                Ok(Applied::Aborted)
            }
        }
    }

    /// Member `id`, if it is one (during a transition: of the old members).
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.members.iter().copied().find(|m| m.id == id)
    }

    /// The members reads are routed by: the old ring until a transition finishes.
    #[cfg(test)] // Nodes route by `Membership`, built from `members` and the transition.
    pub fn read_members(&self) -> &[Member] {
        &self.members
    }

    /// The new ring's members while a change runs, else the members.
    #[cfg(test)] // Nodes route by `Membership`, built from `members` and the transition.
    pub fn target_members(&self) -> &[Member] {
        self.transition.as_ref().map_or(&self.members, |t| &t.new)
    }

    /// Every node that takes part now: the old members and, during a join, the joining node.
    pub fn all_members(&self) -> Vec<Member> {
        let mut all = self.members.clone();
        if let Some(Transition {
            change: Change::Join(joining),
            ..
        }) = &self.transition
        {
            all.push(*joining);
            all.sort_by_key(|m| m.id);
        }
        all
    }

    /// The epoch to finish, when a change runs and every source reported done.
    pub fn finish_due(&self) -> Option<u64> {
        self.transition
            .as_ref()
            .filter(|t| t.pending().is_empty())
            .map(|_| self.epoch)
    }

    fn idle(&self) -> Result<(), Refused> {
        match &self.transition {
            Some(t) => Err(Refused::Busy {
                epoch: self.epoch,
                change: t.change.to_string(),
            }),
            None => Ok(()),
        }
    }

    fn begin(&mut self, change: Change, new: Vec<Member>) {
        self.transition = Some(Transition {
            change,
            old: self.members.clone(),
            new,
            done: BTreeSet::new(),
            down: false,
        });
        self.epoch += 1;
    }

    fn transition_at(&mut self, epoch: u64) -> Result<&mut Transition, Refused> {
        let current = self.epoch;
        match &mut self.transition {
            Some(t) if epoch == current => Ok(t),
            _ => Err(Refused::NoSuchTransition {
                asked: epoch,
                current,
            }),
        }
    }
}

impl Transition {
    /// The old members that are down and take no part ([`Transition::down`]): nothing is
    /// streamed from them and no one waits for them.
    pub fn down_nodes(&self) -> Vec<NodeId> {
        match self.change {
            Change::Leave(id) if self.down => vec![id],
            _ => Vec::new(),
        }
    }

    /// Sources that have not reported yet, in id order.
    pub fn pending(&self) -> Vec<NodeId> {
        self.old
            .iter()
            .map(|m| m.id)
            .filter(|id| !self.done.contains(id))
            .collect()
    }
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
