//! End to end: the real `kvmesh-bench` binary against small fake servers on loopback ports,
//! so the whole machinery (workers, gate, pipelining, routing, accounting, JSON) runs without
//! redis-server or a kvmesh node installed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use kvmesh_net::frame;
use kvmesh_net::routing::{shard_for, SHARD_HASH_NAME};
use kvmesh_proto::wire::{OpCode, OpResult, Request, Response, Status, Topology};

use common::bench;

/// Serves every connection accepted on `listener` with `serve`, each on its own thread.
fn serve_forever(listener: TcpListener, serve: impl Fn(TcpStream) + Send + Sync + 'static) {
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let serve = serve.clone();
            thread::spawn(move || serve(stream));
        }
    });
}

fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// A RESP server that knows GET and SET but stores nothing: GET always finds "hello", SET
/// answers `set_reply`. Commands are parsed just enough to count them.
fn fake_redis(set_reply: &'static [u8]) -> String {
    let (listener, addr) = listen();
    serve_forever(listener, move |mut stream| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            while let Some((is_get, used)) = resp_command(&buf) {
                buf.drain(..used);
                out.extend_from_slice(if is_get {
                    b"$5\r\nhello\r\n"
                } else {
                    set_reply
                });
            }
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    });
    addr
}

/// `*N\r\n` then N bulk strings; returns whether it is a GET and the bytes it took.
fn resp_command(buf: &[u8]) -> Option<(bool, usize)> {
    let line = |at: usize| -> Option<(usize, usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    };
    let (items, mut at) = line(0)?;
    let mut is_get = false;
    for i in 0..items {
        let (len, body) = line(at)?;
        buf.get(body..body + len + 2)?;
        is_get |= i == 0 && &buf[body..body + len] == b"GET";
        at = body + len + 2;
    }
    Some((is_get, at))
}

#[test]
fn redis_target_counts_every_request() {
    let addr = fake_redis(b"+OK\r\n");
    let report = bench(&[
        "--target",
        "redis",
        "--addr",
        &addr,
        "--requests",
        "3000",
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--keys",
        "500",
        "--read-ratio",
        "0.5",
    ]);
    assert_eq!(report["requests"], 3000, "{report}");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["prefill_keys"], 500);
    assert_eq!(report["hit_rate"], 1.0);
    assert_eq!(
        report["gets"].as_u64().unwrap() + report["sets"].as_u64().unwrap(),
        3000
    );
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0);
    for field in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
}

#[test]
fn error_replies_are_counted_not_hidden() {
    let addr = fake_redis(b"-ERR nope\r\n");
    let report = bench(&[
        "--target",
        "redis",
        "--addr",
        &addr,
        "--requests",
        "400",
        "--connections",
        "2",
        "--read-ratio",
        "0",
        "--no-prefill",
    ]);
    assert_eq!(report["requests"], 400);
    assert_eq!(report["errors"], 400);
    assert_eq!(report["error_replies"], 400);
    assert_eq!(report["first_errors"][0], "ERR nope");
}

#[test]
fn silence_is_counted_as_timeouts() {
    let (listener, addr) = listen();
    serve_forever(listener, |mut stream| {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    let report = bench(&[
        "--target",
        "redis",
        "--addr",
        &addr,
        "--requests",
        "3",
        "--connections",
        "1",
        "--timeout",
        "100ms",
        "--no-prefill",
    ]);
    assert_eq!(report["requests"], 3);
    assert_eq!(report["timeouts"], 3);
    assert_eq!(report["errors"], 3);
    assert_eq!(report["reconnects"], 3);
}

/// A fake kvmesh node with two shards: the main port answers OP_TOPOLOGY; each shard port
/// answers GET/PUT and counts keys that belong to the other shard.
#[test]
fn kvmesh_target_sends_each_key_to_its_owner() {
    let misrouted = Arc::new(AtomicU64::new(0));
    let served: [Arc<AtomicU64>; 2] = Default::default();
    let (shard_listeners, shard_addrs): (Vec<_>, Vec<_>) = (0..2).map(|_| listen()).unzip();
    let ports: Vec<u32> = shard_addrs
        .iter()
        .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let topology = Topology {
        shards: 2,
        shard_ports: ports,
        shard_hash: SHARD_HASH_NAME.into(),
        ..Topology::default()
    };
    let (main, main_addr) = listen();
    serve_forever(main, move |stream| {
        serve_wire(stream, |_| Some(topology.clone()), None)
    });
    for (shard, listener) in shard_listeners.into_iter().enumerate() {
        let (misrouted, served) = (misrouted.clone(), served[shard].clone());
        serve_forever(listener, move |stream| {
            let check = Some((shard, misrouted.clone(), served.clone()));
            serve_wire(stream, |_| None, check);
        });
    }
    let report = bench(&[
        "--target",
        "kvmesh",
        "--addr",
        &main_addr,
        "--requests",
        "4000",
        "--connections",
        "6",
        "--pipeline",
        "4",
        "--keys",
        "1000",
    ]);
    assert_eq!(report["shards"], 2);
    assert_eq!(report["requests"], 4000);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["prefill_keys"], 1000);
    assert_eq!(misrouted.load(Ordering::Relaxed), 0);
    let total: u64 = served.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total, 5000, "prefill plus measured requests");
    assert!(
        served.iter().all(|s| s.load(Ordering::Relaxed) > 1000),
        "both shards work"
    );
}

type Check = Option<(usize, Arc<AtomicU64>, Arc<AtomicU64>)>;

fn serve_wire(mut stream: TcpStream, topology: impl Fn(()) -> Option<Topology>, check: Check) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Ok(Some((request, used))) = frame::decode::<Request>(&buf, 1 << 20) {
            buf.drain(..used);
            let results = request
                .ops
                .iter()
                .map(|op| {
                    let mut result = OpResult::default();
                    match op.code() {
                        OpCode::OpTopology => result.topology = topology(()).map(Box::new),
                        OpCode::OpGet => result.value = b"hello".to_vec(),
                        _ => {}
                    }
                    if let Some((shard, misrouted, served)) = &check {
                        served.fetch_add(1, Ordering::Relaxed);
                        if shard_for(&op.key, 2) != *shard {
                            misrouted.fetch_add(1, Ordering::Relaxed);
                            result.status = Status::Internal as i32;
                        }
                    }
                    result
                })
                .collect();
            frame::encode(
                &Response {
                    id: request.id,
                    results,
                    ..Response::default()
                },
                &mut out,
            );
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}
