//! The topology Raft group's state machine side: applying committed entries and installed
//! snapshots to the topology, and telling the storage what snapshots are built from.

use super::*;

impl RaftDriver {
    /// Takes a snapshot the leader sent (this node was behind the leader's compaction point):
    /// its topology replaces this node's, and the log starts after it.
    pub(super) fn install(
        &self,
        node: &mut RawNode<TopologyStorage>,
        snapshot: Snapshot,
    ) -> Result<(), String> {
        let index = snapshot.get_metadata().index;
        let wire = ClusterTopology::decode(&snapshot.data[..])
            .map_err(|e| format!("a topology snapshot at index {index} does not decode: {e}"))?;
        let topology = topology_from_wire(&wire)
            .map_err(|e| format!("a topology snapshot at index {index}: {e}"))?;
        node.mut_store().install(snapshot)?;
        tracing::info!(
            "topology: installed a snapshot at index {index}: epoch {}, {} member(s)",
            topology.epoch,
            topology.members.len()
        );
        *self.topology.borrow_mut() = topology;
        self.applied_index.set(index);
        // The snapshot may hold a `Finish` or an `Abort`: a node that left is given time.
        self.finished.set(Some((index, Instant::now())));
        (self.publish)(&wire);
        self.note_latest(node);
        Ok(())
    }

    /// Tells the storage the applied state, which snapshots are built from.
    pub(super) fn note_latest(&self, node: &RawNode<TopologyStorage>) {
        let store = node.store();
        let index = self.applied_index.get();
        let (Ok(term), Ok(state)) = (store.term(index), store.initial_state()) else {
            return;
        };
        store.set_latest(Latest {
            index,
            term,
            conf_state: state.conf_state,
            topology: topology_to_wire(&self.topology.borrow()).encode_to_vec(),
        });
    }

    /// Applies committed entries to the topology, publishing each new one. Returns whether
    /// anything was applied. After a `Finish`, the log is compacted up to it.
    pub(super) fn apply(&self, node: &mut RawNode<TopologyStorage>, entries: Vec<Entry>) -> bool {
        let applied = !entries.is_empty();
        let finished_before = self.finished.get().map(|(i, _)| i);
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
        if applied {
            self.note_latest(node);
        }
        if self.finished.get().map(|(i, _)| i) != finished_before {
            match node.mut_store().compact() {
                Ok((index, dropped)) => tracing::info!(
                    "topology: compacted the log up to index {index} ({dropped} entries)"
                ),
                Err(e) => tracing::warn!("topology: compacting the log: {e}"),
            }
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
                // An aborted joiner is a node that left too: it is given time to learn it.
                if matches!(applied, Applied::Finished | Applied::Aborted) {
                    self.finished.set(Some((entry.index, Instant::now())));
                }
                if let (Applied::Aborted, Command::Abort { epoch }) = (&applied, &command) {
                    self.aborted.set(*epoch);
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
}
