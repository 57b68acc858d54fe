use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::ring::RingHash;
use proptest::prelude::*;

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("key:{i}").into_bytes()).collect()
}

fn ring(members: &[NodeId]) -> Ring {
    Ring::with_hasher(members, 64, RingHash).unwrap()
}

/// The ring vectors of `ring_tests::vectors` (4 vnodes over 1, 2, 3), joined by node 4.
#[test]
fn vectors_for_a_join() {
    let old = Ring::with_hasher(&[1, 2, 3], 4, RingHash).unwrap();
    let new = Ring::with_hasher(&[1, 2, 3, 4], 4, RingHash).unwrap();
    for key in keys(500) {
        let plan = plan_key(&old, &new, 2, &key);
        let before = old.owners(&key, 2);
        let after = new.owners(&key, 2);
        if after.contains(&4) {
            assert_eq!(plan.destinations, vec![4], "{key:?}");
            assert_eq!(
                plan.source,
                Some(before[0]),
                "the old primary sends {key:?}"
            );
        } else {
            assert_eq!(plan, KeyMove::default(), "{key:?}");
        }
    }
}

#[test]
fn a_leaving_node_sends_only_what_no_one_else_holds() {
    let old = ring(&[1, 2, 3]);
    let new = ring(&[1, 2]);
    for key in keys(2_000) {
        let plan = plan_key(&old, &new, 1, &key);
        if old.owner(&key) == 3 {
            assert_eq!(plan.source, Some(3));
            assert_eq!(plan.destinations, vec![new.owner(&key)]);
        } else {
            assert_eq!(plan, KeyMove::default());
        }
        // At replicas 2 the other old owner always survives, so node 3 never sends.
        let plan = plan_key(&old, &new, 2, &key);
        assert!(!plan.is_sent_by(3), "{key:?}: {plan:?}");
    }
}

#[test]
fn an_unchanged_ring_moves_nothing() {
    let r = ring(&[5, 6, 7]);
    let mut cost = MoveCost::default();
    for key in keys(1_000) {
        let plan = plan_key(&r, &r, 2, &key);
        assert_eq!(plan, KeyMove::default());
        cost.add(&plan, key.len(), 100);
    }
    assert_eq!(cost, MoveCost::default());
}

/// A join of a 4th node at replicas 2 hands it about 2/4 of the keys.
#[test]
fn a_join_at_replicas_two_moves_half_the_keys_to_the_new_node() {
    let old = Ring::new(&[1, 2, 3]).unwrap();
    let new = Ring::new(&[1, 2, 3, 4]).unwrap();
    let keys = keys(20_000);
    let mut cost = MoveCost::default();
    for key in &keys {
        let plan = plan_key(&old, &new, 2, key);
        assert!(plan.destinations.iter().all(|&d| d == 4));
        cost.add(&plan, key.len(), 10);
    }
    let share = cost.keys as f64 / keys.len() as f64;
    assert!((share - 0.5).abs() < 0.03, "the new node gains {share:.3}");
    assert_eq!(cost.copies, cost.keys);
}

#[test]
fn cost_counts_each_copy() {
    let mut cost = MoveCost::default();
    let plan = KeyMove {
        source: Some(1),
        destinations: vec![2, 3],
    };
    cost.add(&plan, 3, 7);
    cost.add(&KeyMove::default(), 3, 7);
    assert_eq!(
        cost,
        MoveCost {
            keys: 1,
            copies: 2,
            bytes: 20
        }
    );
    assert_eq!(cost.merged(cost).bytes, 40);
}

/// Applies the plan to every key held under `old` and checks the contract: one source that
/// holds the key, destinations exactly the gained owners, every new owner ends up holding the
/// key, and the bytes delivered equal the minimum.
fn check_plan(old_members: &[NodeId], new_members: &[NodeId], replicas: usize) {
    let old = ring(old_members);
    let new = ring(new_members);
    let mut held: BTreeMap<NodeId, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut cost = MoveCost::default();
    let mut delivered = 0u64;
    let value_len = 9;
    for key in keys(1_500) {
        let before = old.owners(&key, replicas);
        let after = new.owners(&key, replicas);
        for &o in &before {
            held.entry(o).or_default().insert(key.clone());
        }
        let plan = plan_key(&old, &new, replicas, &key);
        cost.add(&plan, key.len(), value_len);
        let gained: Vec<NodeId> = after
            .iter()
            .copied()
            .filter(|n| !before.contains(n))
            .collect();
        assert_eq!(plan.destinations, gained, "{key:?}");
        assert_eq!(plan.source.is_some(), !gained.is_empty(), "{key:?}");
        if let Some(source) = plan.source {
            assert!(held[&source].contains(&key), "the source holds {key:?}");
            let staying: Vec<NodeId> = before
                .iter()
                .copied()
                .filter(|n| new_members.contains(n))
                .collect();
            if let Some(&first) = staying.first() {
                assert_eq!(source, first, "a staying owner sends {key:?}");
            }
            for &d in &plan.destinations {
                assert!(
                    held.entry(d).or_default().insert(key.clone()),
                    "{d} got {key:?} twice"
                );
                delivered += (key.len() + value_len) as u64;
            }
        }
        for &o in &after {
            assert!(held[&o].contains(&key), "new owner {o} lacks {key:?}");
        }
    }
    assert_eq!(delivered, cost.bytes);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d6f766573),
        ..ProptestConfig::default()
    })]

    #[test]
    fn joins_follow_the_contract(
        members in proptest::collection::btree_set(1u32..1_000, 1..6),
        joiner in 1_000u32..2_000,
        replicas in 1usize..4,
    ) {
        let old: Vec<NodeId> = members.into_iter().collect();
        let mut new = old.clone();
        new.push(joiner);
        check_plan(&old, &new, replicas);
    }

    #[test]
    fn leaves_follow_the_contract(
        members in proptest::collection::btree_set(1u32..1_000, 2..7),
        pick in any::<prop::sample::Index>(),
        replicas in 1usize..4,
    ) {
        let old: Vec<NodeId> = members.into_iter().collect();
        let gone = old[pick.index(old.len())];
        let new: Vec<NodeId> = old.iter().copied().filter(|&m| m != gone).collect();
        check_plan(&old, &new, replicas);
    }

    /// Any two member lists (several joins and leaves at once) still follow the contract.
    #[test]
    fn any_change_follows_the_contract(
        old in proptest::collection::btree_set(1u32..20, 1..6),
        new in proptest::collection::btree_set(1u32..20, 1..6),
        replicas in 1usize..4,
    ) {
        let old: Vec<NodeId> = old.into_iter().collect();
        let new: Vec<NodeId> = new.into_iter().collect();
        check_plan(&old, &new, replicas);
    }
}

