//! The topology Raft group's state on disk: one small file, `topology.raft` in the data
//! directory, rewritten whole after every Raft `Ready` that changed it.
//!
//! ```text
//! offset 0   magic      8 bytes  "KVMRAFT1"
//!        8   length     u32 BE   N, at most MAX_STATE
//!       12   crc32      u32 BE   CRC-32 (IEEE) of the next N bytes
//!       16   body       N bytes  a `wire.RaftState` message: hard state, conf state, entries,
//!                                the applied topology and index
//! ```
//!
//! [`save`] writes `topology.raft.tmp`, fsyncs it, renames it over `topology.raft` and fsyncs
//! the directory, so a crash leaves either the old or the new state, never a mix. The topology
//! log is tiny (a handful of entries per membership change, plus one per leader election), so
//! rewriting it whole is cheaper than keeping a second log format. The log is compacted at
//! every `Finish` (`node::raft`); the snapshot it was compacted to is kept with the entries
//! that follow it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use kvmesh_proto::wire::{ClusterTopology, RaftState};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::topology::Topology;
use super::topology_wire::{topology_from_wire, topology_to_wire};

const MAGIC: &[u8; 8] = b"KVMRAFT1";
/// Far above any real topology log; a larger length means a corrupt file.
const MAX_STATE: u32 = 64 << 20;
pub const FILE_NAME: &str = "topology.raft";

/// What the topology Raft group keeps across restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub entries: Vec<Entry>,
    pub topology: Topology,
    pub applied: u64,
    /// The snapshot the log was last compacted to (`entries` follow it); `None` while the
    /// log was never compacted.
    pub snapshot: Option<Snapshot>,
}

/// Why the stored state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RaftStateError {
    #[error("{file}: {why}")]
    Corrupt { file: PathBuf, why: String },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// The file's bytes for `state` (see the layout above).
pub fn encode(state: &Stored) -> Vec<u8> {
    let raft = |m: &dyn protobuf::Message| m.write_to_bytes().unwrap_or_default();
    let body = RaftState {
        hard_state: raft(&state.hard_state),
        conf_state: raft(&state.conf_state),
        entries: state.entries.iter().map(|e| raft(e)).collect(),
        topology: Some(topology_to_wire(&state.topology)),
        applied: state.applied,
        snapshot: state.snapshot.as_ref().map(|s| raft(s)).unwrap_or_default(),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The state in `bytes`, or what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err("not a topology state file (bad magic or shorter than its header)".into());
    }
    let len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let crc = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if len > MAX_STATE || bytes.len() - 16 != len as usize {
        return Err(format!(
            "the header says {len} bytes follow, the file holds {}",
            bytes.len() - 16
        ));
    }
    let body = &bytes[16..];
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(format!(
            "checksum mismatch: expected {crc:#010x}, actual {actual:#010x}"
        ));
    }
    let state = RaftState::decode(body).map_err(|e| format!("undecodable body: {e}"))?;
    let hard_state = HardState::parse_from_bytes(&state.hard_state)
        .map_err(|e| format!("undecodable hard state: {e}"))?;
    let conf_state = ConfState::parse_from_bytes(&state.conf_state)
        .map_err(|e| format!("undecodable conf state: {e}"))?;
    let entries = state
        .entries
        .iter()
        .map(|e| Entry::parse_from_bytes(e).map_err(|e| format!("undecodable entry: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let topology = topology_from_wire(&state.topology.unwrap_or_else(ClusterTopology::default))
        .map_err(|e| format!("undecodable topology: {e}"))?;
    let snapshot = match state.snapshot.is_empty() {
        true => None,
        false => Some(
            Snapshot::parse_from_bytes(&state.snapshot)
                .map_err(|e| format!("undecodable snapshot: {e}"))?,
        ),
    };
    let stored = Stored {
        hard_state,
        conf_state,
        entries,
        topology,
        applied: state.applied,
        snapshot,
    };
    check_order(&stored)?;
    Ok(stored)
}

/// Why raft-rs would abort on `state` at open (it assumes its storage is consistent), if it
/// would: the entries must follow one another and the snapshot directly, and the snapshot, the
/// applied index and the commit index must lie in the order snapshot ≤ applied ≤ commit ≤ the
/// last index.
fn check_order(state: &Stored) -> Result<(), String> {
    let base = state
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    let mut expected = base + 1;
    for entry in &state.entries {
        if entry.index != expected {
            return Err(format!(
                "entry {} where entry {expected} was expected (the snapshot is at index {base})",
                entry.index
            ));
        }
        expected += 1;
    }
    let last = expected - 1;
    let commit = state.hard_state.commit;
    if !(base <= state.applied && state.applied <= commit && commit <= last) {
        return Err(format!(
            "out of order: snapshot index {base}, applied {}, commit {commit}, last index {last} \
             (each must be at most the next)",
            state.applied
        ));
    }
    Ok(())
}

/// The state stored in `dir`, or `None` when there is none yet.
pub fn load(dir: &Path) -> Result<Option<Stored>, RaftStateError> {
    let file = dir.join(FILE_NAME);
    let bytes = match fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RaftStateError::Io { file, source }),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|why| RaftStateError::Corrupt { file, why })
}

