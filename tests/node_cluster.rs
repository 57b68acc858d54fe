//! End to end: clusters of real `kvmesh node` processes on loopback ports. Every key is served
//! through every node, by the CLI (which goes straight to the owner), by plain wire requests to
//! each node's main port (which the node forwards to the owner), by gRPC and by the load
//! generator; 1- and 2-node clusters; a dead peer and its return; `kvmesh cluster` itself; and
//! the refusals: another cluster name, no --data-dir.
//!
//! Where a test counts where keys live or needs a key with a single owner, its nodes run with
//! `--replicas 1` (one owner per key); replication is tested in `node_replication.rs`.

mod common;

use std::process::Command;

use common::cluster::Cluster;
use common::{op, stderr, stdout, wait_for, WireClient};
use kvmesh_net::ring::Ring;
use kvmesh_proto::wire::{OpCode, Status};

/// Puts `keys` through the main ports of the nodes in turn, then reads every key back through
/// every node's main port: most of them are forwarded to their owner.
fn every_key_through_every_node(cluster: &Cluster, prefix: &str, keys: usize) {
    let mut clients: Vec<WireClient> = cluster
        .addrs()
        .into_iter()
        .map(WireClient::connect)
        .collect();
    let n = clients.len();
    for i in 0..keys {
        let key = format!("{prefix}{i}");
        clients[i % n].put(key.as_bytes(), format!("v{i}").as_bytes());
    }
    for (at, client) in clients.iter_mut().enumerate() {
        for i in 0..keys {
            let key = format!("{prefix}{i}");
            let got = client.get(key.as_bytes());
            assert_eq!(
                got.as_deref(),
                Some(format!("v{i}").as_bytes()),
                "{key} through node {}\n{}",
                at + 1,
                cluster.logs()
            );
        }
    }
}

#[test]
fn three_nodes_serve_every_key_through_every_node() {
    let cluster = Cluster::start(3, 2, &["--replicas", "1"]);
    every_key_through_every_node(&cluster, "wire-", 150);

    // Every node owns some keys, and every node forwarded some.
    let mut total_keys = 0;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let stats = node.stats();
        let keys: u64 = stats.iter().map(|s| s.keys).sum();
        let out: u64 = stats.iter().map(|s| s.node_forwarded_out).sum();
        let served: u64 = stats.iter().map(|s| s.node_forwarded_in).sum();
        assert!(keys > 20, "node {} owns only {keys} of 150 keys", i + 1);
        assert!(
            out > 0 && served > 0,
            "node {}: forwarded {out}, served {served}",
            i + 1
        );
        total_keys += keys;
    }
    assert_eq!(total_keys, 150, "each key is stored exactly once");

    // The CLI: write through one node, read through every node.
    for i in 0..12 {
        let (key, value) = (format!("cli-{i}"), format!("value {i}"));
        let out = cluster.nodes[i % 3].cli(&["put", &key, &value]);
        assert!(out.status.success(), "put: {}", stderr(&out));
    }
    for node in &cluster.nodes {
        for i in 0..12 {
            let out = node.cli(&["get", &format!("cli-{i}")]);
            assert!(out.status.success(), "get: {}", stderr(&out));
            assert_eq!(stdout(&out), format!("value {i}\n"));
        }
    }
    let out = cluster.nodes[1].cli(&["remove", "cli-3"]);
    assert!(out.status.success(), "remove: {}", stderr(&out));
    for node in &cluster.nodes {
        assert_eq!(node.cli(&["get", "cli-3"]).status.code(), Some(1));
    }

    // The cluster view: every member, reachable, with its keys.
    let out = cluster.nodes[2].cli(&["stats"]);
    let table = stdout(&out);
    assert!(
        table.starts_with("cluster \"test\": 3 member(s)"),
        "{table}"
    );
    assert_eq!(table.matches("  yes\n").count(), 3, "{table}");
    let out = cluster.nodes[0].cli(&["stats", "--json"]);
    let json = stdout(&out);
    assert_eq!(json.matches("\"reachable\":true").count(), 3, "{json}");
}

#[test]
fn grpc_through_every_node_and_a_gateway() {
    let cluster = Cluster::start(3, 1, &[]);
    let gateway = common::Gateway::start_peers(&cluster.peers, &[]);
    let mut addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc.to_string()).collect();
    addrs.push(gateway.grpc.to_string());
    let wire: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    let out = common::python::pytest(
        "tests/python/test_cluster.py",
        &[
            ("KVMESH_CLUSTER_GRPC_ADDRS", addrs.join(",")),
            ("KVMESH_CLUSTER_WIRE_ADDRS", wire.join(",")),
        ],
    );
    let report = format!("pytest:\n{}\n{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "{report}\n{}\ngateway:\n{}",
        cluster.logs(),
        gateway.log()
    );
    assert!(stdout(&out).contains("3 passed"), "{report}");
}

/// `kvmesh-bench`, built from this workspace (a no-op when it is up to date).
fn bench_binary() -> std::path::PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "kvmesh-bench", "--bin", "kvmesh-bench"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build: {}", stderr(&out));
    std::path::Path::new(common::bin()).with_file_name("kvmesh-bench")
}

