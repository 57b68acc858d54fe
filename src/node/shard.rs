//! One shard's state and its request handler. `Shard::execute` returns a value and never touches
//! a socket, so it is tested with a plain clock.

use kvmesh_engine::{Applied, Config as StoreConfig, Hlc, Removed, Store};
use kvmesh_proto::wire::{Op, OpCode, OpResult, ShardStats, Status, Topology};

use super::reply;

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
}

/// What one shard owns: its store, its clock and its counters.
pub struct Shard {
    id: usize,
    store: Store,
    hlc: Hlc,
    topology: Topology,
    pub counters: Counters,
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
        }
    }

    /// Executes one op that this shard owns, or one about the shard itself. Routing has already
    /// checked the op code and the key length.
    pub fn execute(&mut self, op: &Op, now_ms: u64) -> OpResult {
        let result = match OpCode::try_from(op.code) {
            Ok(OpCode::OpGet) => self.get(op, now_ms),
            Ok(OpCode::OpPut) => self.put(op, now_ms),
            Ok(OpCode::OpRemove) => self.remove(op, now_ms),
            Ok(OpCode::OpTouch) => self.touch(op, now_ms),
            Ok(OpCode::OpStats) => OpResult {
                stats: Some(self.stats()),
                ..OpResult::default()
            },
            Ok(OpCode::OpTopology) => OpResult {
                topology: Some(self.topology.clone()),
                ..OpResult::default()
            },
            Ok(OpCode::OpUnspecified) | Err(_) => {
                self.counters.protocol_errors += 1;
                reply::unknown_operation(op.code)
            }
        };
        // No write-ahead log yet: evictions and expirations have nowhere to go.
        self.store.drain_removals();
        result
    }

    /// Reclaims up to `max` expired entries; returns how many.
    pub fn expire(&mut self, now_ms: u64, max: usize) -> usize {
        let n = self.store.expire(now_ms, max);
        self.store.drain_removals();
        n
    }

    fn get(&mut self, op: &Op, now_ms: u64) -> OpResult {
        self.counters.gets += 1;
        match self.store.get(&op.key, now_ms) {
            Some(value) => OpResult {
                value: value.to_vec(),
                found: true,
                ..OpResult::default()
            },
            None => reply::status(Status::NotFound, ""),
        }
    }

    fn put(&mut self, op: &Op, now_ms: u64) -> OpResult {
        self.counters.puts += 1;
        let version = self.hlc.now(now_ms);
        match self.store.put(
            &op.key,
            &op.value,
            deadline(now_ms, op.ttl_ms),
            version,
            now_ms,
        ) {
            // A stale write cannot happen with one clock per shard, but either way the store
            // holds a version at least as new as this one.
            Ok(Applied::Stored | Applied::Stale) => OpResult::default(),
            Err(e) => reply::store_error(&e),
        }
    }

    fn remove(&mut self, op: &Op, now_ms: u64) -> OpResult {
        self.counters.removes += 1;
        let version = self.hlc.now(now_ms);
        match self.store.remove(&op.key, version, now_ms) {
            Ok(removed) => OpResult {
                found: removed == Removed::Removed,
                ..OpResult::default()
            },
            Err(e) => reply::store_error(&e),
        }
    }

    fn touch(&mut self, op: &Op, now_ms: u64) -> OpResult {
        self.counters.touches += 1;
        let version = self.hlc.now(now_ms);
        if self
            .store
            .touch(&op.key, deadline(now_ms, op.ttl_ms), version, now_ms)
        {
            OpResult {
                found: true,
                ..OpResult::default()
            }
        } else {
            reply::status(Status::NotFound, "")
        }
    }

    pub fn stats(&self) -> ShardStats {
        let s = self.store.stats();
        let c = &self.counters;
        ShardStats {
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
        }
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
            s.execute(&op(OpCode::OpGet, "k", "", 0), t).status(),
            Status::NotFound
        );
        assert_eq!(
            s.execute(&op(OpCode::OpPut, "k", "v", 0), t).status(),
            Status::Ok
        );
        let got = s.execute(&op(OpCode::OpGet, "k", "", 0), t);
        assert_eq!(
            (got.status(), got.value.as_slice()),
            (Status::Ok, &b"v"[..])
        );
        assert!(s.execute(&op(OpCode::OpTouch, "k", "", 500), t).found);
        assert_eq!(
            s.execute(&op(OpCode::OpGet, "k", "", 0), t + 500).status(),
            Status::NotFound
        );
        assert!(!s.execute(&op(OpCode::OpRemove, "k", "", 0), t + 501).found);
        let stats = s.stats();
        assert_eq!(
            (stats.gets, stats.puts, stats.touches, stats.removes),
            (3, 1, 1, 1)
        );
        assert_eq!((stats.hits, stats.misses, stats.expirations), (1, 2, 1));
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
    fn unknown_op_is_counted() {
        let mut s = shard(1 << 20);
        let mut bad = op(OpCode::OpGet, "k", "", 0);
        bad.code = 42;
        assert_eq!(s.execute(&bad, 0).status(), Status::UnknownOperation);
        assert_eq!(s.stats().protocol_errors, 1);
    }

    #[test]
    fn entry_larger_than_memory_is_refused() {
        let mut s = shard(Store::entry_charge(1, 10));
        let big = "x".repeat(1000);
        assert_eq!(
            s.execute(&op(OpCode::OpPut, "k", &big, 0), 0).status(),
            Status::NoSpace
        );
    }
}
