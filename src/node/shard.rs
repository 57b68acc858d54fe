//! One shard's state and its request handler. `Shard::execute` returns a value and never touches
//! a socket, so it is tested with a plain clock.
//!
//! With a write-ahead log attached, every change `execute` applies to the store (and every
//! eviction or expiry it causes) is appended to the log's pending batch at once, and the
//! returned [`Executed::wait`] names the record the reply must wait for (see `durable`).

use kvmesh_engine::{Applied, Config as StoreConfig, Hlc, KeyHash, Removed, Store, Version};
use kvmesh_proto::wire::{Op, OpCode, OpResult, ShardStats, Status, Topology};
use kvmesh_wal::{Entry, Log, Op as LogOp};

use super::durable::{Pending, Replay};
use super::reply;

#[path = "shard_log.rs"]
mod log;
#[path = "shard_replica.rs"]
mod replica;

/// Counters of the node layer's own work. The store counts hits, misses and evictions itself.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub gets: u64,
    pub puts: u64,
    pub removes: u64,
    pub touches: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub protocol_errors: u64,
    pub node_forwarded_out: u64,
    pub node_forwarded_in: u64,
    pub replica_writes_sent: u64,
    pub replica_writes_failed: u64,
    pub replica_writes_applied: u64,
    pub quorum_reads: u64,
    pub read_repairs: u64,
}

/// What one shard owns: its store, its clock, its counters and, when durable, its log.
pub struct Shard {
    id: usize,
    store: Store,
    hlc: Hlc,
    topology: Topology,
    pub counters: Counters,
    /// Streaming progress after a membership change (see `stream`).
    pub stream: super::stream::progress::StreamProgress,
    log: Option<Log>,
    pending: Pending,
}

/// The outcome of one op: its result, and the log record that must be durable before the
/// result may be sent (`None`: send at once).
#[derive(Debug)]
pub struct Executed {
    pub result: OpResult,
    pub wait: Option<u64>,
}

impl From<OpResult> for Executed {
    fn from(result: OpResult) -> Self {
        Executed { result, wait: None }
    }
}

/// What a put did ([`Shard::put_outcome`]), small enough to return cheaply: stored at
/// `version`, its reply waiting for log record `wait` (every put of a plain load), or any
/// other outcome (refused, stale, an error), boxed: rare.
#[derive(Debug)]
pub enum PutOutcome {
    Stored { version: Version, wait: Option<u64> },
    Other(Box<Executed>),
}

impl Shard {
    pub fn new(id: usize, node_id: u32, store: StoreConfig, topology: Topology) -> Self {
        Self {
            id,
            store: Store::new(store),
            hlc: Hlc::new(node_id),
            topology: Topology {
                shard: id as u32,
                ..topology
            },
            counters: Counters::default(),
            stream: Default::default(),
            log: None,
            pending: Pending::new(),
        }
    }

    /// The store, read-only: snapshots scan it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for replaying a log into it before the log is attached.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Attaches the shard's recovered log: the clock resumes above every replayed version,
    /// and what the store dropped on its own during replay is logged.
    pub fn attach_log(&mut self, log: Log, replay: Replay) {
        self.hlc.observe(replay.max_version);
        self.log = Some(log);
        for (kind, key, version) in replay.removals {
            self.log_removal(kind, &key, version);
        }
    }

    pub fn log(&self) -> Option<&Log> {
        self.log.as_ref()
    }

    /// Executes one op that this shard owns, or one about the shard itself. Routing has already
    /// checked the op code and the key length.
    pub fn execute(&mut self, op: &Op, now_ms: u64) -> Executed {
        if op.replica {
            let executed = self.execute_replica(op, now_ms);
            self.log_removals();
            return executed;
        }
        let executed = match OpCode::try_from(op.code) {
            Ok(OpCode::OpGet) => {
                let (result, wait) = self.get(&op.key, now_ms, |value| match value {
                    Some(value) => OpResult {
                        value: value.to_vec(),
                        found: true,
                        ..OpResult::default()
                    },
                    None => reply::status(Status::NotFound, ""),
                });
                return Executed { result, wait };
            }
            Ok(OpCode::OpPut) => return self.put(&op.key, &op.value, op.ttl_ms, now_ms),
            Ok(OpCode::OpRemove) => return self.remove(&op.key, now_ms),
            Ok(OpCode::OpTouch) => self.touch(op, now_ms),
            Ok(OpCode::OpTtl) => self.ttl(op, now_ms),
            Ok(OpCode::OpStats) => OpResult {
                stats: Some(Box::new(self.stats())),
                ..OpResult::default()
            }
            .into(),
            Ok(OpCode::OpTopology) => OpResult {
                topology: Some(Box::new(self.topology.clone())),
                ..OpResult::default()
            }
            .into(),
            // Runs asynchronously, in `dispatch`; never reaches a shard's handler.
            Ok(OpCode::OpSnapshot) => {
                reply::status(Status::Internal, "snapshot not dispatched").into()
            }
            Ok(
                OpCode::OpUnspecified
                | OpCode::OpHello
                | OpCode::OpRaft
                | OpCode::OpJoin
                | OpCode::OpLeave
                | OpCode::OpAbort,
            )
            | Err(_) => {
                self.counters.protocol_errors += 1;
                reply::unknown_operation(op.code).into()
            }
        };
        // A get can expire its key on the spot: log that too, but do not wait for it.
        self.log_removals();
        executed
    }

