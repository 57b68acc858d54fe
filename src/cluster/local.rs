//! `kvmesh cluster`: a local cluster of `kvmesh node` processes (this same binary, re-run) on
//! loopback ports, each with its own data directory, stopped together.
//!
//! The ports are found by trying to bind them ([`plan_ports`] is the pure part): node `i`'s
//! wire port and shard ports form one block of free ports, the first at or above
//! `--base-port` after the previous node's; its gRPC port likewise from `--grpc-base-port`.
//! The nodes run in their own process group, so a Ctrl-C reaches them once, from here: this
//! process passes SIGINT or SIGTERM on to every node and waits for all of them. Should this
//! process die without that, the kernel sends each node SIGTERM (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How long every node together may take to start (recovery included).
const START_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

/// What `kvmesh cluster` was asked for.
#[derive(Clone, Debug)]
pub struct Plan {
    pub nodes: usize,
    pub shards: usize,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub grpc_base_port: u16,
    pub cluster: String,
    /// More flags for every node (e.g. `--fsync never`).
    pub node_args: Vec<String>,
}

/// One node's ports: its wire port (shard `s` on `wire + 1 + s`) and its gRPC port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    pub wire: u16,
    pub grpc: u16,
}

/// Picks ports for `nodes` nodes of `shards` shards: per node a run of `shards + 1`
/// consecutive ports that `is_free` accepts, at or above `base` and above the previous node's,
/// and one gRPC port from `grpc_base` up, never one of the wire ports.
pub fn plan_ports(
    nodes: usize,
    shards: usize,
    base: u16,
    grpc_base: u16,
    is_free: impl Fn(u16) -> bool,
) -> Result<Vec<NodePorts>, String> {
    let width = shards as u32 + 1;
    let mut taken: Vec<u16> = Vec::new();
    let mut plan = Vec::with_capacity(nodes);
    let (mut next_wire, mut next_grpc) = (u32::from(base), u32::from(grpc_base));
    let usable = |p: u32, taken: &[u16]| {
        p <= u32::from(u16::MAX) && !taken.contains(&(p as u16)) && is_free(p as u16)
    };
    for node in 1..=nodes {
        let wire = loop {
            if next_wire + width - 1 > u32::from(u16::MAX) {
                return Err(format!(
                    "no {width} free consecutive ports at or above {base} for node {node}"
                ));
            }
            match (0..width).find(|&k| !usable(next_wire + k, &taken)) {
                None => break next_wire,
                Some(k) => next_wire += k + 1,
            }
        };
        taken.extend((wire..wire + width).map(|p| p as u16));
        next_wire = wire + width;
        while !usable(next_grpc, &taken) {
            next_grpc += 1;
            if next_grpc > u32::from(u16::MAX) {
                return Err(format!(
                    "no free gRPC port at or above {grpc_base} for node {node}"
                ));
            }
        }
        taken.push(next_grpc as u16);
        plan.push(NodePorts {
            wire: wire as u16,
            grpc: next_grpc as u16,
        });
        next_grpc += 1;
    }
    Ok(plan)
}

