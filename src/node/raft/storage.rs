//! The topology Raft group's storage: raft-rs's `MemStorage` (entries, hard state, conf state;
//! persisted by `RaftDriver::persist`) plus snapshots whose data is the encoded topology.
//!
//! - **Compaction** ([`TopologyStorage::compact`]): the driver compacts the log at every applied
//!   `Finish`, up to the applied index. What was before is summed up by the snapshot of that
//!   point ([`TopologyStorage::compacted`]: index, term, configuration and topology), which is
//!   stored with the log so a restart rebuilds the same storage.
//! - **Sending** ([`Storage::snapshot`]): a follower that needs entries before the compaction
//!   point gets a snapshot of the *applied* state, built on request from [`Latest`] (the
//!   topology, index, term and configuration as of the last applied entry, which the driver
//!   keeps up to date): the configuration then already holds a joining learner added after the
//!   compaction, which raft-rs requires of a snapshot's recipient.
//! - **Installing**: see `RaftDriver::handle_ready`, which applies a received snapshot here
//!   ([`TopologyStorage::install`]) and takes its topology.

use std::cell::RefCell;
use std::sync::RwLockWriteGuard;

use raft::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};
use raft::storage::{MemStorage, MemStorageCore};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The applied state a snapshot is built from.
#[derive(Clone, Debug, Default)]
pub struct Latest {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    /// The encoded `wire::ClusterTopology` after applying `index`.
    pub topology: Vec<u8>,
}

impl Latest {
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            data: self.topology.clone().into(),
            ..Snapshot::default()
        };
        let mut metadata = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(self.conf_state.clone());
        snapshot.set_metadata(metadata);
        snapshot
    }
}

/// `MemStorage` with topology snapshots (see the module docs).
#[derive(Default)]
pub struct TopologyStorage {
    mem: MemStorage,
    /// The snapshot of the compaction point; index 0 while the log was never compacted.
    compacted: RefCell<Snapshot>,
    latest: RefCell<Latest>,
}

impl TopologyStorage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn wl(&self) -> RwLockWriteGuard<'_, MemStorageCore> {
        self.mem.wl()
    }

    /// The snapshot of the compaction point, if the log was compacted.
    pub fn compacted(&self) -> Option<Snapshot> {
        let snapshot = self.compacted.borrow();
        (snapshot.get_metadata().index > 0).then(|| snapshot.clone())
    }

    /// Records the applied state snapshots are built from.
    pub fn set_latest(&self, latest: Latest) {
        *self.latest.borrow_mut() = latest;
    }

    /// Takes `snapshot` as the log's start: drops every entry, as a follower that installs a
    /// snapshot does, or, at a restart, before the stored entries are appended again.
    pub fn install(&self, snapshot: Snapshot) -> Result<(), String> {
        self.mem
            .wl()
            .apply_snapshot(snapshot.clone())
            .map_err(|e| format!("installing a topology snapshot: {e}"))?;
        *self.compacted.borrow_mut() = snapshot;
        Ok(())
    }

    /// Drops the entries up to the applied index (the snapshot of [`Latest`] stands for them),
    /// keeping the hard state, the configuration and the later entries. Returns the index
    /// compacted to and how many entries were dropped (0 when there was nothing to drop).
    pub fn compact(&self) -> Result<(u64, u64), String> {
        let snapshot = self.latest.borrow().snapshot();
        let index = snapshot.get_metadata().index;
        let (first, last) = (self.mem.first_index(), self.mem.last_index());
        let (Ok(first), Ok(last)) = (first, last) else {
            return Ok((index, 0));
        };
        if index < first || index > last {
            return Ok((index, 0));
        }
        let later: Vec<Entry> = if index < last {
            self.mem
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let state = self.mem.initial_state().map_err(|e| e.to_string())?;
        self.install(snapshot)?;
        let mut core = self.mem.wl();
        core.append(&later).map_err(|e| e.to_string())?;
        core.set_hardstate(state.hard_state);
        core.set_conf_state(state.conf_state);
        Ok((index, index + 1 - first))
    }
}

impl Storage for TopologyStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// A snapshot of the applied state; unavailable (the leader tries again later) before
    /// anything was applied.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let latest = self.latest.borrow();
        if latest.index == 0 || latest.topology.is_empty() {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(latest.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Entry::default()
        }
    }

    fn latest(index: u64, term: u64) -> Latest {
        Latest {
            index,
            term,
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                ..ConfState::default()
            },
            topology: b"topology".to_vec(),
        }
    }

    #[test]
    fn compaction_keeps_the_later_entries_and_the_state() {
        let storage = TopologyStorage::new();
        assert_eq!(
            storage.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            )),
            "nothing applied yet"
        );
        {
            let mut core = storage.wl();
            core.append(&(1..=6).map(|i| entry(i, 1 + i / 4)).collect::<Vec<_>>())
                .unwrap();
            core.mut_hard_state().commit = 6;
            core.mut_hard_state().term = 2;
            core.set_conf_state(latest(0, 0).conf_state);
        }
        storage.set_latest(latest(4, 2));
        assert_eq!(storage.compact(), Ok((4, 4)));
        assert_eq!(storage.first_index(), Ok(5));
        assert_eq!(storage.last_index(), Ok(6));
        assert_eq!(storage.term(4), Ok(2), "the compaction point's term");
        assert_eq!(
            storage.entries(3, 5, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        let kept = storage.entries(5, 7, None, GetEntriesContext::empty(false));
        assert_eq!(kept, Ok(vec![entry(5, 2), entry(6, 2)]));
        let state = storage.initial_state().unwrap();
        assert_eq!((state.hard_state.commit, state.hard_state.term), (6, 2));
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        let compacted = storage.compacted().unwrap();
        assert_eq!(compacted.get_metadata().index, 4);
        assert_eq!(&compacted.data[..], b"topology");
        // A lagging follower gets the applied state.
        storage.set_latest(latest(6, 2));
        let sent = storage.snapshot(0, 2).unwrap();
        assert_eq!(
            (sent.get_metadata().index, sent.get_metadata().term),
            (6, 2)
        );
        assert_eq!(sent.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        // Compacting again at the same point drops nothing more.
        storage.set_latest(latest(4, 2));
        assert_eq!(storage.compact(), Ok((4, 0)));
    }
}
