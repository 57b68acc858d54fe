//! End to end: durability with `--data-dir`. Real nodes, killed with SIGKILL at random moments
//! while many connections write and remove; every acknowledged write must be there after the
//! restart, every acknowledged remove must stay removed. Plus identity, locking, TTLs across a
//! restart, and damage found at start.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{op, spawn_node, wait_for, Node, PortBlock, WireClient};
use kvmesh_net::frame;
use kvmesh_proto::wire::{OpCode, Request, Status};

/// Small segments, so the crash tests rotate; values small enough for them.
const WAL_FLAGS: [&str; 4] = ["--wal-segment-size", "1MiB", "--max-value-size", "64KiB"];

fn durable_node(dir: &Path, extra: &[&str]) -> Node {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend(WAL_FLAGS);
    args.extend(extra);
    Node::start(2, &args)
}

/// Kills the child when dropped, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a node that must fail; returns its output.
fn failing_node(extra: &[&str]) -> String {
    let ports = PortBlock::reserve(3);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let mut child = Reaped(spawn_node(ports.addr(), 2, extra, &log));
    let status = wait_for("the node to exit", || child.0.try_wait().ok().flatten());
    assert!(!status.success(), "the node should have refused to start");
    std::fs::read_to_string(&log).unwrap()
}

/// A small xorshift generator; tests print their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (nanos ^ u64::from(std::process::id())) | 1
}

/// What a key must look like after a restart: its last acknowledged state (`None`: removed
/// or never written), or the result of the op in flight when the node died, which may or may
/// not have landed.
#[derive(Clone, Debug, Default)]
struct Expect {
    acked: Option<Vec<u8>>,
    in_flight: Option<Option<Vec<u8>>>,
}

/// What one writer saw of one key in one round.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// The last acknowledged state, if an op on the key was acknowledged this round.
    acked: Option<Option<Vec<u8>>>,
    /// The op in flight when the node died.
    in_flight: Option<Option<Vec<u8>>>,
}

/// One writer: puts and removes on its own keys, one op at a time, until the connection dies.
/// Returns what it saw acknowledged, and the op in flight when the node died.
fn writer(
    addr: std::net::SocketAddr,
    id: usize,
    round: usize,
    seed: u64,
    acks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> HashMap<String, Seen> {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut client = WireClient::connect(addr);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{id}-k{}", rng.next() % 24);
        let put = rng.next() % 10 < 7;
        let value = format!(
            "r{round}-w{id}-{n}-{}",
            "v".repeat((rng.next() % 40) as usize)
        );
        n += 1;
        let request = if put {
            op(OpCode::OpPut, key.as_bytes(), value.as_bytes(), 0)
        } else {
            op(OpCode::OpRemove, key.as_bytes(), b"", 0)
        };
        let outcome = put.then(|| value.into_bytes());
        let mut bytes = Vec::new();
        frame::encode(
            &Request {
                id: n,
                ops: vec![request],
                ..Request::default()
            },
            &mut bytes,
        );
        let entry = seen.entry(key).or_default();
        entry.in_flight = Some(outcome.clone());
        if client.stream.write_all(&bytes).is_err() {
            break;
        }
        let Some(response) = client.recv() else {
            break; // the node died with this op in flight
        };
        let result = &response.results[0];
        assert_eq!(result.status(), Status::Ok, "{}", result.message);
        entry.acked = Some(outcome);
        entry.in_flight = None;
        acks.fetch_add(1, Ordering::Relaxed);
    }
    seen
}

/// Runs writers until `kill_after` acks, then SIGKILLs the node; returns what they saw. With
/// `snapshots`, a thread also asks for snapshots (`kvmesh snapshot`) back to back meanwhile.
fn write_until_killed(
    node: &mut Node,
    round: usize,
    seed: u64,
    kill_after: u64,
    snapshots: bool,
) -> HashMap<String, Seen> {
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let storm = snapshots.then(|| {
        let (addr, stop) = (node.addr, stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = common::cli(addr, &["snapshot"]);
            }
        })
    });
    let writers: Vec<_> = (0..12)
        .map(|id| {
            // Half on the shared port (forwarded by the shard that took the connection), half
            // straight to a shard's own port.
            let addr = if id % 2 == 0 {
                node.addr
            } else {
                node.shard_addr(id % node.shards)
            };
            let (acks, stop) = (acks.clone(), stop.clone());
            std::thread::spawn(move || writer(addr, id, round, seed, acks, stop))
        })
        .collect();
    wait_for("enough acknowledged writes", || {
        (acks.load(Ordering::Relaxed) >= kill_after).then_some(())
    });
    node.signal_and_wait(libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    let mut seen = HashMap::new();
    for w in writers {
        seen.extend(w.join().expect("writer thread"));
    }
    if let Some(storm) = storm {
        storm.join().expect("snapshot thread");
    }
    seen
}