/// The cores for node `i` (0-based): shards of all nodes dealt round-robin over `cpus`, so
/// three nodes on two cores do not all sit on core 0.
pub fn node_cpus(i: usize, shards: usize, cpus: &[usize]) -> Vec<usize> {
    (0..shards)
        .map(|s| cpus[(i * shards + s) % cpus.len()])
        .collect()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

struct Running {
    id: usize,
    child: Child,
    status: Option<std::process::ExitStatus>,
}

/// Starts the cluster, prints its addresses, and runs until SIGINT or SIGTERM (passed on to
/// the nodes) or until every node has exited. A node that fails to start stops the others; one
/// that exits later is reported and the others keep running. Returns the exit code: 0 when
/// every node stopped cleanly after a signal.
pub fn run(plan: Plan) -> anyhow::Result<i32> {
    if plan.nodes == 0 || plan.shards == 0 {
        bail!("--nodes and --shards must be at least 1");
    }
    let ports = plan_ports(
        plan.nodes,
        plan.shards,
        plan.base_port,
        plan.grpc_base_port,
        port_is_free,
    )
    .map_err(|e| anyhow!(e))?;
    let cpus = crate::node::usable_cpus().map_err(|e| anyhow!(e))?;
    let exe = std::env::current_exe().context("cannot find this program to start the nodes")?;
    let addr = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}={}", i + 1, addr(p.wire)))
        .collect();
    let peers = peers.join(",");

    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = Arc::new(AtomicBool::new(false));
        // A second signal while stopping exits at once (the nodes then stop on their own signal).
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(sig, flag).context("cannot install signal handlers")?;
    }

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut nodes = Vec::with_capacity(plan.nodes);
    let mut relays = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let id = i + 1;
        let dir = plan.data_dir.join(format!("node-{id}"));
        let cpu_list: Vec<String> = node_cpus(i, plan.shards, &cpus)
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut command = Command::new(&exe);
        command
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--listen", &addr(p.wire).to_string()])
            .args(["--grpc", &addr(p.grpc).to_string()])
            .args(["--shards", &plan.shards.to_string()])
            .args(["--cpus", &cpu_list.join(",")])
            .args(["--peers", &peers])
            .args(["--cluster", &plan.cluster])
            .arg("--data-dir")
            .arg(&dir)
            .args(&plan.node_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal reaches this process only, which
            // passes it on once.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to the
        // node if this process dies first (even by SIGKILL), so no node outlives it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                stop_all(&mut nodes, libc::SIGTERM);
                bail!("cannot start node {id}: {e}");
            }
        };
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let ready = ready_tx.clone();
            relays.push(std::thread::spawn(move || relay(id, out, ready)));
        }
        nodes.push(Running {
            id,
            child,
            status: None,
        });
    }
    drop(ready_tx);

    // Wait until every node is ready, a node fails, or we are told to stop.
    let start = Instant::now();
    let mut ready = vec![false; plan.nodes];
    let mut failed = None;
    while !ready.iter().all(|r| *r) {
        if let Ok(id) = ready_rx.recv_timeout(POLL) {
            ready[id - 1] = true;
        }
        if signal.load(Ordering::Relaxed) != 0 {
            break;
        }
        if let Some(n) = reap(&mut nodes) {
            failed = Some(format!("node {} exited during start ({})", n.0, n.1));
            break;
        }
        if start.elapsed() > START_DEADLINE {
            failed = Some(format!(
                "not every node was ready within {START_DEADLINE:?}"
            ));
            break;
        }
    }
    if failed.is_none() && signal.load(Ordering::Relaxed) == 0 {
        print_summary(&plan, &ports);
        // A node that dies is reported and the others keep serving (its keys are unavailable
        // until it is back): a local cluster is where one tries that out.
        while signal.load(Ordering::Relaxed) == 0 {
            if let Some((id, status)) = reap(&mut nodes) {
                eprintln!("kvmesh: node {id} exited ({status}); the others keep running");
                if nodes.iter().all(|n| n.status.is_some()) {
                    failed = Some("every node has exited".into());
                    break;
                }
            }
            std::thread::sleep(POLL);
        }
    }
    let sig = match signal.load(Ordering::Relaxed) {
        0 => libc::SIGTERM,
        s => s as i32,
    };
    if let Some(why) = &failed {
        eprintln!("kvmesh: {why}");
    }
    stop_all(&mut nodes, sig);
    for relay in relays {
        let _ = relay.join();
    }
    let clean = nodes.iter().all(|n| n.status.is_some_and(|s| s.success()));
    for node in nodes
        .iter()
        .filter(|n| !n.status.is_some_and(|s| s.success()))
    {
        if let Some(status) = node.status {
            eprintln!("kvmesh: node {} ended with {status}", node.id);
        }
    }
    eprintln!("kvmesh: cluster stopped");
    Ok(if failed.is_none() && clean { 0 } else { 2 })
}

