//! End to end: the limits that keep a node up when clients misbehave. Connections over
//! `--max-connections` are refused cleanly, idle ones are closed after `--idle-timeout`, and a
//! client that sends but never reads leaves the node's memory bounded; other clients are
//! served all along.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{op, wait_for, Node, WireClient};
use kvmesh_net::frame;
use kvmesh_proto::wire::{OpCode, Request, Status};

/// The node's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("node status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib << 10
}

#[test]
fn connections_over_the_limit_are_refused_with_an_error_frame() {
    // Two shards, two connections each.
    let metrics = common::PortBlock::reserve(1);
    let metrics_addr = metrics.addr().to_string();
    let node = Node::start(2, &["--max-connections", "4", "--metrics", &metrics_addr]);
    let mut held: Vec<WireClient> = (0..2)
        .map(|i| {
            let mut c = WireClient::connect(node.shard_addr(0));
            c.put(format!("k{i}").as_bytes(), b"v");
            c
        })
        .collect();
    let mut extra = WireClient::connect(node.shard_addr(0));
    let refusal = extra.recv().expect("a refusal frame");
    assert_eq!(refusal.error(), Status::Busy, "{}", refusal.message);
    assert!(
        refusal.message.contains("--max-connections 4"),
        "{}",
        refusal.message
    );
    assert!(extra.recv().is_none(), "a refused connection is closed");
    let scrape = common::http_get(metrics.addr(), "/metrics");
    assert!(
        scrape.contains("kvmesh_connections_refused_total{shard=\"0\"} 1"),
        "{scrape}"
    );

    // The others are served meanwhile, on this shard and on the other.
    assert_eq!(held[0].get(b"k1").as_deref(), Some(&b"v"[..]));
    let mut other = WireClient::connect(node.shard_addr(1));
    other.put(b"elsewhere", b"v");

    // Once a connection closes, a new one is taken.
    held.pop();
    wait_for("a slot to free up", || {
        let mut c = WireClient::connect(node.shard_addr(0));
        let mut bytes = Vec::new();
        let request = Request {
            id: 1,
            ops: vec![op(OpCode::OpGet, b"k0", b"", 0)],
            ..Request::default()
        };
        frame::encode(&request, &mut bytes);
        c.send_raw(&bytes);
        let r = c.recv()?;
        (r.error() == Status::Ok).then_some(())
    });
    assert!(
        node.log().contains("max connections 4 (2 per shard)"),
        "{}",
        node.log()
    );
}

#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    let node = Node::start(1, &["--idle-timeout", "300ms"]);
    let mut idle = WireClient::connect(node.addr);
    idle.put(b"k", b"v");
    let mut busy = WireClient::connect(node.addr);
    let began = Instant::now();
    // The idle one is closed by the node; meanwhile the busy one keeps its connection.
    let closed = std::thread::spawn(move || {
        let closed = idle.recv().is_none();
        (closed, began.elapsed())
    });
    while began.elapsed() < Duration::from_millis(1_200) {
        assert_eq!(busy.get(b"k").as_deref(), Some(&b"v"[..]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (was_closed, after) = closed.join().unwrap();
    assert!(was_closed);
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
}

#[test]
fn a_client_that_never_reads_leaves_memory_bounded() {
    let node = Node::start(1, &[]);
    let value = vec![b'x'; 256 << 10];
    let mut setup = WireClient::connect(node.addr);
    setup.put(b"big", &value);
    let before = rss_bytes(node.pid());

    // Pipelined gets of the 256 KiB value, never reading a reply: unbounded, they would ask
    // the node for gigabytes of replies. Send until the node stops reading (the kernel's
    // buffers are full and the write times out).
    let mut batch = Vec::new();
    for id in 0..1_000 {
        let request = Request {
            id,
            ops: vec![op(OpCode::OpGet, b"big", b"", 0)],
            ..Request::default()
        };
        frame::encode(&request, &mut batch);
    }
    let mut slow = TcpStream::connect(node.addr).unwrap();
    slow.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (mut sent, limit) = (0usize, 256usize << 20);
    while sent < limit && slow.write_all(&batch).is_ok() {
        sent += batch.len();
    }
    assert!(sent < limit, "the node should stop reading from it");
    let sent_requests = sent / batch.len() * 1_000;

    // Other clients are served meanwhile.
    let mut other = WireClient::connect(node.addr);
    other.put(b"small", b"v");
    assert_eq!(other.get(b"small").as_deref(), Some(&b"v"[..]));
    let after = rss_bytes(node.pid());
    assert!(
        after < before + (64 << 20),
        "RSS grew from {before} to {after} bytes after {sent_requests} unread gets of 256 KiB"
    );
    drop(slow);
}

/// Two gRPC connections to a one-shard node with `--max-connections 1`: the second one's call
/// gets RESOURCE_EXHAUSTED, the first is still served.
const GRPC_REFUSAL: &str = r#"
import sys, grpc
addr = sys.argv[1]
def get(channel):
    call = channel.unary_unary("/distributed_cache.DistributedCache/Get",
        request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(b"\n\x01k", timeout=10)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details()
first = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
print("first", *get(first))
second = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
print("second", *get(second))
print("again", *get(first))
"#;

#[test]
fn grpc_connections_over_the_limit_get_resource_exhausted() {
    let python = common::python::python();
    let node = Node::start(1, &["--max-connections", "1"]);
    let out = Command::new(python)
        .args(["-c", GRPC_REFUSAL, &node.grpc.to_string()])
        .output()
        .expect("run python");
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("first NOT_FOUND"), "{text}");
    assert!(lines[1].starts_with("second RESOURCE_EXHAUSTED"), "{text}");
    assert!(lines[1].contains("--max-connections 1"), "{text}");
    assert!(lines[2].starts_with("again NOT_FOUND"), "{text}");
}
