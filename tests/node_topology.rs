//! End to end: the agreed topology (issue 12). A cluster started with `--peers` forms its
//! topology Raft group and every shard reports the agreed epoch, across restarts; a leave
//! below the replication factor is refused; the group refuses what could corrupt it (a wiped
//! data directory, a Raft message without a handshake, bad joins); a leaving leader hands
//! over; a joining node serves no client data before it holds the topology; a stream copy for
//! a change not running is refused.

mod common;

use common::cluster::Cluster;
use common::membership::{epoch, joiner, topology_at, wait_for_members};
use common::{op, stderr, wait_for, Node, PortBlock, WireClient};
use kvmesh_proto::wire::{OpCode, Status};

#[test]
fn a_static_cluster_agrees_on_epoch_one_keeps_it_and_refuses_a_leave_below_replicas() {
    let mut cluster = Cluster::start(3, 2, &["--replicas", "3"]);
    wait_for("a topology leader", || {
        cluster
            .nodes
            .iter()
            .all(|n| n.log().contains("topology: the leader is node"))
            .then_some(())
    });
    for node in &cluster.nodes {
        for shard in 0..2 {
            wait_for("every shard to report epoch 1", || {
                (epoch(node, shard) == 1).then_some(())
            });
        }
    }
    // A stream copy for a change that does not run here (one that finished or was aborted):
    // refused and not stored, though this node owns the key.
    let mut shard0 = WireClient::connect(cluster.nodes[0].shard_addr(0));
    let copy = kvmesh_proto::wire::Op {
        replica: true,
        version_hlc: 1,
        version_node: 2,
        stream_epoch: 1,
        ..op(OpCode::OpPut, b"orphan", b"late copy", 0)
    };
    let answer = shard0.call(vec![copy]);
    assert_eq!(answer[0].status(), Status::StaleStream, "{answer:?}");
    assert!(
        answer[0].message.contains("not running here (epoch 1)"),
        "{answer:?}"
    );
    let get = kvmesh_proto::wire::Op {
        replica: true,
        ..op(OpCode::OpGet, b"orphan", b"", 0)
    };
    assert_eq!(shard0.call(vec![get])[0].status(), Status::NotFound);
    let out = cluster.nodes[2].cli(&["leave"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    cluster.restart(2);
    let log = cluster.nodes[1].log();
    assert!(
        log.contains("topology: restored epoch 1 (3 member(s)"),
        "{log}"
    );
    // Shard 1 learns the restored topology over the mesh, a moment after shard 0.
    for shard in 0..2 {
        wait_for("every restarted shard to report epoch 1", || {
            (epoch(&cluster.nodes[1], shard) == 1).then_some(())
        });
    }
    // The cluster still serves every key through every node.
    let mut client = WireClient::connect(cluster.nodes[1].addr);
    for i in 0..50 {
        client.put(format!("k{i}").as_bytes(), b"v");
    }
    let mut other = WireClient::connect(cluster.nodes[2].addr);
    for i in 0..50 {
        assert_eq!(
            other.get(format!("k{i}").as_bytes()).as_deref(),
            Some(&b"v"[..])
        );
    }
}

/// Waits until every node reports epoch 1 with a topology leader.
fn wait_for_epoch_one(cluster: &Cluster) {
    wait_for("a topology leader", || {
        cluster
            .nodes
            .iter()
            .all(|n| n.log().contains("topology: the leader is node"))
            .then_some(())
    });
    for node in &cluster.nodes {
        wait_for("every node to report epoch 1", || {
            (epoch(node, 0) == 1).then_some(())
        });
    }
}

/// The id of the node every log names as the topology leader last.
fn leader_of(cluster: &Cluster) -> usize {
    wait_for("one leader that all agree on", || {
        let named: Vec<Option<usize>> = cluster
            .nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let line = log
                    .lines()
                    .rev()
                    .find(|l| l.contains("the leader is node"))?;
                let after = &line[line.find("the leader is node ")? + 19..];
                after.split_whitespace().next()?.parse().ok()
            })
            .collect();
        named[0].filter(|&l| l > 0 && named.iter().all(|n| *n == Some(l)))
    })
}

