//! End to end: `kvmesh node --config FILE`, its errors, and `--print-config`.

mod common;

use std::process::{Command, Stdio};

use common::{bin, stderr, stdout, wait_for, Node, WireClient};
use kvmesh_proto::wire::{OpCode, Status};

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvmesh.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

/// Runs `kvmesh node ARGS` that must finish on its own (an error, or --print-config).
fn node_output(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("node")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("kvmesh node to exit", || child.try_wait().ok().flatten());
    child.wait_with_output().unwrap()
}

#[test]
fn a_node_takes_its_settings_from_the_file_and_flags_override_it() {
    let (_dir, path) = write_config(
        "# a comment\nmax-memory = \"64MiB\"\nmax_key_size = \"1KiB\"\nforward-timeout = \"3s\"\n\
         listen = \"127.0.0.1:1\"\n",
    );
    // The harness's --listen, --shards and --grpc on the command line override the file's.
    let node = Node::start(2, &["--config", &path]);
    let stats = node.stats();
    assert_eq!(stats.iter().map(|s| s.max_bytes).sum::<u64>(), 64 << 20);
    let mut c = WireClient::connect(node.addr);
    let r = c.call(vec![common::op(OpCode::OpPut, &[b'k'; 2000], b"v", 0)]);
    assert_eq!(r[0].status(), Status::InvalidArgument);
    assert!(r[0].message.contains("1024"), "{}", r[0].message);
    c.put(b"small", b"v");
    assert!(node.log().contains("max memory 64MiB"), "{}", node.log());
}

#[test]
fn a_bad_config_file_names_every_problem_and_fails() {
    let (_dir, path) = write_config(
        "max-memory = \"lots\"\nbogus-flag = 1\nfsync = \"sometimes\"\nshards = [1, { a = 2 }]\n",
    );
    let out = node_output(&["--config", &path]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "max-memory",
        "lots",
        "bogus-flag",
        "fsync",
        "sometimes",
        "shards",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
    assert_eq!(
        err.matches(&path).count(),
        4,
        "one line per problem:\n{err}"
    );

    // Values that parse but do not fit together are caught at start, one line each.
    let (_dir, path) = write_config("max-frame = \"1KiB\"\nshutdown-timeout = \"0s\"\n");
    let out = node_output(&["--config", &path, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for want in ["--max-frame", "--shutdown-timeout", "explicit port"] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }

    let (_dir, path) = write_config("listen = [\n");
    let out = node_output(&["--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not valid TOML"), "{}", stderr(&out));
}

#[test]
fn a_missing_config_file_fails_clearly() {
    let out = node_output(&["--config", "/no/such/kvmesh.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read the config file /no/such/kvmesh.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let (dir, path) = write_config("max-memory = \"2GiB\"\nshards = 3\nidle-timeout = \"5m\"\n");
    let out = node_output(&["--config", &path, "--shards", "2", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    for want in [
        "max-memory = \"2GiB\"",
        "shards = 2",
        "idle-timeout = \"5m\"",
        "listen = \"127.0.0.1:7000\"",
        "shutdown-timeout = \"10s\"",
        "# data-dir = (not set)",
    ] {
        assert!(printed.contains(want), "{want} in:\n{printed}");
    }
    // It reads back as a config file.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let out = node_output(&["--config", again.to_str().unwrap(), "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), printed);
}
