//! Table tests of the wheel: levels, due order, unlinking from anywhere, bounded work.

use super::*;
use crate::test_blocks::insert;

fn entry(arena: &mut Arena, when: u64) -> u32 {
    insert(arena, &when.to_le_bytes(), when)
}

/// Pops everything due at `now`, as `Store::expire` does, returning the deadlines.
fn drain(wheel: &mut Wheel, arena: &mut Arena, now: u64) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(idx) = wheel.next_due(arena, now) {
        out.push(arena.block(idx).deadline());
        wheel.remove(arena, idx);
        arena.free(idx);
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
    let mut arena = Arena::new();
    let mut wheel = Wheel::new();
    for when in deadlines {
        let idx = entry(&mut arena, when);
        wheel.insert(&mut arena, idx, 0);
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
        assert_eq!(drain(&mut wheel, &mut arena, now), expect, "at {now}");
    }
    assert_eq!(drain(&mut wheel, &mut arena, u64::MAX), [u64::MAX]);
}

#[test]
fn entries_already_past_go_straight_to_due() {
    let mut arena = Arena::new();
    let mut wheel = Wheel::new();
    assert_eq!(drain(&mut wheel, &mut arena, 1_000), Vec::<u64>::new());
    let idx = entry(&mut arena, 900);
    wheel.insert(&mut arena, idx, 0);
    assert_eq!(drain(&mut wheel, &mut arena, 1_000), [900]);
}

#[test]
fn time_going_backwards_reclaims_nothing() {
    let mut arena = Arena::new();
    let mut wheel = Wheel::new();
    assert_eq!(drain(&mut wheel, &mut arena, 1_000), Vec::<u64>::new());
    let idx = entry(&mut arena, 1_000);
    wheel.insert(&mut arena, idx, 0);
    assert_eq!(drain(&mut wheel, &mut arena, 999), Vec::<u64>::new());
    assert_eq!(drain(&mut wheel, &mut arena, 1_000), [1_000]);
}

#[test]
fn removing_from_head_middle_and_tail_keeps_the_rest() {
    let mut arena = Arena::new();
    let mut wheel = Wheel::new();
    let ids: Vec<u32> = (0..5).map(|_| entry(&mut arena, 10)).collect();
    for &idx in &ids {
        wheel.insert(&mut arena, idx, 0);
    }
    // The bucket list is ids in reverse; remove its head (4), middle (2) and tail (0).
    for idx in [ids[4], ids[2], ids[0]] {
        wheel.remove(&mut arena, idx);
        arena.free(idx);
    }
    assert_eq!(drain(&mut wheel, &mut arena, 10), [10, 10]);
    assert!(wheel.occupied.iter().all(|&m| m == 0));
    assert!(wheel.heads.iter().all(|&h| h == NIL));
}

#[test]
fn work_tracks_what_expires_not_what_waits() {
    let base = 1_700_000_000_000u64;
    let mut arena = Arena::new();
    let mut wheel = Wheel::new();
    drain(&mut wheel, &mut arena, base);
    for i in 0..10_000 {
        let idx = entry(&mut arena, base + 86_400_000 + i); // a day later
        wheel.insert(&mut arena, idx, 0);
    }
    for i in 0..10 {
        let idx = entry(&mut arena, base + 10 + i);
        wheel.insert(&mut arena, idx, 0);
    }
    let before = wheel.steps();
    assert_eq!(drain(&mut wheel, &mut arena, base + 1_000).len(), 10);
    let steps = wheel.steps() - before;
    assert!(steps <= 40, "{steps} steps for 10 expired entries");
}