/// Copies a node's output to ours, line by line, prefixed with its id; reports readiness.
fn relay(id: usize, out: Box<dyn std::io::Read + Send>, ready: mpsc::Sender<usize>) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { return };
        if line.contains(" ready: ") {
            let _ = ready.send(id);
        }
        eprintln!("[node {id}] {line}");
    }
}

/// The first node found to have exited, with its status.
fn reap(nodes: &mut [Running]) -> Option<(usize, std::process::ExitStatus)> {
    for node in nodes.iter_mut().filter(|n| n.status.is_none()) {
        if let Ok(Some(status)) = node.child.try_wait() {
            node.status = Some(status);
            return Some((node.id, status));
        }
    }
    None
}

/// Sends `signal` to every node still running and waits for each to exit.
fn stop_all(nodes: &mut [Running], signal: i32) {
    for node in nodes.iter().filter(|n| n.status.is_none()) {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(node.child.id() as i32, signal) };
    }
    for node in nodes.iter_mut().filter(|n| n.status.is_none()) {
        node.status = node.child.wait().ok();
    }
}

fn print_summary(plan: &Plan, ports: &[NodePorts]) {
    println!(
        "kvmesh: cluster {:?} of {} node(s) ready ({} shard(s) each); Ctrl-C stops it",
        plan.cluster, plan.nodes, plan.shards
    );
    println!("{:<6} {:<21} {:<21} data", "node", "wire", "gRPC");
    for (i, p) in ports.iter().enumerate() {
        println!(
            "{:<6} {:<21} {:<21} {}",
            i + 1,
            format!("127.0.0.1:{}", p.wire),
            format!("127.0.0.1:{}", p.grpc),
            display(&plan.data_dir.join(format!("node-{}", i + 1)))
        );
    }
    println!(
        "try: kvmesh put greeting hello --addr 127.0.0.1:{0}; kvmesh stats --addr 127.0.0.1:{0}",
        ports[0].wire
    );
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_skip_what_is_taken_and_never_overlap() {
        let all_free = plan_ports(3, 2, 7000, 50051, |_| true).unwrap();
        assert_eq!(
            all_free,
            vec![
                NodePorts {
                    wire: 7000,
                    grpc: 50051
                },
                NodePorts {
                    wire: 7003,
                    grpc: 50052
                },
                NodePorts {
                    wire: 7006,
                    grpc: 50053
                },
            ]
        );
        // 7001 and 50052 are taken: node 1 moves past 7001, node 2's gRPC past 50052.
        let busy = plan_ports(2, 1, 7000, 50051, |p| p != 7001 && p != 50052).unwrap();
        assert_eq!(
            busy,
            vec![
                NodePorts {
                    wire: 7002,
                    grpc: 50051
                },
                NodePorts {
                    wire: 7004,
                    grpc: 50053
                },
            ]
        );
        // gRPC ports never land on a wire port.
        let shared = plan_ports(2, 1, 7000, 7000, |_| true).unwrap();
        assert_eq!(shared[0].grpc, 7002);
        assert_eq!(
            shared[1],
            NodePorts {
                wire: 7003,
                grpc: 7005
            }
        );
        assert!(plan_ports(1, 3, 65534, 50051, |_| true).is_err());
    }

    #[test]
    fn shards_are_dealt_over_the_cores() {
        assert_eq!(node_cpus(0, 1, &[0, 1]), vec![0]);
        assert_eq!(node_cpus(1, 1, &[0, 1]), vec![1]);
        assert_eq!(node_cpus(2, 1, &[0, 1]), vec![0]);
        assert_eq!(node_cpus(1, 2, &[0, 1, 2]), vec![2, 0]);
    }
}
