//! Store behaviour case by case; the model-based property tests are in tests/model.rs.

use super::*;
use crate::arena::Arena;
use crate::config::Config;
use crate::outcome::{Removal, RemovalKind};

const T0: u64 = 1_700_000_000_000;

fn v(hlc: u64) -> Version {
    Version::new(hlc, 1)
}

fn store(max_memory: u64, grace: u64) -> Store {
    Store::new(Config {
        max_memory,
        tombstone_grace_ms: grace,
        ..Config::default()
    })
}

fn drained(s: &mut Store) -> Vec<(RemovalKind, Vec<u8>)> {
    let pending = s.has_removals();
    let removals: Vec<_> = s
        .drain_removals()
        .map(|r: Removal| (r.kind, r.key().to_vec()))
        .collect();
    assert_eq!(pending, !removals.is_empty(), "has_removals");
    assert!(!s.has_removals());
    removals
}

/// (key, value, expected outcome of the put)
type PutCase<'a> = (&'a [u8], &'a [u8], Result<Applied, Error>);

#[test]
fn limits_table() {
    let mut s = Store::new(Config {
        max_memory: 1_000,
        max_key_len: 8,
        max_value_len: 100,
        tombstone_grace_ms: 0,
    });
    let big = vec![0u8; 101];
    let cases: [PutCase; 6] = [
        (b"", b"v", Err(Error::EmptyKey)),
        (
            b"123456789",
            b"v",
            Err(Error::KeyTooLarge { len: 9, max: 8 }),
        ),
        (b"k", &big, Err(Error::ValueTooLarge { len: 101, max: 100 })),
        (b"12345678", &big[..100], Ok(Applied::Stored)),
        (b"k", b"", Ok(Applied::Stored)), // empty values are fine
        (b"\0\xff", b"\0", Ok(Applied::Stored)),
    ];
    for (i, (key, value, expect)) in cases.into_iter().enumerate() {
        assert_eq!(
            s.put(key, value, 0, v(i as u64 + 1), T0),
            expect,
            "case {i}"
        );
    }
    assert_eq!(s.remove(b"", v(50), T0), Err(Error::EmptyKey));
    assert_eq!(
        s.remove(b"123456789", v(50), T0),
        Err(Error::KeyTooLarge { len: 9, max: 8 })
    );
    let mut tiny = store(100, 0);
    let charge = Store::charge(1, 60, true);
    assert_eq!(
        tiny.put(b"k", &[0; 60], 0, v(1), T0),
        Err(Error::EntryTooLarge {
            charge,
            max_memory: 100
        })
    );
    assert_eq!(tiny.bytes_used(), 0);
}

#[test]
fn binary_keys_and_values_round_trip() {
    let mut s = store(1 << 20, 0);
    let key: Vec<u8> = (0..=255).collect();
    let value: Vec<u8> = (0..=255).rev().cycle().take(1000).collect();
    assert_eq!(s.put(&key, &value, 0, v(1), T0), Ok(Applied::Stored));
    assert_eq!(s.get(&key, T0), Some(&value[..]));
    assert_eq!(s.get(&key[..255], T0), None);
    assert_eq!((s.stats().hits, s.stats().misses), (1, 1));
}

#[test]
fn versions_decide_last_writer_wins() {
    let mut s = store(1 << 20, 0);
    assert_eq!(s.put(b"k", b"a", 0, v(5), T0), Ok(Applied::Stored));
    assert_eq!(s.put(b"k", b"b", 0, v(5), T0), Ok(Applied::Stale));
    assert_eq!(
        s.put(b"k", b"b", 0, Version::new(4, 9), T0),
        Ok(Applied::Stale)
    );
    assert_eq!(
        s.put(b"k", b"c", 0, Version::new(5, 2), T0),
        Ok(Applied::Stored)
    );
    assert_eq!(s.touch(b"k", T0 + 10, v(5), T0), Ok(false));
    assert_eq!(s.remove(b"k", v(4), T0), Ok(Removed::Stale));
    assert_eq!(s.get(b"k", T0), Some(&b"c"[..]));
    assert_eq!(s.stats().stale_writes, 4);
    assert_eq!(s.remove(b"k", v(6), T0), Ok(Removed::Removed));
    assert_eq!(s.remove(b"k", v(7), T0), Ok(Removed::NotFound));
    // Without tombstones an old write after the remove is accepted.
    assert_eq!(s.put(b"k", b"old", 0, v(1), T0), Ok(Applied::Stored));
}

