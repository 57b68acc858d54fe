//! Table tests of the block layout: every field round-trips at the varint boundaries.

use super::*;

const V: Version = Version {
    hlc: 0x0102_0304_0506_0708,
    node: 0xdead_beef,
};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A block in a buffer with spare room after it, as in a size-class slot.
fn encoded(key: &[u8], value: &[u8], deadline: u64, tombstone: bool) -> Vec<u8> {
    let mut buf = vec![0xee; block_len(key.len(), value.len(), true) + 7];
    encode(&mut buf, key, value, V, deadline, tombstone);
    buf
}

#[test]
fn fields_round_trip() {
    // (key len, value len, deadline, tombstone)
    let table = [
        (1, 0, 0, false),
        (12, 100, 0, false),
        (12, 100, 1_700_000_000_000, false),
        (127, 128, 5, false),
        (128, 16_384, 0, false),
        (3, 0, 99, true),
        (65_536, 200_000, 7, false),
    ];
    for (k, v, deadline, tomb) in table {
        let (key, value) = (pattern(k, 1), pattern(v, 2));
        let buf = encoded(&key, &value, deadline, tomb);
        let b = Block(&buf);
        assert_eq!(b.key(), &key[..]);
        assert_eq!(b.value(), &value[..]);
        assert_eq!(b.version(), V);
        assert_eq!(b.deadline(), deadline);
        assert_eq!(b.is_tombstone(), tomb);
        assert!(b.in_use());
        assert_eq!(b.len(), block_len(k, v, deadline != 0));
        assert_eq!(b.body_len(), block_len(k, v, false));
        assert_eq!((b.lru_prev(), b.lru_next()), (NIL, NIL));
        if deadline != 0 {
            assert_eq!(b.wheel_links(), (UNLINKED, UNLINKED));
        }
    }
}

#[test]
fn typical_blocks_and_the_key_length_boundary() {
    assert_eq!(block_len(12, 100, false), 134);
    assert_eq!(block_len(12, 100, true), 150);
    // key_len << 2 | flags takes one byte up to 31-byte keys, two from 32.
    assert_eq!(block_len(31, 0, false), 20 + 1 + 1 + 31);
    assert_eq!(block_len(32, 0, false), 20 + 2 + 1 + 32);
    for k in [1, 31, 32, 33, 4_095, 4_096] {
        let key = pattern(k, 9);
        for (deadline, tomb) in [(0, false), (0, true), (5, false), (5, true)] {
            let buf = encoded(&key, b"v", deadline, tomb);
            let b = Block(&buf);
            assert_eq!((b.key(), b.value()), (&key[..], &b"v"[..]), "{k}");
            assert_eq!((b.deadline(), b.is_tombstone()), (deadline, tomb), "{k}");
            assert_eq!(b.len(), block_len(k, 1, deadline != 0), "{k}");
        }
    }
}

#[test]
fn a_freed_slot_is_not_in_use() {
    let mut buf = encoded(b"k", b"v", 0, false);
    let mut b = BlockMut(&mut buf);
    assert!(b.get().in_use());
    b.set_free();
    assert!(!b.get().in_use());
    assert!(!Block(&[0u8; 24]).in_use(), "zeroed bytes are free");
}

#[test]
fn is_dead_only_from_the_deadline_on() {
    let buf = encoded(b"k", b"v", 100, false);
    let b = Block(&buf);
    assert!(!b.is_dead(99));
    assert!(b.is_dead(100));
    assert!(b.is_dead(101));
    let forever = encoded(b"k", b"v", 0, false);
    assert!(!Block(&forever).is_dead(u64::MAX));
}

#[test]
fn adding_and_dropping_the_deadline_keeps_key_and_value() {
    for v in [0, 5, 100, 300_000] {
        let (key, value) = (pattern(20, 3), pattern(v, 4));
        let mut buf = encoded(&key, &value, 0, false);
        let mut b = BlockMut(&mut buf);
        b.set_deadline(1_000);
        assert_eq!(
            (b.get().deadline(), b.get().len()),
            (1_000, block_len(20, v, true))
        );
        b.set_wheel_prev(7);
        b.set_wheel_next(9);
        assert_eq!(b.get().wheel_links(), (7, 9));
        b.set_deadline(2_000);
        assert_eq!(b.get().deadline(), 2_000);
        assert_eq!(b.get().wheel_links(), (UNLINKED, UNLINKED));
        b.set_deadline(0);
        let b = b.get();
        assert_eq!((b.deadline(), b.len()), (0, block_len(20, v, false)));
        assert_eq!((b.key(), b.value(), b.version()), (&key[..], &value[..], V));
    }
}

#[test]
fn setters_touch_nothing_else() {
    let mut buf = encoded(b"key", b"value", 30, false);
    let mut b = BlockMut(&mut buf);
    b.set_version(Version::new(1, 2));
    b.set_lru_prev(3);
    b.set_lru_next(4);
    let b = b.get();
    assert_eq!(
        (b.version(), b.key(), b.value(), b.deadline()),
        (Version::new(1, 2), &b"key"[..], &b"value"[..], 30)
    );
    assert_eq!((b.lru_prev(), b.lru_next()), (3, 4));
}
