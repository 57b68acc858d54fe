//! End to end: the data plane of a membership change (issue 12) between real `kvmesh node`
//! processes. The control plane that starts a stream in a cluster lands separately, so these
//! tests drive the engine through its test hook (`KVMESH_TEST_STREAM_DIR`, see
//! `src/node/stream_hook.rs`) with an old and a new ring: node 1 holds every key (it runs
//! alone), node 2 joins the ring `{1} → {1, 2}` at replicas 1.
//!
//! They check that every moved key reaches node 2 with its version and value, that the bytes
//! sent equal the theoretical minimum, that the drop pass leaves node 1 exactly the keys it
//! owns (also after a SIGKILL and restart), that a destination that is down is retried until
//! it is up, that `--stream-rate` holds, and that `kvmesh stats` shows the progress.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{op, stdout, wait_for, Node, PortBlock, WireClient};
use kvmesh_net::moves::{plan_key, MoveCost};
use kvmesh_net::ring::Ring;
use kvmesh_proto::wire::{Op, OpCode, Status};

/// The tests here run one at a time: each runs two nodes of pinned executors, and more at
/// once on 2 shared cores made nodes miss their start deadline.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every hop may take this long on a loaded 2-core machine before it counts as failed.
const FLAGS: [&str; 2] = ["--forward-timeout", "10s"];

fn key(i: usize) -> Vec<u8> {
    format!("key:{i}").into_bytes()
}

fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(len, b'x');
    v
}

/// A node with the stream test hook on, its data directory and its hook directory.
struct Hooked {
    node: Node,
    hook: tempfile::TempDir,
    _data: tempfile::TempDir,
}

fn start(id: u32, ports: PortBlock, shards: usize, extra: &[&str]) -> Hooked {
    let hook = tempfile::tempdir().expect("hook dir");
    let data = tempfile::tempdir().expect("data dir");
    let id = id.to_string();
    let mut flags = vec!["--id", &id, "--data-dir", data.path().to_str().unwrap()];
    flags.extend(FLAGS);
    flags.extend(extra);
    let env = [("KVMESH_TEST_STREAM_DIR", hook.path().as_os_str())];
    let mut node = Node::spawn_with_env(ports, shards, &flags, &env);
    node.wait_ready();
    Hooked {
        node,
        hook,
        _data: data,
    }
}

/// Asks every shard of `node` to run `action` and waits for their answers: per shard, its
/// `key=value` lines.
fn run(node: &Hooked, id: u32, action: &str, old: &str, new: &str) -> Vec<BTreeMap<String, u64>> {
    request(node.hook.path(), id, action, old, new);
    (0..node.node.shards)
        .map(|shard| answer(node.hook.path(), id, shard))
        .collect()
}

fn request(dir: &Path, id: u32, action: &str, old: &str, new: &str) {
    let text = format!("id={id}\naction={action}\nepoch=2\nreplicas=1\nold={old}\nnew={new}\n");
    let tmp = dir.join(".move.tmp");
    std::fs::write(&tmp, text).expect("write the request");
    std::fs::rename(&tmp, dir.join("move")).expect("rename the request");
}

fn answer(dir: &Path, id: u32, shard: usize) -> BTreeMap<String, u64> {
    let path = dir.join(format!("done-{id}-{shard}"));
    let text = wait_for("the stream hook's answer", || {
        std::fs::read_to_string(&path).ok()
    });
    assert!(text.starts_with("ok\n"), "shard {shard}: {text}");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
        .collect()
}

fn total(answers: &[BTreeMap<String, u64>], field: &str) -> u64 {
    answers.iter().map(|a| a[field]).sum()
}

/// A node's own copy of a key: `(status, value, version)`.
type Copy = (Status, Vec<u8>, (u64, u32));

