use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn three(me: NodeId) -> Membership {
    let members = vec![(1, addr(7000)), (2, addr(7100)), (3, addr(7200))];
    let advertise = members[me as usize - 1].1;
    Membership::new("prod", me, advertise, members).unwrap()
}

fn topology() -> Topology {
    Topology {
        shards: 2,
        shard_ports: vec![7101, 7102],
        ..Topology::default()
    }
}

#[test]
fn peers_flag_parses_and_round_trips() {
    let parsed = parse_peers("1=127.0.0.1:7000, 2=127.0.0.1:7100,").unwrap();
    assert_eq!(parsed, vec![(1, addr(7000)), (2, addr(7100))]);
    assert_eq!(peers_flag(&parsed), "1=127.0.0.1:7000,2=127.0.0.1:7100");
    assert!(parse_peers("1:127.0.0.1:7000")
        .unwrap_err()
        .contains("not ID=HOST:PORT"));
    assert!(parse_peers("x=127.0.0.1:7000")
        .unwrap_err()
        .contains("bad node id"));
    assert!(parse_peers("1=nowhere")
        .unwrap_err()
        .contains("bad address"));
}

#[test]
fn member_lists_that_cannot_work_are_refused() {
    let err =
        |me, adv, list: Vec<(NodeId, SocketAddr)>| Membership::new("c", me, adv, list).unwrap_err();
    assert!(err(3, addr(1), vec![(1, addr(1)), (2, addr(2))]).contains("does not list"));
    assert!(err(1, addr(9), vec![(1, addr(1))]).contains("advertises"));
    assert!(err(1, addr(1), vec![(1, addr(1)), (1, addr(2))]).contains("twice"));
    assert!(err(1, addr(1), vec![(1, addr(1)), (2, addr(1))]).contains("same address"));
    assert!(Membership::new("", 1, addr(1), vec![(1, addr(1))]).is_err());
    let single = Membership::single(5, addr(1));
    assert!(!single.is_multi_node());
    assert_eq!(single.peers().count(), 0);
}

#[test]
fn a_matching_peer_is_accepted_both_ways() {
    let (one, two) = (three(1), three(2));
    let hello = two.hello(&topology());
    assert_eq!(one.check_hello(&hello, None), Ok(()));
    assert_eq!(one.check_hello(&hello, Some(2)), Ok(()));
    assert_eq!(two.check_hello(&one.hello(&topology()), Some(1)), Ok(()));
    assert_eq!(one.peers().map(|p| p.0).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn each_disagreement_is_named() {
    let one = three(1);
    let good = three(2).hello(&topology());
    let cases: Vec<(Hello, Option<NodeId>, &str)> = vec![
        (
            Hello {
                cluster: "staging".into(),
                ..good.clone()
            },
            None,
            r#"node 2 at 127.0.0.1:7100 is in cluster "staging", node 1 is in cluster "prod" (--cluster)"#,
        ),
        (
            Hello {
                protocol_version: 9,
                ..good.clone()
            },
            None,
            "speaks protocol version 9, node 1 speaks 1",
        ),
        (
            good.clone(),
            Some(3),
            "the member list gives 127.0.0.1:7200 as node 3, but the node there says it is node 2",
        ),
        (
            Hello {
                addr: "127.0.0.1:7999".into(),
                ..good.clone()
            },
            None,
            "node 2 at 127.0.0.1:7999: the member list gives node 2 the address 127.0.0.1:7100",
        ),
        (
            Hello {
                node_id: 4,
                ..good.clone()
            },
            None,
            "node 4 at 127.0.0.1:7100 is not in node 1's member list",
        ),
        (
            Hello {
                node_id: 1,
                ..good.clone()
            },
            None,
            "has the id of node 1 itself (at 127.0.0.1:7000)",
        ),
        (
            Hello {
                members: good.members[..2].to_vec(),
                ..good.clone()
            },
            None,
            "has another member list (--peers 1=127.0.0.1:7000,2=127.0.0.1:7100; node 1 has",
        ),
        (
            Hello {
                shard_ports: vec![1],
                ..good.clone()
            },
            None,
            "reports 2 shards but 1 shard ports",
        ),
    ];
    for (hello, expected, want) in cases {
        let why = one.check_hello(&hello, expected).unwrap_err();
        assert!(why.contains(want), "{why:?} should contain {want:?}");
    }
}

#[test]
fn a_stream_checks_identity_but_not_the_member_lists() {
    // Node 4 joins: its list has 4 members, node 1's still 3.
    let members = vec![
        (1, addr(7000)),
        (2, addr(7100)),
        (3, addr(7200)),
        (4, addr(7300)),
    ];
    let mut joining = Membership::new("prod", 4, addr(7300), members).unwrap();
    // Started with --join: it does not know the cluster's id until it replays the log.
    joining.cluster_id = 0;
    let one = three(1);
    let hello = joining.hello(&topology());
    assert!(one.check_hello(&hello, Some(4)).is_err());
    assert_eq!(one.check_identity(&hello, Some(4)), Ok(()));
    assert!(one
        .check_identity(&hello, Some(2))
        .unwrap_err()
        .contains("says it is node 4"));
    let other = Hello {
        cluster: "staging".into(),
        ..hello.clone()
    };
    assert!(one
        .check_identity(&other, Some(4))
        .unwrap_err()
        .contains("cluster"));
    let newer = Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        ..hello
    };
    assert!(one
        .check_identity(&newer, Some(4))
        .unwrap_err()
        .contains("protocol"));
}

#[test]
fn a_peer_bootstrapped_apart_is_refused_even_with_an_agreed_topology() {
    use crate::cluster::topology::{Member as M, Topology as T};
    let one = three(1);
    let two = three(2);
    assert_ne!(one.cluster_id, 0);
    assert_eq!(
        one.cluster_id, two.cluster_id,
        "the same --peers, the same id"
    );
    // Both run an agreed topology (the member-list check is skipped), but node 2's was
    // bootstrapped from another member list.
    let members = |ports: &[u16]| -> Vec<M> {
        ports
            .iter()
            .enumerate()
            .map(|(i, &p)| M {
                id: i as u32 + 1,
                addr: addr(p),
            })
            .collect()
    };
    let ours = T::initial(members(&[7000, 7100, 7200])).unwrap();
    let theirs = T::initial(members(&[7000, 7100, 7300])).unwrap();
    assert_eq!(ours.cluster_id, one.cluster_id);
    let one = one.with_topology(&ours).unwrap();
    let apart = two.with_topology(&theirs).unwrap();
    let why = one
        .check_hello(&apart.hello(&topology()), Some(2))
        .unwrap_err();
    assert!(why.contains("bootstrapped apart"), "{why}");
    assert!(one.check_identity(&apart.hello(&topology()), None).is_err());
    // A node that does not know the id yet (started with --join) is not refused for it.
    let mut joining = apart.hello(&topology());
    joining.cluster_id = 0;
    assert_eq!(one.check_hello(&joining, Some(2)), Ok(()));
}
