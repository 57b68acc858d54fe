use super::*;
use crate::cluster::topology_wire::{
    decode_command, encode_command, topology_from_wire, topology_to_wire,
};

fn m(id: NodeId) -> Member {
    Member {
        id,
        addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16 * 100)),
    }
}

fn three() -> Topology {
    Topology::initial(vec![m(3), m(1), m(2)]).unwrap()
}

fn ids(members: &[Member]) -> Vec<NodeId> {
    members.iter().map(|m| m.id).collect()
}

fn leave(id: NodeId, replicas: u32, force: bool) -> Command {
    Command::BeginLeave {
        id,
        replicas,
        force,
        down: false,
    }
}

fn remove_down(id: NodeId, replicas: u32, force: bool) -> Command {
    Command::BeginLeave {
        id,
        replicas,
        force,
        down: true,
    }
}

#[test]
fn a_join_runs_begin_sources_finish() {
    let mut t = three();
    assert_eq!(t.epoch, 1);
    assert_eq!(ids(&t.members), vec![1, 2, 3]);
    assert_eq!(t.apply(&Command::BeginJoin(m(4))), Ok(Applied::Began));
    assert_eq!(t.epoch, 2);
    assert_eq!(ids(t.read_members()), vec![1, 2, 3]);
    assert_eq!(ids(t.target_members()), vec![1, 2, 3, 4]);
    assert_eq!(ids(&t.all_members()), vec![1, 2, 3, 4]);
    assert_eq!(t.finish_due(), None);
    // Finishing early is refused, saying who is missing.
    assert_eq!(
        t.apply(&Command::Finish { epoch: 2 }),
        Err(Refused::SourcesPending(vec![1, 2, 3]))
    );
    for (node, all_done) in [(1, false), (3, false), (3, false), (2, true)] {
        assert_eq!(
            t.apply(&Command::SourceDone { epoch: 2, node }),
            Ok(Applied::SourceDone { all_done })
        );
    }
    assert_eq!(t.finish_due(), Some(2));
    assert_eq!(
        t.apply(&Command::Finish { epoch: 2 }),
        Ok(Applied::Finished)
    );
    assert_eq!(t.epoch, 3);
    assert_eq!(ids(&t.members), vec![1, 2, 3, 4]);
    assert_eq!(t.transition, None);
    assert_eq!(t.finish_due(), None);
}

#[test]
fn the_log_starts_with_one_bootstrap() {
    let mut t = Topology::empty();
    assert!(
        t.apply(&Command::BeginJoin(m(4))).is_err(),
        "nothing before the bootstrap"
    );
    assert_eq!(
        t.apply(&Command::Bootstrap(vec![])),
        Err(Refused::BadBootstrap)
    );
    assert_eq!(
        t.apply(&Command::Bootstrap(vec![m(1), m(1)])),
        Err(Refused::BadBootstrap)
    );
    let twin = Member {
        id: 2,
        addr: m(1).addr,
    };
    assert_eq!(
        t.apply(&Command::Bootstrap(vec![m(1), twin])),
        Err(Refused::BadBootstrap)
    );
    assert_eq!(t, Topology::empty());
    assert_eq!(
        t.apply(&Command::Bootstrap(vec![m(2), m(1)])),
        Ok(Applied::Bootstrapped)
    );
    assert_eq!((t.epoch, ids(&t.members)), (1, vec![1, 2]));
    assert_eq!(
        t.apply(&Command::Bootstrap(vec![m(3)])),
        Err(Refused::Bootstrapped(1))
    );
}

#[test]
fn one_change_at_a_time() {
    let mut t = three();
    t.apply(&Command::BeginJoin(m(4))).unwrap();
    let before = t.clone();
    let busy = t.apply(&Command::BeginJoin(m(5))).unwrap_err();
    assert!(matches!(busy, Refused::Busy { epoch: 2, .. }), "{busy}");
    assert!(busy.to_string().contains("node 4 at 127.0.0.1:7400 joins"));
    assert!(matches!(
        t.apply(&leave(1, 1, false)),
        Err(Refused::Busy { .. })
    ));
    assert_eq!(t, before, "a refused command changes nothing");
}

#[test]
fn stale_and_foreign_reports_are_refused() {
    let mut t = three();
    assert_eq!(
        t.apply(&Command::SourceDone { epoch: 1, node: 1 }),
        Err(Refused::NoSuchTransition {
            asked: 1,
            current: 1
        })
    );
    t.apply(&Command::BeginJoin(m(4))).unwrap();
    assert!(matches!(
        t.apply(&Command::SourceDone { epoch: 1, node: 1 }),
        Err(Refused::NoSuchTransition { .. })
    ));
    assert_eq!(
        t.apply(&Command::SourceDone { epoch: 2, node: 4 }),
        Err(Refused::NotSource(4))
    );
    assert!(matches!(
        t.apply(&Command::Finish { epoch: 3 }),
        Err(Refused::NoSuchTransition { .. })
    ));
}

#[test]
fn joins_that_cannot_work_are_refused() {
    let mut t = three();
    assert_eq!(
        t.apply(&Command::BeginJoin(m(2))),
        Err(Refused::AlreadyMember(2))
    );
    let same_addr = Member {
        id: 9,
        addr: m(1).addr,
    };
    assert!(matches!(
        t.apply(&Command::BeginJoin(same_addr)),
        Err(Refused::AddressTaken { owner: 1, .. })
    ));
    assert_eq!(t, three());
}

