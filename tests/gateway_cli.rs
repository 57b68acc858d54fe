//! `kvmesh gateway` start-up: what it refuses, with a clear message, before serving anything.
//! (Serving through it is covered by the Python suite, run against a gateway by grpc_python.rs.)

mod common;

use std::process::{Command, Stdio};

fn gateway(args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .arg("gateway")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvmesh gateway")
}

#[test]
fn refuses_a_node_named_twice() {
    let ports = common::PortBlock::reserve(1);
    let out = gateway(&[
        "--grpc",
        &ports.addr().to_string(),
        "--peers",
        "1=127.0.0.1:7000,1=127.0.0.1:7100",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("names node 1 twice"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn refuses_a_malformed_peer_and_a_taken_port() {
    let ports = common::PortBlock::reserve(1);
    let grpc = ports.addr().to_string();
    let out = gateway(&["--grpc", &grpc, "--peers", "127.0.0.1:7000"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("ID=HOST:PORT"),
        "{}",
        common::stderr(&out)
    );
    let _taken = std::net::TcpListener::bind(ports.addr()).expect("bind");
    let out = gateway(&["--grpc", &grpc, "--peers", "1=127.0.0.1:7000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("already in use"),
        "{}",
        common::stderr(&out)
    );
}
