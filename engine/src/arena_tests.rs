//! Table tests of the arena: size classes, slot reuse, large pages, limits and the walk.

use super::*;
use crate::charge;
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
fn large_blocks_get_allocations_and_addresses_of_their_own() {
    let mut arena = Arena::new();
    let key = vec![1u8; 2_000];
    let len = crate::block::block_len(2_000, 0, false);
    let a = insert(&mut arena, &key, 0);
    assert_eq!(a, LARGE_BASE);
    assert_eq!(arena.slot_len_at(a), len);
    assert_eq!(arena.block(a).key(), &key[..]);
    assert_eq!(arena.resident_bytes(), charge::arena_block(len));
    let b = insert(&mut arena, b"k", 0);
    assert_eq!(split(b), (0, 0), "class pages are numbered apart");
    arena.free(a);
    assert_eq!(arena.resident_bytes(), PAGE as u64);
    // The freed table slot is reused; a thousand large blocks take no class page.
    let ids: Vec<u32> = (0..1_000).map(|_| insert(&mut arena, &key, 0)).collect();
    assert_eq!(ids[0], LARGE_BASE);
    assert_eq!(ids[999], LARGE_BASE + 999);
    assert_eq!(arena.pages.len(), 1);
    assert_eq!(arena.block(b).key(), b"k");
}

#[test]
fn a_page_whose_last_block_goes_is_handed_back() {
    let mut arena = Arena::new();
    let per_page = PAGE / 24;
    let ids: Vec<u32> = (0..2 * per_page)
        .map(|_| insert(&mut arena, b"k", 0))
        .collect();
    assert_eq!(arena.resident_bytes(), 2 * PAGE as u64);
    // Page 0 is full and no longer being filled: freeing all its blocks hands it back, and
    // its free slots leave the free list with it.
    for &id in &ids[..per_page - 1] {
        arena.free(id);
    }
    assert_eq!(arena.resident_bytes(), 2 * PAGE as u64);
    arena.free(ids[per_page - 1]);
    assert_eq!(arena.resident_bytes(), PAGE as u64);
    assert_eq!(arena.classes[0].free, NIL);
    // Another class gets the page back (same number, new kind).
    let other = insert(&mut arena, b"k", 9);
    assert_eq!(split(other), (0, 0));
    // Zeroed first: a scan finds the new block there and nothing of the old ones.
    let slot = arena.slot_len_at(other);
    assert!(arena.pages.get(0)[slot..].iter().all(|&b| b == 0));
    let mut seen = 0;
    assert_eq!(arena.walk(0, usize::MAX, |_| seen += 1), None);
    assert_eq!(seen, 1 + per_page);
    assert!(
        arena.used_block_at(ids[1]).is_none(),
        "a 24-byte slot is not a slot here"
    );
    // The page a class is filling stays when it empties, until its page number is needed.
    for &id in &ids[per_page..] {
        arena.free(id);
    }
    assert_eq!(arena.resident_bytes(), 2 * PAGE as u64);
    assert_eq!(arena.first_pages_bytes(), 2 * PAGE as u64);
    assert!(arena.release_idle_pages());
    assert_eq!(arena.resident_bytes(), PAGE as u64);
    assert_eq!(arena.first_pages_bytes(), PAGE as u64);
    assert_eq!(insert(&mut arena, b"k", 0), addr(1, 0));
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
fn limits_are_enforced_per_class_and_for_large_blocks() {
    let mut arena = Arena::with_limits(1, 1);
    assert!(arena.has_room(24));
    let ids: Vec<u32> = (0..PAGE / 24)
        .map(|_| insert(&mut arena, b"k", 0))
        .collect();
    assert!(!arena.has_room(24), "the one page is full");
    assert!(!arena.has_room(40), "no page for another class");
    assert!(
        arena.has_room(5_000),
        "large blocks have addresses of their own"
    );
    let large = insert(&mut arena, &[1; 5_000], 0);
    assert!(!arena.has_room(2_000), "one large block at most");
    arena.free(ids[10]);
    assert!(arena.has_room(24));
    assert!(!arena.has_room(40));
    arena.free(large);
    assert!(arena.has_room(2_000));
    assert_eq!(arena.limits(), (PAGE as u64, 1));
}

#[test]
fn walk_visits_used_slots_in_address_order_in_steps() {
    let mut arena = Arena::new();
    let mut ids = Vec::new();
    for i in 0..10u8 {
        ids.push(insert(&mut arena, &[i], 0));
        ids.push(insert(&mut arena, &vec![i; 3_000], 0)); // large blocks: addressed after the class pages
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
    // 30 slots: 10 + 10 in two class pages (two freed: one each kind), 10 large blocks, of
    // which one is free now but still a slot of the walk.
    assert_eq!(steps, 30usize.div_ceil(4));
}

#[test]
fn a_walk_goes_on_in_a_page_given_to_another_class_meanwhile() {
    let mut arena = Arena::new();
    let per_page = PAGE / 24;
    let ids: Vec<u32> = (0..per_page + 1)
        .map(|_| insert(&mut arena, b"k", 0))
        .collect();
    let cursor = arena.walk(0, 3, |_| {}).unwrap();
    assert_eq!(cursor, addr(0, 72));
    for &id in &ids[..per_page] {
        arena.free(id);
    }
    // Page 0 now holds 40-byte slots: the walk resumes at offset 80, not inside a slot.
    let timed: Vec<u32> = (0..4).map(|_| insert(&mut arena, b"t", 9)).collect();
    assert_eq!(timed[0], addr(0, 0));
    let mut seen = Vec::new();
    assert_eq!(
        arena.walk(cursor, 100, |b| seen.push(b.key().to_vec())),
        None
    );
    assert_eq!(seen, [&b"t"[..], b"t", b"k"]);
}
