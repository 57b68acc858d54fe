//! The topology Raft group's driver: runs on shard 0 of every member of a multi-node cluster.
//!
//! tikv's `raft` crate is sans-IO; this module gives it a clock, a disk and a network:
//!
//! - **clock**: a glommio timer ticks the group every [`TICK`] (an election after 10 to 20
//!   ticks without a leader, heartbeats every 2), and looks for work every [`POLL`];
//! - **disk**: after every `Ready` that changed anything, the hard state, conf state, entries
//!   and applied topology are rewritten to `DATA_DIR/topology.raft` (`cluster::raft_state`)
//!   before any message that depends on them is sent. The write is a plain blocking
//!   write-fsync-rename of a file of a few KiB, on shard 0's thread: topology changes are rare;
//! - **network**: each Raft message travels as one `OP_RAFT` op (`Op.value`, protobuf encoded)
//!   to shard 0 of its member over the shard's peer connections, fire and forget: Raft
//!   retransmits what is lost.
//!
//! At first start every member of `--peers` bootstraps the same state: voters = the member
//! ids, and one committed entry at index 1, term 1, `Bootstrap(members)`, so every log begins
//! alike and a node that joins later learns the whole history by replaying it, or, once the
//! log was compacted (at every applied `Finish`, see `raft/storage.rs`), from a Raft snapshot
//! whose data is the encoded topology, then the entries after it. Once a state is
//! stored, it is authoritative. Every applied entry is sent to the node's other shards over the
//! channel mesh (see [`super::mesh::Envelope::Topology`]), so each shard's
//! `ctx.peers.membership()` carries the agreed epoch.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{ClusterTopology, Op, OpCode, OpResult, Status};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use raft::{GetEntriesContext, RawNode, StateRole, Storage};

use crate::cluster::raft_state::{self, Stored};
use crate::cluster::topology::{Applied, Change, Command, Member, Refused, Topology};
use crate::cluster::topology_wire::{
    decode_command, encode_command, topology_from_wire, topology_to_wire,
};
use crate::cluster::Peers;
use prost::Message as _;

use super::reply;

mod apply;
pub mod bootstrap_guard;
mod guards;
mod storage;
mod voters;

use storage::{Latest, TopologyStorage};

use guards::unsteppable;
use voters::adopt_bootstrap_voters;

/// One Raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// What a node whose topology log was lost says (see [`RaftDriver::run`]).
pub const LOST_LOG: &str = "this node's data directory is empty but the cluster exists: \
                            start it with --join (after removing it with `kvmesh leave`)";
/// How often the driver looks for messages to step and `Ready`s to handle between ticks.
const POLL: Duration = Duration::from_millis(5);
const ELECTION_TICKS: usize = 10;
/// How long a node that left stays in the Raft group at most, when it does not catch up.
const LEFT_NODE_GRACE: Duration = Duration::from_secs(10);
const HEARTBEAT_TICKS: usize = 2;

/// Shard 0's handle on the topology Raft group.
pub struct RaftDriver {
    dir: PathBuf,
    node: RefCell<RawNode<TopologyStorage>>,
    topology: RefCell<Topology>,
    peers: Rc<Peers>,
    /// Called with every topology the group applies (it tells the other shards).
    publish: Box<dyn Fn(&ClusterTopology)>,
    leader: Cell<u64>,
    /// Messages received and peers found unreachable since the last poll: stepped by the
    /// run loop, so nothing else ever borrows `node` while a `Ready` is handled.
    inbox: RefCell<Vec<Message>>,
    unreachable: RefCell<Vec<u64>>,
    /// The latest proposals the state machine refused, by the nonce their entry carries
    /// (its Raft context), and why: how a node that proposed one learns its answer. A nonce
    /// is drawn per request ([`RaftDriver::nonce`]), so an old refusal of the same command
    /// never answers a later request.
    refusals: RefCell<Vec<(u64, Refused)>>,
    /// The next nonce: starts from the clock, so it does not repeat across restarts.
    next_nonce: Cell<u64>,
    /// When the leader last proposed a change of the Raft voters (see `reconcile_voters`).
    last_conf_proposal: Cell<Option<Instant>>,
    /// The index of the last applied `Finish` or `Abort` (or installed snapshot), and when it
    /// was applied here (at a restart: when the node started, found from the stored log, so a
    /// restarted leader still gives a node that left, or a joiner aborted, time to learn it).
    finished: Cell<Option<(u64, Instant)>>,
    /// When this node, which left, last asked to hand over the leadership.
    last_transfer: Cell<Option<Instant>>,
    /// The index of the last entry applied to `topology`.
    applied_index: Cell<u64>,
    /// The epoch of the last change this node applied an `Abort` of since it started (0:
    /// none): how a repeated `OP_ABORT` learns it succeeded already.
    aborted: Cell<u64>,
    /// Set when the state could not be written: the driver stops rather than break Raft's
    /// promises, and says so.
    failed: Cell<bool>,
    /// The nodes whose messages this node accepted since it started (see
    /// `Topology.raft_heard`).
    heard: RefCell<std::collections::BTreeSet<NodeId>>,
}

