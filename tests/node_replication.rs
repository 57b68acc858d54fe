//! End to end: replication across real `kvmesh node` processes on loopback ports. Quorum
//! writes keep going when a node is killed with SIGKILL, reads keep working, the node that
//! comes back converges through hinted handoff (removes included) and alone answers every
//! acknowledged write; a 2-node cluster blocks quorum writes with one node down while
//! `--write-ack one` keeps writing; concurrent writers to one key converge on every replica;
//! a replica's acknowledgement survives its SIGKILL; hints survive the coordinator's SIGKILL;
//! a quorum read returns the newest version and repairs the stale owner. The clusters run one
//! at a time (see [`serial`]).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{op, stderr, stdout, wait_for, WireClient};
use kvmesh_proto::wire::{Op, OpCode, OpResult, Status};

/// The failure-detection time the issue allows by default; a killed node is detected at
/// once (its connections reset), a hung one within --heartbeat + --forward-timeout.
const DETECTION: Duration = Duration::from_secs(5);

/// Flags of every node here: a hop may take up to 5 s on a loaded 2-core machine before it
/// counts as failed (the default is 2 s).
const FLAGS: [&str; 2] = ["--forward-timeout", "5s"];

/// The clusters of these tests run one at a time: each is 3 processes of pinned executors,
/// and several at once on 2 shared cores made healthy nodes miss their hop timeouts.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn with_flags(extra: &[&'static str]) -> Vec<&'static str> {
    FLAGS.iter().chain(extra).copied().collect()
}

/// Node `id`'s own copy of `key`: `(status, value, version)`, read on its owning shard.
fn replica_get(cluster: &Cluster, id: usize, key: &[u8]) -> (Status, Vec<u8>, (u64, u32)) {
    let node = &cluster.nodes[id - 1];
    let shard = kvmesh_net::shard_for(key, node.shards);
    let mut c = WireClient::connect(node.shard_addr(shard));
    let read = Op {
        replica: true,
        ..op(OpCode::OpGet, key, b"", 0)
    };
    let r = c.call(vec![read]).remove(0);
    (r.status(), r.value, (r.version_hlc, r.version_node))
}

fn put(client: &mut WireClient, key: &[u8], value: &[u8]) -> OpResult {
    client
        .call(vec![op(OpCode::OpPut, key, value, 0)])
        .remove(0)
}

fn hints_queued(cluster: &Cluster, id: usize) -> (u64, u64) {
    let stats = cluster.nodes[id - 1].stats();
    (
        stats.iter().map(|s| s.hints_queued).sum(),
        stats.iter().map(|s| s.hints_delivered).sum(),
    )
}