#[test]
fn tombstones_block_older_writes_until_their_grace_ends() {
    let mut s = store(1 << 20, 100);
    s.put(b"k", b"value", 0, v(5), T0).unwrap();
    assert_eq!(s.remove(b"k", v(6), T0), Ok(Removed::Removed));
    assert_eq!((s.len(), s.stats().tombstones), (0, 1));
    assert_eq!(s.bytes_used(), Store::tombstone_charge(1));
    assert_eq!(s.get(b"k", T0), None);
    assert_eq!(s.expires_at(b"k", T0), None);
    assert_eq!(s.touch(b"k", 0, v(9), T0), Ok(false));
    assert_eq!(s.put(b"k", b"late", 0, v(5), T0 + 50), Ok(Applied::Stale));
    assert_eq!(s.remove(b"k", v(6), T0 + 50), Ok(Removed::Stale));
    // A newer remove refreshes the tombstone: grace counts from now.
    assert_eq!(s.remove(b"k", v(7), T0 + 50), Ok(Removed::NotFound));
    assert_eq!(s.expire(T0 + 149, usize::MAX), 0);
    assert_eq!(s.expire(T0 + 150, usize::MAX), 1);
    assert_eq!(
        (
            s.stats().tombstones,
            s.stats().tombstones_dropped,
            s.bytes_used()
        ),
        (0, 1, 0)
    );
    assert!(drained(&mut s).is_empty(), "tombstones are not reported");
    assert_eq!(s.put(b"k", b"late", 0, v(5), T0 + 150), Ok(Applied::Stored));
}

#[test]
fn remove_of_an_absent_key_leaves_a_tombstone_and_a_newer_put_replaces_it() {
    let mut s = store(1 << 20, 1_000);
    assert_eq!(s.remove(b"k", v(10), T0), Ok(Removed::NotFound));
    assert_eq!(s.put(b"k", b"replica", 0, v(9), T0), Ok(Applied::Stale));
    assert_eq!(s.put(b"k", b"new", 0, v(11), T0), Ok(Applied::Stored));
    assert_eq!((s.len(), s.stats().tombstones), (1, 0));
    assert_eq!(s.get(b"k", T0), Some(&b"new"[..]));
    assert_eq!(s.bytes_used(), Store::entry_charge(1, 3));
}

#[test]
fn ttl_is_an_absolute_deadline_checked_on_every_read() {
    let mut s = store(1 << 20, 0);
    s.put(b"k", b"v", T0 + 10, v(1), T0).unwrap();
    assert_eq!(s.expires_at(b"k", T0), Some(T0 + 10));
    assert_eq!(s.get(b"k", T0 + 9), Some(&b"v"[..]));
    assert_eq!(s.expires_at(b"k", T0 + 10), None);
    assert_eq!(s.len(), 1, "expires_at reclaims nothing");
    assert_eq!(s.get(b"k", T0 + 10), None);
    assert_eq!((s.len(), s.stats().expirations, s.bytes_used()), (0, 1, 0));
    assert_eq!(drained(&mut s), [(RemovalKind::Expired, b"k".to_vec())]);
    // Overwriting replaces the deadline, also with "never".
    s.put(b"k", b"v", T0 + 20, v(2), T0).unwrap();
    s.put(b"k", b"w", 0, v(3), T0).unwrap();
    assert_eq!(s.expires_at(b"k", u64::MAX), Some(0));
    assert_eq!(s.expire(u64::MAX, usize::MAX), 0);
}

