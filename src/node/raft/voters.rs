//! The topology Raft group's voters: who is in it, who leaves it, and when a node that left
//! may stop.

use super::*;

impl RaftDriver {
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
    pub(super) fn hand_over_if_left(&self, node: &mut RawNode<TopologyStorage>) {
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
    pub(super) fn reconcile_voters(&self, node: &mut RawNode<TopologyStorage>) {
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

    /// Whether node `id`, which left, may leave the Raft group too: once it holds the `Finish`
    /// entry and a few heartbeats told it that entry is committed (it stops itself when it
    /// applies it), or after [`LEFT_NODE_GRACE`] whatever it holds (it may be dead: a forced
    /// leave).
    pub(super) fn may_remove(&self, node: &RawNode<TopologyStorage>, id: u64) -> bool {
        let Some((index, at)) = self.finished.get() else {
            return true;
        };
        let matched = node.raft.prs().get(id).is_some_and(|p| p.matched >= index);
        (matched && at.elapsed() > TICK * 10) || at.elapsed() > LEFT_NODE_GRACE
    }
}

/// A node that joined starts with no voters; the log's first entry names the members the
/// cluster was bootstrapped with, which were its voters then. Adopting them, one simple change
/// at a time, gives the joining node the same Raft configuration as every other node at that
/// index, so the configuration changes that follow apply alike everywhere.
pub(super) fn adopt_bootstrap_voters(node: &mut RawNode<TopologyStorage>, members: &[Member]) {
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

impl RaftDriver {
    /// Node `by` answered this node's Raft message `STATUS_REMOVED`. When this node believes
    /// it is a member (a node that left knows it left, and stops by itself) and `by` is at a
    /// later epoch, it was removed while it could not hear of it: it closes its client gate
    /// for good and says why.
    pub(super) fn removed(&self, by: u64, answer: &OpResult) {
        let me = self.peers.membership().me;
        let topology = self.topology.borrow();
        // A peer behind this node (it has not applied this node's join yet) does not know it
        // either: only one at a later epoch knows this node was removed since.
        if answer.moved_epoch <= topology.epoch || !topology.members.iter().any(|m| m.id == me) {
            return;
        }
        drop(topology);
        if crate::node::topology_gate::close_removed(answer.moved_epoch) {
            tracing::error!(
                "topology: node {me} was removed from the cluster (node {by} is at epoch {}: \
                 {}); it serves no client data op from now on. To bring it back: stop it, \
                 empty its data directory and start it with --join",
                answer.moved_epoch,
                answer.message
            );
        }
    }
}
