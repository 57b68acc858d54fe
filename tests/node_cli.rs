//! End to end: a real 2-shard node driven by the `kvmesh` CLI.

mod common;

use common::{stderr, stdout, wait_for, Node};

#[test]
fn put_get_remove_round_trip() {
    let node = Node::start(2, &[]);
    let out = node.cli(&["put", "greeting", "hello world"]);
    assert!(out.status.success(), "put: {}", stderr(&out));

    let out = node.cli(&["get", "greeting"]);
    assert!(out.status.success(), "get: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello world\n");

    let out = node.cli(&["remove", "greeting"]);
    assert!(out.status.success(), "remove: {}", stderr(&out));

    let out = node.cli(&["get", "greeting"]);
    assert_eq!(out.status.code(), Some(1), "get after remove");
    assert!(
        stderr(&out).contains("key not found: greeting"),
        "{}",
        stderr(&out)
    );

    // Removing again is not an error: removal is idempotent.
    let out = node.cli(&["remove", "greeting"]);
    assert!(out.status.success(), "second remove: {}", stderr(&out));
}

#[test]
fn key_with_ttl_expires() {
    let node = Node::start(2, &[]);
    let out = node.cli(&["put", "short-lived", "v", "--ttl", "1"]);
    assert!(out.status.success(), "put: {}", stderr(&out));
    let out = node.cli(&["put", "long-lived", "v"]);
    assert!(out.status.success(), "put: {}", stderr(&out));

    wait_for("the 1 s key to expire", || {
        (node.cli(&["get", "short-lived"]).status.code() == Some(1)).then_some(())
    });
    assert!(node.cli(&["get", "long-lived"]).status.success());
    let expirations: u64 = node.stats().iter().map(|s| s.expirations).sum();
    assert_eq!(expirations, 1);
}

#[test]
fn stats_show_counters_moving() {
    let node = Node::start(2, &[]);
    for i in 0..10 {
        let key = format!("k{i}");
        assert!(node.cli(&["put", &key, "v"]).status.success());
    }
    assert_eq!(node.cli(&["get", "k3"]).status.code(), Some(0));
    assert_eq!(node.cli(&["get", "missing"]).status.code(), Some(1));

    let out = node.cli(&["stats", "--json"]);
    assert!(out.status.success(), "stats: {}", stderr(&out));
    let json = stdout(&out);
    let total = json
        .split("\"total\":")
        .nth(1)
        .expect("total in stats json");
    for want in [
        "\"keys\":10,",
        "\"puts\":10,",
        "\"hits\":1,",
        "\"misses\":1,",
    ] {
        assert!(total.contains(want), "{want} in {total}");
    }

    let out = node.cli(&["stats"]);
    let table = stdout(&out);
    assert!(table.contains("shard 0") && table.contains("shard 1") && table.contains("total"));
}

#[test]
fn cli_reports_an_unreachable_node() {
    let ports = common::PortBlock::reserve(1);
    let out = common::cli(ports.addr(), &["get", "k"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}