#[test]
fn load_generator_through_a_cluster() {
    let cluster = Cluster::start(3, 2, &["--replicas", "1"]);
    let bench = bench_binary();
    for via in [false, true] {
        let addr = cluster.nodes[1].addr.to_string();
        let mut args = vec![
            "--addr",
            &addr,
            "--keys",
            "2000",
            "--connections",
            "6",
            "--pipeline",
            "4",
            "--requests",
            "3000",
            "--warmup",
            "0",
            "--read-ratio",
            "0.5",
            // A busy machine must not turn a slow reply into an error.
            "--timeout",
            "10s",
            "--json",
        ];
        if via {
            args.push("--via-addr");
        }
        let out = Command::new(&bench)
            .args(&args)
            .output()
            .expect("run kvmesh-bench");
        let report = format!("{}\n{}", stdout(&out), stderr(&out));
        assert!(
            out.status.success(),
            "bench (via {via}): {report}\n{}",
            cluster.logs()
        );
        let json = stdout(&out);
        let last = json.lines().last().unwrap_or_default();
        assert!(last.contains("\"errors\":0"), "bench (via {via}): {report}");
        if !via {
            // Cluster-aware: one endpoint per shard of every node.
            assert!(stderr(&out).contains("6 endpoint(s)"), "{report}");
        }
    }
    // The prefill wrote all 2000 keys, spread over the three nodes.
    let keys: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.stats().iter().map(|s| s.keys).sum())
        .collect();
    assert_eq!(keys.iter().sum::<u64>(), 2000, "{keys:?}");
    assert!(keys.iter().all(|&k| k > 400), "{keys:?}");
}

#[test]
fn one_and_two_node_clusters_work() {
    let one = Cluster::start(1, 2, &[]);
    every_key_through_every_node(&one, "one-", 40);
    let out = one.nodes[0].cli(&["stats"]);
    assert!(stdout(&out).contains("1 member(s)"), "{}", stdout(&out));

    let two = Cluster::start(2, 1, &[]);
    every_key_through_every_node(&two, "two-", 80);
    let out = two.nodes[1].cli(&["put", "k", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&two.nodes[0].cli(&["get", "k"])), "v\n");
}

#[test]
fn a_dead_peer_fails_fast_and_is_reached_again_when_it_is_back() {
    let mut cluster = Cluster::start(2, 1, &["--forward-timeout", "5s", "--replicas", "1"]);
    let ring = Ring::new(&[1, 2]).unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| ring.owner(k.as_bytes()) == 2)
        .unwrap();
    let mut client = WireClient::connect(cluster.nodes[0].addr);
    client.put(key.as_bytes(), b"kept");
    // Node 1 now holds a connection to node 2. Kill node 2: the next request fails at once
    // (the connection is gone, and reconnecting is refused), not after the forward timeout.
    cluster.nodes[1].signal_and_wait(libc::SIGKILL);
    let start = std::time::Instant::now();
    let result = client
        .call(vec![op(OpCode::OpGet, key.as_bytes(), b"", 0)])
        .remove(0);
    assert_eq!(result.status(), Status::Unavailable, "{}", result.message);
    assert!(result.message.contains("node 2"), "{}", result.message);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // Back on the same ports and data: node 1 reconnects, and the acknowledged write is there.
    cluster.restart(2);
    wait_for("node 1 to reach node 2 again", || {
        let result = client
            .call(vec![op(OpCode::OpGet, key.as_bytes(), b"", 0)])
            .remove(0);
        (result.status() == Status::Ok).then_some(result.value)
    });
    assert_eq!(client.get(key.as_bytes()).as_deref(), Some(&b"kept"[..]));
}

#[test]
fn a_node_with_another_cluster_name_is_refused() {
    let cluster = Cluster::start_with(2, 1, |id| {
        let mut flags = vec!["--replicas".to_string(), "1".to_string()];
        if id == 2 {
            flags.extend(["--cluster".into(), "other".into()]);
        }
        flags
    });
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Each side logs why, whichever connected first.
    let refusal = format!(
        "node 1 at {} is in cluster \"test\", node 2 is in cluster \"other\" (--cluster)",
        one.addr
    );
    wait_for("node 2 to refuse node 1", || {
        two.log().contains(&refusal).then_some(())
    });
    let theirs = format!(
        "node 2 at {} is in cluster \"other\", node 1 is in cluster \"test\" (--cluster)",
        two.addr
    );
    wait_for("node 1 to refuse node 2", || {
        one.log().contains(&theirs).then_some(())
    });

    // A request for one of node 2's keys, sent to node 1, fails with the reason.
    let ring = Ring::new(&[1, 2]).unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| ring.owner(k.as_bytes()) == 2)
        .unwrap();
    let mut client = WireClient::connect(one.addr);
    let result = client
        .call(vec![op(OpCode::OpGet, key.as_bytes(), b"", 0)])
        .remove(0);
    assert_eq!(result.status(), Status::Unavailable, "{}", result.message);
    assert!(
        result.message.contains("refused") && result.message.contains("cluster"),
        "{}",
        result.message
    );
}

