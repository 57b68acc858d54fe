//! One shard's hints: the bounded queue (`cluster::hints`) and, with a data directory, its
//! copy on disk (`cluster::hint_log`), kept in step.

use std::path::Path;

use kvmesh_net::ring::NodeId;
use kvmesh_proto::wire::Op;

use crate::cluster::hint_log::{self, HintLog};
use crate::cluster::hints::Hints;

pub struct HintStore {
    pub queue: Hints,
    log: Option<HintLog>,
    /// Encoded hints not appended to the file yet (see [`HintStore::flush`]).
    unwritten: Vec<u8>,
    /// This shard's share of `--hint-max-bytes`.
    budget: u64,
    /// The last file error, logged once.
    failed: Option<String>,
}

impl HintStore {
    /// A shard's hints, loaded from `dir` (`DIR/hints`) when there is one; also returns what
    /// loading found, for the log.
    pub fn open(
        dir: Option<&Path>,
        shard: usize,
        budget: u64,
        max_age_ms: u64,
    ) -> (HintStore, Option<String>) {
        let mut store = HintStore {
            queue: Hints::new(budget, max_age_ms),
            log: None,
            unwritten: Vec::new(),
            budget,
            failed: None,
        };
        let Some(dir) = dir else {
            return (store, None);
        };
        let report = match HintLog::open(dir, shard) {
            Ok((log, hints, torn)) => {
                let n = hints.len();
                for (node, op, at_ms) in hints {
                    store.queue.push(node, op, at_ms);
                }
                store.log = Some(log);
                (n > 0 || torn > 0).then(|| {
                    format!(
                        "shard {shard}: loaded {n} hint(s) for other nodes from {}{}",
                        dir.display(),
                        if torn > 0 {
                            format!(", dropped {torn} unreadable byte(s) at the end")
                        } else {
                            String::new()
                        }
                    )
                })
            }
            Err(e) => Some(format!(
                "shard {shard}: cannot open the hint file in {}: {e}; hints are kept in memory only",
                dir.display()
            )),
        };
        (store, report)
    }

    /// Keeps hint `op` for `node` (see [`Hints::push`]); written to the file at the next
    /// [`HintStore::flush`].
    pub fn push(&mut self, node: NodeId, op: Op, now_ms: u64) -> bool {
        let mark = self.unwritten.len();
        if self.log.is_some() {
            hint_log::encode(node, &op, now_ms, &mut self.unwritten);
        }
        let kept = self.queue.push(node, op, now_ms);
        if !kept {
            self.unwritten.truncate(mark);
        }
        kept
    }

    /// Keeps hint `op`, re-targeted to `node` from the node it was for, past the byte bound
    /// (see [`Hints::push_retargeted`]): a re-target never loses a hint.
    pub fn push_retargeted(&mut self, node: NodeId, op: Op, at_ms: u64) {
        if self.log.is_some() {
            hint_log::encode(node, &op, at_ms, &mut self.unwritten);
        }
        self.queue.push_retargeted(node, op, at_ms);
    }

    /// Appends the hints pushed since the last flush to the file.
    pub fn flush(&mut self) {
        let bytes = std::mem::take(&mut self.unwritten);
        if let Some(log) = &mut self.log {
            let written = log.append(&bytes);
            self.note(written);
        }
    }

    /// After hints were delivered or dropped: empties the file when no hint is left, and
    /// rewrites it from the queue when it holds more than twice the budget.
    pub fn settle(&mut self) {
        self.flush();
        let Some(log) = &mut self.log else {
            return;
        };
        let rewritten = if self.queue.is_empty() {
            (log.len > 0).then(|| log.rewrite(&[]))
        } else if log.len > 2 * self.budget + (64 << 10) {
            let mut bytes = Vec::new();
            for (node, op, at_ms) in self.queue.iter() {
                hint_log::encode(node, op, at_ms, &mut bytes);
            }
            Some(log.rewrite(&bytes))
        } else {
            None
        };
        if let Some(result) = rewritten {
            self.note(result);
        }
    }

    fn note(&mut self, result: std::io::Result<()>) {
        if let Err(e) = result {
            let why = e.to_string();
            if self.failed.as_deref() != Some(why.as_str()) {
                tracing::error!("writing the hint file failed: {why}; hints are kept in memory");
                self.failed = Some(why);
            }
        }
    }
}
