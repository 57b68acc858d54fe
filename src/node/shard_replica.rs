//! A shard applying writes as a replica (`Op.replica`): the coordinator chose the version,
//! this shard keeps whichever version is newest (last writer wins) and logs what changed, so
//! retries, reordering and hinted handoff never move a key back in time.

use kvmesh_engine::{Applied, Removed, Version};
use kvmesh_proto::wire::{Op, OpCode, OpResult, Status};
use kvmesh_wal::{Entry, Op as LogOp};

use super::{deadline, remaining, reply, versioned, Executed, Shard};

impl Shard {
    /// Executes a replica op: a versioned put, remove or touch, or a read of this shard's own
    /// copy with its version. A write at or below the stored version changes nothing and is
    /// still answered OK, once the newer state is durable.
    pub(super) fn execute_replica(&mut self, op: &Op, now_ms: u64) -> Executed {
        let version = Version::new(op.version_hlc, op.version_node);
        let code = OpCode::try_from(op.code);
        if code == Ok(OpCode::OpGet) {
            return self.peek(op, now_ms);
        }
        if let Some(refused) = self.refuse_writes() {
            return refused;
        }
        if version == Version::ZERO {
            return reply::status(Status::InvalidArgument, "a replica write needs a version")
                .into();
        }
        self.counters.replica_writes_applied += 1;
        // Later versions this node issues sort after every version it has stored.
        self.hlc.observe(version);
        let key = op.key.as_slice();
        let ok = versioned(OpResult::default(), version);
        match code {
            Ok(OpCode::OpPut) => {
                let expires_at_ms = deadline(now_ms, op.ttl_ms);
                match self
                    .store
                    .put(key, &op.value, expires_at_ms, version, now_ms)
                {
                    Ok(Applied::Stored) => {
                        let entry = Entry {
                            value: &op.value,
                            expires_at_ms,
                            version_hlc: version.hlc,
                            version_node: version.node,
                            ..Entry::new(LogOp::Put, key)
                        };
                        self.logged(ok, &entry)
                    }
                    Ok(Applied::Stale) => self.settled_after(ok, key),
                    Err(e) => reply::store_error(&e).into(),
                }
            }
            Ok(OpCode::OpRemove) => match self.store.remove(key, version, now_ms) {
                Ok(Removed::Stale) => self.settled_after(ok, key),
                Ok(Removed::NotFound) if self.store.config().tombstone_grace_ms == 0 => {
                    self.settled_after(ok, key)
                }
                Ok(_) => {
                    let entry = Entry {
                        version_hlc: version.hlc,
                        version_node: version.node,
                        ..Entry::new(LogOp::Remove, key)
                    };
                    self.logged(ok, &entry)
                }
                Err(e) => reply::store_error(&e).into(),
            },
            Ok(OpCode::OpTouch) => {
                let expires_at_ms = deadline(now_ms, op.ttl_ms);
                match self.store.touch(key, expires_at_ms, version, now_ms) {
                    Ok(true) => {
                        let entry = Entry {
                            expires_at_ms,
                            version_hlc: version.hlc,
                            version_node: version.node,
                            ..Entry::new(LogOp::Touch, key)
                        };
                        self.logged(ok, &entry)
                    }
                    Ok(false) => self.settled_after(ok, key),
                    Err(e) => reply::store_error(&e).into(),
                }
            }
            _ => {
                self.counters.protocol_errors += 1;
                reply::status(
                    Status::InvalidArgument,
                    format!("operation {} cannot be applied as a replica", op.code),
                )
                .into()
            }
        }
    }

    /// This shard's own copy of the key, its version and its remaining TTL (`ttl_ms`, 0 =
    /// never): NOT_FOUND (with the tombstone's version, if any) when there is no live value.
    fn peek(&mut self, op: &Op, now_ms: u64) -> Executed {
        let result = match self.store.peek(&op.key, now_ms) {
            Some(p) if !p.tombstone => OpResult {
                value: p.value.to_vec(),
                found: true,
                ttl_ms: remaining(p.expires_at_ms, now_ms),
                ..versioned(OpResult::default(), p.version)
            },
            Some(p) => versioned(reply::status(Status::NotFound, "removed"), p.version),
            None => reply::status(Status::NotFound, ""),
        };
        self.settled_after(result, &op.key)
    }
}

#[cfg(test)]
mod tests {
    use kvmesh_engine::Config as StoreConfig;
    use kvmesh_proto::wire::Topology;

    use super::*;

    fn replica(code: OpCode, key: &str, value: &str, hlc: u64, node: u32) -> Op {
        Op {
            replica: true,
            version_hlc: hlc,
            version_node: node,
            ..kvmesh_net::client::op(code, key.as_bytes(), value.as_bytes(), 0)
        }
    }

    #[test]
    fn last_writer_wins_whatever_the_order() {
        let config = StoreConfig {
            tombstone_grace_ms: 60_000,
            ..StoreConfig::default()
        };
        let mut s = Shard::new(0, 9, config, Topology::default());
        let read = |s: &mut Shard| {
            let r = s.execute(&replica(OpCode::OpGet, "k", "", 0, 0), 10).result;
            (r.status(), r.value, r.version_hlc, r.version_node)
        };
        // Arrives out of order: the newer write first.
        assert_eq!(
            s.execute(&replica(OpCode::OpPut, "k", "new", 20, 1), 10)
                .result
                .status(),
            Status::Ok
        );
        assert_eq!(
            s.execute(&replica(OpCode::OpPut, "k", "old", 10, 2), 10)
                .result
                .status(),
            Status::Ok
        );
        assert_eq!(read(&mut s), (Status::Ok, b"new".to_vec(), 20, 1));
        // Equal hlc: the higher node id wins.
        s.execute(&replica(OpCode::OpPut, "k", "tie", 20, 3), 10);
        assert_eq!(read(&mut s), (Status::Ok, b"tie".to_vec(), 20, 3));
        // A remove leaves a tombstone that an older put cannot get past.
        s.execute(&replica(OpCode::OpRemove, "k", "", 30, 1), 10);
        s.execute(&replica(OpCode::OpPut, "k", "late", 25, 2), 10);
        assert_eq!(read(&mut s), (Status::NotFound, vec![], 30, 1));
        // The shard's own clock now issues versions above what it applied.
        let own = s
            .execute(&kvmesh_net::client::op(OpCode::OpPut, b"k", b"mine", 0), 0)
            .result;
        assert!(own.version_hlc > 30);
        assert_eq!(s.stats().replica_writes_applied, 5);
    }
}
