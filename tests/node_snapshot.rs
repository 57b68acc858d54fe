//! End to end: snapshots with `--data-dir`. Disk use stays bounded under endless overwrites,
//! `kvmesh snapshot` reports what it wrote, a damaged snapshot stops start-up (or is counted
//! with tolerate-corruption), and a data directory follows the node to another shard count.
//! (Kills during snapshots are in node_durable.rs, with the other crash tests.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{op, stdout, wait_for, Node, WireClient};
use kvmesh_proto::wire::{OpCode, Status};

const SEGMENT: u64 = 1 << 20;
/// 1 MiB segments, so a test's worth of writes fills many.
const FLAGS: [&str; 4] = ["--wal-segment-size", "1MiB", "--max-value-size", "64KiB"];

fn durable_node(shards: usize, dir: &Path, extra: &[&str]) -> Node {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend(FLAGS);
    args.extend(extra);
    Node::start(shards, &args)
}

/// Bytes of files under `dir`, recursively.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                disk_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Puts `pairs` in batches of 200 ops per request; every put must be acknowledged.
fn put_all(client: &mut WireClient, pairs: &[(String, Vec<u8>)]) {
    for batch in pairs.chunks(200) {
        let ops = batch
            .iter()
            .map(|(k, v)| op(OpCode::OpPut, k.as_bytes(), v, 0))
            .collect();
        for r in client.call(ops) {
            assert_eq!(r.status(), Status::Ok, "{}", r.message);
        }
    }
}

/// Every key of `want` holds its value, and the node holds no other key.
fn check_exactly(node: &Node, want: &BTreeMap<String, Vec<u8>>) {
    let mut c = WireClient::connect(node.addr);
    let keys: Vec<&String> = want.keys().collect();
    for batch in keys.chunks(500) {
        let ops = batch
            .iter()
            .map(|k| op(OpCode::OpGet, k.as_bytes(), b"", 0))
            .collect();
        for (k, r) in batch.iter().zip(c.call(ops)) {
            assert_eq!(r.status(), Status::Ok, "{k}: {}\n{}", r.message, node.log());
            assert_eq!(&r.value, &want[*k], "{k}");
        }
    }
    let held: u64 = node.stats().iter().map(|s| s.keys).sum();
    assert_eq!(held, want.len() as u64, "keys held\n{}", node.log());
}

fn value(round: u64, i: u64) -> Vec<u8> {
    let mut v = format!("r{round}-k{i}-").into_bytes();
    v.resize(100, b'v');
    v
}

#[test]
fn disk_stays_bounded_under_overwrites_and_a_restart_restores_the_live_set() {
    // 10k keys of 100 bytes overwritten 60 times: 600k writes, ~100 MB of log.
    const KEYS: u64 = 10_000;
    const ROUNDS: u64 = 60;
    let data = tempfile::tempdir().unwrap();
    let mut node = durable_node(2, data.path(), &["--fsync", "never"]);
    let mut c = WireClient::connect(node.addr);
    let mut live = BTreeMap::new();
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        let pairs: Vec<(String, Vec<u8>)> = (0..KEYS)
            .map(|i| (format!("key-{i}"), value(round, i)))
            .collect();
        put_all(&mut c, &pairs);
        live.extend(pairs);
        samples.push(disk_bytes(data.path()));
    }
    let logged: u64 = node.stats().iter().map(|s| s.wal_bytes).sum();
    // The documented bound, per shard: (factor + 1) segments of log before a snapshot
    // triggers, the active segment and the spare, one more segment written while the check
    // waits and the snapshot runs, and two snapshots (the old one and the one being written).
    // Live data is ~1.0 MB per shard here (charge of 148 B per entry), a snapshot ~0.7 MB.
    let snapshot = 2 * 700_000;
    let bound = 2 * ((4 + 1 + 2 + 1) * SEGMENT + snapshot);
    let peak = *samples.iter().max().unwrap();
    assert!(
        logged > 3 * bound,
        "the test must log more than the bound: {logged} <= 3 x {bound}"
    );
    assert!(
        peak <= bound,
        "disk use {peak} above the bound {bound}; samples {samples:?}\n{}",
        node.log()
    );
    assert!(
        node.log().contains("removed"),
        "no snapshot ran\n{}",
        node.log()
    );
    eprintln!("logged {logged} bytes; disk use per round {samples:?}; bound {bound}");

    node.signal_and_wait(libc::SIGKILL);
    let node = durable_node(2, data.path(), &["--fsync", "never"]);
    assert!(node.log().contains("loaded snapshot"), "{}", node.log());
    check_exactly(&node, &live);
}