#[test]
fn touch_adds_moves_and_drops_deadlines_and_recharges() {
    let mut s = store(1 << 20, 0);
    s.put(b"k", b"value", 0, v(1), T0).unwrap();
    assert_eq!(s.touch(b"k", T0 + 5, v(2), T0), Ok(true));
    assert_eq!(s.bytes_used(), Store::charge(1, 5, true));
    assert_eq!(s.touch(b"k", T0 + 50, v(3), T0), Ok(true));
    assert_eq!(s.expire(T0 + 10, usize::MAX), 0);
    assert_eq!(s.touch(b"k", 0, v(4), T0), Ok(true));
    assert_eq!(s.bytes_used(), Store::entry_charge(1, 5));
    assert_eq!(s.expire(T0 + 100, usize::MAX), 0);
    assert_eq!(s.get(b"k", T0 + 100), Some(&b"value"[..]));
    assert_eq!(s.touch(b"missing", 0, v(5), T0), Ok(false));
    assert_eq!(s.stats().touches, 3);
}

#[test]
fn eviction_is_exact_lru_by_bytes_and_reported() {
    let each = Store::entry_charge(2, 50);
    let mut s = store(each * 3, 0);
    for (i, key) in [b"k0", b"k1", b"k2"].iter().enumerate() {
        s.put(*key, &[i as u8; 50], 0, v(i as u64 + 1), T0).unwrap();
    }
    assert_eq!(s.get(b"k0", T0), Some(&[0u8; 50][..])); // k1 is now the oldest
    s.put(b"k3", &[3; 50], 0, v(9), T0).unwrap();
    assert_eq!(drained(&mut s), [(RemovalKind::Evicted, b"k1".to_vec())]);
    // A value almost three times as large needs two entries' worth: k2 then k0 go.
    assert!(Store::entry_charge(2, 140) <= 2 * each);
    s.put(b"k4", &[4; 140], 0, v(10), T0).unwrap();
    assert_eq!(
        drained(&mut s),
        [
            (RemovalKind::Evicted, b"k2".to_vec()),
            (RemovalKind::Evicted, b"k0".to_vec())
        ]
    );
    assert!(s.bytes_used() <= s.config().max_memory);
    assert_eq!(s.stats().evictions, 3);
    // Growing an entry never evicts the entry itself.
    s.put(b"k4", &[5; 200], 0, v(11), T0).unwrap();
    assert_eq!(drained(&mut s), [(RemovalKind::Evicted, b"k3".to_vec())]);
    assert_eq!(s.get(b"k4", T0).map(|v| v.len()), Some(200));
}

#[test]
fn an_overwrite_in_the_same_slot_is_a_put_that_bumps_the_lru() {
    let each = Store::entry_charge(2, 50);
    let mut s = store(each * 3, 0);
    for (i, key) in [b"k0", b"k1", b"k2"].iter().enumerate() {
        s.put(*key, &[i as u8; 50], 0, v(i as u64 + 1), T0).unwrap();
    }
    let (used, arena) = (s.bytes_used(), s.stats().arena_bytes);
    // Same slot (49 or 50 bytes: one size class), no deadline: rewritten in place.
    assert_eq!(s.put(b"k0", &[7; 49], 0, v(5), T0), Ok(Applied::Stored));
    assert_eq!(s.put(b"k0", &[6; 49], 0, v(4), T0), Ok(Applied::Stale));
    assert_eq!(s.get(b"k0", T0), Some(&[7u8; 49][..]));
    assert_eq!((s.bytes_used(), s.stats().arena_bytes), (used, arena));
    assert_eq!((s.len(), s.stats().puts, s.stats().stale_writes), (3, 4, 1));
    // k0 is the most recently used: k1 goes first, then k2.
    s.put(b"k3", &[3; 50], 0, v(9), T0).unwrap();
    s.put(b"k4", &[4; 50], 0, v(10), T0).unwrap();
    assert_eq!(
        drained(&mut s),
        [
            (RemovalKind::Evicted, b"k1".to_vec()),
            (RemovalKind::Evicted, b"k2".to_vec())
        ]
    );
    // A deadline added or dropped by an overwrite of the same size still takes effect.
    s.put(b"k0", &[8; 50], T0 + 10, v(11), T0).unwrap();
    s.put(b"k3", &[9; 50], 0, v(12), T0).unwrap();
    assert_eq!(s.expires_at(b"k0", T0), Some(T0 + 10));
    s.put(b"k0", &[8; 50], 0, v(13), T0).unwrap();
    assert_eq!(s.expires_at(b"k0", T0 + 20), Some(0));
    assert_eq!(s.expire(T0 + 20, 10), 0);
    assert_eq!(s.get(b"k0", T0 + 20), Some(&[8u8; 50][..]));
}

