//! Test harness: free port blocks, real `kvmesh node` processes that are always stopped, the
//! CLI, and a small blocking wire client for sending exactly the bytes a test wants.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod membership;
pub mod python;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvmesh_net::frame;
use kvmesh_proto::wire::{Op, OpCode, OpResult, Request, Response, ShardStats, Status};

/// Generous, because a busy 2-core machine may be slow; tests poll, so a fast one is not slowed.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvmesh")
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A block of consecutive loopback ports reserved for one test: lock files keep concurrent test
/// processes apart, and a bind check skips ports that anything else holds. Below the kernel's
/// ephemeral range, so outgoing connections do not take them meanwhile.
pub struct PortBlock {
    pub base: u16,
    _locks: Vec<File>,
}

impl PortBlock {
    pub fn reserve(len: u16) -> PortBlock {
        let dir = std::env::temp_dir().join("kvmesh-test-ports");
        std::fs::create_dir_all(&dir).expect("create port lock dir");
        let mut seed = std::process::id() as u64 ^ nanos();
        for _ in 0..1000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let base = 20_000 + ((seed >> 33) % 12_000) as u16;
            if let Some(locks) = Self::try_block(&dir, base, len) {
                return PortBlock {
                    base,
                    _locks: locks,
                };
            }
        }
        panic!("no free block of {len} ports found");
    }

    fn try_block(dir: &std::path::Path, base: u16, len: u16) -> Option<Vec<File>> {
        let mut locks = Vec::new();
        for port in base..base + len {
            let file = File::create(dir.join(format!("{port}.lock"))).ok()?;
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return None;
            }
            TcpListener::bind(("127.0.0.1", port)).ok()?;
            locks.push(file);
        }
        Some(locks)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base))
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A running `kvmesh node`, killed when dropped (also when the test fails).
pub struct Node {
    pub addr: SocketAddr,
    /// The node's gRPC address: the port right after the shard ports, in the same block.
    pub grpc: SocketAddr,
    pub shards: usize,
    child: Child,
    log: PathBuf,
    /// Environment variables (test hooks) it starts with, again at each respawn.
    env: Vec<(String, std::ffi::OsString)>,
    _dir: tempfile::TempDir,
    _ports: PortBlock,
}

impl Node {
    /// Starts a node with `shards` shards on a fresh port block (wire port, shard ports, gRPC
    /// port), plus `extra` flags, and waits until it reports ready.
    pub fn start(shards: usize, extra: &[&str]) -> Node {
        let mut node = Node::spawn(PortBlock::reserve(shards as u16 + 2), shards, extra);
        node.wait_ready();
        node
    }

    /// Starts a node on `ports` (a block of `shards + 2`) without waiting for it.
    pub fn spawn(ports: PortBlock, shards: usize, extra: &[&str]) -> Node {
        Node::spawn_with_env(ports, shards, extra, &[])
    }

    /// [`Node::spawn`] with environment variables (test hooks), kept for [`Node::respawn`].
    pub fn spawn_with_env(
        ports: PortBlock,
        shards: usize,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("node.log");
        let addr = ports.addr();
        let child = spawn_node_with_env(addr, shards, extra, &log, env);
        Node {
            addr,
            grpc: grpc_addr(addr, shards),
            shards,
            child,
            log,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
            _dir: dir,
            _ports: ports,
        }
    }

    /// Waits until the node reports ready; panics with its log if it exits first.
    pub fn wait_ready(&mut self) {
        wait_for("the node to be ready", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node exited during start ({status}):\n{}", self.log());
            }
            self.log().contains(" ready: ").then_some(())
        });
    }

    /// Kills the node (SIGKILL) if it runs, and starts it again on the same ports with
    /// `extra` flags, without waiting for it. Its log starts afresh.
    pub fn respawn(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The node itself waits for the ports a killed process still holds for a moment
        // (see `check_ports_free`).
        let env: Vec<(&str, &std::ffi::OsStr)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_os_str()))
            .collect();
        self.child = spawn_node_with_env(self.addr, self.shards, extra, &self.log, &env);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn shard_addr(&self, shard: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.addr.port() + 1 + shard as u16))
    }

    /// Runs a CLI command against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(self.addr, args)
    }

    pub fn stats(&self) -> Vec<ShardStats> {
        (0..self.shards)
            .map(|i| {
                let mut c = WireClient::connect(self.shard_addr(i));
                let r = c.call(vec![op(OpCode::OpStats, b"", b"", 0)]);
                **r[0].stats.as_ref().expect("stats reply")
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        wait_for("the node to exit", || self.child.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a node started by [`spawn_node`] on `addr` serves gRPC: the port after its shard ports.
pub fn grpc_addr(addr: SocketAddr, shards: usize) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port() + 1 + shards as u16)
}

pub fn spawn_node(addr: SocketAddr, shards: usize, extra: &[&str], log: &std::path::Path) -> Child {
    spawn_node_with_env(addr, shards, extra, log, &[])
}

/// The cores a test node's `shards` are pinned to, unless its flags name some: dealt
/// round-robin over the cores this process may use, node after node, as `kvmesh cluster` deals
/// them. Left to itself every node pins its shard 0 to the first core, and the nodes of a test
/// binary's parallel tests (dozens on a 2-core machine) then all share that core while the
/// other one idles: enough to make a healthy node miss a 2 s hop timeout. With more shards than
/// cores a node runs unpinned, as it would by default.
fn dealt_cpus(shards: usize) -> Option<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let cores = usable_cores();
    if cores.is_empty() || shards > cores.len() {
        return None;
    }
    let first = NEXT.fetch_add(shards, std::sync::atomic::Ordering::Relaxed);
    let dealt: Vec<String> = (0..shards)
        .map(|s| cores[(first + s) % cores.len()].to_string())
        .collect();
    Some(dealt.join(","))
}

/// The cores in this process's affinity mask (empty if it cannot be read).
fn usable_cores() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, valid when zeroed.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; `mask` is valid for the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&mask), &mut mask) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the mask owned here, at an index below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &mask) })
        .collect()
}

