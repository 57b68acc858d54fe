//! Hinted handoff, on disk: each coordinating shard appends the hints it keeps to
//! `DIR/hints/shard-N.hints`, so a coordinator killed while holding hints delivers them after
//! its restart. The file is emptied whenever the shard holds no hints, and rewritten from the
//! queue when it grows past twice the shard's hint budget.
//!
//! Each hint is one record of the write-ahead log's codec (`kvmesh_wal::record`: length,
//! CRC32, a `kvmesh.wal.Record` protobuf), its fields holding:
//!
//! ```text
//! seq           when the hint was made, ms since the UNIX epoch (never 0)
//! op            PUT, REMOVE or TOUCH
//! key, value    the write's
//! expires_at_ms the write's ttl_ms: relative, as the replica write carries it
//! version_hlc, version_node   the write's version
//! synced_below  the owner that missed it (its node id)
//! ```
//!
//! Appends are plain `write(2)`s into the page cache, made when a replica write fails: they
//! survive the process being killed, not a power loss (nothing is fsynced). Loading stops at
//! the first record that does not decode (a torn tail), keeping what came before.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::{Op, OpCode};
use kvmesh_wal::{record, Entry, Op as LogOp};

/// A hint as stored: the owner that missed it, the replica write, when it was made.
pub type Hint = (NodeId, Op, u64);

/// The largest hint payload accepted when loading: the largest key and value plus framing.
const MAX_RECORD: usize = 17 << 20;

/// Appends hint `op` (a replica write) for `node`, made at `at_ms`, to `out`. Ops other than
/// put, remove and touch are not hints and are skipped.
pub fn encode(node: NodeId, op: &Op, at_ms: u64, out: &mut Vec<u8>) {
    let log_op = match OpCode::try_from(op.code) {
        Ok(OpCode::OpPut) => LogOp::Put,
        Ok(OpCode::OpRemove) => LogOp::Remove,
        Ok(OpCode::OpTouch) => LogOp::Touch,
        _ => return,
    };
    let entry = Entry {
        value: &op.value,
        expires_at_ms: op.ttl_ms,
        version_hlc: op.version_hlc,
        version_node: op.version_node,
        synced_below: u64::from(node),
        ..Entry::new(log_op, &op.key)
    };
    record::encode(at_ms.max(1), &entry, out);
}

/// The hints in `bytes`, oldest first, as `(owner, replica op, made at)`, and how many
/// bytes at the end were not readable (a torn tail, or damage: everything after is dropped).
pub fn decode(bytes: &[u8]) -> (Vec<Hint>, usize) {
    let mut hints = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Ok(Some((rec, used))) = record::decode(&bytes[at..], MAX_RECORD) else {
            break;
        };
        at += used;
        let code = match rec.op {
            LogOp::Put => OpCode::OpPut,
            LogOp::Remove => OpCode::OpRemove,
            LogOp::Touch => OpCode::OpTouch,
            _ => continue,
        };
        let op = Op {
            code: code as i32,
            key: rec.key,
            value: rec.value,
            ttl_ms: rec.expires_at_ms,
            replica: true,
            version_hlc: rec.version_hlc,
            version_node: rec.version_node,
            ..Op::default()
        };
        hints.push((rec.synced_below as NodeId, op, rec.seq));
    }
    (hints, bytes.len() - at)
}

/// One shard's hint file.
pub struct HintLog {
    path: PathBuf,
    file: File,
    /// Bytes in the file now.
    pub len: u64,
}

impl HintLog {
    /// Opens (creating it and `dir` if needed) the hint file of shard `shard` under `dir`, and
    /// returns it with the hints it holds and the unreadable bytes dropped from its end.
    pub fn open(dir: &Path, shard: usize) -> std::io::Result<(HintLog, Vec<Hint>, usize)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("shard-{shard}.hints"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (hints, torn) = decode(&bytes);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let kept = (bytes.len() - torn) as u64;
        file.set_len(kept)?;
        Ok((
            HintLog {
                path,
                file,
                len: kept,
            },
            hints,
            torn,
        ))
    }

    /// Appends encoded hints.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Replaces the file's contents with `bytes` (empty: no hints left), atomically.
    pub fn rewrite(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            self.file.set_len(0)?;
            self.len = 0;
            return Ok(());
        }
        let tmp = self.path.with_extension("hints.new");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(code: OpCode, key: &str, hlc: u64) -> Op {
        Op {
            replica: true,
            version_hlc: hlc,
            version_node: 3,
            ttl_ms: 5_000,
            ..kvmesh_net::client::op(code, key.as_bytes(), b"value", 0)
        }
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let mut bytes = Vec::new();
        let a = hint(OpCode::OpPut, "a", 10);
        let b = Op {
            value: vec![],
            ..hint(OpCode::OpRemove, "b", 11)
        };
        encode(2, &a, 1_000, &mut bytes);
        encode(4, &b, 1_001, &mut bytes);
        encode(
            2,
            &kvmesh_net::client::op(OpCode::OpGet, b"x", b"", 0),
            1,
            &mut bytes,
        );
        let whole = bytes.len();
        let (hints, torn) = decode(&bytes);
        assert_eq!(hints, vec![(2, a.clone(), 1_000), (4, b, 1_001)]);
        assert_eq!(torn, 0);
        // A record cut short by a crash: the ones before it survive.
        encode(2, &a, 1_002, &mut bytes);
        let cut = &bytes[..bytes.len() - 3];
        let (hints, torn) = decode(cut);
        assert_eq!((hints.len(), torn), (2, cut.len() - whole));
    }

    #[test]
    fn file_survives_reopening_and_empties() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, hints, _) = HintLog::open(dir.path(), 0).unwrap();
        assert!(hints.is_empty());
        let mut bytes = Vec::new();
        encode(2, &hint(OpCode::OpPut, "a", 10), 5, &mut bytes);
        log.append(&bytes).unwrap();
        drop(log);
        let (mut log, hints, torn) = HintLog::open(dir.path(), 0).unwrap();
        assert_eq!((hints.len(), torn), (1, 0));
        log.rewrite(&[]).unwrap();
        let (_, hints, _) = HintLog::open(dir.path(), 0).unwrap();
        assert!(hints.is_empty());
    }
}
