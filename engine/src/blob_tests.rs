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
        let b = Blob::new(&key, &value, V, deadline, tomb);
        assert_eq!(b.key(), &key[..]);
        assert_eq!(b.value(), &value[..]);
        assert_eq!(b.version(), V);
        assert_eq!(b.deadline(), deadline);
        assert_eq!(b.is_tombstone(), tomb);
        assert_eq!(b.len(), block_len(k, v, deadline != 0));
        if deadline != 0 {
            assert_eq!(b.wheel_links(), (UNLINKED, UNLINKED));
        }
    }
}

#[test]
fn is_dead_only_from_the_deadline_on() {
    let b = Blob::new(b"k", b"v", V, 100, false);
    assert!(!b.is_dead(99));
    assert!(b.is_dead(100));
    assert!(b.is_dead(101));
    let forever = Blob::new(b"k", b"v", V, 0, false);
    assert!(!forever.is_dead(u64::MAX));
}

#[test]
fn adding_and_dropping_the_deadline_keeps_key_and_value() {
    for v in [0, 5, 100, 300_000] {
        let (key, value) = (pattern(20, 3), pattern(v, 4));
        let mut b = Blob::new(&key, &value, V, 0, false);
        b.set_deadline(1_000);
        assert_eq!((b.deadline(), b.len()), (1_000, block_len(20, v, true)));
        b.set_wheel_prev(7);
        b.set_wheel_next(9);
        assert_eq!(b.wheel_links(), (7, 9));
        b.set_deadline(2_000);
        assert_eq!(b.deadline(), 2_000);
        assert_eq!(b.wheel_links(), (UNLINKED, UNLINKED));
        b.set_deadline(0);
        assert_eq!((b.deadline(), b.len()), (0, block_len(20, v, false)));
        assert_eq!((b.key(), b.value(), b.version()), (&key[..], &value[..], V));
    }
}

#[test]
fn rewrite_in_place_only_for_the_same_layout() {
    let newer = Version::new(9, 9);
    let mut b = Blob::new(b"key", b"aaaa", V, 50, false);
    assert!(
        !b.rewrite(b"bbbbb", newer, 50, false),
        "value length differs"
    );
    assert!(
        !b.rewrite(b"bbbb", newer, 0, false),
        "deadline presence differs"
    );
    assert_eq!((b.value(), b.version()), (&b"aaaa"[..], V));
    assert!(b.rewrite(b"bbbb", newer, 60, false));
    assert_eq!(
        (b.key(), b.value(), b.version(), b.deadline()),
        (&b"key"[..], &b"bbbb"[..], newer, 60)
    );

    let mut t = Blob::new(b"key", b"", V, 10, false);
    assert!(t.rewrite(b"", newer, 20, true));
    assert!(t.is_tombstone());
    assert!(t.rewrite(b"", V, 20, false));
    assert!(!t.is_tombstone());
}

#[test]
fn set_version_touches_nothing_else() {
    let mut b = Blob::new(b"key", b"value", V, 30, false);
    b.set_version(Version::new(1, 2));
    assert_eq!(
        (b.version(), b.key(), b.value(), b.deadline()),
        (Version::new(1, 2), &b"key"[..], &b"value"[..], 30)
    );
}