#[test]
fn a_leave_below_the_replication_factor_needs_force() {
    let mut t = three();
    assert_eq!(t.apply(&leave(9, 2, false)), Err(Refused::NotMember(9)));
    assert_eq!(
        t.apply(&leave(2, 3, false)),
        Err(Refused::BelowReplicas {
            id: 2,
            left: 2,
            replicas: 3
        })
    );
    assert_eq!(t.apply(&leave(2, 3, true)), Ok(Applied::Began));
    assert_eq!(ids(t.target_members()), vec![1, 3]);
    // The leaving node is a source too: it may be the only holder of some keys.
    assert_eq!(t.transition.as_ref().unwrap().pending(), vec![1, 2, 3]);
    for node in [1, 2, 3] {
        t.apply(&Command::SourceDone { epoch: 2, node }).unwrap();
    }
    t.apply(&Command::Finish { epoch: 2 }).unwrap();
    assert_eq!((t.epoch, ids(&t.members)), (3, vec![1, 3]));
    let mut one = Topology::initial(vec![m(1)]).unwrap();
    assert_eq!(one.apply(&leave(1, 1, true)), Err(Refused::LastMember(1)));
}

#[test]
fn commands_and_topologies_round_trip_the_wire() {
    let commands = [
        Command::BeginJoin(m(4)),
        leave(2, 3, true),
        Command::SourceDone { epoch: 7, node: 3 },
        Command::Finish { epoch: 7 },
        Command::Bootstrap(vec![m(1), m(2)]),
    ];
    for c in commands {
        assert_eq!(decode_command(&encode_command(&c)), Ok(c));
    }
    assert!(decode_command(&[0xff, 0xff]).is_err());
    assert!(decode_command(&[]).is_err(), "an empty command");

    let mut t = three();
    assert_eq!(topology_from_wire(&topology_to_wire(&t)), Ok(t.clone()));
    t.apply(&Command::BeginJoin(m(4))).unwrap();
    t.apply(&Command::SourceDone { epoch: 2, node: 2 }).unwrap();
    assert_eq!(topology_from_wire(&topology_to_wire(&t)), Ok(t.clone()));
    let mut l = three();
    l.apply(&leave(1, 1, false)).unwrap();
    assert_eq!(topology_from_wire(&topology_to_wire(&l)), Ok(l.clone()));
    let c = remove_down(3, 2, false);
    assert_eq!(decode_command(&encode_command(&c)), Ok(c));
    let mut d = three();
    d.apply(&remove_down(3, 2, false)).unwrap();
    assert_eq!(topology_from_wire(&topology_to_wire(&d)), Ok(d.clone()));

    let mut bad = topology_to_wire(&t);
    bad.members[0].addr = "nowhere".into();
    assert!(topology_from_wire(&bad).is_err());
}

#[test]
fn a_leave_from_a_topology_with_no_members_is_refused_not_a_panic() {
    // What a damaged (yet checksum-valid) state file could hold.
    let mut t = Topology {
        cluster_id: 0,
        epoch: 3,
        members: Vec::new(),
        transition: None,
    };
    assert_eq!(t.apply(&leave(1, 1, true)), Err(Refused::NotMember(1)));
    assert_eq!(t.epoch, 3);
}

#[test]
fn a_node_that_is_down_is_removed_without_streaming() {
    let mut t = three();
    assert_eq!(t.apply(&remove_down(3, 2, false)), Ok(Applied::Began));
    let transition = t.transition.clone().unwrap();
    assert!(transition.down);
    // The down node counts as done: only the members that stay stream.
    assert_eq!(transition.pending(), vec![1, 2]);
    for node in [1, 2] {
        t.apply(&Command::SourceDone { epoch: 2, node }).unwrap();
    }
    assert_eq!(t.finish_due(), Some(2));
    t.apply(&Command::Finish { epoch: 2 }).unwrap();
    assert_eq!((t.epoch, ids(&t.members)), (3, vec![1, 2]));
}

#[test]
fn removing_a_down_node_at_one_replica_loses_its_keys_and_needs_force() {
    let mut t = three();
    let refused = t.apply(&remove_down(3, 1, false)).unwrap_err();
    assert_eq!(refused, Refused::KeysLost(3));
    assert_eq!(
        refused.to_string(),
        "node 3 is down and is the only owner of its ranges at --replicas 1: its keys are lost; \
         use --force to remove it anyway"
    );
    assert_eq!(t, three());
    assert_eq!(t.apply(&remove_down(3, 1, true)), Ok(Applied::Began));
    // A leave of a node that is up streams its keys: no force needed at one replica.
    assert_eq!(three().apply(&leave(3, 1, false)), Ok(Applied::Began));
}

#[test]
fn an_aborted_change_goes_back_to_the_old_members() {
    let mut t = three();
    assert_eq!(
        t.apply(&Command::Abort { epoch: 1 }),
        Err(Refused::NoSuchTransition {
            asked: 1,
            current: 1
        })
    );
    t.apply(&Command::BeginJoin(m(4))).unwrap();
    t.apply(&Command::SourceDone { epoch: 2, node: 1 }).unwrap();
    assert_eq!(t.apply(&Command::Abort { epoch: 2 }), Ok(Applied::Aborted));
    assert_eq!((t.epoch, ids(&t.members)), (3, vec![1, 2, 3]));
    assert_eq!(t.transition, None);
    // Repeated, or a late finish: refused, nothing changes.
    assert!(t.apply(&Command::Abort { epoch: 2 }).is_err());
    assert!(t.apply(&Command::Finish { epoch: 2 }).is_err());
    assert_eq!(t.epoch, 3);
    // The next change runs as usual.
    assert_eq!(t.apply(&leave(2, 2, false)), Ok(Applied::Began));
    let c = Command::Abort { epoch: 4 };
    assert_eq!(decode_command(&encode_command(&c)), Ok(c));
}