#[test]
fn snapshot_on_demand_and_damage_at_start() {
    let data = tempfile::tempdir().unwrap();
    let mut node = durable_node(2, data.path(), &[]);
    let mut c = WireClient::connect(node.addr);
    let pairs: Vec<(String, Vec<u8>)> = (0..500).map(|i| (format!("k{i}"), value(0, i))).collect();
    put_all(&mut c, &pairs);
    let out = node.cli(&["snapshot"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    for shard in 0..2 {
        assert!(text.contains(&format!("shard {shard}: wrote ")), "{text}");
    }
    assert!(text.contains("entries"), "{text}");
    // Later writes go to the log after the snapshot.
    c.put(b"after", b"snapshot");
    node.signal_and_wait(libc::SIGKILL);

    // Flip a byte inside shard 0's snapshot: start-up stops, naming the file and offset.
    let shard0 = data.path().join("shard-0");
    let snap = std::fs::read_dir(&shard0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("a snapshot in shard-0");
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[36 + 16 + 50] ^= 0x10;
    std::fs::write(&snap, bytes).unwrap();
    let ports = common::PortBlock::reserve(4);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("node.log");
    let mut args = vec!["--data-dir", data.path().to_str().unwrap()];
    args.extend(FLAGS);
    let mut child = common::spawn_node(ports.addr(), 2, &args, &log);
    let status = wait_for("the node to refuse", || child.try_wait().ok().flatten());
    let _ = child.wait();
    assert!(!status.success());
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains(&format!(
            "{}: damaged snapshot at offset 36",
            snap.display()
        )),
        "{out}"
    );
    assert!(out.contains("tolerate-corruption"), "{out}");

    // Tolerated: the node starts, says exactly how many entries were lost, keeps the rest.
    let node = durable_node(2, data.path(), &["--recovery", "tolerate-corruption"]);
    let log = node.log();
    assert!(
        log.contains("snapshot entries lost to that damage"),
        "{log}"
    );
    let mut c = WireClient::connect(node.addr);
    assert_eq!(c.get(b"after").as_deref(), Some(&b"snapshot"[..]));
    let held: u64 = node.stats().iter().map(|s| s.keys).sum();
    assert!(held < 501 && held > 0, "{held}\n{log}");
}

#[test]
fn data_written_with_2_shards_is_readable_with_3_then_1() {
    let data = tempfile::tempdir().unwrap();
    let mut want = BTreeMap::new();
    let mut node = durable_node(2, data.path(), &[]);
    let mut c = WireClient::connect(node.addr);
    let pairs: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("key-{i}"), value(0, i)))
        .collect();
    put_all(&mut c, &pairs);
    want.extend(pairs);
    assert!(node.cli(&["snapshot"]).status.success());
    // After the snapshot: overwrites, removes and a TTL, all in the log.
    let pairs: Vec<(String, Vec<u8>)> = (0..500)
        .map(|i| (format!("key-{i}"), value(1, i)))
        .collect();
    put_all(&mut c, &pairs);
    want.extend(pairs);
    for i in 500..600 {
        let r = c.call(vec![op(
            OpCode::OpRemove,
            format!("key-{i}").as_bytes(),
            b"",
            0,
        )]);
        assert!(r[0].found);
        want.remove(&format!("key-{i}"));
    }
    let r = c.call(vec![op(OpCode::OpPut, b"ttl", b"t", 600_000)]);
    assert_eq!(r[0].status(), Status::Ok);
    want.insert("ttl".into(), b"t".to_vec());
    node.signal_and_wait(libc::SIGKILL);

    let mut node = durable_node(3, data.path(), &[]);
    let log = node.log();
    assert!(
        log.contains(&format!(
            "redistributed {} keys from 2 shard(s) to 3",
            want.len()
        )),
        "{log}"
    );
    check_exactly(&node, &want);
    let meta = std::fs::read_to_string(data.path().join("node.meta")).unwrap();
    assert!(meta.contains("shards = 3"), "{meta}");
    // Writes with 3 shards, then back to 1.
    let mut c = WireClient::connect(node.addr);
    c.put(b"written-with-3", b"yes");
    want.insert("written-with-3".into(), b"yes".to_vec());
    node.signal_and_wait(libc::SIGTERM);

    let node = durable_node(1, data.path(), &[]);
    assert!(
        node.log().contains(&format!(
            "redistributed {} keys from 3 shard(s) to 1",
            want.len()
        )),
        "{}",
        node.log()
    );
    check_exactly(&node, &want);
    let names: Vec<String> = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shard-") || n.starts_with("reshard") || n == "RESHARD")
        .collect();
    assert_eq!(names, ["shard-0"], "old shards' files are gone");
}