    /// Drops `key` locally if its stored version is at most `version`: no tombstone, nothing
    /// replicated, and logged as an eviction (which recovery replays by forgetting that
    /// version) so a restart does not bring it back. Returns `None` when nothing was dropped,
    /// else the log record to wait for (`Some(None)` without a log, or if the log failed: the
    /// key is gone from memory either way).
    pub fn drop_local(&mut self, key: &[u8], version: Version) -> Option<Option<u64>> {
        if !self.store.forget(key, version) {
            return None;
        }
        let entry = Entry {
            version_hlc: version.hlc,
            version_node: version.node,
            ..Entry::new(LogOp::Evict, key)
        };
        Some(self.append(&entry).ok().flatten())
    }

    /// Reclaims up to `max` expired entries, logging each; returns how many.
    pub fn expire(&mut self, now_ms: u64, max: usize) -> usize {
        let n = self.store.expire(now_ms, max);
        self.log_removals();
        n
    }

    /// A client's `OP_GET` of `key` (what [`Shard::execute`] runs for one): hands the live
    /// value, or `None`, to `read` (which copies what it needs: the value borrows the store)
    /// and returns what `read` made of it, with the log record the reply must wait for. Logs
    /// the expiry it may cause.
    pub fn get<R>(
        &mut self,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(Option<&[u8]>) -> R,
    ) -> (R, Option<u64>) {
        let hash = self.store.key_hash(key);
        self.get_hashed(key, hash, now_ms, read)
    }

    /// [`Shard::get`], with `key`'s hash computed before by this shard's store
    /// ([`Store::key_hash`]: the fast path's read-ahead hashes each key once).
    pub fn get_hashed<R>(
        &mut self,
        key: &[u8],
        hash: KeyHash,
        now_ms: u64,
        read: impl FnOnce(Option<&[u8]>) -> R,
    ) -> (R, Option<u64>) {
        self.counters.gets += 1;
        let made = read(self.store.get_hashed(key, hash, now_ms));
        // Never answer with (or about) a change a crash could still undo.
        let wait = self.unsettled(key);
        // A get can expire its key on the spot: log that too, but do not wait for it.
        self.log_removals();
        (made, wait)
    }

    /// A client's `OP_PUT` (what [`Shard::execute`] runs for one).
    pub fn put(&mut self, key: &[u8], value: &[u8], ttl_ms: u64, now_ms: u64) -> Executed {
        match self.put_outcome(key, value, ttl_ms, now_ms) {
            PutOutcome::Stored { version, wait } => Executed {
                result: versioned(OpResult::default(), version),
                wait,
            },
            PutOutcome::Other(executed) => *executed,
        }
    }

    /// [`Shard::put`], its outcome not yet made a result (the fast path encodes a stored
    /// put's reply straight from its version).
    pub fn put_outcome(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_ms: u64,
        now_ms: u64,
    ) -> PutOutcome {
        let put = self.apply_put(key, value, ttl_ms, now_ms);
        self.log_removals();
        put
    }

    fn apply_put(&mut self, key: &[u8], value: &[u8], ttl_ms: u64, now_ms: u64) -> PutOutcome {
        self.counters.puts += 1;
        if let Some(refused) = self.refuse_writes() {
            return PutOutcome::Other(Box::new(refused));
        }
        let version = self.hlc.now(now_ms);
        let expires_at_ms = deadline(now_ms, ttl_ms);
        match self.store.put(key, value, expires_at_ms, version, now_ms) {
            Ok(Applied::Stored) => {
                let entry = Entry {
                    value,
                    expires_at_ms,
                    version_hlc: version.hlc,
                    version_node: version.node,
                    ..Entry::new(LogOp::Put, key)
                };
                match self.log_change(&entry) {
                    Ok(wait) => PutOutcome::Stored { version, wait },
                    Err(failed) => PutOutcome::Other(Box::new(failed.into())),
                }
            }
            // A stale write cannot happen with one clock per shard, but either way the store
            // holds a version at least as new as this one.
            Ok(Applied::Stale) => {
                PutOutcome::Other(Box::new(self.settled_after(OpResult::default(), key)))
            }
            Err(e) => PutOutcome::Other(Box::new(reply::store_error(&e).into())),
        }
    }

