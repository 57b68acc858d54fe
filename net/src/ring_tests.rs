use super::*;
use proptest::prelude::*;

fn ids(k: u32) -> Vec<NodeId> {
    (1..=k).collect()
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("key:{i}").into_bytes()).collect()
}

#[test]
fn balance_bound_holds_for_every_cluster_size_up_to_16() {
    for k in 1..=16 {
        let ring = Ring::new(&ids(k)).unwrap();
        let shares = ring.shares();
        let total: f64 = shares.iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
        let max = shares.iter().map(|s| s.1).fold(0.0, f64::max);
        let ratio = max * f64::from(k);
        assert!(ratio <= 1.06, "{k} nodes: max/mean share {ratio:.4}");
    }
}

/// The shares are what keys see: 200,000 keys land on each node in proportion to its share.
#[test]
fn keys_follow_the_shares() {
    let ring = Ring::new(&[3, 11, 42]).unwrap();
    let keys = keys(200_000);
    let mut counts = [0usize; 3];
    for key in &keys {
        let at = ring.nodes().binary_search(&ring.owner(key)).unwrap();
        counts[at] += 1;
    }
    for ((node, share), count) in ring.shares().into_iter().zip(counts) {
        let seen = count as f64 / keys.len() as f64;
        assert!(
            (seen - share).abs() < 0.005,
            "node {node}: share {share:.4}, keys {seen:.4}"
        );
        assert!(seen * 3.0 < 1.06, "node {node} holds {seen:.4} of the keys");
    }
}

/// Test vectors, computed with an independent implementation (Python's `xxhash` and `bisect`)
/// of the algorithm in the module docs. If any of these change, data lands on other nodes.
#[test]
fn vectors() {
    assert_eq!(vnode_token(1, 0), 0xbbb063a051e84d56);
    assert_eq!(vnode_token(7, 3), 0x0541437c5a841e2d);
    let ring = Ring::with_hasher(&[1, 2, 3], 4, RingHash).unwrap();
    let cases: [(&[u8], u64, [NodeId; 3]); 5] = [
        (b"", 0x2d06800538d394c2, [1, 2, 3]),
        (b"a", 0xe6c632b61e964e1f, [3, 2, 1]),
        (b"user:42", 0x9fc1e605fa7174aa, [2, 1, 3]),
        (b"\x00\xff\x10", 0xa4379406eab41d2f, [2, 1, 3]),
        (b"kvmesh", 0x64607ebbd7b7e99b, [1, 2, 3]),
    ];
    for (key, hash, owners) in cases {
        assert_eq!(RingHash.hash_key(key), hash, "hash of {key:?}");
        assert_eq!(ring.owners(key, 3), owners, "owners of {key:?}");
        assert_eq!(ring.owner(key), owners[0]);
    }
}

#[test]
fn owners_are_distinct_and_clamped_to_the_cluster() {
    let one = Ring::new(&[9]).unwrap();
    assert_eq!(one.owners(b"k", 3), vec![9]);
    let two = Ring::new(&[4, 2]).unwrap();
    assert_eq!(two.nodes(), &[2, 4]);
    for key in keys(200) {
        let mut owners = two.owners(&key, 3);
        assert_eq!(owners.len(), 2);
        owners.sort_unstable();
        assert_eq!(owners, vec![2, 4]);
    }
    assert_eq!(two.owners(b"k", 0), Vec::<NodeId>::new());
}

#[test]
fn bad_member_lists_are_refused() {
    assert_eq!(Ring::new(&[]).unwrap_err(), RingError::Empty);
    assert_eq!(
        Ring::new(&[1, 2, 1]).unwrap_err(),
        RingError::DuplicateNode(1)
    );
    assert_eq!(
        Ring::with_hasher(&[1], 0, RingHash).unwrap_err(),
        RingError::NoVnodes
    );
}

/// Owner of every key, for comparing two rings.
fn owner_map(ring: &Ring, keys: &[Vec<u8>]) -> Vec<NodeId> {
    keys.iter().map(|k| ring.owner(k)).collect()
}

proptest! {
    // A fixed seed: the movement test checks a statistical bound.
    #![proptest_config(ProptestConfig {
        cases: 24,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b766d657368),
        ..ProptestConfig::default()
    })]

    /// Adding a node to k nodes moves about 1/(k+1) of the keys, all of them to the new node.
    #[test]
    fn adding_a_node_moves_only_what_it_takes(
        members in proptest::collection::btree_set(1u32..10_000, 1..8),
        new in 10_000u32..20_000,
    ) {
        let members: Vec<NodeId> = members.into_iter().collect();
        let keys = keys(20_000);
        let before = owner_map(&Ring::new(&members).unwrap(), &keys);
        let mut grown = members.clone();
        grown.push(new);
        let after = owner_map(&Ring::new(&grown).unwrap(), &keys);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        for (_, to) in &moved {
            prop_assert_eq!(**to, new, "a key moved to an old node");
        }
        let expected = keys.len() as f64 / (members.len() + 1) as f64;
        let moved = moved.len() as f64;
        prop_assert!(
            (moved - expected).abs() <= 0.15 * expected,
            "moved {} keys, expected about {}", moved, expected
        );
    }

    /// Removing a node moves exactly the keys it owned.
    #[test]
    fn removing_a_node_moves_only_its_keys(
        members in proptest::collection::btree_set(1u32..10_000, 2..8),
        pick in any::<prop::sample::Index>(),
    ) {
        let members: Vec<NodeId> = members.into_iter().collect();
        let gone = members[pick.index(members.len())];
        let keys = keys(5_000);
        let before = owner_map(&Ring::new(&members).unwrap(), &keys);
        let rest: Vec<NodeId> = members.iter().copied().filter(|&m| m != gone).collect();
        let after = owner_map(&Ring::new(&rest).unwrap(), &keys);
        for (b, a) in before.iter().zip(&after) {
            prop_assert_eq!(b != a, *b == gone);
        }
    }

    /// Balance does not depend on the ids being small or consecutive: any 2 to 16 ids keep the
    /// largest share within 1.10 of the mean (1.06 for the ids 1..=k, above).
    #[test]
    fn balance_bound_holds_for_any_ids(
        members in proptest::collection::btree_set(any::<u32>(), 2..17),
    ) {
        let members: Vec<NodeId> = members.into_iter().collect();
        let ring = Ring::new(&members).unwrap();
        let max = ring.shares().iter().map(|s| s.1).fold(0.0, f64::max);
        let ratio = max * members.len() as f64;
        prop_assert!(ratio <= 1.10, "{} nodes: max/mean share {:.4}", members.len(), ratio);
    }

    /// The n owners are n distinct members, whatever the key.
    #[test]
    fn owners_are_distinct_members(
        members in proptest::collection::btree_set(any::<u32>(), 1..6),
        key in proptest::collection::vec(any::<u8>(), 0..32),
        n in 0usize..8,
    ) {
        let members: Vec<NodeId> = members.into_iter().collect();
        let ring = Ring::with_hasher(&members, 16, RingHash).unwrap();
        let owners = ring.owners(&key, n);
        prop_assert_eq!(owners.len(), n.min(members.len()));
        for o in &owners {
            prop_assert!(members.contains(o));
            prop_assert_eq!(owners.iter().filter(|x| *x == o).count(), 1);
        }
        if n > 0 {
            prop_assert_eq!(owners[0], ring.owner(&key));
        }
    }
}