/// Replaces the state in `dir` with `state`, durably (see the module docs).
pub fn save(dir: &Path, state: &Stored) -> Result<(), RaftStateError> {
    let file = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let io = |file: &Path| {
        let file = file.to_path_buf();
        move |source| RaftStateError::Io { file, source }
    };
    let mut out = File::create(&tmp).map_err(io(&tmp))?;
    out.write_all(&encode(state)).map_err(io(&tmp))?;
    out.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &file).map_err(io(&file))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topology::{Command, Member};
    use raft::eraftpb::EntryType;

    fn state() -> Stored {
        let members = vec![
            Member {
                id: 1,
                addr: "127.0.0.1:7000".parse().unwrap(),
            },
            Member {
                id: 2,
                addr: "127.0.0.1:7100".parse().unwrap(),
            },
        ];
        let hard_state = HardState {
            term: 3,
            vote: 2,
            commit: 1,
            ..HardState::default()
        };
        let conf_state = ConfState {
            voters: vec![1, 2],
            ..ConfState::default()
        };
        let command = Command::Bootstrap(members.clone());
        let entry = Entry {
            entry_type: EntryType::EntryNormal,
            term: 1,
            index: 1,
            data: crate::cluster::topology_wire::encode_command(&command).into(),
            ..Entry::default()
        };
        Stored {
            hard_state,
            conf_state,
            entries: vec![entry],
            topology: Topology::initial(members).unwrap(),
            applied: 1,
            snapshot: None,
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let bytes = encode(&state());
        assert_eq!(decode(&bytes), Ok(state()));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum mismatch"));
        assert!(decode(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .contains("the header says"));
        assert!(decode(b"KVMRAFT").unwrap_err().contains("bad magic"));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn refuses_a_log_raft_rs_would_abort_on() {
        let mut gap = state();
        gap.entries[0].index = 2;
        gap.hard_state.commit = 2;
        assert!(decode(&encode(&gap))
            .unwrap_err()
            .contains("entry 2 where entry 1 was expected"));

        let mut after_snapshot = state();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 3;
        after_snapshot.snapshot = Some(snapshot);
        assert!(decode(&encode(&after_snapshot))
            .unwrap_err()
            .contains("entry 1 where entry 4 was expected"));
        after_snapshot.entries[0].index = 4;
        assert!(decode(&encode(&after_snapshot))
            .unwrap_err()
            .contains("snapshot index 3, applied 1, commit 1"));
        after_snapshot.applied = 4;
        after_snapshot.hard_state.commit = 4;
        assert!(decode(&encode(&after_snapshot)).is_ok());

        let mut beyond = state();
        beyond.hard_state.commit = 2;
        beyond.applied = 2;
        assert!(decode(&encode(&beyond))
            .unwrap_err()
            .contains("last index 1"));
    }

    #[test]
    fn saves_and_loads_through_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        save(dir.path(), &state()).unwrap();
        let mut later = state();
        later.applied = 1;
        later.hard_state.term = 4;
        save(dir.path(), &later).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(later));
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(FILE_NAME) && err.contains("bad magic"),
            "{err}"
        );
    }
}
