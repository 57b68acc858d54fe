//! Property tests: random operation sequences run against the store and the model side by
//! side, with small memory limits (eviction), short TTLs and grace periods (expiry), small
//! version ranges (stale writes) and limits that some keys and values exceed (errors). After
//! every operation the results, the reported removals, the byte accounting, the counters,
//! every key's visible state and what a scan (in steps of 3 slots) sees must agree. Another
//! scan runs in steps between the operations and must see every key live throughout it.

#[path = "support/model.rs"]
mod model;

use std::collections::{BTreeMap, BTreeSet};

use kvmesh_engine::{Config, Cursor, Store, Version};
use model::Model;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
/// Lengths of the keys in play; 20 and 40 exceed a `max_key_len` of 16.
const KEY_LENS: [usize; 6] = [1, 2, 5, 12, 20, 40];

fn key(i: usize) -> Vec<u8> {
    (0..KEY_LENS[i]).map(|j| (i * 37 + j) as u8).collect()
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: usize,
        len: usize,
        ttl: Option<u64>,
        ver: Version,
    },
    Get {
        key: usize,
    },
    Remove {
        key: usize,
        ver: Version,
    },
    Touch {
        key: usize,
        ttl: Option<u64>,
        ver: Version,
    },
    ExpiresAt {
        key: usize,
    },
    Expire,
    Advance(u64),
    /// One step (3 slots) of a scan that runs between the other operations.
    ScanStep,
}

fn version() -> impl Strategy<Value = Version> {
    (0..16u64, 0..3u32).prop_map(|(hlc, node)| Version::new(hlc, node))
}

/// `None`: no deadline; `Some(0)`: a deadline of now, already expired.
fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 3 => (0..60u64).prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEY_LENS.len();
    prop_oneof![
        6 => (key.clone(), 0..200usize, ttl(), version()).prop_map(|(key, len, ttl, ver)| Op::Put { key, len, ttl, ver }),
        5 => key.clone().prop_map(|key| Op::Get { key }),
        2 => (key.clone(), version()).prop_map(|(key, ver)| Op::Remove { key, ver }),
        2 => (key.clone(), ttl(), version()).prop_map(|(key, ttl, ver)| Op::Touch { key, ttl, ver }),
        1 => key.prop_map(|key| Op::ExpiresAt { key }),
        1 => Just(Op::Expire),
        3 => (0..40u64).prop_map(Op::Advance),
        3 => Just(Op::ScanStep),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        300..2_500u64,
        prop_oneof![Just(16usize), Just(64)],
        prop_oneof![Just(120usize), Just(1_000)],
        prop_oneof![Just(0u64), Just(25)],
    )
        .prop_map(
            |(max_memory, max_key_len, max_value_len, tombstone_grace_ms)| Config {
                max_memory,
                max_key_len,
                max_value_len,
                tombstone_grace_ms,
            },
        )
}

