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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{ClusterTopology, Op, OpCode, OpResult, Status};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType,
};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RawNode, StateRole, Storage};

use crate::cluster::raft_state::{self, Stored};
use crate::cluster::topology::{Applied, Change, Command, Member, Refused, Topology};
use crate::cluster::topology_wire::{decode_command, encode_command, topology_to_wire};
use crate::cluster::Peers;

use super::reply;

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
    /// The latest proposals the state machine refused, by the nonce their entry carries
    /// (its Raft context), and why: how a node that proposed one learns its answer. A nonce
    /// is drawn per request ([`RaftDriver::nonce`]), so an old refusal of the same command
    /// never answers a later request.
    refusals: RefCell<Vec<(u64, Refused)>>,
    /// The next nonce: starts from the clock, so it does not repeat across restarts.
    next_nonce: Cell<u64>,
    /// When the leader last proposed a change of the Raft voters (see `reconcile_voters`).
    last_conf_proposal: Cell<Option<Instant>>,
    /// The index of the last applied `Finish`, and when it was applied here (at a restart:
    /// when the node started, found from the stored log, so a restarted leader still gives a
    /// node that left time to learn it left).
    finished: Cell<Option<(u64, Instant)>>,
    /// When this node, which left, last asked to hand over the leadership.
    last_transfer: Cell<Option<Instant>>,
    /// The index of the last entry applied to `topology`.
    applied_index: Cell<u64>,
    /// Set when the state could not be written: the driver stops rather than break Raft's
    /// promises, and says so.
    failed: Cell<bool>,
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
            },
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
            refusals: RefCell::default(),
            next_nonce: Cell::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1,
            ),
            last_conf_proposal: Cell::new(None),
            finished: Cell::new(
                last_finish(&stored.entries, stored.applied).map(|i| (i, Instant::now())),
            ),
            last_transfer: Cell::new(None),
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
        if let Err(why) = self.check_sender(&message) {
            tracing::warn!("topology: refused a Raft message: {why}");
            return reply::status(Status::Refused, format!("OP_RAFT: {why}"));
        }
        self.inbox.borrow_mut().push(message);
        OpResult::default()
    }

    /// Why `message` may not be stepped into this node's group, if it may not: it must be
    /// addressed to this node and come from a node that takes part (a member, the joining
    /// node, or a node still in the Raft configuration); a node that knows no topology yet (it
    /// was started with `--join`) hears from anyone that passed the peer handshake.
    fn check_sender(&self, message: &Message) -> Result<(), String> {
        let me = self.node.try_borrow().map(|n| n.raft.id).ok();
        let me = me.unwrap_or(u64::from(self.peers.membership().me));
        if message.to != me {
            return Err(format!("addressed to node {}, not node {me}", message.to));
        }
        if message.from == 0 || message.from == me {
            return Err(format!("from node {}, which is not a peer", message.from));
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
            Err(format!(
                "from node {}, which takes no part in the cluster",
                message.from
            ))
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
        if !ready.snapshot().is_empty() {
            // Never sent (the log is never compacted, and `unsteppable` drops MsgSnapshot), so
            // never applied: stop rather than carry on with a state that ignored one.
            return Err(format!(
                "a Raft snapshot at index {} arrived; this group does not apply snapshots",
                ready.snapshot().get_metadata().index
            ));
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
        let mut changed = false;
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

    /// Applies committed entries to the topology, publishing each new one. Returns whether
    /// anything was applied.
    fn apply(&self, node: &mut RawNode<MemStorage>, entries: Vec<Entry>) -> bool {
        let applied = !entries.is_empty();
        for entry in entries {
            match entry.entry_type {
                EntryType::EntryNormal if entry.data.is_empty() => {} // a new leader's entry
                EntryType::EntryNormal => {
                    if let Some(Command::Bootstrap(members)) = self.apply_command(&entry) {
                        adopt_bootstrap_voters(node, &members);
                    }
                }
                EntryType::EntryConfChange => {
                    let applied = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| e.to_string())
                        .and_then(|cc| {
                            node.apply_conf_change(&cc)
                                .map_err(|e| e.to_string())
                                .map(|cs| (cc, cs))
                        });
                    match applied {
                        Ok((cc, cs)) => {
                            tracing::info!(
                                "topology: Raft {:?} node {}: voters {:?}, learners {:?}",
                                cc.change_type,
                                cc.node_id,
                                cs.voters,
                                cs.learners
                            );
                            node.mut_store().wl().set_conf_state(cs);
                        }
                        Err(e) => tracing::error!(
                            "topology: configuration change at index {}: {e}",
                            entry.index
                        ),
                    }
                }
                EntryType::EntryConfChangeV2 => tracing::warn!(
                    "topology: ignored a joint configuration change at index {}",
                    entry.index
                ),
            }
            self.applied_index.set(entry.index);
        }
        applied
    }

    /// Applies one topology entry; returns the command when it was applied.
    fn apply_command(&self, entry: &Entry) -> Option<Command> {
        let command = match decode_command(&entry.data) {
            Ok(command) => command,
            Err(e) => {
                tracing::error!("topology: entry {} does not decode: {e}", entry.index);
                return None;
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
                if applied == Applied::Finished {
                    self.finished.set(Some((entry.index, Instant::now())));
                }
                Some(command)
            }
            Err(refused) => {
                tracing::info!(
                    "topology: entry {} ({command:?}) changes nothing: {refused}",
                    entry.index
                );
                let nonce = <[u8; 8]>::try_from(&entry.context[..]).map_or(0, u64::from_be_bytes);
                if nonce != 0 {
                    let mut refusals = self.refusals.borrow_mut();
                    if refusals.len() >= 64 {
                        refusals.remove(0);
                    }
                    refusals.push((nonce, refused));
                }
                None
            }
        }
    }

    /// Whether the removal of this node from the Raft group is committed (as far as this node
    /// knows): what a node that left waits for before it stops, so the group never counts a
    /// stopped voter.
    pub fn removal_committed(&self) -> bool {
        let Ok(node) = self.node.try_borrow() else {
            return false;
        };
        let (me, committed) = (node.raft.id, node.raft.raft_log.committed);
        let store = node.store();
        let (Ok(first), Ok(last)) = (store.first_index(), store.last_index()) else {
            return false;
        };
        let last = last.min(committed);
        if last < first {
            return false;
        }
        let Ok(entries) = store.entries(first, last + 1, None, GetEntriesContext::empty(false))
        else {
            return false;
        };
        entries.iter().any(|e| {
            e.entry_type == EntryType::EntryConfChange
                && ConfChange::parse_from_bytes(&e.data).is_ok_and(|cc| {
                    cc.node_id == me && cc.change_type == ConfChangeType::RemoveNode
                })
        })
    }

    /// A node that left waits, after `grace`, until its removal from the Raft group is
    /// committed ([`RaftDriver::removal_committed`]), at most `bound` (the others may never
    /// tell it: a removed node hears nothing more).
    pub async fn wait_until_removed(&self, grace: Duration, bound: Duration) {
        glommio::timer::sleep(grace).await;
        let give_up = Instant::now() + bound;
        while !self.removal_committed() && !self.failed.get() {
            if Instant::now() > give_up {
                tracing::warn!(
                    "topology: this node's removal from the Raft group was not seen committed \
                     within {bound:?}; stopping anyway"
                );
                return;
            }
            glommio::timer::sleep(TICK).await;
        }
    }

    /// On a leader that left the cluster: hands the leadership to the member that holds the
    /// most of the log, at most once a second, so a member (not this node) removes it from
    /// the group and no election has to wait for it to stop.
    fn hand_over_if_left(&self, node: &mut RawNode<MemStorage>) {
        if node.raft.state != StateRole::Leader {
            return;
        }
        let topology = self.topology.borrow();
        let me = node.raft.id;
        if topology.epoch == 0 || topology.all_members().iter().any(|m| u64::from(m.id) == me) {
            return;
        }
        if self
            .last_transfer
            .get()
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let best = topology
            .members
            .iter()
            .map(|m| u64::from(m.id))
            .filter_map(|id| node.raft.prs().get(id).map(|p| (p.matched, id)))
            .max();
        if let Some((_, to)) = best {
            tracing::info!("topology: this node left; handing the leadership to node {to}");
            self.last_transfer.set(Some(Instant::now()));
            node.transfer_leader(to);
        }
    }

    /// On the leader: makes the Raft voters follow the agreed topology, one change at a time.
    /// A joining node becomes a learner (it receives the log, so it learns the topology, but
    /// does not vote); a member that is not a voter (a join that finished) becomes one; a
    /// voter that is no member any more (a leave that finished) is removed. A proposal that is
    /// lost with a leader change is simply made again.
    fn reconcile_voters(&self, node: &mut RawNode<MemStorage>) {
        if node.raft.state != StateRole::Leader || node.raft.has_pending_conf() {
            return;
        }
        if self
            .last_conf_proposal
            .get()
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let Ok(state) = node.store().initial_state() else {
            return;
        };
        let (voters, learners) = (&state.conf_state.voters, &state.conf_state.learners);
        let topology = self.topology.borrow();
        if topology.epoch == 0 {
            return;
        }
        let joining = match &topology.transition {
            Some(t) => match t.change {
                Change::Join(m) => Some(u64::from(m.id)),
                Change::Leave(_) => None,
            },
            None => None,
        };
        let members: Vec<u64> = topology.members.iter().map(|m| u64::from(m.id)).collect();
        let change =
            if let Some(id) = joining.filter(|id| !voters.contains(id) && !learners.contains(id)) {
                Some((ConfChangeType::AddLearnerNode, id))
            } else if let Some(&id) = members.iter().find(|id| !voters.contains(id)) {
                Some((ConfChangeType::AddNode, id))
            } else {
                voters
                    .iter()
                    .chain(learners)
                    .find(|id| !members.contains(id) && Some(**id) != joining)
                    .filter(|&&id| self.may_remove(node, id))
                    .map(|&id| (ConfChangeType::RemoveNode, id))
            };
        let Some((change_type, node_id)) = change else {
            return;
        };
        let cc = ConfChange {
            change_type,
            node_id,
            ..ConfChange::default()
        };
        self.last_conf_proposal.set(Some(Instant::now()));
        if let Err(e) = node.propose_conf_change(Vec::new(), cc) {
            tracing::warn!("topology: proposing {change_type:?} node {node_id}: {e}");
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

    /// Whether node `id`, which left, may leave the Raft group too: once it holds the `Finish`
    /// entry and a few heartbeats told it that entry is committed (it stops itself when it
    /// applies it), or after [`LEFT_NODE_GRACE`] whatever it holds (it may be dead: a forced
    /// leave).
    fn may_remove(&self, node: &RawNode<MemStorage>, id: u64) -> bool {
        let Some((index, at)) = self.finished.get() else {
            return true;
        };
        let matched = node.raft.prs().get(id).is_some_and(|p| p.matched >= index);
        (matched && at.elapsed() > TICK * 10) || at.elapsed() > LEFT_NODE_GRACE
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

/// Why raft-rs would abort on `message` (its `fatal!` paths, which assume every message comes
/// from a correct member with an intact log), if it would: a heartbeat that commits beyond
/// this node's log, an append that contradicts a committed entry, an acknowledgement of
/// entries the leader does not have, a snapshot (this group never sends one: its log is
/// never compacted).
fn unsteppable(node: &RawNode<MemStorage>, message: &Message) -> Option<String> {
    let log = &node.raft.raft_log;
    let last = log.last_index();
    match message.get_msg_type() {
        MessageType::MsgHeartbeat if message.commit > last => Some(format!(
            "commits index {} but this node's log ends at {last}",
            message.commit
        )),
        MessageType::MsgAppend => message
            .entries
            .iter()
            .filter(|e| e.index <= log.committed)
            .find(|e| log.term(e.index).is_ok_and(|t| t != e.term))
            .map(|e| {
                format!(
                    "entry {} (term {}) contradicts a committed entry",
                    e.index, e.term
                )
            }),
        MessageType::MsgAppendResponse if !message.reject && message.index > last => Some(format!(
            "acknowledges index {} but this node's log ends at {last}",
            message.index
        )),
        MessageType::MsgSnapshot => Some("this group never sends snapshots".to_string()),
        _ => None,
    }
}

/// A node that joined starts with no voters; the log's first entry names the members the
/// cluster was bootstrapped with, which were its voters then. Adopting them, one simple change
/// at a time, gives the joining node the same Raft configuration as every other node at that
/// index, so the configuration changes that follow apply alike everywhere.
fn adopt_bootstrap_voters(node: &mut RawNode<MemStorage>, members: &[Member]) {
    let known = node
        .store()
        .initial_state()
        .map(|s| !s.conf_state.voters.is_empty())
        .unwrap_or(true);
    if known {
        return;
    }
    for member in members {
        let cc = ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: u64::from(member.id),
            ..ConfChange::default()
        };
        match node.apply_conf_change(&cc) {
            Ok(cs) => node.mut_store().wl().set_conf_state(cs),
            Err(e) => {
                tracing::error!("topology: adopting the bootstrap voters: {e}");
                return;
            }
        }
    }
}

/// The index of the last `Finish` among `entries` applied (at or below `applied`).
fn last_finish(entries: &[Entry], applied: u64) -> Option<u64> {
    entries
        .iter()
        .rev()
        .filter(|e| e.index <= applied && e.entry_type == EntryType::EntryNormal)
        .find(|e| matches!(decode_command(&e.data), Ok(Command::Finish { .. })))
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> RawNode<MemStorage> {
        let members: Vec<Member> = (1..=3)
            .map(|id| Member {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            })
            .collect();
        let stored = bootstrap(&members);
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            core.set_conf_state(stored.conf_state);
            core.append(&stored.entries).unwrap();
            core.set_hardstate(stored.hard_state);
        }
        let config = raft::Config {
            id: 1,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, storage, &logger).unwrap()
    }

    fn message(kind: MessageType) -> Message {
        let mut m = Message {
            from: 2,
            to: 1,
            term: 5,
            ..Message::default()
        };
        m.set_msg_type(kind);
        m
    }

    #[test]
    fn messages_raft_rs_would_abort_on_are_not_stepped() {
        let mut node = node();
        let mut beat = message(MessageType::MsgHeartbeat);
        beat.commit = 1;
        assert_eq!(unsteppable(&node, &beat), None);
        beat.commit = 9;
        assert!(unsteppable(&node, &beat).unwrap().contains("log ends at 1"));

        let mut append = message(MessageType::MsgAppend);
        append.entries = vec![Entry {
            index: 1,
            term: 3,
            ..Entry::default()
        }]
        .into();
        assert!(unsteppable(&node, &append).unwrap().contains("contradicts"));
        append.entries[0].term = 1;
        assert_eq!(unsteppable(&node, &append), None);

        let mut ack = message(MessageType::MsgAppendResponse);
        ack.index = 7;
        assert!(unsteppable(&node, &ack).is_some());
        ack.reject = true;
        assert_eq!(unsteppable(&node, &ack), None);

        assert!(unsteppable(&node, &message(MessageType::MsgSnapshot)).is_some());
        // Stepped, the checked heartbeat would have aborted the process.
        assert!(node.step(message(MessageType::MsgHeartbeat)).is_ok());
    }
}
