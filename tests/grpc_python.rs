//! End to end: the Python suite in `tests/python` (grpcio stubs generated from `proto/`, as
//! clients generate them) against a real node and against a `kvmesh gateway` in front of it;
//! and the health check of a node that is still recovering its log.
//!
//! The suite runs in the venv of `common::python` (created the first time, reused afterwards).
//! pytest's whole output is shown when it fails.

mod common;

use common::python::pytest;
use common::{Gateway, Node};

#[test]
fn python_grpc_suite_on_a_node_and_a_gateway() {
    let node = Node::start(2, &["--id", "42"]);
    let gateway = Gateway::start(42, node.addr, &[]);
    let out = pytest(
        "tests/python",
        &[
            ("KVMESH_GRPC_ADDR", node.grpc.to_string()),
            ("KVMESH_GATEWAY_ADDR", gateway.grpc.to_string()),
            ("KVMESH_WIRE_ADDR", node.addr.to_string()),
            ("KVMESH_SHARDS", node.shards.to_string()),
        ],
    );
    let report = format!(
        "pytest:\n{}\n{}\nnode log:\n{}\ngateway log:\n{}",
        common::stdout(&out),
        common::stderr(&out),
        node.log(),
        gateway.log()
    );
    assert!(
        out.status.success(),
        "the Python gRPC suite failed\n{report}"
    );
    println!("{report}");
}

#[test]
fn health_is_not_serving_during_recovery_then_serving() {
    // The venv first: creating it (a machine's first run) can outlast the held node's start-up
    // deadline, which counts from its spawn below.
    common::python::python();
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().join("node");
    let data_arg = data_dir.to_str().expect("utf-8 temp path");
    let (key, value) = ("recovered-key", "recovered-value");
    {
        let node = Node::start(1, &["--data-dir", data_arg]);
        let mut wire = common::WireClient::connect(node.addr);
        wire.put(key.as_bytes(), value.as_bytes());
        // Dropping the node kills it (SIGKILL): the next start replays the log.
    }
    let ports = common::PortBlock::reserve(3);
    let release = data.path().join("release");
    let log = data.path().join("node.log");
    let mut node = common::spawn_node_with_env(
        ports.addr(),
        1,
        &["--data-dir", data_arg],
        &log,
        &[("KVMESH_TEST_HOLD_RECOVERY_UNTIL", release.as_os_str())],
    );
    let out = pytest(
        "tests/python/test_recovery_health.py",
        &[
            (
                "KVMESH_RECOVERING_GRPC_ADDR",
                common::grpc_addr(ports.addr(), 1).to_string(),
            ),
            ("KVMESH_RECOVERY_RELEASE", release.display().to_string()),
            ("KVMESH_RECOVERED_KEY", key.to_string()),
            ("KVMESH_RECOVERED_VALUE", value.to_string()),
        ],
    );
    let _ = node.kill();
    let _ = node.wait();
    let report = format!(
        "pytest:\n{}\n{}\nnode log:\n{}",
        common::stdout(&out),
        common::stderr(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        out.status.success() && common::stdout(&out).contains("1 passed"),
        "the recovery health test failed\n{report}"
    );
}
