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