fn run(cfg: Config, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = Store::new(cfg.clone());
    let mut model = Model::new(cfg.clone());
    let mut now = T0;
    let mut scan: Option<RunningScan> = None;
    for (step, op) in ops.into_iter().enumerate() {
        let deadline = |ttl: Option<u64>| ttl.map_or(0, |t| now + t);
        let mut sort_removals = false;
        match op {
            Op::Put {
                key: k,
                len,
                ttl,
                ver,
            } => {
                let value = vec![step as u8; len];
                let d = deadline(ttl);
                prop_assert_eq!(
                    store.put(&key(k), &value, d, ver, now),
                    model.put(&key(k), &value, d, ver, now),
                    "put at {}",
                    step
                );
            }
            Op::Get { key: k } => {
                let got = store.get(&key(k), now).map(<[u8]>::to_vec);
                prop_assert_eq!(got, model.get(&key(k), now), "get at {}", step);
            }
            Op::Remove { key: k, ver } => {
                prop_assert_eq!(
                    store.remove(&key(k), ver, now),
                    model.remove(&key(k), ver, now),
                    "remove at {}",
                    step
                );
            }
            Op::Touch { key: k, ttl, ver } => {
                let d = deadline(ttl);
                prop_assert_eq!(
                    store.touch(&key(k), d, ver, now),
                    Ok(model.touch(&key(k), d, ver, now)),
                    "touch at {}",
                    step
                );
            }
            Op::ExpiresAt { key: k } => {
                prop_assert_eq!(
                    store.expires_at(&key(k), now),
                    model.expires_at(&key(k), now)
                );
            }
            Op::Expire => {
                // Which of several due entries goes first is the wheel's business: compare sets.
                sort_removals = true;
                prop_assert_eq!(
                    store.expire(now, usize::MAX),
                    model.expire(now),
                    "expire at {}",
                    step
                );
            }
            Op::Advance(ms) => now += ms,
            Op::ScanStep => {
                let running = scan.get_or_insert_with(|| RunningScan {
                    cursor: Cursor::START,
                    seen: BTreeSet::new(),
                    required: model_live(&model, now).into_keys().collect(),
                });
                let next = store.scan(running.cursor, 3, now, |e| {
                    running.seen.insert(e.key.to_vec());
                });
                match next {
                    Some(c) => running.cursor = c,
                    None => {
                        let missed: Vec<_> = running.required.difference(&running.seen).collect();
                        prop_assert!(
                            missed.is_empty(),
                            "scan ending at {} missed {:?}",
                            step,
                            missed
                        );
                        scan = None;
                    }
                }
            }
        }
        // A key the running scan must see stays required only while it stays live.
        if let Some(running) = &mut scan {
            let live = model_live(&model, now);
            running.required.retain(|k| live.contains_key(k));
        }

        let mut got: Vec<_> = store
            .drain_removals()
            .map(|r| (r.kind, r.key().to_vec(), r.version))
            .collect();
        let mut want = std::mem::take(&mut model.removals);
        if sort_removals {
            got.sort_by(|a, b| a.1.cmp(&b.1));
            want.sort_by(|a, b| a.1.cmp(&b.1));
        }
        prop_assert_eq!(got, want, "removals at step {}", step);

        let stats = store.stats();
        prop_assert_eq!(store.bytes_used(), model.bytes, "bytes at step {}", step);
        prop_assert!(store.bytes_used() <= cfg.max_memory);
        prop_assert_eq!(store.len(), model.live());
        prop_assert_eq!(stats.tombstones as usize, model.tombstones());
        let c = &model.counters;
        prop_assert_eq!(
            (stats.hits, stats.misses, stats.evictions, stats.expirations),
            (c.hits, c.misses, c.evictions, c.expirations)
        );
        for k in 0..KEY_LENS.len() {
            prop_assert_eq!(
                store.expires_at(&key(k), now),
                model.expires_at(&key(k), now),
                "key {} at step {}",
                k,
                step
            );
        }
        // A whole scan here would end the running one (one scan at a time per store).
        if scan.is_none() {
            prop_assert_eq!(
                scanned(&mut store, now),
                model_live(&model, now),
                "scan at step {}",
                step
            );
        }
    }
    // Reclaiming everything leaves nothing charged.
    let end = now + 1_000;
    store.expire(end, usize::MAX);
    model.expire(end);
    prop_assert_eq!(store.bytes_used(), model.bytes);
    Ok(())
}

type Live = BTreeMap<Vec<u8>, (Vec<u8>, u64, Version)>;

/// A scan run in steps between other operations: every key live from its start to its end
/// (`required`, pruned as keys stop being live) must be among those it saw.
struct RunningScan {
    cursor: Cursor,
    seen: BTreeSet<Vec<u8>>,
    required: BTreeSet<Vec<u8>>,
}

/// Every live entry a scan sees, in steps of 3 slots, each seen once.
fn scanned(store: &mut Store, now: u64) -> Live {
    let (mut seen, mut cursor) = (Live::new(), Some(Cursor::START));
    while let Some(c) = cursor {
        cursor = store.scan(c, 3, now, |e| {
            let old = seen.insert(
                e.key.to_vec(),
                (e.value.to_vec(), e.expires_at_ms, e.version),
            );
            assert!(old.is_none(), "visited twice: {:?}", e.key);
        });
    }
    seen
}

fn model_live(model: &Model, now: u64) -> Live {
    model
        .recs
        .iter()
        .filter(|(_, r)| r.deadline == 0 || r.deadline > now)
        .filter_map(|(k, r)| Some((k.clone(), (r.value.clone()?, r.deadline, r.version))))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(cfg in config(), ops in proptest::collection::vec(op(), 1..200)) {
        run(cfg, ops)?;
    }

    /// Only puts and gets on a store that fits a handful of entries: eviction order under
    /// pressure, with every value size.
    #[test]
    fn eviction_order_matches_model(max_memory in 300..1_200u64, ops in proptest::collection::vec(
        prop_oneof![
            (0..KEY_LENS.len(), 0..200usize, Just(None), (1..1_000u64).prop_map(|h| Version::new(h, 0)))
                .prop_map(|(key, len, ttl, ver)| Op::Put { key, len, ttl, ver }),
            (0..KEY_LENS.len()).prop_map(|key| Op::Get { key }),
        ], 1..300)) {
        let cfg = Config { max_memory, ..Config::default() };
        run(cfg, ops)?;
    }
}
