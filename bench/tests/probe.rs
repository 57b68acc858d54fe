//! End to end: `kvmesh-bench probe-server` driven by the real `kvmesh-bench --target kvmesh`,
//! as `bench/compare.sh` drives it, with every request checked.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::bench;

/// The probe process, killed when dropped (a failing test included).
struct Probe {
    child: Child,
    addr: String,
}

impl Probe {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvmesh-bench"))
            .args(["probe-server", "--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the probe starts");
        let stderr = child.stderr.take().expect("piped");
        let mut probe = Self {
            child,
            addr: String::new(),
        };
        let mut line = String::new();
        BufReader::new(stderr)
            .read_line(&mut line)
            .expect("the probe writes its ready line");
        probe.addr = line
            .strip_prefix("probe ready: ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("not a ready line: {line:?}"))
            .to_string();
        probe
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drive(args: &[&str]) {
    let probe = Probe::start(args);
    for (pipeline, read_ratio) in [("1", "0.5"), ("16", "0.9")] {
        let report = bench(&[
            "--target",
            "kvmesh",
            "--addr",
            &probe.addr,
            "--requests",
            "5000",
            "--connections",
            "8",
            "--pipeline",
            pipeline,
            "--keys",
            "1000",
            "--read-ratio",
            read_ratio,
        ]);
        assert_eq!(report["requests"], 5000, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        // Every key was prefilled, so every GET finds its value.
        assert_eq!(report["hit_rate"], 1.0, "{report}");
    }
}

#[test]
fn epoll_probe_serves_the_kvmesh_target() {
    drive(&["--mode", "epoll"]);
}

#[test]
fn uring_probe_serves_the_kvmesh_target_with_either_task_work_setup() {
    drive(&["--mode", "uring", "--defer-taskrun", "true"]);
    drive(&["--mode", "uring", "--defer-taskrun", "false"]);
}