/// Node `node`'s own copies of `keys`, read on their owning shards, a few hundred per request.
fn own_copies(node: &Node, keys: &[Vec<u8>]) -> Vec<Copy> {
    let mut copies = vec![(Status::Ok, Vec::new(), (0, 0)); keys.len()];
    for shard in 0..node.shards {
        let mine: Vec<usize> = (0..keys.len())
            .filter(|&i| kvmesh_net::shard_for(&keys[i], node.shards) == shard)
            .collect();
        let mut c = WireClient::connect(node.shard_addr(shard));
        for chunk in mine.chunks(500) {
            let reads = chunk
                .iter()
                .map(|&i| Op {
                    replica: true,
                    ..op(OpCode::OpGet, &keys[i], b"", 0)
                })
                .collect();
            for (&i, r) in chunk.iter().zip(c.call(reads)) {
                copies[i] = (r.status(), r.value, (r.version_hlc, r.version_node));
            }
        }
    }
    copies
}

fn fill(node: &Node, keys: usize, value_len: usize) {
    let mut c = WireClient::connect(node.addr);
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|&i| op(OpCode::OpPut, &key(i), &value(i, value_len), 0))
            .collect();
        for r in c.call(ops) {
            assert_eq!(r.status(), Status::Ok, "{}", r.message);
        }
    }
}

/// The theoretical minimum of moving `keys` keys from ring {1} to {1, 2} at replicas 1, and
/// which keys move.
fn minimum(keys: usize, value_len: usize) -> (MoveCost, Vec<bool>) {
    let (old, new) = (Ring::new(&[1]).unwrap(), Ring::new(&[1, 2]).unwrap());
    let mut cost = MoveCost::default();
    let moved = (0..keys)
        .map(|i| {
            let plan = plan_key(&old, &new, 1, &key(i));
            cost.add(&plan, key(i).len(), value_len);
            assert!(plan.source.is_none() || plan.source == Some(1));
            !plan.destinations.is_empty()
        })
        .collect();
    (cost, moved)
}

#[test]
fn moved_keys_arrive_with_their_versions_and_the_drop_leaves_the_owned_ones() {
    const KEYS: usize = 3000;
    const VALUE: usize = 200;
    let _serial = serial();
    let mut one = start(1, PortBlock::reserve(4), 2, &[]);
    let two = start(2, PortBlock::reserve(4), 2, &[]);
    fill(&one.node, KEYS, VALUE);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!("1={},2={}", one.node.addr, two.node.addr),
    );

    let (min, moved) = minimum(KEYS, VALUE);
    // Writes that reached the new owner before the stream (as writes during a move do) are
    // newer than the streamed copies, and stay.
    let raced: Vec<usize> = (0..KEYS).filter(|&i| moved[i] && i % 10 == 0).collect();
    let mut c = WireClient::connect(two.node.addr);
    for &i in &raced {
        c.put(&key(i), b"newer");
    }
    let answers = run(&one, 1, "stream", &old, &new);
    assert!(min.keys > KEYS as u64 / 3, "{min:?}");
    assert_eq!(total(&answers, "planned_copies"), min.copies);
    assert_eq!(total(&answers, "planned_bytes"), min.bytes);
    assert_eq!(total(&answers, "keys_acked"), min.copies);
    assert_eq!(total(&answers, "bytes_acked"), min.bytes);
    assert_eq!(total(&answers, "refused"), 0);
    // Exactly the theoretical minimum, unless a batch had to be resent (a busy machine).
    assert!(total(&answers, "bytes_sent") >= min.bytes);
    if total(&answers, "retries") == 0 {
        assert_eq!(
            total(&answers, "bytes_sent"),
            min.bytes,
            "the theoretical minimum"
        );
    }
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let (mine, theirs) = (own_copies(&one.node, &keys), own_copies(&two.node, &keys));
    for (i, &moves) in moved.iter().enumerate() {
        let theirs = &theirs[i];
        if moves && i % 10 == 0 {
            assert_eq!(theirs.1, b"newer", "key {i} went back in time on node 2");
        } else if moves {
            assert_eq!(mine[i].0, Status::Ok);
            assert_eq!(theirs, &mine[i], "key {i} on node 2");
            assert_eq!(theirs.1, value(i, VALUE));
        } else {
            assert_eq!(theirs.0, Status::NotFound, "key {i} should not have moved");
        }
    }
    let stats = one.node.stats();
    let sum = |f: fn(&kvmesh_proto::wire::ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.stream_ranges_pending), 0);
    assert_eq!(sum(|s| s.stream_bytes_planned), min.bytes);
    assert_eq!(sum(|s| s.stream_keys_acked), min.copies);
    assert!(sum(|s| s.stream_bytes_sent) >= min.bytes);
    let shown = stdout(&one.node.cli(&["stats"]));
    assert!(
        shown.contains("streaming (node 1, done): 0 range(s) pending"),
        "{shown}"
    );
    // The cost report, in the log of each shard.
    let log = one.node.log();
    let done: Vec<&str> = log.lines().filter(|l| l.contains("stream done:")).collect();
    assert_eq!(done.len(), one.node.shards, "{log}");
    if total(&answers, "retries") == 0 {
        assert!(done.iter().all(|l| l.contains("(1.000×)")), "{done:?}");
    }
    eprintln!("{}", done.join("\n"));
    // The stream's handshake is a legitimate one for the joining node, though their member
    // lists differ.
    assert!(
        !two.node.log().contains("refused a peer's handshake"),
        "{}",
        two.node.log()
    );

    // The drop pass: node 1 keeps exactly the keys it owns under {1, 2}, after a restart too.
    let versions = mine;
    let answers = run(&one, 2, "drop", &old, &new);
    assert_eq!(total(&answers, "dropped"), min.keys);
    for attempt in ["after the drop", "after a SIGKILL and restart"] {
        let now = own_copies(&one.node, &keys);
        for (i, &moves) in moved.iter().enumerate() {
            if moves {
                assert_eq!(now[i].0, Status::NotFound, "key {i} {attempt}");
            } else {
                assert_eq!(now[i], versions[i], "key {i} {attempt}");
            }
        }
        let data = one._data.path().to_str().unwrap().to_string();
        let mut flags = vec!["--id", "1", "--data-dir", &data];
        flags.extend(FLAGS);
        one.node.respawn(&flags);
        one.node.wait_ready();
    }
    // Node 2 never dropped or lost anything.
    let theirs = own_copies(&two.node, &keys);
    for (i, &moves) in moved.iter().enumerate() {
        if moves && i % 10 != 0 {
            assert_eq!(theirs[i], versions[i], "key {i} on node 2");
        }
    }
}