/// Every key moves as the range holding its hash says, and keys outside every range do not
/// move.
fn check_ranges(old_members: &[NodeId], new_members: &[NodeId], replicas: usize) {
    let old = ring(old_members);
    let new = ring(new_members);
    let ranges = moved_ranges(&old, &new, replicas);
    for key in keys(2_000) {
        let point = old.point(&key);
        let holding: Vec<&RangeMove> = ranges.iter().filter(|r| r.contains(point)).collect();
        assert!(holding.len() <= 1, "{key:?} is in {} ranges", holding.len());
        let by_range = holding.first().map(|r| r.plan.clone()).unwrap_or_default();
        assert_eq!(by_range, plan_key(&old, &new, replicas, &key), "{key:?}");
    }
}

#[test]
fn ranges_of_a_join_and_of_no_change() {
    check_ranges(&[1, 2, 3], &[1, 2, 3, 4], 2);
    assert!(moved_ranges(&ring(&[1, 2]), &ring(&[1, 2]), 2).is_empty());
    // One node to another: everything moves, as one arc all around.
    let all = moved_ranges(&ring(&[1]), &ring(&[2]), 1);
    assert_eq!(all.len(), 1);
    assert!(all[0].contains(0) && all[0].contains(u64::MAX));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x72616e676573),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ranges_agree_with_plan_key(
        old in proptest::collection::btree_set(1u32..20, 1..6),
        new in proptest::collection::btree_set(1u32..20, 1..6),
        replicas in 1usize..4,
    ) {
        let old: Vec<NodeId> = old.into_iter().collect();
        let new: Vec<NodeId> = new.into_iter().collect();
        check_ranges(&old, &new, replicas);
    }
}

/// A node removed while down sends nothing: each of its keys comes from another old owner
/// that stays, every new owner still gets every key it gains, and the arcs agree.
#[test]
fn a_down_node_is_never_a_source() {
    let (old, new) = (ring(&[1, 2, 3]), ring(&[1, 2]));
    for key in keys(2000) {
        let plan = plan_key_without(&old, &new, 2, &[3], &key);
        let before = old.owners(&key, 2);
        let after = new.owners(&key, 2);
        assert_eq!(
            plan.destinations.is_empty(),
            after.iter().all(|n| before.contains(n))
        );
        if !plan.destinations.is_empty() {
            let source = plan.source.unwrap();
            assert_ne!(source, 3, "{key:?}");
            assert!(
                before.contains(&source) && after.contains(&source),
                "{key:?}"
            );
        }
        // Without the down node, the plan is the usual one wherever node 3 would not send.
        let usual = plan_key(&old, &new, 2, &key);
        if usual.source != Some(3) {
            assert_eq!(plan, usual);
        }
    }
    let ranges = moved_ranges_without(&old, &new, 2, &[3]);
    for key in keys(500) {
        let point = old.point(&key);
        let by_range = ranges
            .iter()
            .find(|r| r.contains(point))
            .map(|r| r.plan.clone())
            .unwrap_or_default();
        assert_eq!(by_range, plan_key_without(&old, &new, 2, &[3], &key));
    }
}

/// At one replica a down node's keys have no other holder: they move nowhere.
#[test]
fn a_down_nodes_keys_at_one_replica_move_nowhere() {
    let (old, new) = (ring(&[1, 2, 3]), ring(&[1, 2]));
    for key in keys(500) {
        let plan = plan_key_without(&old, &new, 1, &[3], &key);
        if old.owners(&key, 1) == [3] {
            assert_eq!(plan, KeyMove::default());
        } else {
            assert_eq!(plan, plan_key(&old, &new, 1, &key));
        }
    }
}