/// [`spawn_node`] with extra environment variables (test hooks).
pub fn spawn_node_with_env(
    addr: SocketAddr,
    shards: usize,
    extra: &[&str],
    log: &std::path::Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> Child {
    let log_file = File::create(log).expect("create node log");
    let cpus = (!extra.contains(&"--cpus"))
        .then(|| dealt_cpus(shards))
        .flatten();
    Command::new(bin())
        .envs(env.iter().copied())
        .args([
            "node",
            "--listen",
            &addr.to_string(),
            "--shards",
            &shards.to_string(),
            "--grpc",
            &grpc_addr(addr, shards).to_string(),
        ])
        .args(extra)
        .args(cpus.iter().flat_map(|cpus| ["--cpus", cpus.as_str()]))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn kvmesh node")
}

pub fn cli(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["--addr", &addr.to_string(), "--timeout", "10s"])
        .stdin(Stdio::null())
        .output()
        .expect("run kvmesh")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn op(code: OpCode, key: &[u8], value: &[u8], ttl_ms: u64) -> Op {
    kvmesh_net::client::op(code, key, value, ttl_ms)
}

/// A blocking wire client for tests: plain std sockets, any bytes.
pub struct WireClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl WireClient {
    pub fn connect(addr: SocketAddr) -> WireClient {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        WireClient {
            stream,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next response, or `None` once the node has closed the connection.
    pub fn recv(&mut self) -> Option<Response> {
        loop {
            match frame::decode::<Response>(&self.buf, frame::DEFAULT_MAX_FRAME) {
                Ok(Some((response, used))) => {
                    self.buf.drain(..used);
                    return Some(response);
                }
                Ok(None) => {}
                Err(e) => panic!("node sent a bad frame: {e}"),
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from node: {e}"),
            }
        }
    }

    pub fn call(&mut self, ops: Vec<Op>) -> Vec<OpResult> {
        let id = self.next_id;
        self.next_id += 1;
        let mut bytes = Vec::new();
        frame::encode(
            &Request {
                id,
                ops,
                ..Request::default()
            },
            &mut bytes,
        );
        self.send_raw(&bytes);
        let response = self.recv().expect("node closed the connection");
        assert_eq!(response.id, id);
        assert_eq!(response.error(), Status::Ok, "{}", response.message);
        response.results
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let r = self.call(vec![op(OpCode::OpPut, key, value, 0)]);
        assert_eq!(r[0].status(), Status::Ok, "{}", r[0].message);
    }

    pub fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let mut r = self.call(vec![op(OpCode::OpGet, key, b"", 0)]);
        let r = r.remove(0);
        match r.status() {
            Status::Ok => Some(r.value),
            Status::NotFound => None,
            other => panic!("get failed: {other:?} {}", r.message),
        }
    }
}

/// A running `kvmesh gateway` forwarding to one node, killed when dropped.
pub struct Gateway {
    pub grpc: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _ports: PortBlock,
}

impl Gateway {
    /// Starts a gateway on a fresh port, forwarding to node `id` at wire address `node`, and
    /// waits until it reports ready.
    pub fn start(id: u32, node: SocketAddr, extra: &[&str]) -> Gateway {
        Gateway::start_peers(&format!("{id}={node}"), extra)
    }

    /// Starts a gateway on a fresh port in front of the members `peers` (ID=HOST:PORT,...).
    pub fn start_peers(peers: &str, extra: &[&str]) -> Gateway {
        let ports = PortBlock::reserve(1);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("gateway.log");
        let log_file = File::create(&log).expect("create gateway log");
        let grpc = ports.addr();
        let child = Command::new(bin())
            .args(["gateway", "--grpc", &grpc.to_string(), "--peers", peers])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn kvmesh gateway");
        let mut gateway = Gateway {
            grpc,
            child,
            log,
            _dir: dir,
            _ports: ports,
        };
        wait_for("the gateway to be ready", || {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("gateway exited during start ({status}):\n{}", gateway.log());
            }
            gateway.log().contains("gateway ready").then_some(())
        });
        gateway
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `GET path` over HTTP/1.1 (the node's `/metrics`); panics on anything but 200.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect over HTTP");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: kvmesh\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the HTTP reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}