#[test]
fn a_destination_that_is_down_is_retried_and_the_rate_holds() {
    const KEYS: usize = 2500;
    const VALUE: usize = 1000;
    let _serial = serial();
    let one = start(1, PortBlock::reserve(3), 1, &["--stream-rate", "1"]);
    fill(&one.node, KEYS, VALUE);
    let two_ports = PortBlock::reserve(3);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!("1={},2={}", one.node.addr, two_ports.addr()),
    );
    request(one.hook.path(), 1, "stream", &old, &new);
    // Node 2 is not up: the stream waits, and says so.
    let shown = wait_for("the stream to start", || {
        let shown = stdout(&one.node.cli(&["stats"]));
        shown.contains("range(s) pending, 0B of").then_some(shown)
    });
    assert!(shown.contains("ETA unknown"), "{shown}");
    eprintln!("{shown}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!one.hook.path().join("done-1-0").exists());

    let two = start_at(2, two_ports);
    let up = Instant::now();
    let answer = answer(one.hook.path(), 1, 0);
    let took = up.elapsed();
    let (min, moved) = minimum(KEYS, VALUE);
    assert_eq!(answer["keys_acked"], min.copies);
    // A full bucket (one batch) goes at once, the rest at 1 MiB/s.
    let floor = (min.bytes - (256 << 10)) as f64 / (1 << 20) as f64;
    assert!(
        took.as_secs_f64() >= floor * 0.95,
        "{} bytes took {took:?} at --stream-rate 1",
        min.bytes
    );
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let theirs = own_copies(&two.node, &keys);
    for (i, &moves) in moved.iter().enumerate() {
        if moves {
            assert_eq!(theirs[i].1, value(i, VALUE), "key {i}");
        }
    }
}

fn start_at(id: u32, ports: PortBlock) -> Hooked {
    start(id, ports, 1, &[])
}

