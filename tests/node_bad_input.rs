//! End to end: garbage on the wire is answered or cut off, and the node keeps serving.

mod common;

use common::{op, Node, WireClient};
use kvmesh_net::frame;
use kvmesh_proto::wire::{OpCode, Request, Status};

/// After each abuse, an ordinary client must still be served.
fn still_serves(node: &Node) {
    let mut c = WireClient::connect(node.addr);
    c.put(b"canary", b"alive");
    assert_eq!(c.get(b"canary").as_deref(), Some(&b"alive"[..]));
}

#[test]
fn random_bytes_get_an_error_and_a_close() {
    let node = Node::start(2, &[]);
    let mut c = WireClient::connect(node.addr);
    // A small length, then bytes that are not a protobuf Request.
    c.send_raw(&[0, 0, 0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    let reply = c.recv().expect("an error reply before the close");
    assert_eq!(reply.error(), Status::MalformedFrame, "{}", reply.message);
    assert!(c.recv().is_none(), "connection closed");
    still_serves(&node);
}

#[test]
fn largest_length_prefix_is_refused_without_allocating() {
    let node = Node::start(2, &[]);
    let mut c = WireClient::connect(node.addr);
    c.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let reply = c.recv().expect("an error reply before the close");
    assert_eq!(reply.error(), Status::FrameTooLarge);
    assert!(reply.message.contains("4294967295"), "{}", reply.message);
    assert!(c.recv().is_none(), "connection closed");
    still_serves(&node);
}

#[test]
fn truncated_frame_then_disconnect() {
    let node = Node::start(2, &[]);
    let errors_before: u64 = node.stats().iter().map(|s| s.protocol_errors).sum();
    {
        let mut c = WireClient::connect(node.addr);
        let mut bytes = Vec::new();
        frame::encode(
            &Request {
                id: 1,
                ops: vec![op(OpCode::OpPut, b"k", &[7; 100], 0)],
                ..Request::default()
            },
            &mut bytes,
        );
        c.send_raw(&bytes[..bytes.len() / 2]);
        // The peer vanishes mid-request.
    }
    common::wait_for("the truncated frame to be counted", || {
        let errors: u64 = node.stats().iter().map(|s| s.protocol_errors).sum();
        (errors > errors_before).then_some(())
    });
    let mut c = WireClient::connect(node.addr);
    assert_eq!(c.get(b"k"), None, "a half-received put is never applied");
    still_serves(&node);
}

#[test]
fn unknown_operation_gets_an_error_and_the_connection_stays_usable() {
    let node = Node::start(2, &[]);
    let mut c = WireClient::connect(node.addr);
    let mut unknown = op(OpCode::OpGet, b"k", b"", 0);
    unknown.code = 77;
    let results = c.call(vec![unknown, op(OpCode::OpPut, b"k", b"v", 0)]);
    assert_eq!(results[0].status(), Status::UnknownOperation);
    assert!(results[0].message.contains("77"));
    assert_eq!(
        results[1].status(),
        Status::Ok,
        "the rest of the batch still runs"
    );
    assert_eq!(c.get(b"k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn oversized_key_and_value_are_refused_clearly() {
    let node = Node::start(2, &["--max-key-size", "1KiB", "--max-value-size", "4KiB"]);
    let mut c = WireClient::connect(node.addr);
    let results = c.call(vec![
        op(OpCode::OpPut, &[b'k'; 1025], b"v", 0),
        op(OpCode::OpGet, &[b'k'; 1025], b"", 0),
        op(OpCode::OpPut, b"k", &[b'v'; 4097], 0),
    ]);
    for r in &results {
        assert_eq!(r.status(), Status::InvalidArgument, "{}", r.message);
    }
    assert!(
        results[0].message.contains("1025"),
        "{}",
        results[0].message
    );
    assert!(
        results[2].message.contains("4097"),
        "{}",
        results[2].message
    );
    still_serves(&node);
}

#[test]
fn second_node_on_the_same_port_fails_clearly() {
    let mut first = Node::start(2, &[]);
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut second = common::spawn_node(first.addr, 2, &[], log.path());
    let status = common::wait_for("the second node to give up", || {
        second.try_wait().ok().flatten()
    });
    assert!(!status.success());
    let message = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(message.contains("already in use"), "{message}");
    assert!(first.is_running());
    still_serves(&first);
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let mut node = Node::start(2, &[]);
    still_serves(&node);
    let status = node.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "exit status {status}: {}", node.log());
    assert!(node.log().contains("stopped"), "{}", node.log());
}
