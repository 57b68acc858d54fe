//! What a shard writes to its log: each change it applies, the evictions and expiries the
//! store makes on its own (logged like removes), and the record a reply must wait for. With no
//! log attached, nothing is written and nothing waits.

use kvmesh_engine::{RemovalKind, Version};
use kvmesh_proto::wire::OpResult;
use kvmesh_wal::{Entry, Log, Op as LogOp};

use super::{reply, Executed, Shard};

impl Shard {
    /// Why writes are refused, if they are: the log failed (full disk, I/O error).
    #[inline]
    pub(super) fn refuse_writes(&self) -> Option<Executed> {
        let why = self.log.as_ref()?.failure()?;
        Some(reply::log_failed(self.id, &why).into())
    }

    /// The latest logged change to `key` that is not durable yet, if any.
    pub(super) fn unsettled(&self, key: &[u8]) -> Option<u64> {
        let log = self.log.as_ref()?;
        let seq = self.pending.latest(key);
        (seq != 0 && !log.is_durable(seq)).then_some(seq)
    }

    /// Logs what the store dropped on its own (evictions, expirations), oldest first. Called
    /// after every op: the check is inlined, the work (rare) is not.
    #[inline]
    pub(super) fn log_removals(&mut self) {
        if self.store.has_removals() {
            self.log_store_removals();
        }
    }

    #[inline(never)]
    fn log_store_removals(&mut self) {
        let removals: Vec<(RemovalKind, Version, Box<[u8]>)> = self
            .store
            .drain_removals()
            .map(|r| (r.kind, r.version, r.into_key()))
            .collect();
        for (kind, version, key) in removals {
            self.log_removal(kind, &key, version);
        }
    }

    /// Logs an eviction or expiry of `key` at `version`, as a remove is logged.
    pub(super) fn log_removal(&mut self, kind: RemovalKind, key: &[u8], version: Version) {
        let op = match kind {
            RemovalKind::Evicted => LogOp::Evict,
            RemovalKind::Expired => LogOp::Expire,
        };
        let entry = Entry {
            version_hlc: version.hlc,
            version_node: version.node,
            ..Entry::new(op, key)
        };
        // A failed log refuses every append; it has already failed the writes in flight.
        let _ = self.append(&entry);
    }

    /// Appends `entry` to the log, if one is attached, noting it as the latest pending change
    /// to its key; returns its sequence number.
    pub(super) fn append(&mut self, entry: &Entry<'_>) -> kvmesh_wal::Result<Option<u64>> {
        let Some(log) = &self.log else {
            return Ok(None);
        };
        let seq = log.append(entry)?;
        self.pending.note(entry.key, seq);
        Ok(Some(seq))
    }

    /// `result`, once `entry` (a change just applied) is logged after the removals it caused.
    /// The append cannot fail in practice: the log was checked before the change was applied,
    /// and validation keeps every record within a segment.
    #[inline]
    pub(super) fn logged(&mut self, result: OpResult, entry: &Entry<'_>) -> Executed {
        match self.log_change(entry) {
            Ok(wait) => Executed { result, wait },
            Err(failed) => failed.into(),
        }
    }

    /// What [`Shard::logged`] does, before a result is made: the log record a reply to
    /// `entry`'s change waits for (`None` without a log), or the result refusing it.
    #[inline]
    pub(super) fn log_change(&mut self, entry: &Entry<'_>) -> Result<Option<u64>, OpResult> {
        self.log_removals();
        if self.log.is_none() {
            return Ok(None);
        }
        self.append(entry).map_err(|e| {
            let why = self.log.as_ref().and_then(Log::failure);
            reply::log_failed(self.id, &why.unwrap_or_else(|| e.to_string()))
        })
    }

    /// `result` of an op that changed nothing, once the latest change to `key` is durable.
    pub(super) fn settled_after(&mut self, result: OpResult, key: &[u8]) -> Executed {
        self.log_removals();
        Executed {
            result,
            wait: self.unsettled(key),
        }
    }
}