#[test]
fn a_cluster_node_without_a_data_dir_does_not_start() {
    let ports = common::PortBlock::reserve(3);
    let out = Command::new(common::bin())
        .args([
            "node",
            "--id",
            "1",
            "--shards",
            "1",
            "--listen",
            &ports.addr().to_string(),
        ])
        .args(["--grpc", &common::grpc_addr(ports.addr(), 1).to_string()])
        .args(["--peers", &format!("1={},2=127.0.0.1:1", ports.addr())])
        .output()
        .expect("run kvmesh node");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "needs --data-dir: an in-memory node that restarted empty would answer \"not found\" \
             for keys it had acknowledged"
        ),
        "{}",
        stderr(&out)
    );
}

/// Kills the process if the test fails before it exits (its nodes follow: PR_SET_PDEATHSIG).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kvmesh_cluster_starts_nodes_that_serve_and_stops_them_on_sigint() {
    // Two nodes of one shard: wire ports base..base+3, gRPC ports grpc..grpc+1.
    let wire = common::PortBlock::reserve(4);
    let grpc = common::PortBlock::reserve(2);
    let data = tempfile::tempdir().expect("temp dir");
    let mut launcher = Reap(
        Command::new(common::bin())
            .args(["cluster", "--nodes", "2", "--shards", "1"])
            .args(["--base-port", &wire.base.to_string()])
            .args(["--grpc-base-port", &grpc.base.to_string()])
            .arg("--data-dir")
            .arg(data.path())
            .args(["--", "--fsync", "never"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kvmesh cluster"),
    );
    let child = &mut launcher.0;
    let node1 = wire.addr();
    let node2 = std::net::SocketAddr::from(([127, 0, 0, 1], wire.base + 2));
    // Ready once both nodes answer; the CLI routes through the cluster.
    wait_for("the local cluster to serve", || {
        common::cli(node2, &["put", "greeting", "hello"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(stdout(&common::cli(node1, &["get", "greeting"])), "hello\n");
    let out = common::cli(node1, &["stats"]);
    assert!(
        stdout(&out).starts_with("cluster \"local\": 2 member(s)"),
        "{}",
        stdout(&out)
    );
    assert!(data.path().join("node-1").join("node.meta").exists());
    assert!(data.path().join("node-2").join("node.meta").exists());

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_for("kvmesh cluster to exit", || child.try_wait().ok().flatten());
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(status.success(), "{status}\n{out}\n{err}");
    // It printed every node's addresses, and both nodes stopped cleanly through it.
    assert!(out.contains(&format!("127.0.0.1:{}", wire.base)), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{}", grpc.base + 1)),
        "{out}"
    );
    for id in [1, 2] {
        let prefix = format!("[node {id}] ");
        let stopped = format!("node {id} stopped");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(&stopped)),
            "{err}"
        );
    }
    assert!(err.contains("kvmesh: cluster stopped"), "{err}");
}

#[test]
fn peer_connections_are_not_refused_by_max_connections() {
    // Node 2 takes one client connection (one shard); a client holds it.
    let mut cluster = Cluster::start_with(2, 1, |id| {
        if id == 2 {
            vec!["--max-connections".into(), "1".into()]
        } else {
            Vec::new()
        }
    });
    let ring = Ring::new(&[1, 2]).unwrap();
    let keys: Vec<String> = (0..)
        .map(|i| format!("owned-by-2-{i}"))
        .filter(|k| ring.owner(k.as_bytes()) == 2)
        .take(20)
        .collect();
    // Until its hello is read, a peer's new connection counts like a client's: let node 1's
    // connection to node 2 say hello before the client takes the slot.
    wait_for("node 1's handshake with node 2", || {
        cluster.nodes[0]
            .log()
            .contains("handshake ok")
            .then_some(())
    });
    let mut held = WireClient::connect(cluster.nodes[1].shard_addr(0));
    held.put(b"held", b"v");
    let mut extra = WireClient::connect(cluster.nodes[1].shard_addr(0));
    let refusal = extra.recv().expect("a refusal frame");
    assert_eq!(refusal.error(), Status::Busy, "{}", refusal.message);

    // Restarted, node 1 opens new connections to node 2 while the client holds node 2's only
    // slot: they are a peer's, so node 2 serves them, and node 1 forwards node 2's keys.
    cluster.restart(1);
    let mut client = WireClient::connect(cluster.nodes[0].addr);
    for key in &keys {
        let result = client
            .call(vec![op(
                OpCode::OpPut,
                key.as_bytes(),
                b"through node 1",
                0,
            )])
            .remove(0);
        assert_eq!(
            result.status(),
            Status::Ok,
            "{}\n{}",
            result.message,
            cluster.logs()
        );
    }
    for key in &keys {
        assert_eq!(
            held.get(key.as_bytes()).as_deref(),
            Some(&b"through node 1"[..])
        );
    }
}
