//! Table tests of the arena: size classes, slot reuse, large pages, limits and the walk.

use super::*;
use crate::test_blocks::insert;

#[test]
fn slot_lengths_round_to_classes_up_to_small_max() {
    let table = [
        (1, 24),
        (24, 24),
        (25, 32),
        (135, 136),
        (1_024, 1_024),
        (1_025, 1_025),
        (1 << 20, 1 << 20),
    ];
    for (len, slot) in table {
        assert_eq!(slot_len(len), slot, "{len}");
    }
    assert_eq!(class_len((CLASSES - 1) as u8), SMALL_MAX);
}

#[test]
fn freed_slots_are_reused_last_freed_first() {
    let mut arena = Arena::new();
    let ids: Vec<u32> = (0..5u8).map(|i| insert(&mut arena, &[i], 0)).collect();
    // Same class, one page: consecutive slots, 24 bytes (3 address units) apart.
    assert_eq!(ids, [0, 3, 6, 9, 12]);
    arena.free(ids[1]);
    arena.free(ids[3]);
    assert!(!arena.block(ids[1]).in_use());
    assert_eq!(insert(&mut arena, &[7], 0), ids[3]);
    assert_eq!(insert(&mut arena, &[8], 0), ids[1]);
    assert_eq!(insert(&mut arena, &[9], 0), 15);
    assert_eq!(arena.block(ids[1]).key(), [8]);
    assert_eq!(arena.block(ids[4]).key(), [4]);
}

#[test]
fn classes_fill_their_own_pages() {
    let mut arena = Arena::new();
    let small = insert(&mut arena, b"k", 0);
    let timed = insert(&mut arena, b"k", 5); // 40-byte block: another class, another page
    assert_eq!(split(small).0, 0);
    assert_eq!(split(timed).0, 1);
    // A full page moves the class on to a new one.
    let per_page = PAGE / 24;
    let ids: Vec<u32> = (1..=per_page)
        .map(|_| insert(&mut arena, b"k", 0))
        .collect();
    assert_eq!(split(ids[per_page - 2]).0, 0);
    assert_eq!(split(ids[per_page - 1]), (2, 0));
}

#[test]
fn large_blocks_get_pages_of_their_own() {
    let mut arena = Arena::new();
    let key = vec![1u8; 2_000];
    let a = insert(&mut arena, &key, 0);
    assert_eq!(split(a), (0, 0));
    assert_eq!(
        arena.slot_len_at(a),
        crate::block::block_len(2_000, 0, false)
    );
    assert_eq!(arena.block(a).key(), &key[..]);
    arena.free(a);
    // The freed page-table slot is reused, by a class page here.
    let b = insert(&mut arena, b"k", 0);
    assert_eq!(split(b), (0, 0));
    assert_eq!(arena.block(b).key(), b"k");
}

#[test]
fn copy_between_and_within_pages() {
    let mut arena = Arena::new();
    let a = insert(&mut arena, b"abc", 0);
    let b = insert(&mut arena, b"xyz", 0);
    let c = insert(&mut arena, b"xyz", 9); // another page
    arena.copy(a, b, arena.block(a).len());
    assert_eq!(arena.block(b).key(), b"abc");
    arena.copy(c, a, arena.block(c).len());
    assert_eq!(
        (arena.block(a).key(), arena.block(a).deadline()),
        (&b"xyz"[..], 9)
    );
    let d = insert(&mut arena, b"d", 0);
    arena.copy(b, c, arena.block(b).len());
    assert_eq!(arena.block(c).key(), b"abc");
    assert_eq!(arena.block(d).key(), b"d");
}

#[test]
fn limit_is_enforced_per_class() {
    let mut arena = Arena::with_page_limit(1);
    assert!(arena.has_room(24));
    let ids: Vec<u32> = (0..PAGE / 24)
        .map(|_| insert(&mut arena, b"k", 0))
        .collect();
    assert!(!arena.has_room(24), "the one page is full");
    assert!(!arena.has_room(40), "no page for another class");
    assert!(!arena.has_room(5_000), "no page for a large block");
    arena.free(ids[10]);
    assert!(arena.has_room(24));
    assert!(!arena.has_room(40));
    assert_eq!(arena.limit_bytes(), PAGE as u64);
}

#[test]
fn walk_visits_used_slots_in_address_order_in_steps() {
    let mut arena = Arena::new();
    let mut ids = Vec::new();
    for i in 0..10u8 {
        ids.push(insert(&mut arena, &[i], 0));
        ids.push(insert(&mut arena, &vec![i; 3_000], 0)); // large pages in between
        ids.push(insert(&mut arena, &[i], 77)); // another class
    }
    arena.free(ids[3]);
    arena.free(ids[4]);
    ids.drain(3..5);
    let mut seen = Vec::new();
    let (mut cursor, mut steps) = (Some(0), 0);
    while let Some(at) = cursor {
        steps += 1;
        cursor = arena.walk(at, 4, |b| seen.push(b.key().to_vec()));
    }
    let mut expect: Vec<Vec<u8>> = ids.iter().map(|&i| arena.block(i).key().to_vec()).collect();
    ids.sort_unstable();
    let in_order: Vec<Vec<u8>> = ids.iter().map(|&i| arena.block(i).key().to_vec()).collect();
    assert_eq!(seen, in_order);
    expect.sort();
    seen.sort();
    assert_eq!(seen, expect);
    // 30 slots: 10 + 10 in two class pages (two freed: one each kind), 10 large pages, of
    // which one is free now but still a slot of the walk.
    assert_eq!(steps, 30usize.div_ceil(4));
}
