//! Applying recovered log records to a shard's store. Pure: records and a clock in, a store
//! changed, and what could not be applied counted.

use kvmesh_engine::{RemovalKind, Store, Version};
use kvmesh_wal::{Op, Record};

/// The state of one shard's replay.
pub struct Replay {
    now_ms: u64,
    /// The largest version seen: the shard's clock resumes above it.
    pub max_version: Version,
    /// Puts the store refused under the current limits (say, a lowered --max-value-size).
    pub refused: u64,
    /// Why the first refused put was refused.
    pub first_refusal: Option<String>,
    /// Entries the store dropped on its own during replay (a lower --max-memory than before,
    /// or an entry found expired): to be logged once the log is open.
    pub removals: Vec<(RemovalKind, Vec<u8>, Version)>,
}

impl Replay {
    pub fn new(now_ms: u64) -> Replay {
        Replay {
            now_ms,
            max_version: Version::ZERO,
            refused: 0,
            first_refusal: None,
            removals: Vec::new(),
        }
    }

    /// Loads one snapshot entry: a put of its value, deadline and version. Entries come before
    /// the records after the snapshot, and last writer wins by version, so an entry that a
    /// later record rewrote or removed ends as that record says.
    pub fn load(&mut self, store: &mut Store, entry: &kvmesh_wal::snapshot::Entry<'_>) {
        let version = Version::new(entry.version_hlc, entry.version_node);
        self.max_version = self.max_version.max(version);
        let now = self.now_ms;
        if entry.expires_at_ms != 0 && entry.expires_at_ms <= now {
            store.forget(entry.key, version);
        } else if let Err(e) = store.put(entry.key, entry.value, entry.expires_at_ms, version, now)
        {
            store.forget(entry.key, version);
            self.refused += 1;
            self.first_refusal.get_or_insert_with(|| e.to_string());
        }
        for removal in store.drain_removals() {
            self.removals
                .push((removal.kind, removal.key().to_vec(), removal.version));
        }
    }

    /// Applies one record as the shard applied it before the restart. Deadlines are the
    /// original absolute ones: an entry whose deadline passed while the node was down is not
    /// brought back. Evictions and expirations drop exactly the version they dropped then.
    pub fn apply(&mut self, store: &mut Store, record: &Record) {
        let version = Version::new(record.version_hlc, record.version_node);
        self.max_version = self.max_version.max(version);
        let (key, now) = (&record.key[..], self.now_ms);
        let expired = record.expires_at_ms != 0 && record.expires_at_ms <= now;
        match record.op {
            Op::Put if expired => {
                store.forget(key, version);
            }
            Op::Put => {
                if let Err(e) = store.put(key, &record.value, record.expires_at_ms, version, now) {
                    // Keep the log's order: what this put replaced is gone either way.
                    store.forget(key, version);
                    self.refused += 1;
                    self.first_refusal.get_or_insert_with(|| e.to_string());
                }
            }
            Op::Remove => {
                // Only a key longer than today's limit can fail here; it cannot be stored.
                let _ = store.remove(key, version, now);
            }
            Op::Touch if expired => {
                store.forget(key, version);
            }
            Op::Touch => {
                // Replay's store is as large as the one that logged the touch, which found room.
                let _ = store.touch(key, record.expires_at_ms, version, now);
            }
            Op::Evict | Op::Expire => {
                store.forget(key, version);
            }
            Op::Synced => {}
        }
        for removal in store.drain_removals() {
            self.removals
                .push((removal.kind, removal.key().to_vec(), removal.version));
        }
    }
}

#[cfg(test)]
mod tests {
    use kvmesh_engine::Config;

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn record(seq: u64, op: Op, key: &str, value: &str, expires_at_ms: u64, hlc: u64) -> Record {
        Record {
            seq,
            op,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            expires_at_ms,
            version_hlc: hlc,
            version_node: 1,
            synced_below: 0,
        }
    }

    #[test]
    fn replays_what_each_record_says() {
        let mut store = Store::new(Config::default());
        let mut replay = Replay::new(NOW);
        let log = [
            record(1, Op::Put, "a", "1", 0, 10),
            record(2, Op::Put, "b", "2", NOW + 60_000, 11), // keeps its deadline
            record(3, Op::Put, "c", "3", NOW - 1, 12),      // expired while down
            record(4, Op::Put, "d", "4", 0, 13),
            record(5, Op::Remove, "d", "", 0, 14),
            record(6, Op::Put, "e", "5", 0, 15),
            record(7, Op::Evict, "e", "", 0, 15),
            record(8, Op::Put, "f", "6", 0, 16),
            record(9, Op::Touch, "f", "", NOW - 5, 17), // its new deadline passed too
            record(10, Op::Put, "g", "7", 0, 18),
            record(11, Op::Touch, "g", "", NOW + 5_000, 19),
            record(12, Op::Synced, "", "", 0, 0),
        ];
        for r in &log {
            replay.apply(&mut store, r);
        }
        let got = |s: &mut Store, k: &str| s.get(k.as_bytes(), NOW).map(|v| v.to_vec());
        assert_eq!(got(&mut store, "a"), Some(b"1".to_vec()));
        assert_eq!(got(&mut store, "b"), Some(b"2".to_vec()));
        assert_eq!(store.expires_at(b"b", NOW), Some(NOW + 60_000));
        for gone in ["c", "d", "e", "f"] {
            assert_eq!(got(&mut store, gone), None, "{gone}");
        }
        assert_eq!(store.expires_at(b"g", NOW), Some(NOW + 5_000));
        assert_eq!(replay.max_version, Version::new(19, 1));
        assert_eq!((replay.refused, replay.removals.len()), (0, 0));
    }

    #[test]
    fn an_eviction_drops_only_the_version_it_evicted() {
        let mut store = Store::new(Config::default());
        let mut replay = Replay::new(NOW);
        for r in [
            record(1, Op::Put, "k", "old", 0, 10),
            record(2, Op::Put, "k", "new", 0, 20),
            record(3, Op::Evict, "k", "", 0, 10), // out of order: must not drop "new"
        ] {
            replay.apply(&mut store, &r);
        }
        assert_eq!(store.get(b"k", NOW), Some(&b"new"[..]));
    }

    #[test]
    fn limits_lowered_since_are_counted_not_fatal() {
        let mut store = Store::new(Config {
            max_value_len: 3,
            ..Config::default()
        });
        let mut replay = Replay::new(NOW);
        replay.apply(&mut store, &record(1, Op::Put, "k", "abc", 0, 1));
        replay.apply(&mut store, &record(2, Op::Put, "k", "abcdef", 0, 2));
        assert_eq!(
            store.get(b"k", NOW),
            None,
            "the older value does not come back"
        );
        assert_eq!(replay.refused, 1);
        assert!(replay
            .first_refusal
            .as_deref()
            .unwrap()
            .contains("max_value_len"));
    }

    #[test]
    fn a_smaller_memory_budget_evicts_and_reports_it() {
        let mut store = Store::new(Config {
            max_memory: Store::entry_charge(1, 100) * 2,
            ..Config::default()
        });
        let mut replay = Replay::new(NOW);
        let value = "v".repeat(100);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            replay.apply(
                &mut store,
                &record(i as u64 + 1, Op::Put, k, &value, 0, i as u64 + 1),
            );
        }
        assert_eq!(replay.removals.len(), 1);
        assert_eq!(replay.removals[0].0, RemovalKind::Evicted);
        assert_eq!(replay.removals[0].1, b"a");
    }
}