    /// A client's `OP_REMOVE` (what [`Shard::execute`] runs for one).
    pub fn remove(&mut self, key: &[u8], now_ms: u64) -> Executed {
        let executed = self.apply_remove(key, now_ms);
        self.log_removals();
        executed
    }

    fn apply_remove(&mut self, key: &[u8], now_ms: u64) -> Executed {
        self.counters.removes += 1;
        if let Some(refused) = self.refuse_writes() {
            return refused;
        }
        let version = self.hlc.now(now_ms);
        match self.store.remove(key, version, now_ms) {
            Ok(removed) => {
                let result = OpResult {
                    found: removed == Removed::Removed,
                    ..versioned(OpResult::default(), version)
                };
                // A remove that found nothing changed nothing, unless it left a tombstone.
                let changed = removed == Removed::Removed
                    || (removed == Removed::NotFound && self.store.config().tombstone_grace_ms > 0);
                if changed {
                    let entry = Entry {
                        version_hlc: version.hlc,
                        version_node: version.node,
                        ..Entry::new(LogOp::Remove, key)
                    };
                    self.logged(result, &entry)
                } else {
                    self.settled_after(result, key)
                }
            }
            Err(e) => reply::store_error(&e).into(),
        }
    }

    fn touch(&mut self, op: &Op, now_ms: u64) -> Executed {
        self.counters.touches += 1;
        if let Some(refused) = self.refuse_writes() {
            return refused;
        }
        let version = self.hlc.now(now_ms);
        let expires_at_ms = deadline(now_ms, op.ttl_ms);
        let touched = match self.store.touch(&op.key, expires_at_ms, version, now_ms) {
            Ok(touched) => touched,
            Err(e) => return reply::store_error(&e).into(),
        };
        if touched {
            let entry = Entry {
                expires_at_ms,
                version_hlc: version.hlc,
                version_node: version.node,
                ..Entry::new(LogOp::Touch, &op.key)
            };
            let result = OpResult {
                found: true,
                ..versioned(OpResult::default(), version)
            };
            self.logged(result, &entry)
        } else {
            self.settled_after(reply::status(Status::NotFound, ""), &op.key)
        }
    }

    /// The remaining TTL, read without touching the LRU order or the hit counters.
    fn ttl(&mut self, op: &Op, now_ms: u64) -> Executed {
        let result = match self.store.expires_at(&op.key, now_ms) {
            None => reply::status(Status::NotFound, ""),
            Some(deadline) => OpResult {
                found: true,
                ttl_ms: remaining(deadline, now_ms),
                ..OpResult::default()
            },
        };
        self.settled_after(result, &op.key)
    }

    pub fn stats(&self) -> ShardStats {
        let s = self.store.stats();
        let c = &self.counters;
        let wal = self.log.as_ref().map(Log::stats).unwrap_or_default();
        let mut stats = ShardStats {
            shard: self.id as u32,
            keys: self.store.len() as u64,
            bytes_used: self.store.bytes_used(),
            max_bytes: s.max_memory,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
            expirations: s.expirations,
            gets: c.gets,
            puts: c.puts,
            removes: c.removes,
            touches: c.touches,
            forwarded_out: c.forwarded_out,
            forwarded_in: c.forwarded_in,
            connections_accepted: c.connections_accepted,
            connections_open: c.connections_open,
            protocol_errors: c.protocol_errors,
            wal_records: wal.records,
            wal_writes: wal.writes,
            wal_syncs: wal.syncs,
            wal_bytes: wal.bytes,
            wal_failed: u64::from(self.log.as_ref().is_some_and(|l| l.failure().is_some())),
            wal_write_us: wal.write_micros,
            wal_sync_us: wal.sync_micros,
            node_forwarded_out: c.node_forwarded_out,
            node_forwarded_in: c.node_forwarded_in,
            replica_writes_sent: c.replica_writes_sent,
            replica_writes_failed: c.replica_writes_failed,
            replica_writes_applied: c.replica_writes_applied,
            quorum_reads: c.quorum_reads,
            read_repairs: c.read_repairs,
            ..ShardStats::default()
        };
        self.stream.annotate(&mut stats, std::time::Instant::now());
        stats
    }
}

/// `result` carrying the version of the write it answers (see `Op.replica`).
pub(crate) fn versioned(result: OpResult, version: Version) -> OpResult {
    OpResult {
        version_hlc: version.hlc,
        version_node: version.node,
        ..result
    }
}

/// The absolute deadline of a relative TTL; 0 stays "never".
fn deadline(now_ms: u64, ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        0
    } else {
        now_ms.saturating_add(ttl_ms)
    }
}