impl RaftDriver {
    /// Opens the group stored in `dir`, or bootstraps it from `members` (`--peers`) when none
    /// is stored; with no `members` (a node started with `--join`), starts empty and learns
    /// everything from the leader once it is added. Says why when the stored state is
    /// unreadable.
    pub fn open(
        me: NodeId,
        dir: PathBuf,
        members: &[Member],
        peers: Rc<Peers>,
        publish: Box<dyn Fn(&ClusterTopology)>,
    ) -> Result<Rc<Self>, String> {
        let stored = match raft_state::load(&dir).map_err(|e| e.to_string())? {
            Some(stored) => {
                tracing::info!(
                    "topology: restored epoch {} ({} member(s), applied index {}) from {}",
                    stored.topology.epoch,
                    stored.topology.members.len(),
                    stored.applied,
                    dir.join(raft_state::FILE_NAME).display()
                );
                stored
            }
            None if members.is_empty() => Stored {
                hard_state: HardState::default(),
                conf_state: ConfState::default(),
                entries: Vec::new(),
                topology: Topology::empty(),
                applied: 0,
                snapshot: None,
            },
            None => {
                let stored = bootstrap(members);
                raft_state::save(&dir, &stored).map_err(|e| e.to_string())?;
                stored
            }
        };
        let storage = TopologyStorage::new();
        if let Some(snapshot) = stored.snapshot.clone() {
            storage.install(snapshot)?;
        }
        {
            let mut core = storage.wl();
            core.set_conf_state(stored.conf_state.clone());
            core.append(&stored.entries)
                .map_err(|e| format!("topology log: {e}"))?;
            core.set_hardstate(stored.hard_state.clone());
        }
        let config = raft::Config {
            id: u64::from(me),
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied: stored.applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 64,
            pre_vote: true,
            check_quorum: true,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config, storage, &logger)
            .map_err(|e| format!("topology Raft group: {e}"))?;
        let driver = Rc::new(RaftDriver {
            dir,
            node: RefCell::new(node),
            topology: RefCell::new(stored.topology),
            peers,
            publish,
            leader: Cell::new(0),
            inbox: RefCell::default(),
            unreachable: RefCell::default(),
            refusals: RefCell::default(),
            next_nonce: Cell::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1,
            ),
            last_conf_proposal: Cell::new(None),
            // The log is compacted at a `Finish` (up to the applied index then, so at about it).
            finished: Cell::new(
                last_finish(&stored.entries, stored.applied)
                    .or(stored.snapshot.as_ref().map(|s| s.get_metadata().index))
                    .map(|i| (i, Instant::now())),
            ),
            last_transfer: Cell::new(None),
            applied_index: Cell::new(stored.applied),
            aborted: Cell::new(0),
            failed: Cell::new(false),
            heard: RefCell::default(),
        });
        (driver.publish)(&topology_to_wire(&driver.topology.borrow()));
        driver.note_latest(&driver.node.borrow());
        Ok(driver)
    }

    /// The topology this node has applied.
    pub fn topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    /// The epoch of the last change whose `Abort` this node applied since it started; 0: none.
    pub fn last_aborted(&self) -> u64 {
        self.aborted.get()
    }

    /// Whether this node leads the topology group now.
    pub fn is_leader(&self) -> bool {
        self.node
            .try_borrow()
            .is_ok_and(|n| n.raft.state == StateRole::Leader)
    }

    /// A nonce for one request's proposals (see [`RaftDriver::propose`]); never 0.
    pub fn nonce(&self) -> u64 {
        let nonce = self.next_nonce.get();
        self.next_nonce.set(nonce.wrapping_add(2));
        nonce
    }

    /// Why the state machine refused the proposal made with `nonce`, if it refused it lately.
    pub fn refusal(&self, nonce: u64) -> Option<Refused> {
        self.refusals
            .borrow()
            .iter()
            .rev()
            .find(|(n, _)| *n == nonce)
            .map(|(_, r)| r.clone())
    }

    /// Answers an `OP_RAFT` op: steps its message into the group.
    pub fn receive(&self, bytes: &[u8]) -> OpResult {
        let message = match Message::parse_from_bytes(bytes) {
            Ok(message) => message,
            Err(e) => {
                return reply::status(
                    Status::InvalidArgument,
                    format!("OP_RAFT: not a Raft message: {e}"),
                )
            }
        };
        if let Err((status, why)) = self.check_sender(&message) {
            tracing::warn!("topology: refused a Raft message: {why}");
            return OpResult {
                moved_epoch: self.topology.borrow().epoch,
                ..reply::status(status, format!("OP_RAFT: {why}"))
            };
        }
        if let Ok(from) = NodeId::try_from(message.from) {
            self.heard.borrow_mut().insert(from);
        }
        self.inbox.borrow_mut().push(message);
        OpResult::default()
    }

    /// The nodes whose Raft messages this node accepted since it started, in id order.
    pub fn heard_from(&self) -> Vec<NodeId> {
        self.heard.borrow().iter().copied().collect()
    }

    /// Why `message` may not be stepped into this node's group, if it may not: it must be
    /// addressed to this node and come from a node that takes part (a member, the joining
    /// node, or a node still in the Raft configuration); a node that knows no topology yet (it
    /// was started with `--join`) hears from anyone that passed the peer handshake. A node
    /// that takes no part is answered `STATUS_REMOVED` (it was removed, for example while it
    /// was down, and comes back with its old topology: see [`RaftDriver::removed`]).
    fn check_sender(&self, message: &Message) -> Result<(), (Status, String)> {
        let me = self.node.try_borrow().map(|n| n.raft.id).ok();
        let me = me.unwrap_or(u64::from(self.peers.membership().me));
        let refused = |why| Err((Status::Refused, why));
        if message.to != me {
            return refused(format!("addressed to node {}, not node {me}", message.to));
        }
        if message.from == 0 || message.from == me {
            return refused(format!("from node {}, which is not a peer", message.from));
        }
        let topology = self.topology.borrow();
        if topology.epoch == 0 {
            return Ok(());
        }
        let known = topology
            .all_members()
            .iter()
            .chain(topology.transition.iter().flat_map(|t| t.old.iter()))
            .any(|m| u64::from(m.id) == message.from)
            || self.node.try_borrow().is_ok_and(|n| {
                let cs = n.raft.prs().conf();
                cs.voters().contains(message.from) || cs.learners().contains(&message.from)
            });
        if known {
            Ok(())
        } else {
            let why = format!(
                "from node {}, which takes no part in the cluster (epoch {}): it was removed",
                message.from, topology.epoch
            );
            Err((Status::Removed, why))
        }
    }

    /// Proposes `command` (forwarded to the leader by Raft). Whether it is applied shows in
    /// [`RaftDriver::topology`]; a proposal can be lost (no leader yet, a leader change), so
    /// callers watch for its effect and propose again. `nonce` (0: none), carried in the
    /// entry's context, is how a refusal finds its way back ([`RaftDriver::refusal`]).
    pub fn propose(&self, command: &Command, nonce: u64) -> Result<(), String> {
        let context = if nonce == 0 {
            Vec::new()
        } else {
            nonce.to_be_bytes().to_vec()
        };
        self.node
            .try_borrow_mut()
            .map_err(|_| "the topology Raft group is busy; try again".to_string())?
            .propose(context, encode_command(command))
            .map_err(|e| format!("topology proposal refused: {e}"))
    }

    /// Ticks the group and handles its `Ready`s until the node stops.
    ///
    /// A message raft-rs would abort on (it treats them as impossible) is dropped first (see
    /// [`unsteppable`]). One of them has an ordinary cause: a leader's heartbeat that says
    /// this node holds entries it does not, because its data directory was wiped and it
    /// bootstrapped again from `--peers`. Such a node must not vote with a blank memory: it
    /// stops the group, logs [`LOST_LOG`] and asks the node to stop (`stop`).
    pub async fn run(self: Rc<Self>, stop: Arc<AtomicBool>) {
        let mut last_tick = Instant::now();
        while !self.failed.get() {
            glommio::timer::sleep(POLL).await;
            {
                let mut node = self.node.borrow_mut();
                for to in self.unreachable.take() {
                    node.report_unreachable(to);
                }
                for message in self.inbox.take() {
                    if let Some(why) = unsteppable(&node, &message) {
                        if message.get_msg_type() == MessageType::MsgHeartbeat
                            && node.raft.raft_log.last_index() <= 1
                        {
                            tracing::error!("topology: {LOST_LOG} (node {} {why})", message.from);
                            self.failed.set(true);
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                        tracing::warn!(
                            "topology: dropped a {:?} from node {}: {why}",
                            message.get_msg_type(),
                            message.from
                        );
                        continue;
                    }
                    // A message from a stale term or an unknown node is dropped by Raft.
                    if let Err(e) = node.step(message) {
                        tracing::debug!("topology: a Raft message was not stepped: {e}");
                    }
                }
                if last_tick.elapsed() >= TICK {
                    last_tick = Instant::now();
                    node.tick();
                    self.hand_over_if_left(&mut node);
                    self.reconcile_voters(&mut node);
                }
            }
            if let Err(e) = self.handle_ready() {
                tracing::error!(
                    "topology: {e}; this node's topology Raft group stops (restart the node)"
                );
                self.failed.set(true);
            }
        }
    }

    /// One round of raft-rs's `Ready` protocol: send, apply, persist, then send what needed
    /// the persisted state.
    fn handle_ready(self: &Rc<Self>) -> Result<(), String> {
        let mut node = self.node.borrow_mut();
        if !node.has_ready() {
            return Ok(());
        }
        let mut ready = node.ready();
        let mut changed = false;
        if !ready.snapshot().is_empty() {
            self.install(&mut node, ready.snapshot().clone())?;
            changed = true;
        }
        if let Some(soft) = ready.ss() {
            if soft.leader_id != self.leader.get() {
                self.leader.set(soft.leader_id);
                let role = if soft.raft_state == StateRole::Leader {
                    " (this node)"
                } else {
                    ""
                };
                tracing::info!("topology: the leader is node {}{role}", soft.leader_id);
            }
        }
        self.send(ready.take_messages());
        changed |= self.apply(&mut node, ready.take_committed_entries());
        if !ready.entries().is_empty() {
            node.mut_store()
                .wl()
                .append(ready.entries())
                .map_err(|e| format!("appending to the topology log: {e}"))?;
            changed = true;
        }
        if let Some(hs) = ready.hs() {
            node.mut_store().wl().set_hardstate(hs.clone());
            changed = true;
        }
        if changed {
            self.persist(&node)?;
        }
        self.send(ready.take_persisted_messages());
        let mut light = node.advance(ready);
        let mut changed = false;
        if let Some(commit) = light.commit_index() {
            node.mut_store().wl().mut_hard_state().commit = commit;
            changed = true;
        }
        self.send(light.take_messages());
        changed |= self.apply(&mut node, light.take_committed_entries());
        node.advance_apply();
        if changed {
            self.persist(&node)?;
        }
        Ok(())
    }

    fn persist(&self, node: &RawNode<TopologyStorage>) -> Result<(), String> {
        let store = node.store();
        let state = store.initial_state().map_err(|e| e.to_string())?;
        let (first, last) = (
            store.first_index().map_err(|e| e.to_string())?,
            store.last_index().map_err(|e| e.to_string())?,
        );
        let entries = if last >= first {
            store
                .entries(first, last + 1, None, GetEntriesContext::empty(false))
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let stored = Stored {
            hard_state: state.hard_state,
            conf_state: state.conf_state,
            entries,
            topology: self.topology.borrow().clone(),
            applied: self.applied_index.get(),
            snapshot: store.compacted(),
        };
        raft_state::save(&self.dir, &stored).map_err(|e| e.to_string())
    }

    /// Sends each message to shard 0 of its member, in the background.
    fn send(self: &Rc<Self>, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            let Ok(bytes) = message.write_to_bytes() else {
                continue;
            };
            let op = Op {
                code: OpCode::OpRaft as i32,
                value: bytes,
                ..Op::default()
            };
            let driver = self.clone();
            glommio::spawn_local(async move {
                let sent = driver.peers.send_to_shard(to as NodeId, 0, vec![op]).await;
                match driver.peers.wait(sent).await {
                    Err(_) => driver.unreachable.borrow_mut().push(to),
                    Ok(results) => {
                        if let Some(r) = results.first().filter(|r| r.status() == Status::Removed) {
                            driver.removed(to, r);
                        }
                    }
                }
            })
            .detach();
        }
    }
}

/// The index of the last `Finish` or `Abort` among `entries` applied (at or below `applied`).
fn last_finish(entries: &[Entry], applied: u64) -> Option<u64> {
    entries
        .iter()
        .rev()
        .filter(|e| e.index <= applied && e.entry_type == EntryType::EntryNormal)
        .find(|e| {
            matches!(
                decode_command(&e.data),
                Ok(Command::Finish { .. } | Command::Abort { .. })
            )
        })
        .map(|e| e.index)
}

/// The state every member of `--peers` starts from (see the module docs).
fn bootstrap(members: &[Member]) -> Stored {
    let conf_state = ConfState {
        voters: members.iter().map(|m| u64::from(m.id)).collect(),
        ..ConfState::default()
    };
    let entry = Entry {
        entry_type: EntryType::EntryNormal,
        term: 1,
        index: 1,
        data: encode_command(&Command::Bootstrap(members.to_vec())).into(),
        ..Entry::default()
    };
    let hard_state = HardState {
        term: 1,
        commit: 1,
        ..HardState::default()
    };
    Stored {
        hard_state,
        conf_state,
        entries: vec![entry],
        topology: Topology::empty(),
        applied: 0,
        snapshot: None,
    }
}