#[test]
fn an_expired_lru_victim_is_reported_as_expired() {
    let each = Store::charge(1, 10, true);
    let mut s = store(each * 2, 0);
    s.put(b"a", &[1; 10], T0 + 5, v(1), T0).unwrap();
    s.put(b"b", &[1; 10], T0 + 500, v(2), T0).unwrap();
    s.put(b"c", &[1; 10], T0 + 500, v(3), T0 + 10).unwrap();
    assert_eq!(drained(&mut s), [(RemovalKind::Expired, b"a".to_vec())]);
    assert_eq!((s.stats().evictions, s.stats().expirations), (0, 1));
}

#[test]
fn expire_respects_max_and_resumes() {
    let mut s = store(1 << 20, 0);
    for i in 0..10u8 {
        s.put(&[b'k', i], b"v", T0 + 1, v(i as u64 + 1), T0)
            .unwrap();
    }
    assert_eq!(s.expire(T0 + 1, 4), 4);
    assert_eq!(s.expire(T0 + 1, 4), 4);
    assert_eq!(s.expire(T0 + 1, 4), 2);
    assert_eq!(s.expire(T0 + 1, 4), 0);
    assert_eq!(drained(&mut s).len(), 10);
    assert_eq!((s.len(), s.bytes_used()), (0, 0));
}

#[test]
fn expire_work_is_proportional_to_what_expired() {
    let mut s = store(1 << 30, 0);
    for i in 0..100_000u32 {
        s.put(&i.to_le_bytes(), b"v", 0, v(1), T0).unwrap();
    }
    for i in 0..10_000u32 {
        let key = [b"far".as_slice(), &i.to_le_bytes()].concat();
        s.put(&key, b"v", T0 + 86_400_000, v(1), T0).unwrap();
    }
    for i in 0..10u8 {
        s.put(&[b'x', i], b"v", T0 + 100 + i as u64, v(1), T0)
            .unwrap();
    }
    let before = s.stats().expire_steps;
    assert_eq!(s.expire(T0 + 1_000, usize::MAX), 10);
    let steps = s.stats().expire_steps - before;
    // A few buckets, each moving some of the 10 entries, then 10 reclaims; the 110 000 others
    // (no deadline, or a day away) are never visited.
    assert!(steps <= 5 * 10, "{steps} steps");
    let before = s.stats().expire_steps;
    for i in 0..10u8 {
        s.put(&[b'y', i], b"v", T0 + 1_100 + i as u64, v(2), T0 + 1_000)
            .unwrap();
    }
    assert_eq!(s.expire(T0 + 2_000, usize::MAX), 10);
    // Once warm: one level-1 bucket moving 10 entries, then 10 level-0 buckets, 10 reclaims.
    let steps = s.stats().expire_steps - before;
    assert!(steps <= 5 * 10, "{steps} steps once warm");
    assert_eq!(s.len(), 110_000);
}

#[test]
fn a_full_block_space_evicts_then_is_an_error_not_a_panic() {
    // One 64 KiB class page and one large block.
    let mut s = Store::with_arena(Config::default(), Arena::with_limits(1, 1));
    s.put(b"a", b"vvv", 0, v(1), T0).unwrap();
    s.put(b"b", b"vvv", 0, v(1), T0).unwrap();
    // Another class needs the page: the LRU goes until the page is idle and handed over.
    assert_eq!(
        s.put(b"c", b"another size class", 0, v(1), T0),
        Ok(Applied::Stored)
    );
    assert_eq!(drained(&mut s).len(), 2);
    assert_eq!(s.len(), 1);
    // An overwrite that stays in its class is fine; one that must move has nothing left to
    // evict (its own page is not idle) and fails, changing nothing.
    let full = Error::TooManyEntries {
        class_bytes: 65_536,
        large_blocks: 1,
    };
    assert_eq!(
        s.put(b"c", b"same size class!!!", 0, v(2), T0),
        Ok(Applied::Stored)
    );
    assert_eq!(
        s.put(b"c", b"a longer value, another class", 0, v(3), T0),
        Err(full.clone())
    );
    assert_eq!(
        s.touch(b"c", T0 + 1_000, v(3), T0),
        Err(full),
        "a deadline would move it: an error, not a missing key"
    );
    assert_eq!(s.get(b"c", T0), Some(&b"same size class!!!"[..]));
    assert_eq!(s.len(), 1);
    assert_eq!(s.bytes_used(), Store::entry_charge(1, 18));
    assert!(drained(&mut s).is_empty());
}

