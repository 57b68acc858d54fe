//! Shared by the bench's end-to-end tests: running the real `kvmesh-bench` binary.

use std::process::Command;

/// Runs the bench with `args` and returns its JSON report.
pub fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmesh-bench"))
        .args(args)
        .args(["--json", "--warmup", "0"])
        .output()
        .expect("kvmesh-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kvmesh-bench failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}