#[test]
fn an_entry_removed_during_the_stream_is_not_sent_afterwards() {
    const KEYS: usize = 600;
    const VALUE: usize = 16 << 10;
    let _serial = serial();
    // At 1 MiB/s the ~4.7 MiB to move take seconds; every key is scanned in the first step,
    // long before its batch goes.
    let one = start(1, PortBlock::reserve(3), 1, &["--stream-rate", "1"]);
    let two = start_at(2, PortBlock::reserve(3));
    fill(&one.node, KEYS, VALUE);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!("1={},2={}", one.node.addr, two.node.addr),
    );
    request(one.hook.path(), 1, "stream", &old, &new);
    wait_for("the first acknowledged batch", || {
        let stats = one.node.stats();
        (stats.iter().map(|s| s.stream_keys_acked).sum::<u64>() > 0).then_some(())
    });
    // Removed on the source only (no coordinator routes to node 2 in this test): what the
    // stream sends from now on would bring these keys back on node 2.
    let mut c = WireClient::connect(one.node.addr);
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|&i| op(OpCode::OpRemove, &key(i), b"", 0))
            .collect();
        c.call(ops);
    }
    let answer = answer(one.hook.path(), 1, 0);
    let (min, moved) = minimum(KEYS, VALUE);
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let theirs = own_copies(&two.node, &keys);
    let arrived = (0..KEYS)
        .filter(|&i| moved[i] && theirs[i].0 == Status::Ok)
        .count() as u64;
    // What was acknowledged or in the window (4 batches of 16 entries) before the removes.
    assert!(
        arrived < min.copies / 2,
        "{arrived} of {} moved keys reached node 2 after their remove: {answer:?}",
        min.copies
    );
    assert_eq!(
        answer["keys_acked"] + answer["skipped"],
        min.copies,
        "{answer:?}"
    );
}

#[test]
fn a_node_that_is_not_the_destination_acknowledges_nothing() {
    let _serial = serial();
    let one = start(1, PortBlock::reserve(3), 1, &[]);
    // The move names node 2 at this address, but node 3 listens there.
    let three = start(3, PortBlock::reserve(3), 1, &[]);
    fill(&one.node, 200, 100);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!("1={},2={}", one.node.addr, three.node.addr),
    );
    request(one.hook.path(), 1, "stream", &old, &new);
    let path = one.hook.path().join("done-1-0");
    let text = wait_for("the stream's answer", || {
        std::fs::read_to_string(&path).ok()
    });
    assert!(
        text.starts_with("error\n") && text.contains("is not that node"),
        "{text}"
    );
    let keys: Vec<Vec<u8>> = (0..200).map(key).collect();
    let theirs = own_copies(&three.node, &keys);
    assert!(theirs.iter().all(|c| c.0 == Status::NotFound));
}

#[test]
fn copies_the_destination_refuses_fail_the_stream() {
    let _serial = serial();
    let one = start(1, PortBlock::reserve(3), 1, &[]);
    // Node 2 takes no value above 1 KiB: the 4 KiB ones cannot move.
    let two = start(2, PortBlock::reserve(3), 1, &["--max-value-size", "1KiB"]);
    fill(&one.node, 200, 4096);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!("1={},2={}", one.node.addr, two.node.addr),
    );
    request(one.hook.path(), 1, "stream", &old, &new);
    let path = one.hook.path().join("done-1-0");
    let text = wait_for("the stream's answer", || {
        std::fs::read_to_string(&path).ok()
    });
    let (min, _) = minimum(200, 4096);
    assert!(
        text.starts_with("error\n")
            && text.contains(&format!("refused {} key copies for good", min.copies)),
        "{text}"
    );
    let shown = stdout(&one.node.cli(&["stats"]));
    assert!(shown.contains("streaming (node 1, failed)"), "{shown}");
}

#[test]
fn a_drop_under_a_ring_without_this_node_drops_nothing() {
    let _serial = serial();
    let one = start(1, PortBlock::reserve(3), 1, &[]);
    fill(&one.node, 200, 100);
    let keys: Vec<Vec<u8>> = (0..200).map(key).collect();
    let before = own_copies(&one.node, &keys);
    // A ring of node 2 alone (node 1 owns nothing there), then replicas 0: both refused.
    let other = format!("2={}", one.node.addr);
    let answers = run(&one, 1, "drop", &other, &other);
    assert_eq!(total(&answers, "dropped"), 0);
    let text = format!(
        "id=2\naction=drop\nepoch=2\nreplicas=0\nold=1={a}\nnew=1={a}\n",
        a = one.node.addr
    );
    std::fs::write(one.hook.path().join(".move.tmp"), text).expect("write the request");
    std::fs::rename(
        one.hook.path().join(".move.tmp"),
        one.hook.path().join("move"),
    )
    .expect("rename the request");
    assert_eq!(answer(one.hook.path(), 2, 0)["dropped"], 0);
    assert_eq!(own_copies(&one.node, &keys), before);
    assert!(
        one.node.log().contains("refusing to drop"),
        "{}",
        one.node.log()
    );
    assert!(one.node.log().contains("KVMESH_TEST_STREAM_DIR is set"));
}