#[test]
fn large_entries_evict_for_an_address_instead_of_failing() {
    // Three large-block addresses, memory for many more: each new large entry evicts the
    // least recently used one to free an address.
    let config = Config {
        max_memory: 1 << 30,
        ..Config::default()
    };
    let mut s = Store::with_arena(config, Arena::with_limits(4, 3));
    let value = vec![5u8; 4_000];
    for i in 0..50u64 {
        assert_eq!(
            s.put(&i.to_le_bytes(), &value, 0, v(i + 1), T0),
            Ok(Applied::Stored),
            "{i}"
        );
    }
    assert_eq!(s.len(), 3);
    assert_eq!(s.stats().evictions, 47);
    assert_eq!(s.get(&49u64.to_le_bytes(), T0), Some(&value[..]));
}

#[test]
fn arena_bytes_stay_bounded_as_value_sizes_shift() {
    // Values change size round after round, over keys old and new: pages of sizes no longer
    // written must not pile up (each round writes 4 MiB of one size into a 1 MiB store).
    let max = 1 << 20;
    let mut s = store(max, 0);
    let sizes = [100usize, 200, 60, 500, 900, 3_000, 100, 300, 40, 200];
    let mut classes = std::collections::BTreeSet::new();
    let mut hlc = 0;
    for (round, &size) in sizes.iter().enumerate() {
        let value = vec![round as u8; size];
        let count = (4 * max as usize) / size;
        for i in 0..count {
            hlc += 1;
            let key = format!("key-{:08}", (round * 1_000 + i) % 20_000);
            s.put(key.as_bytes(), &value, 0, v(hlc), T0).unwrap();
            let block = crate::block::block_len(key.len(), size, false);
            if block <= crate::arena::SMALL_MAX {
                classes.insert(crate::arena::slot_len(block));
            }
            let bound = max + classes.len() as u64 * crate::arena::PAGE as u64;
            let resident = s.stats().arena_bytes;
            assert!(
                resident <= bound,
                "round {round}, put {i}: {resident} > {bound}"
            );
        }
        drained(&mut s);
        assert_eq!(s.stats().arena_bytes, s.arena.resident_bytes());
    }
}

#[test]
fn forget_drops_up_to_a_version_silently() {
    let mut s = store(1 << 20, 60_000);
    s.put(b"a", b"1", 0, v(5), T0).unwrap();
    s.put(b"b", b"2", T0 + 10, v(6), T0).unwrap();
    s.remove(b"c", v(7), T0).unwrap(); // a tombstone
                                       // (key, version given, expected result, key still readable)
    let cases: [(&[u8], u64, bool, bool); 5] = [
        (b"a", 4, false, true), // newer than asked: kept
        (b"a", 5, true, false),
        (b"b", 9, true, false),
        (b"c", 7, false, false), // a tombstone goes, but it was not live
        (b"zz", 9, false, false),
    ];
    for (key, version, dropped, readable) in cases {
        assert_eq!(s.forget(key, v(version)), dropped, "{key:?}");
        assert_eq!(s.get(key, T0).is_some(), readable, "{key:?}");
    }
    assert_eq!((s.len(), s.stats().tombstones, s.bytes_used()), (0, 0, 0));
    assert!(drained(&mut s).is_empty(), "forget reports nothing");
    // With the tombstone gone, an older write is accepted again.
    assert_eq!(s.put(b"c", b"x", 0, v(1), T0), Ok(Applied::Stored));
}
