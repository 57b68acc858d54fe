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
//! alike and a node that joins later learns the whole history by replaying it. Once a state is
//! stored, it is authoritative. Every applied entry is sent to the node's other shards over the
//! channel mesh (see [`super::mesh::Envelope::Topology`]), so each shard's
//! `ctx.peers.membership()` carries the agreed epoch.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{ClusterTopology, Op, OpCode, OpResult, Status};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RawNode, StateRole, Storage};

use crate::cluster::raft_state::{self, Stored};
use crate::cluster::topology::{Command, Member, Topology};
use crate::cluster::topology_wire::{decode_command, encode_command, topology_to_wire};
use crate::cluster::Peers;

use super::reply;

/// One Raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the driver looks for messages to step and `Ready`s to handle between ticks.
const POLL: Duration = Duration::from_millis(5);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;

/// Shard 0's handle on the topology Raft group.
pub struct RaftDriver {
    dir: PathBuf,
    node: RefCell<RawNode<MemStorage>>,
    topology: RefCell<Topology>,
    peers: Rc<Peers>,
    /// Called with every topology the group applies (it tells the other shards).
    publish: Box<dyn Fn(&ClusterTopology)>,
    leader: Cell<u64>,
    /// Messages received and peers found unreachable since the last poll: stepped by the
    /// run loop, so nothing else ever borrows `node` while a `Ready` is handled.
    inbox: RefCell<Vec<Message>>,
    unreachable: RefCell<Vec<u64>>,
    /// The index of the last entry applied to `topology`.
    applied_index: Cell<u64>,
    /// Set when the state could not be written: the driver stops rather than break Raft's
    /// promises, and says so.
    failed: Cell<bool>,
}

#[allow(dead_code)] // Join and leave (the next step) use the rest.
impl RaftDriver {
    /// Opens the group stored in `dir`, or bootstraps it from `members` (`--peers`) when none
    /// is stored. Says why when the stored state is unreadable.
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
            None => {
                let stored = bootstrap(members);
                raft_state::save(&dir, &stored).map_err(|e| e.to_string())?;
                stored
            }
        };
        let storage = MemStorage::new();
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
            applied_index: Cell::new(stored.applied),
            failed: Cell::new(false),
        });
        (driver.publish)(&topology_to_wire(&driver.topology.borrow()));
        Ok(driver)
    }

    /// The topology this node has applied.
    pub fn topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    /// The leader this node knows of, 0 when none.
    pub fn leader(&self) -> NodeId {
        self.leader.get() as NodeId
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
        self.inbox.borrow_mut().push(message);
        OpResult::default()
    }

    /// Proposes `command` (forwarded to the leader by Raft). Whether it is applied shows in
    /// [`RaftDriver::topology`]; a proposal can be lost (no leader yet, a leader change), so
    /// callers watch for its effect and propose again.
    pub fn propose(&self, command: &Command) -> Result<(), String> {
        self.node
            .try_borrow_mut()
            .map_err(|_| "the topology Raft group is busy; try again".to_string())?
            .propose(Vec::new(), encode_command(command))
            .map_err(|e| format!("topology proposal refused: {e}"))
    }

    /// Ticks the group and handles its `Ready`s until the node stops.
    pub async fn run(self: Rc<Self>) {
        let mut last_tick = Instant::now();
        while !self.failed.get() {
            glommio::timer::sleep(POLL).await;
            {
                let mut node = self.node.borrow_mut();
                for to in self.unreachable.take() {
                    node.report_unreachable(to);
                }
                for message in self.inbox.take() {
                    // A message from a stale term or an unknown node is dropped by Raft.
                    if let Err(e) = node.step(message) {
                        tracing::debug!("topology: a Raft message was not stepped: {e}");
                    }
                }
                if last_tick.elapsed() >= TICK {
                    last_tick = Instant::now();
                    node.tick();
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
        let mut changed = false;
        changed |= self.apply(ready.take_committed_entries());
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
        changed |= self.apply(light.take_committed_entries());
        node.advance_apply();
        if changed {
            self.persist(&node)?;
        }
        Ok(())
    }

    /// Applies committed entries to the topology, publishing each new one. Returns whether
    /// anything was applied.
    fn apply(&self, entries: Vec<Entry>) -> bool {
        let applied = !entries.is_empty();
        for entry in entries {
            match entry.entry_type {
                EntryType::EntryNormal if entry.data.is_empty() => {} // a new leader's entry
                EntryType::EntryNormal => self.apply_command(&entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    tracing::warn!(
                        "topology: ignored a Raft configuration change at index {}",
                        entry.index
                    );
                }
            }
            self.applied_index.set(entry.index);
        }
        applied
    }

    fn apply_command(&self, entry: &Entry) {
        let command = match decode_command(&entry.data) {
            Ok(command) => command,
            Err(e) => {
                tracing::error!("topology: entry {} does not decode: {e}", entry.index);
                return;
            }
        };
        let mut topology = self.topology.borrow_mut();
        match topology.apply(&command) {
            Ok(applied) => {
                tracing::info!(
                    "topology: applied {command:?} at index {}: {applied:?}, epoch {}",
                    entry.index,
                    topology.epoch
                );
                (self.publish)(&topology_to_wire(&topology));
            }
            Err(refused) => tracing::info!(
                "topology: entry {} ({command:?}) changes nothing: {refused}",
                entry.index
            ),
        }
    }

    fn persist(&self, node: &RawNode<MemStorage>) -> Result<(), String> {
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
                if driver.peers.wait(sent).await.is_err() {
                    driver.unreachable.borrow_mut().push(to);
                }
            })
            .detach();
        }
    }
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
    }
}