#[test]
fn batches_fit_a_destination_with_a_smaller_frame_limit() {
    const KEYS: usize = 100;
    const VALUE: usize = 20 << 10;
    let _serial = serial();
    let one = start(1, PortBlock::reserve(3), 1, &[]);
    // Node 2 takes frames of 64 KiB at most: a 256 KiB batch must be split.
    let flags = [
        "--max-key-size",
        "1KiB",
        "--max-value-size",
        "32KiB",
        "--max-frame",
        "64KiB",
    ];
    let two = start(2, PortBlock::reserve(3), 1, &flags);
    fill(&one.node, KEYS, VALUE);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!("1={},2={}", one.node.addr, two.node.addr),
    );
    let answers = run(&one, 1, "stream", &old, &new);
    let (min, moved) = minimum(KEYS, VALUE);
    assert_eq!(total(&answers, "keys_acked"), min.copies, "{answers:?}");
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let theirs = own_copies(&two.node, &keys);
    for (i, &moves) in moved.iter().enumerate() {
        if moves {
            assert_eq!(theirs[i].1, value(i, VALUE), "key {i}");
        }
    }
}

#[test]
fn a_destination_that_goes_down_holds_up_only_its_own_batches() {
    // Enough that each destination gets a dozen batches: node 2's fill more than a window.
    // Node 2 goes down: its batches are the first the window picks, so it is the harder case.
    const KEYS: usize = 9000;
    const VALUE: usize = 1000;
    let _serial = serial();
    let one = start(1, PortBlock::reserve(3), 1, &["--stream-rate", "2"]);
    let mut two = start(2, PortBlock::reserve(3), 1, &[]);
    let three = start(3, PortBlock::reserve(3), 1, &[]);
    fill(&one.node, KEYS, VALUE);
    let (old, new) = (
        format!("1={}", one.node.addr),
        format!(
            "1={},2={},3={}",
            one.node.addr, two.node.addr, three.node.addr
        ),
    );
    request(one.hook.path(), 1, "stream", &old, &new);
    // Once the stream knows both destinations (its first batches are acknowledged), node 2
    // goes down.
    wait_for("the first acknowledged batch", || {
        let stats = one.node.stats();
        (stats.iter().map(|s| s.stream_keys_acked).sum::<u64>() > 0).then_some(())
    });
    two.node.signal_and_wait(libc::SIGKILL);
    let (r1, r123) = (Ring::new(&[1]).unwrap(), Ring::new(&[1, 2, 3]).unwrap());
    let to_three: Vec<usize> = (0..KEYS)
        .filter(|&i| plan_key(&r1, &r123, 1, &key(i)).destinations == [3])
        .collect();
    assert!(to_three.len() > KEYS / 4);
    let keys: Vec<Vec<u8>> = to_three.iter().map(|&i| key(i)).collect();
    wait_for("every key for node 3 while node 2 is down", || {
        let theirs = own_copies(&three.node, &keys);
        theirs.iter().all(|c| c.0 == Status::Ok).then_some(())
    });
    // The source says so after a few failed attempts.
    wait_for("a WARN about node 2", || {
        let log = one.node.log();
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("node 2") && l.contains("still"))
            .then_some(())
    });
    assert!(!one.hook.path().join("done-1-0").exists());
    let data = two._data.path().to_str().unwrap().to_string();
    let mut flags = vec!["--id", "2", "--data-dir", &data];
    flags.extend(FLAGS);
    two.node.respawn(&flags);
    two.node.wait_ready();
    let answer = answer(one.hook.path(), 1, 0);
    assert!(answer["retries"] > 0, "{answer:?}");
}