#[test]
fn quorum_writes_survive_a_killed_node_which_converges_through_hints() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, 2, &with_flags(&[]));
    // Keys removed while node 3 is down must stay removed once it is back.
    let mut seed = WireClient::connect(cluster.nodes[0].addr);
    for j in 0..20 {
        let r = put(&mut seed, format!("gone-{j}").as_bytes(), b"soon removed");
        assert_eq!(r.status(), Status::Ok, "{}", r.message);
    }

    // Writers through node 1: per key, the last acknowledged value and the values of later
    // writes that failed (a failed write may still have been applied somewhere).
    type Seen = HashMap<String, (Option<String>, Vec<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let failures: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Three concurrent writers, each over its own keys, so each key's last acknowledged
    // write is known.
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (seen, failures, acked, stop) =
                (seen.clone(), failures.clone(), acked.clone(), stop.clone());
            let addr = cluster.nodes[0].addr;
            std::thread::spawn(move || {
                let mut client = WireClient::connect(addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("k{t}-{}", i % 170), format!("v{i}"));
                    let r = put(&mut client, key.as_bytes(), value.as_bytes());
                    let mut seen = seen.lock().unwrap();
                    let entry = seen.entry(key).or_default();
                    if r.status() == Status::Ok {
                        *entry = (Some(value), Vec::new());
                        acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        entry.1.push(value);
                        failures.lock().unwrap().push((Instant::now(), r.message));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let acked_now = || acked.load(Ordering::Relaxed);
    wait_for("writes before the kill", || {
        (acked_now() >= 300).then_some(())
    });
    cluster.kill(3);
    let killed = Instant::now();
    // Removes and reads through node 1 while node 3 is down.
    let mut reader = WireClient::connect(cluster.nodes[0].addr);
    for j in 0..20 {
        let r = reader.call(vec![op(
            OpCode::OpRemove,
            format!("gone-{j}").as_bytes(),
            b"",
            0,
        )]);
        assert_eq!(r[0].status(), Status::Ok, "{}", r[0].message);
    }
    let before = acked_now();
    wait_for("writes after the kill, past the detection time", || {
        (killed.elapsed() > DETECTION + Duration::from_secs(1) && acked_now() >= before + 500)
            .then_some(())
    });
    for i in 0..50 {
        let key = format!("k0-{i}");
        let got = reader.get(key.as_bytes());
        assert!(got.is_some(), "{key} through node 1 with node 3 down");
    }
    // The CLI's topology-aware client passes over the dead owner.
    for i in 0..10 {
        let out = cluster.nodes[1].cli(&["get", &format!("k1-{i}")]);
        assert!(out.status.success(), "get k1-{i}: {}", stderr(&out));
    }
    // Node 3 comes back: first its own log, then its hints.
    cluster.restart(3);
    let resumed = acked_now();
    wait_for("writes after node 3 is back", || {
        (acked_now() >= resumed + 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer");
    }
    let late: Vec<(Instant, String)> = failures
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| at.duration_since(killed) > DETECTION)
        .cloned()
        .collect();
    assert!(late.is_empty(), "writes failed after detection: {late:?}");
    wait_for("node 1 to deliver every hint to node 3", || {
        let (queued, delivered) = hints_queued(&cluster, 1);
        (queued == 0 && delivered > 0).then_some(())
    });

    // Node 3 alone answers every acknowledged write with its latest value.
    cluster.kill(1);
    cluster.kill(2);
    let mut alone = WireClient::connect(cluster.nodes[2].addr);
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 400, "only {} keys written", seen.len());
    for (key, (last_acked, failed)) in seen.iter() {
        let got = alone
            .get(key.as_bytes())
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let ok =
            got.as_ref() == last_acked.as_ref() || got.as_ref().is_some_and(|v| failed.contains(v));
        assert!(
            ok,
            "{key}: node 3 alone answers {got:?}, last acknowledged {last_acked:?}\n{}",
            cluster.logs()
        );
    }
    for j in 0..20 {
        let key = format!("gone-{j}");
        assert_eq!(alone.get(key.as_bytes()), None, "{key} came back on node 3");
    }
}

#[test]
fn two_nodes_with_quorum_refuse_writes_with_one_down_and_write_ack_one_keeps_writing() {
    let _serial = serial();
    let mut quorum = Cluster::start(2, 1, &with_flags(&[]));
    let mut client = WireClient::connect(quorum.nodes[0].addr);
    assert_eq!(put(&mut client, b"a", b"1").status(), Status::Ok);
    quorum.kill(2);
    let refused = wait_for("a quorum write to be refused", || {
        let r = put(&mut client, b"a", b"2");
        (r.status() != Status::Ok).then_some(r)
    });
    assert_eq!(refused.status(), Status::Unavailable, "{}", refused.message);
    assert!(
        refused.message.contains("2 needed (--write-ack Quorum)"),
        "{}",
        refused.message
    );
    // Reads still work, from the owner that is up.
    assert!(client.get(b"a").is_some());

    let mut one = Cluster::start(2, 1, &with_flags(&["--write-ack", "one"]));
    let mut client = WireClient::connect(one.nodes[0].addr);
    one.kill(2);
    for i in 0..50 {
        let r = put(&mut client, format!("k{i}").as_bytes(), b"v");
        assert_eq!(r.status(), Status::Ok, "{}", r.message);
    }
    assert_eq!(client.get(b"k7").as_deref(), Some(&b"v"[..]));
    // Node 2 gets what it missed once it is back.
    one.restart(2);
    wait_for("node 2 to receive its hints", || {
        (replica_get(&one, 2, b"k49").1 == b"v").then_some(())
    });
}

#[test]
fn concurrent_writers_to_one_key_converge_on_every_replica() {
    let _serial = serial();
    let cluster = Cluster::start(3, 2, &with_flags(&[]));
    let writers: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|n| {
            let addr = cluster.nodes[n].addr;
            std::thread::spawn(move || {
                let mut c = WireClient::connect(addr);
                for i in 0..200 {
                    let r = put(
                        &mut c,
                        b"contended",
                        format!("node{}-{i}", n + 1).as_bytes(),
                    );
                    assert_eq!(r.status(), Status::Ok, "{}", r.message);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let copies = wait_for("every replica to hold the same version", || {
        let copies: Vec<_> = (1..=3)
            .map(|id| replica_get(&cluster, id, b"contended"))
            .collect();
        copies.windows(2).all(|w| w[0] == w[1]).then_some(copies)
    });
    assert_eq!(copies[0].0, Status::Ok);
    assert!(copies[0].1.ends_with(b"-199"), "{:?}", copies[0]);
}

#[test]
fn a_replica_killed_right_after_acknowledging_keeps_the_writes() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, 1, &with_flags(&["--write-ack", "all"]));
    let mut client = WireClient::connect(cluster.nodes[0].addr);
    let mut versions = Vec::new();
    for i in 0..50 {
        let r = put(
            &mut client,
            format!("d{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        );
        assert_eq!(r.status(), Status::Ok, "{}", r.message);
        versions.push((r.version_hlc, r.version_node));
    }
    cluster.restart(2);
    for (i, version) in versions.into_iter().enumerate() {
        let (status, value, held) = replica_get(&cluster, 2, format!("d{i}").as_bytes());
        assert_eq!(
            (status, value, held),
            (Status::Ok, format!("v{i}").into_bytes(), version)
        );
    }
    // And the CLI shows the same copy.
    let out = cluster.nodes[0].cli(&["get", "d3", "--replica", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "v3\n");
    assert!(
        stderr(&out).contains("node 2's copy: version "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_quorum_read_returns_the_newest_version_and_repairs_the_stale_owner() {
    let _serial = serial();
    // No hints (a zero budget drops them all), so node 3 stays behind until a read repairs it.
    let mut cluster = Cluster::start(
        3,
        2,
        &with_flags(&["--read-from", "quorum", "--hint-max-bytes", "0"]),
    );
    let mut one = WireClient::connect(cluster.nodes[0].addr);
    assert_eq!(put(&mut one, b"r", b"old").status(), Status::Ok);
    assert_eq!(put(&mut one, b"gone", b"here").status(), Status::Ok);
    // At the default --replicas 3 a write is acknowledged once 2 of its 3 owners applied it:
    // node 3's copy of the last one may still be on its way. It must hold both before it dies.
    wait_for("node 3 to hold both first versions", || {
        let held = [(&b"r"[..], &b"old"[..]), (b"gone", b"here")]
            .iter()
            .all(|(key, value)| replica_get(&cluster, 3, key).1 == *value);
        held.then_some(())
    });
    cluster.kill(3);
    assert_eq!(put(&mut one, b"r", b"new").status(), Status::Ok);
    let removed = one
        .call(vec![op(OpCode::OpRemove, b"gone", b"", 0)])
        .remove(0);
    assert_eq!(removed.status(), Status::Ok, "{}", removed.message);
    // Both copies for node 3 must have failed (and their hints been dropped) before it comes
    // back: one still in flight could reach it after the restart and repair it early.
    wait_for("the coordinator to give up on node 3's two copies", || {
        let failed: u64 = (0..2)
            .flat_map(|i| cluster.nodes[i].stats())
            .map(|s| s.replica_writes_failed)
            .sum();
        (failed >= 2).then_some(())
    });
    cluster.restart(3);
    assert_eq!(replica_get(&cluster, 3, b"r").1, b"old");
    assert_eq!(replica_get(&cluster, 3, b"gone").1, b"here");

    // Through node 3, whose own copy is the stale one: the newest version wins.
    let mut three = WireClient::connect(cluster.nodes[2].addr);
    assert_eq!(three.get(b"r").as_deref(), Some(&b"new"[..]));
    assert_eq!(three.get(b"gone"), None);
    wait_for("node 3 to be repaired", || {
        let copies: Vec<_> = (1..=3).map(|id| replica_get(&cluster, id, b"r")).collect();
        copies.windows(2).all(|w| w[0] == w[1]).then_some(())
    });
    wait_for("the remove to reach node 3", || {
        (replica_get(&cluster, 3, b"gone").0 == Status::NotFound).then_some(())
    });
    let repairs: u64 = cluster.nodes[2]
        .stats()
        .iter()
        .map(|s| s.read_repairs)
        .sum();
    assert!(repairs >= 2, "{repairs} repairs");
}

#[test]
fn hints_survive_the_coordinator_being_killed() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, 2, &with_flags(&[]));
    cluster.kill(3);
    let mut one = WireClient::connect(cluster.nodes[0].addr);
    for i in 0..100 {
        let r = put(
            &mut one,
            format!("h{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        );
        assert_eq!(r.status(), Status::Ok, "{}", r.message);
    }
    wait_for("node 1 to hold a hint per write", || {
        (hints_queued(&cluster, 1).0 == 100).then_some(())
    });
    // The coordinator dies holding them; it comes back before the owner that missed them.
    cluster.restart(1);
    assert!(
        cluster.nodes[0].log().contains("loaded"),
        "{}",
        cluster.nodes[0].log()
    );
    cluster.restart(3);
    wait_for("node 1 to deliver the hints it reloaded", || {
        let (queued, delivered) = hints_queued(&cluster, 1);
        (queued == 0 && delivered >= 100).then_some(())
    });
    for i in 0..100 {
        let (status, value, _) = replica_get(&cluster, 3, format!("h{i}").as_bytes());
        assert_eq!((status, value), (Status::Ok, format!("v{i}").into_bytes()));
    }
}
