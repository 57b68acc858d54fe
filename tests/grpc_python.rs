//! End to end: the Python suite in `tests/python` (grpcio stubs generated from `proto/`, as
//! clients generate them) against a real node and against a `kvmesh gateway` in front of it;
//! and the health check of a node that is still recovering its log.
//!
//! The suite runs in a venv at `target/pyenv`, which `tests/python/ensure_venv.sh` creates the
//! first time (pip installs `tests/python/requirements.txt`) and reuses afterwards; concurrent
//! callers take turns on a lock file. pytest's whole output is shown when it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Gateway, Node};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/pyenv`, or the same place under `CARGO_TARGET_DIR`.
fn venv() -> PathBuf {
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    target_tmp.parent().expect("target dir").join("pyenv")
}

fn ensure_venv() -> PathBuf {
    let venv = venv();
    let out = Command::new("bash")
        .arg(repo().join("tests/python/ensure_venv.sh"))
        .arg(&venv)
        .output()
        .expect("run tests/python/ensure_venv.sh");
    assert!(
        out.status.success(),
        "could not create the Python venv at {}:\n{}\n{}",
        venv.display(),
        common::stdout(&out),
        common::stderr(&out)
    );
    venv
}

fn pytest(venv: &Path) -> Command {
    let mut command = Command::new(venv.join("bin/python"));
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(repo());
    command
}

#[test]
fn python_grpc_suite_on_a_node_and_a_gateway() {
    let venv = ensure_venv();
    let node = Node::start(2, &["--id", "42"]);
    let gateway = Gateway::start(42, node.addr, &[]);
    let out = pytest(&venv)
        .arg("tests/python")
        .env("KVMESH_GRPC_ADDR", node.grpc.to_string())
        .env("KVMESH_GATEWAY_ADDR", gateway.grpc.to_string())
        .env("KVMESH_WIRE_ADDR", node.addr.to_string())
        .env("KVMESH_SHARDS", node.shards.to_string())
        .output()
        .expect("run pytest");
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
    let venv = ensure_venv();
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
    let out = pytest(&venv)
        .arg("tests/python/test_recovery_health.py")
        .env(
            "KVMESH_RECOVERING_GRPC_ADDR",
            common::grpc_addr(ports.addr(), 1).to_string(),
        )
        .env("KVMESH_RECOVERY_RELEASE", &release)
        .env("KVMESH_RECOVERED_KEY", key)
        .env("KVMESH_RECOVERED_VALUE", value)
        .output()
        .expect("run pytest");
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