/// Checks every key against what was acknowledged; settles keys whose last op was in flight.
fn verify(node: &Node, expected: &mut HashMap<String, Expect>, context: &str) {
    let mut client = WireClient::connect(node.addr);
    for (key, expect) in expected.iter_mut() {
        let got = client.get(key.as_bytes());
        let allowed = got == expect.acked
            || expect
                .in_flight
                .as_ref()
                .is_some_and(|landed| got == *landed);
        assert!(
            allowed,
            "{context}: key {key} is {:?}, but the last acknowledged state is {:?} (in flight: \
             {:?})\nnode log:\n{}",
            got.as_deref().map(String::from_utf8_lossy),
            expect.acked.as_deref().map(String::from_utf8_lossy),
            expect.in_flight,
            node.log()
        );
        *expect = Expect {
            acked: got,
            in_flight: None,
        };
    }
}

fn crash_rounds(fsync: &str, rounds: usize) {
    crash_rounds_with(fsync, rounds, false, &[]);
}

/// Crash rounds; with `snapshots`, under back-to-back snapshots and with `extra` flags.
fn crash_rounds_with(fsync: &str, rounds: usize, snapshots: bool, extra: &[&str]) {
    let seed = seed();
    eprintln!("crash test --fsync {fsync}, snapshots {snapshots}: seed {seed}");
    let mut rng = Rng(seed);
    let data = tempfile::tempdir().unwrap();
    let mut expected: HashMap<String, Expect> = HashMap::new();
    for round in 0..rounds {
        let mut flags = vec!["--fsync", fsync];
        flags.extend(extra);
        let mut node = durable_node(data.path(), &flags);
        let context = format!("--fsync {fsync}, seed {seed}, after kill {round}");
        verify(&node, &mut expected, &context);
        let kill_after = 200 + rng.next() % 1500;
        let seen = write_until_killed(&mut node, round, seed ^ round as u64, kill_after, snapshots);
        for (key, seen) in seen {
            let entry = expected.entry(key).or_default();
            if let Some(state) = seen.acked {
                entry.acked = state;
            }
            entry.in_flight = seen.in_flight;
        }
        assert!(!node.log().contains("panicked"), "{}", node.log());
    }
    let mut flags = vec!["--fsync", fsync];
    flags.extend(extra);
    let node = durable_node(data.path(), &flags);
    verify(
        &node,
        &mut expected,
        &format!("--fsync {fsync}, seed {seed}, final"),
    );
    assert!(expected.len() > 100, "{} keys written", expected.len());
    let log = node.log();
    assert!(
        log.contains("shard 0: replayed") && log.contains("shard 1: replayed"),
        "{log}"
    );
    if snapshots {
        assert!(log.contains("loaded snapshot"), "{log}");
    }
    eprintln!("{log}");
}

#[test]
fn acknowledged_writes_survive_sigkill_with_fsync_always() {
    crash_rounds("always", 3);
}

#[test]
fn acknowledged_writes_survive_sigkill_with_fsync_never() {
    crash_rounds("never", 2);
}

#[test]
fn acknowledged_writes_survive_sigkill_during_snapshots() {
    // Snapshots back to back on demand, and automatic ones every 2 segments of log.
    crash_rounds_with("always", 4, true, &["--snapshot-factor", "2"]);
}

/// The node id a node reports in its topology.
fn node_id(node: &Node) -> u32 {
    let mut c = WireClient::connect(node.addr);
    let r = c.call(vec![op(OpCode::OpTopology, b"", b"", 0)]);
    r[0].topology.as_ref().expect("topology").node_id
}

#[test]
fn the_data_directory_keeps_the_node_id_and_is_locked() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let node = durable_node(data.path(), &[]);
    let id = node_id(&node);
    assert!(node
        .log()
        .contains(&format!("new data directory {dir}: node id {id}")));
    // A second node on the same directory is refused while the first runs.
    let out = failing_node(&["--data-dir", dir]);
    assert!(out.contains("in use by another kvmesh node"), "{out}");
    assert!(out.contains(&format!("pid {}", node.pid())), "{out}");
    drop(node);
    // The id is kept; an --id that does not match is refused, a matching one accepted.
    let node = durable_node(data.path(), &[]);
    assert_eq!(node_id(&node), id);
    drop(node);
    let other = (id % 1000) + 1;
    let out = failing_node(&["--data-dir", dir, "--id", &other.to_string()]);
    assert!(
        out.contains(&format!("does not match node id {id}")),
        "{out}"
    );
    let node = durable_node(data.path(), &["--id", &id.to_string()]);
    assert_eq!(node_id(&node), id);
}

