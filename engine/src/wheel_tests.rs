//! Table tests of the wheel: levels, due order, unlinking from anywhere, bounded work.

use super::*;
use crate::blob::Blob;
use crate::version::Version;

fn entry(slab: &mut Slab, when: u64) -> u32 {
    slab.insert(Blob::new(
        &when.to_le_bytes(),
        b"",
        Version::ZERO,
        when,
        false,
    ))
}

/// Pops everything due at `now`, as `Store::expire` does, returning the deadlines.
fn drain(wheel: &mut Wheel, slab: &mut Slab, now: u64) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(idx) = wheel.next_due(slab, now) {
        out.push(slab.blob(idx).deadline());
        wheel.remove(slab, idx);
        slab.remove(idx);
    }
    out.sort_unstable();
    out
}

#[test]
fn level_for_table() {
    let table = [
        (0, 1, 0),
        (0, 63, 0),
        (0, 64, 1),
        (100, 127, 0), // same 64-ms window
        (100, 128, 1),
        (0, 4095, 1),
        (0, 4096, 2),
        (0, 1 << 36, 6),
        (0, u64::MAX, 10),
        (1_700_000_000_000, 1_700_000_000_005, 0),
    ];
    for (elapsed, when, level) in table {
        assert_eq!(level_for(elapsed, when), level, "{elapsed} {when}");
    }
}

#[test]
fn expires_exactly_what_is_due_at_each_time() {
    let base = 1_700_000_000_000u64;
    let deadlines = [
        base + 1,
        base + 2,
        base + 2,
        base + 63,
        base + 64,
        base + 5_000,
        base + 3_600_000,
        u64::MAX,
    ];
    let mut slab = Slab::new();
    let mut wheel = Wheel::new();
    for when in deadlines {
        let idx = entry(&mut slab, when);
        wheel.insert(&mut slab, idx, 0);
    }
    // (now, deadlines reclaimed at that call)
    let table: [(u64, &[u64]); 6] = [
        (base, &[]),
        (base + 2, &[base + 1, base + 2, base + 2]),
        (base + 64, &[base + 63, base + 64]),
        (base + 4_999, &[]),
        (base + 3_600_000, &[base + 5_000, base + 3_600_000]),
        (u64::MAX - 1, &[]),
    ];
    for (now, expect) in table {
        assert_eq!(drain(&mut wheel, &mut slab, now), expect, "at {now}");
    }
    assert_eq!(drain(&mut wheel, &mut slab, u64::MAX), [u64::MAX]);
}

#[test]
fn entries_already_past_go_straight_to_due() {
    let mut slab = Slab::new();
    let mut wheel = Wheel::new();
    assert_eq!(drain(&mut wheel, &mut slab, 1_000), []);
    let idx = entry(&mut slab, 900);
    wheel.insert(&mut slab, idx, 0);
    assert_eq!(drain(&mut wheel, &mut slab, 1_000), [900]);
}

#[test]
fn time_going_backwards_reclaims_nothing() {
    let mut slab = Slab::new();
    let mut wheel = Wheel::new();
    assert_eq!(drain(&mut wheel, &mut slab, 1_000), []);
    let idx = entry(&mut slab, 1_000);
    wheel.insert(&mut slab, idx, 0);
    assert_eq!(drain(&mut wheel, &mut slab, 999), []);
    assert_eq!(drain(&mut wheel, &mut slab, 1_000), [1_000]);
}

#[test]
fn removing_from_head_middle_and_tail_keeps_the_rest() {
    let mut slab = Slab::new();
    let mut wheel = Wheel::new();
    let ids: Vec<u32> = (0..5).map(|_| entry(&mut slab, 10)).collect();
    for &idx in &ids {
        wheel.insert(&mut slab, idx, 0);
    }
    // The bucket list is ids in reverse; remove its head (4), middle (2) and tail (0).
    for idx in [ids[4], ids[2], ids[0]] {
        wheel.remove(&mut slab, idx);
        slab.remove(idx);
    }
    assert_eq!(drain(&mut wheel, &mut slab, 10), [10, 10]);
    assert!(wheel.occupied.iter().all(|&m| m == 0));
    assert!(wheel.heads.iter().all(|&h| h == NIL));
}

#[test]
fn work_tracks_what_expires_not_what_waits() {
    let base = 1_700_000_000_000u64;
    let mut slab = Slab::new();
    let mut wheel = Wheel::new();
    drain(&mut wheel, &mut slab, base);
    for i in 0..10_000 {
        let idx = entry(&mut slab, base + 86_400_000 + i); // a day later
        wheel.insert(&mut slab, idx, 0);
    }
    for i in 0..10 {
        let idx = entry(&mut slab, base + 10 + i);
        wheel.insert(&mut slab, idx, 0);
    }
    let before = wheel.steps();
    assert_eq!(drain(&mut wheel, &mut slab, base + 1_000).len(), 10);
    let steps = wheel.steps() - before;
    assert!(steps <= 40, "{steps} steps for 10 expired entries");
}