#[test]
fn a_node_whose_data_dir_was_wiped_refuses_to_bootstrap_again() {
    let mut cluster = Cluster::start(3, 1, &[]);
    wait_for_epoch_one(&cluster);
    // A follower, which has acknowledged the leader's first entry: the leader's heartbeats to
    // it then commit beyond a fresh bootstrap. (A wiped node is not caught when the leader
    // changed since it last acknowledged; wiping the leader forces that. See the README.)
    let wiped = if leader_of(&cluster) == 3 { 2 } else { 3 };
    std::thread::sleep(std::time::Duration::from_millis(500));
    cluster.wipe_and_respawn(wiped);
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cluster.nodes[wiped - 1].is_running() {
        assert!(
            std::time::Instant::now() < give_up,
            "the wiped node did not stop\n{}",
            cluster.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = cluster.nodes[wiped - 1].log();
    assert!(log.contains("start it with --join"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // The others still agree, and still serve.
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i + 1 != wiped {
            assert_eq!(epoch(node, 0), 1);
            WireClient::connect(node.addr).put(b"k", b"v");
        }
    }
}

/// The leader's disk is replaced: its followers heard from it, so it refuses to bootstrap
/// again from `--peers` and exits, saying where the cluster is.
#[test]
fn a_wiped_former_leader_refuses_to_bootstrap() {
    let mut cluster = Cluster::start(3, 1, &[]);
    wait_for_epoch_one(&cluster);
    let leader = leader_of(&cluster);
    // The other two are stopped (SIGSTOP) while the wiped node asks them: they accept its
    // connections and do not answer, as busy peers would; it asks them again, and they answer
    // once they run again.
    let others: Vec<usize> = (1..=3).filter(|&id| id != leader).collect();
    for &id in &others {
        // SAFETY: kill(2) on our own child's pid; Node's Drop kills it even while stopped.
        unsafe { libc::kill(cluster.nodes[id - 1].pid() as i32, libc::SIGSTOP) };
    }
    cluster.wipe_and_respawn(leader);
    wait_for("the wiped node to ask its silent peers again", || {
        let log = cluster.nodes[leader - 1].log();
        (log.matches("did not answer within 3s (attempt 1 of 2)")
            .count()
            == 2)
            .then_some(())
    });
    for &id in &others {
        // SAFETY: as above.
        unsafe { libc::kill(cluster.nodes[id - 1].pid() as i32, libc::SIGCONT) };
    }
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cluster.nodes[leader - 1].is_running() {
        assert!(
            std::time::Instant::now() < give_up,
            "the wiped leader did not stop\n{}",
            cluster.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = cluster.nodes[leader - 1].log();
    assert!(
        log.contains("this node's data directory is empty but the cluster exists (epoch 1 at ")
            && log.contains("it heard from this node before): start it with --join"),
        "{log}"
    );
    // The others elect a leader among themselves and still serve.
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i + 1 != leader {
            WireClient::connect(node.addr).put(b"k", b"v");
        }
    }
}

/// The topology log is compacted at every `Finish`: a node that joins after a compaction
/// cannot replay the log from its first entry, and catches up through a Raft snapshot (the
/// encoded topology); a member restarts from its compacted log.
#[test]
fn a_compacted_log_is_caught_up_through_a_snapshot() {
    let mut cluster = Cluster::start(3, 1, &[]);
    wait_for_epoch_one(&cluster);
    let (d4, d5) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut four = joiner(4, cluster.nodes[0].addr, &d4, &[]);
    four.wait_ready();
    let nodes: Vec<&Node> = cluster.nodes.iter().chain([&four]).collect();
    wait_for_members(&nodes, &[1, 2, 3, 4], || cluster.logs());
    wait_for("every member to compact its log", || {
        nodes
            .iter()
            .all(|n| n.log().contains("topology: compacted the log up to index"))
            .then_some(())
    });
    let mut five = joiner(5, cluster.nodes[1].addr, &d5, &[]);
    five.wait_ready();
    let logs = || format!("{}\n--- 5 ---\n{}", cluster.logs(), five.log());
    let all: Vec<&Node> = cluster.nodes.iter().chain([&four, &five]).collect();
    wait_for_members(&all, &[1, 2, 3, 4, 5], logs);
    assert!(
        five.log()
            .contains("topology: installed a snapshot at index"),
        "{}",
        logs()
    );
    assert!(!five.log().contains("panicked"), "{}", logs());
    drop(all);
    drop(nodes);
    // A member restarts from its compacted log and snapshot.
    cluster.restart(1);
    assert!(
        cluster.nodes[0]
            .log()
            .contains("topology: restored epoch 5 (5 member(s)"),
        "{}",
        cluster.nodes[0].log()
    );
    assert_eq!(epoch(&cluster.nodes[0], 0), 5);
}

#[test]
fn a_raft_message_without_a_peer_handshake_is_refused() {
    use protobuf::Message as _;
    let cluster = Cluster::start(2, 1, &[]);
    wait_for_epoch_one(&cluster);
    // A heartbeat that commits far beyond the log: raft-rs aborts on it if it is stepped.
    let mut forged = raft::eraftpb::Message {
        from: 2,
        to: 1,
        term: 1_000,
        commit: 1_000_000,
        ..Default::default()
    };
    forged.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    let mut raft_op = op(OpCode::OpRaft, b"", b"", 0);
    raft_op.value = forged.write_to_bytes().unwrap();
    for addr in [cluster.nodes[0].addr, cluster.nodes[0].shard_addr(0)] {
        let mut client = WireClient::connect(addr);
        let results = client.call(vec![raft_op.clone()]);
        assert_eq!(
            results[0].status(),
            Status::Refused,
            "{}",
            results[0].message
        );
        assert!(
            results[0].message.contains("handshake"),
            "{}",
            results[0].message
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(epoch(&cluster.nodes[0], 0), 1, "{}", cluster.logs());
    assert!(!cluster.nodes[0].log().contains("panicked"));
}

#[test]
fn a_join_with_a_bad_id_address_or_shard_ports_is_refused() {
    let cluster = Cluster::start(2, 1, &[]);
    wait_for_epoch_one(&cluster);
    let good = kvmesh_proto::wire::Hello {
        protocol_version: 1, // cluster::membership::PROTOCOL_VERSION
        cluster: "test".into(),
        node_id: 9,
        addr: "127.0.0.1:1".into(),
        shards: 1,
        shard_ports: vec![2],
        ..Default::default()
    };
    let member_elsewhere = cluster.nodes[1].addr.port() + 50;
    let cases: Vec<(&str, kvmesh_proto::wire::Hello)> = vec![
        (
            "reserved",
            kvmesh_proto::wire::Hello {
                node_id: 0,
                ..good.clone()
            },
        ),
        (
            "unreadable address",
            kvmesh_proto::wire::Hello {
                addr: "nowhere".into(),
                ..good.clone()
            },
        ),
        (
            "not an address",
            kvmesh_proto::wire::Hello {
                addr: "0.0.0.0:5".into(),
                ..good.clone()
            },
        ),
        (
            "shard ports",
            kvmesh_proto::wire::Hello {
                shard_ports: vec![2, 3],
                ..good.clone()
            },
        ),
        (
            "not a port",
            kvmesh_proto::wire::Hello {
                shard_ports: vec![70_000],
                ..good.clone()
            },
        ),
        (
            "is a member already",
            kvmesh_proto::wire::Hello {
                node_id: 2,
                addr: format!("127.0.0.1:{member_elsewhere}"),
                ..good.clone()
            },
        ),
    ];
    let mut client = WireClient::connect(cluster.nodes[0].shard_addr(0));
    for (why, hello) in cases {
        let mut join = op(OpCode::OpJoin, b"", b"", 0);
        join.hello = Some(Box::new(hello));
        let result = client.call(vec![join]).remove(0);
        assert_eq!(
            result.status(),
            Status::Refused,
            "{why}: {}",
            result.message
        );
        assert!(result.message.contains(why), "{why}: {}", result.message);
    }
    // Nothing changed.
    assert_eq!(topology_at(cluster.nodes[0].addr), (1, vec![1, 2], false));
}

#[test]
fn a_leave_refused_then_asked_again_when_it_can_succeed_succeeds() {
    let mut cluster = Cluster::start(3, 1, &["--replicas", "3"]);
    wait_for_epoch_one(&cluster);
    let out = cluster.nodes[2].cli(&["leave"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    // A fourth member: the same leave, asked again, no longer goes below --replicas. The
    // earlier refusal of the very same command must not answer it.
    let data = tempfile::tempdir().unwrap();
    let mut four = joiner(4, cluster.nodes[0].addr, &data, &["--replicas", "3"]);
    four.wait_ready();
    let all: Vec<&Node> = cluster.nodes.iter().chain([&four]).collect();
    wait_for_members(&all, &[1, 2, 3, 4], || cluster.logs());
    let out = cluster.nodes[2].cli(&["leave"]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        stderr(&out),
        cluster.logs(),
        four.log()
    );
    let staying: Vec<&Node> = cluster.nodes[..2].iter().chain([&four]).collect();
    wait_for_members(&staying, &[1, 2, 4], || cluster.logs());
    cluster.kill(3);
}

#[test]
fn a_leader_that_leaves_hands_over_and_stops_once_removed_from_the_group() {
    let mut cluster = Cluster::start(3, 1, &["--replicas", "2"]);
    wait_for_epoch_one(&cluster);
    let leader = leader_of(&cluster);
    let out = cluster.nodes[leader - 1].cli(&["leave"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), cluster.logs());
    wait_for("the leader that left to stop", || {
        (!cluster.nodes[leader - 1].is_running()).then_some(())
    });
    let log = cluster.nodes[leader - 1].log();
    assert!(log.contains("handing the leadership to node"), "{log}");
    assert!(!log.contains("was not seen committed"), "{log}");
    let staying: Vec<&Node> = (1..=3)
        .filter(|&id| id != leader)
        .map(|id| &cluster.nodes[id - 1])
        .collect();
    let ids: Vec<u32> = (1..=3u32).filter(|&id| id as usize != leader).collect();
    wait_for_members(&staying, &ids, || cluster.logs());
    let removed = format!("RemoveNode node {leader}");
    for node in &staying {
        wait_for("the others to remove it from the group", || {
            node.log().contains(&removed).then_some(())
        });
    }
    cluster.kill(leader);
}

#[test]
fn a_node_alone_runs_no_topology_group() {
    let node = Node::start(1, &[]);
    assert_eq!(epoch(&node, 0), 0);
    assert!(!node.log().contains("topology:"), "{}", node.log());
}

/// A node started with `--peers` naming only itself and a data directory is a cluster of
/// one: it holds an agreed topology of itself (epoch 1), restarts alone, and a second node
/// joins it; at one replica the keys then split between the two.
#[test]
fn a_cluster_of_one_can_be_joined() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let ports = PortBlock::reserve(3);
    let me = format!("1={}", ports.addr());
    let flags: Vec<&str> = vec![
        "--id",
        "1",
        "--peers",
        &me,
        "--data-dir",
        &dir,
        "--fsync",
        "never",
        "--cluster",
        "test",
        "--replicas",
        "1",
    ];
    let mut one = Node::spawn(ports, 1, &flags);
    one.wait_ready();
    wait_for("its topology of one", || {
        (epoch(&one, 0) == 1).then_some(())
    });
    let mut client = WireClient::connect(one.addr);
    for i in 0..500 {
        client.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes());
    }
    drop(client);
    // Without --peers it would come back as a plain node that nothing can join: refused.
    let without_peers: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|f| *f != "--peers" && *f != me)
        .collect();
    one.respawn(&without_peers);
    wait_for("the start without --peers to be refused", || {
        (!one.is_running()).then_some(())
    });
    assert!(
        one.log()
            .contains("holds the topology of a cluster of one: start it with --peers"),
        "{}",
        one.log()
    );
    // It restarts alone, from its stored topology.
    one.respawn(&flags);
    one.wait_ready();
    wait_for("its topology again", || (epoch(&one, 0) == 1).then_some(()));
    let d2 = tempfile::tempdir().unwrap();
    let mut two = joiner(2, one.addr, &d2, &["--replicas", "1"]);
    two.wait_ready();
    let logs = || format!("--- 1 ---\n{}\n--- 2 ---\n{}", one.log(), two.log());
    wait_for_members(&[&one, &two], &[1, 2], logs);
    for node in [&one, &two] {
        let mut client = WireClient::connect(node.addr);
        for i in 0..500 {
            let got = client.get(format!("k{i}").as_bytes());
            assert_eq!(got, Some(format!("v{i}").into_bytes()), "k{i}\n{}", logs());
        }
    }
    let held = common::membership::keys_held(&two);
    assert!(
        (100..400).contains(&held),
        "node 2 holds {held} of 500 keys"
    );
    wait_for("node 1 to drop what moved", || {
        (common::membership::keys_held(&one) + held == 500).then_some(())
    });
}

#[test]
fn a_joining_node_serves_no_client_data_op_before_it_holds_the_agreed_topology() {
    // The seed never answers: the node keeps asking to join, with its listeners open.
    let seed = PortBlock::reserve(1);
    let data = tempfile::tempdir().expect("temp dir");
    let node = joiner(2, seed.addr(), &data, &[]);
    wait_for("the node to ask to join again", || {
        node.log().contains("join: not yet").then_some(())
    });
    let mut client = WireClient::connect(node.addr);
    let put = client.call(vec![op(OpCode::OpPut, b"k", b"v", 0)]);
    assert_eq!(put[0].status(), Status::Unavailable, "{}", put[0].message);
    assert!(
        put[0].message.contains("agreed topology"),
        "{}",
        put[0].message
    );
    let get = client.call(vec![op(OpCode::OpGet, b"k", b"", 0)]);
    assert_eq!(get[0].status(), Status::Unavailable, "{}", get[0].message);
    // Questions about the node itself are still answered.
    let stats = client.call(vec![op(OpCode::OpStats, b"", b"", 0)]);
    assert_eq!(stats[0].status(), Status::Ok, "{}", stats[0].message);
}