#[test]
fn without_a_data_directory_the_node_says_it_keeps_nothing() {
    let node = Node::start(1, &[]);
    assert!(
        node.log().contains("in-memory only (no --data-dir)"),
        "{}",
        node.log()
    );
    let out = failing_node(&["--fsync", "never"]);
    assert!(out.contains("--fsync needs --data-dir"), "{out}");
}

#[test]
fn ttls_keep_their_deadlines_and_removes_stay_removed_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut node = durable_node(data.path(), &[]);
    let put_at = Instant::now();
    let mut c = WireClient::connect(node.addr);
    for (key, ttl_ms) in [("short", 1_500u64), ("long", 600_000), ("forever", 0)] {
        let r = c.call(vec![op(OpCode::OpPut, key.as_bytes(), b"v", ttl_ms)]);
        assert_eq!(r[0].status(), Status::Ok);
    }
    c.put(b"removed", b"v");
    let r = c.call(vec![op(OpCode::OpRemove, b"removed", b"", 0)]);
    assert!(r[0].found);
    c.put(b"overwritten", b"old");
    node.signal_and_wait(libc::SIGKILL);
    // Down past the short TTL's deadline: it must not come back.
    while put_at.elapsed() < Duration::from_millis(1_600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut node = durable_node(data.path(), &[]);
    let mut c = WireClient::connect(node.addr);
    assert_eq!(c.get(b"short"), None);
    assert_eq!(c.get(b"long").as_deref(), Some(&b"v"[..]));
    assert_eq!(c.get(b"forever").as_deref(), Some(&b"v"[..]));
    assert_eq!(c.get(b"removed"), None);
    // The clock resumed above the recovered versions: a new write wins, also after replay.
    c.put(b"overwritten", b"new");
    node.signal_and_wait(libc::SIGTERM);
    let node = durable_node(data.path(), &[]);
    let mut c = WireClient::connect(node.addr);
    assert_eq!(c.get(b"overwritten").as_deref(), Some(&b"new"[..]));
    assert_eq!(c.get(b"removed"), None);
}

/// Flips one byte inside the record of `key` in `dir`'s logs; returns (file, offset).
fn damage_record_of(dir: &Path, key: &[u8]) -> (String, u64) {
    for shard in 0..2 {
        let shard_dir = dir.join(format!("shard-{shard}"));
        let mut names: Vec<_> = std::fs::read_dir(&shard_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let mut bytes = std::fs::read(&path).unwrap();
            let items = kvmesh_wal::scan::scan(&bytes, 4096, bytes.len()).items;
            for item in items {
                if let kvmesh_wal::scan::Item::Record { offset, record } = item {
                    if record.key == key {
                        bytes[offset as usize + 12] ^= 0x55;
                        std::fs::write(&path, bytes).unwrap();
                        return (path.display().to_string(), offset);
                    }
                }
            }
        }
    }
    panic!("no record of {key:?}");
}

#[test]
fn damage_to_synced_records_stops_start_up_unless_tolerated() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let mut node = durable_node(data.path(), &[]);
    let mut c = WireClient::connect(node.addr);
    for i in 0..40 {
        c.put(format!("key-{i}").as_bytes(), b"value");
    }
    node.signal_and_wait(libc::SIGTERM);
    let (file, offset) = damage_record_of(data.path(), b"key-10");
    let mut flags = vec!["--data-dir", &dir];
    flags.extend(WAL_FLAGS);
    let out = failing_node(&flags);
    assert!(out.contains("recovery stopped"), "{out}");
    assert!(
        out.contains(&format!("{file}: damaged log at offset {offset}")),
        "{out}"
    );
    assert!(out.contains("--recovery tolerate-corruption"), "{out}");

    let node = durable_node(data.path(), &["--recovery", "tolerate-corruption"]);
    let log = node.log();
    assert!(
        log.contains("damage skipped (tolerate-corruption)"),
        "{log}"
    );
    assert!(log.contains("1 record(s) lost"), "{log}");
    let mut c = WireClient::connect(node.addr);
    assert_eq!(c.get(b"key-10"), None);
    for i in (0..40).filter(|&i| i != 10) {
        assert!(c.get(format!("key-{i}").as_bytes()).is_some(), "key-{i}");
    }
}
