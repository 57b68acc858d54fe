//! End to end: the agreed topology (issue 12). A cluster started with `--peers` forms its
//! topology Raft group, elects a leader, and every shard of every node reports the agreed
//! epoch; the state survives a restart.

mod common;

use common::cluster::Cluster;
use common::{op, wait_for, Node, WireClient};
use kvmesh_proto::wire::OpCode;

/// The epoch shard `shard` of `node` reports in its topology.
fn epoch(node: &Node, shard: usize) -> u64 {
    let mut client = WireClient::connect(node.shard_addr(shard));
    let results = client.call(vec![op(OpCode::OpTopology, b"", b"", 0)]);
    results[0].topology.as_ref().map_or(0, |t| t.epoch)
}

#[test]
fn a_static_cluster_agrees_on_epoch_one_and_keeps_it_across_a_restart() {
    let mut cluster = Cluster::start(3, 2, &[]);
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
    cluster.restart(2);
    let log = cluster.nodes[1].log();
    assert!(
        log.contains("topology: restored epoch 1 (3 member(s)"),
        "{log}"
    );
    for shard in 0..2 {
        assert_eq!(epoch(&cluster.nodes[1], shard), 1);
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

#[test]
fn a_node_alone_runs_no_topology_group() {
    let node = Node::start(1, &[]);
    assert_eq!(epoch(&node, 0), 0);
    assert!(!node.log().contains("topology:"), "{}", node.log());
}