/// Milliseconds left before `deadline` (0: never expires), at least 1 for a live key.
pub(super) fn remaining(deadline: u64, now_ms: u64) -> u64 {
    if deadline == 0 {
        0
    } else {
        deadline.saturating_sub(now_ms).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(max_memory: u64) -> Shard {
        let config = StoreConfig {
            max_memory,
            ..StoreConfig::default()
        };
        Shard::new(0, 7, config, Topology::default())
    }

    fn op(code: OpCode, key: &str, value: &str, ttl_ms: u64) -> Op {
        kvmesh_net::client::op(code, key.as_bytes(), value.as_bytes(), ttl_ms)
    }

    #[test]
    fn put_get_remove_touch() {
        let mut s = shard(1 << 20);
        let t = 1_000_000;
        assert_eq!(
            s.execute(&op(OpCode::OpGet, "k", "", 0), t).result.status(),
            Status::NotFound
        );
        assert_eq!(
            s.execute(&op(OpCode::OpPut, "k", "v", 0), t)
                .result
                .status(),
            Status::Ok
        );
        let got = s.execute(&op(OpCode::OpGet, "k", "", 0), t).result;
        assert_eq!(
            (got.status(), got.value.as_slice()),
            (Status::Ok, &b"v"[..])
        );
        assert!(
            s.execute(&op(OpCode::OpTouch, "k", "", 500), t)
                .result
                .found
        );
        assert_eq!(
            s.execute(&op(OpCode::OpGet, "k", "", 0), t + 500)
                .result
                .status(),
            Status::NotFound
        );
        assert!(
            !s.execute(&op(OpCode::OpRemove, "k", "", 0), t + 501)
                .result
                .found
        );
        let stats = s.stats();
        assert_eq!(
            (stats.gets, stats.puts, stats.touches, stats.removes),
            (3, 1, 1, 1)
        );
        assert_eq!((stats.hits, stats.misses, stats.expirations), (1, 2, 1));
    }

    #[test]
    fn ttl_reports_what_is_left() {
        let mut s = shard(1 << 20);
        let ttl = |s: &mut Shard, key: &str, t| s.execute(&op(OpCode::OpTtl, key, "", 0), t).result;
        s.execute(&op(OpCode::OpPut, "a", "1", 1_000), 0);
        s.execute(&op(OpCode::OpPut, "b", "2", 0), 0);
        assert_eq!(ttl(&mut s, "a", 250).ttl_ms, 750);
        assert_eq!(ttl(&mut s, "a", 999).ttl_ms, 1);
        assert_eq!(ttl(&mut s, "a", 1_000).status(), Status::NotFound);
        let forever = ttl(&mut s, "b", 5);
        assert_eq!((forever.status(), forever.ttl_ms), (Status::Ok, 0));
        assert_eq!(ttl(&mut s, "c", 0).status(), Status::NotFound);
        // Reading a TTL is not a get: no hit, no miss.
        assert_eq!((s.stats().hits, s.stats().misses), (0, 0));
    }

    #[test]
    fn ttl_and_background_expiry() {
        let mut s = shard(1 << 20);
        s.execute(&op(OpCode::OpPut, "a", "1", 1_000), 0);
        s.execute(&op(OpCode::OpPut, "b", "2", 0), 0);
        assert_eq!(s.expire(999, 100), 0);
        assert_eq!(s.expire(1_000, 100), 1);
        assert_eq!(s.stats().keys, 1);
    }

    #[test]
    fn a_local_drop_forgets_only_up_to_its_version() {
        let mut s = shard(1 << 20);
        let put = s.execute(&op(OpCode::OpPut, "k", "v", 0), 5).result;
        let version = Version::new(put.version_hlc, put.version_node);
        let older = Version::new(put.version_hlc - 1, put.version_node);
        assert_eq!(s.drop_local(b"k", older), None, "a newer write is kept");
        assert_eq!(s.drop_local(b"k", version), Some(None), "no log attached");
        assert_eq!(s.drop_local(b"k", version), None, "already gone");
        let got = s.execute(&op(OpCode::OpGet, "k", "", 0), 5).result;
        assert_eq!(got.status(), Status::NotFound);
        // No tombstone: the key is simply absent, and nothing counts it as removed.
        assert_eq!((s.stats().keys, s.stats().removes), (0, 0));
    }

    #[test]
    fn unknown_op_is_counted() {
        let mut s = shard(1 << 20);
        let mut bad = op(OpCode::OpGet, "k", "", 0);
        bad.code = 42;
        assert_eq!(s.execute(&bad, 0).result.status(), Status::UnknownOperation);
        assert_eq!(s.stats().protocol_errors, 1);
    }

    #[test]
    fn entry_larger_than_memory_is_refused() {
        let mut s = shard(Store::entry_charge(1, 10));
        let big = "x".repeat(1000);
        assert_eq!(
            s.execute(&op(OpCode::OpPut, "k", &big, 0), 0)
                .result
                .status(),
            Status::NoSpace
        );
    }
}
