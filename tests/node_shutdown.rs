//! End to end: a graceful stop. SIGTERM under write load: the node stops accepting, answers
//! what it has read, syncs its log and exits 0 within `--shutdown-timeout`; every write it
//! acknowledged is there after the restart.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{op, wait_for, Node, WireClient};
use kvmesh_net::frame;
use kvmesh_proto::wire::{OpCode, Request, Status};

fn durable_node(dir: &Path, extra: &[&str]) -> Node {
    let mut args = vec![
        "--data-dir",
        dir.to_str().unwrap(),
        "--wal-segment-size",
        "1MiB",
        "--max-value-size",
        "64KiB",
    ];
    args.extend(extra);
    Node::start(2, &args)
}

/// Writes unique keys, pipelined, until the node closes the connection; returns the keys it
/// acknowledged.
fn writer(node: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut c = WireClient::connect(node);
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut bytes = Vec::new();
        let keys: Vec<String> = (0..8).map(|i| format!("w{id}-{n}-{i}")).collect();
        n += 1;
        let ops = keys
            .iter()
            .map(|k| op(OpCode::OpPut, k.as_bytes(), b"value", 0))
            .collect();
        frame::encode(
            &Request {
                id: n,
                ops,
                ..Request::default()
            },
            &mut bytes,
        );
        if std::io::Write::write_all(&mut c.stream, &bytes).is_err() {
            break;
        }
        let Some(response) = c.recv() else { break };
        assert_eq!(response.id, n);
        for (key, result) in keys.into_iter().zip(response.results) {
            if result.status() == Status::Ok {
                acked.push(key);
            }
        }
    }
    acked
}

#[test]
fn sigterm_under_load_drains_syncs_and_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().unwrap();
    let mut node = durable_node(data.path(), &["--shutdown-timeout", "10s"]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..6)
        .map(|id| {
            let addr = if id % 2 == 0 {
                node.addr
            } else {
                node.shard_addr(id % 2)
            };
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let keys = writer(addr, id, stop);
                acked.lock().unwrap().extend(keys);
            })
        })
        .collect();
    // Under load: wait until the node has applied a good number of writes.
    wait_for("writes to flow", || {
        let puts: u64 = node.stats().iter().map(|s| s.puts).sum();
        (puts > 2_000).then_some(())
    });
    let signalled = Instant::now();
    let status = node.signal_and_wait(libc::SIGTERM);
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let log = node.log();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{log}");
    assert!(log.contains("stop requested"), "{log}");
    assert!(log.contains("stopped; write-ahead logs synced"), "{log}");
    drop(node);

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1_000,
        "only {} writes acknowledged",
        acked.len()
    );
    let node = durable_node(data.path(), &[]);
    let log = node.log();
    // A clean stop leaves no torn tail to truncate.
    assert!(!log.contains("torn"), "{log}");
    let mut c = WireClient::connect(node.addr);
    for chunk in acked.chunks(256) {
        let ops = chunk
            .iter()
            .map(|k| op(OpCode::OpGet, k.as_bytes(), b"", 0))
            .collect();
        for (key, result) in chunk.iter().zip(c.call(ops)) {
            assert_eq!(result.status(), Status::Ok, "acknowledged {key} was lost");
        }
    }
}

/// A second signal exits at once (status 1) if the first has not finished; either way the
/// next start recovers every acknowledged write.
#[test]
fn two_signals_stop_the_node_and_recovery_covers_it() {
    let data = tempfile::tempdir().unwrap();
    let mut node = durable_node(data.path(), &["--shutdown-timeout", "60s"]);
    let mut c = WireClient::connect(node.addr);
    c.put(b"k", b"v");
    for _ in 0..2 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(node.pid() as i32, libc::SIGTERM) };
    }
    wait_for("the node to exit", || (!node.is_running()).then_some(()));
    drop(node);
    let node = durable_node(data.path(), &[]);
    let mut c = WireClient::connect(node.addr);
    assert_eq!(c.get(b"k").as_deref(), Some(&b"v"[..]));
}
