//! Helpers of the membership tests (`tests/node_membership.rs`, `tests/node_topology.rs`):
//! what a node reports of the agreed topology, a node that joins, and a read/write load that
//! records every failure and each key's latest acknowledged value.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{op, Node, PortBlock, WireClient};
use kvmesh_proto::wire::{OpCode, Status};

/// The epoch and member ids shard `shard` of the node at `addr` reports.
pub fn topology_at(addr: SocketAddr) -> (u64, Vec<u32>, bool) {
    let mut client = WireClient::connect(addr);
    let results = client.call(vec![op(OpCode::OpTopology, b"", b"", 0)]);
    let t = results[0].topology.clone().unwrap_or_default();
    let ids = t.members.iter().map(|m| m.id).collect();
    (t.epoch, ids, t.transition.is_some())
}

pub fn epoch(node: &Node, shard: usize) -> u64 {
    topology_at(node.shard_addr(shard)).0
}

/// Waits until every node in `nodes` reports `members`, with no change running.
pub fn wait_for_members(nodes: &[&Node], members: &[u32], logs: impl Fn() -> String) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let views: Vec<_> = nodes.iter().map(|n| topology_at(n.addr)).collect();
        if views
            .iter()
            .all(|(_, ids, moving)| ids == members && !moving)
        {
            let epochs: Vec<u64> = views.iter().map(|v| v.0).collect();
            assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{views:?}");
            return;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "members never became {members:?}: {views:?}\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Writes `keys` keys `k0..` with value `v0-i` through `addr`, in batches.
pub fn fill(addr: SocketAddr, keys: usize) {
    let mut client = WireClient::connect(addr);
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| {
                op(
                    OpCode::OpPut,
                    format!("k{i}").as_bytes(),
                    format!("v0-{i}").as_bytes(),
                    0,
                )
            })
            .collect();
        for r in client.call(ops) {
            assert_eq!(r.status(), Status::Ok, "{}", r.message);
        }
    }
}

/// Continuous load: each round rewrites some keys (`vR-i`) and reads others back through
/// the nodes in turn; every failed request is recorded. Returns the latest value written per
/// key on stop.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub rounds: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<Vec<Option<u64>>>>,
}

impl Load {
    pub fn start(addrs: Vec<SocketAddr>, keys: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, r, f) = (stop.clone(), rounds.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let mut clients: Vec<WireClient> =
                addrs.iter().map(|&a| WireClient::connect(a)).collect();
            let mut latest: Vec<Option<u64>> = vec![None; keys];
            let mut round = 1u64;
            while !s.load(Ordering::Relaxed) {
                let client = &mut clients[round as usize % addrs.len()];
                // 200 writes and 200 reads per round, spread over the key space.
                let written: Vec<usize> = (0..200)
                    .map(|j| (round as usize * 7919 + j * 251) % keys)
                    .collect();
                let ops = written
                    .iter()
                    .map(|i| {
                        let value = format!("v{round}-{i}");
                        op(
                            OpCode::OpPut,
                            format!("k{i}").as_bytes(),
                            value.as_bytes(),
                            0,
                        )
                    })
                    .collect();
                for (r, &i) in client.call(ops).iter().zip(&written) {
                    if r.status() == Status::Ok {
                        latest[i] = Some(round);
                    } else {
                        f.lock()
                            .unwrap()
                            .push(format!("put k{i}: {:?} {}", r.status(), r.message));
                    }
                }
                let read: Vec<usize> = (0..200)
                    .map(|j| (round as usize * 104_729 + j * 13) % keys)
                    .collect();
                let ops = read
                    .iter()
                    .map(|i| op(OpCode::OpGet, format!("k{i}").as_bytes(), b"", 0))
                    .collect();
                for (r, &i) in client.call(ops).iter().zip(&read) {
                    let want = format!("v{}-{i}", latest[i].unwrap_or(0));
                    if r.status() != Status::Ok || r.value != want.as_bytes() {
                        f.lock().unwrap().push(format!(
                            "get k{i}: {:?} {:?} (want {want}) {}",
                            r.status(),
                            String::from_utf8_lossy(&r.value),
                            r.message
                        ));
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
            latest
        });
        Load {
            stop,
            rounds,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the load; asserts that no request failed (`logs` says why otherwise) and
    /// returns each key's latest acknowledged value.
    pub fn stop_without_failures(mut self, logs: impl Fn() -> String) -> Vec<Option<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        let latest = self.thread.take().unwrap().join().expect("load thread");
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} failed requests in {} rounds: {:?}\n{}",
            failures.len(),
            self.rounds.load(Ordering::Relaxed),
            &failures[..failures.len().min(10)],
            logs()
        );
        latest
    }
}

/// Every key reads back with its latest value through `addr`.
pub fn check_all(addr: SocketAddr, latest: &[Option<u64>]) {
    let mut client = WireClient::connect(addr);
    let keys: Vec<usize> = (0..latest.len()).collect();
    for chunk in keys.chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| op(OpCode::OpGet, format!("k{i}").as_bytes(), b"", 0))
            .collect();
        for (r, &i) in client.call(ops).iter().zip(chunk) {
            let want = format!("v{}-{i}", latest[i].unwrap_or(0));
            assert_eq!(
                (r.status(), String::from_utf8_lossy(&r.value).to_string()),
                (Status::Ok, want),
                "k{i} through {addr}: {}",
                r.message
            );
        }
    }
}

pub fn keys_held(node: &Node) -> u64 {
    node.stats().iter().map(|s| s.keys).sum()
}

/// The flags of node `id` started with `--join seed`: a `Cluster` node's, plus `extra`.
pub fn join_args(
    id: u32,
    seed: SocketAddr,
    data: &tempfile::TempDir,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--id",
        &id.to_string(),
        "--join",
        &seed.to_string(),
        "--fsync",
        "never",
        "--cluster",
        "test",
        "--data-dir",
        &data.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts node `id` with `--join seed` (see [`join_args`]).
pub fn joiner(id: u32, seed: SocketAddr, data: &tempfile::TempDir, extra: &[&str]) -> Node {
    let args = join_args(id, seed, data, extra);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::spawn(PortBlock::reserve(3), 1, &argv)
}
