//! Several `kvmesh node` processes forming one cluster: one reserved port block and one data
//! directory per node, every process killed when the `Cluster` drops.

use std::net::SocketAddr;

use super::{Node, PortBlock};

pub struct Cluster {
    /// Node `i + 1` (its `--id`) is `nodes[i]`.
    pub nodes: Vec<Node>,
    pub peers: String,
    /// Each node's flags, for restarting it.
    args: Vec<Vec<String>>,
    /// The nodes' data directories; removed after the nodes are killed (fields drop in order).
    _data: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` nodes of `shards` shards in cluster `test`, durable (`--fsync never`, to
    /// keep a busy machine's tests quick), plus `extra` flags, and waits until all are ready.
    pub fn start(n: usize, shards: usize, extra: &[&str]) -> Cluster {
        Self::start_with(n, shards, |_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// As [`Cluster::start`], with `flags(id)` added to node `id`'s command line.
    pub fn start_with(n: usize, shards: usize, flags: impl Fn(usize) -> Vec<String>) -> Cluster {
        Self::start_with_env(n, shards, flags, &[])
    }

    /// As [`Cluster::start_with`], every node started with the environment variables `env`
    /// (test hooks).
    pub fn start_with_env(
        n: usize,
        shards: usize,
        flags: impl Fn(usize) -> Vec<String>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Cluster {
        let blocks: Vec<PortBlock> = (0..n)
            .map(|_| PortBlock::reserve(shards as u16 + 2))
            .collect();
        let peers: Vec<String> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{}={}", i + 1, b.addr()))
            .collect();
        let peers = peers.join(",");
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        let mut data_dirs = Vec::with_capacity(n);
        let mut all_args = Vec::with_capacity(n);
        for (i, block) in blocks.into_iter().enumerate() {
            let id = (i + 1).to_string();
            let data = tempfile::tempdir().expect("temp data dir");
            let extra = flags(i + 1);
            let mut args: Vec<String> = ["--id", &id, "--peers", &peers, "--fsync", "never"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if !extra.iter().any(|f| f == "--cluster") {
                args.extend(["--cluster".to_string(), "test".to_string()]);
            }
            args.push("--data-dir".into());
            args.push(data.path().display().to_string());
            data_dirs.push(data);
            args.extend(extra);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Node::spawn_with_env(block, shards, &argv, env));
            all_args.push(args);
        }
        for node in &mut nodes {
            node.wait_ready();
        }
        Cluster {
            nodes,
            peers,
            args: all_args,
            _data: data_dirs,
        }
    }

    /// Kills node `id` (SIGKILL) and starts it again with the same flags and data; waits
    /// until it is ready.
    pub fn restart(&mut self, id: usize) {
        let argv: Vec<&str> = self.args[id - 1].iter().map(String::as_str).collect();
        self.nodes[id - 1].respawn(&argv);
        self.nodes[id - 1].wait_ready();
    }

    /// Kills node `id` (SIGKILL), empties its data directory and starts it again with the
    /// same flags, without waiting for it: a node whose disk was replaced.
    pub fn wipe_and_respawn(&mut self, id: usize) {
        self.kill(id);
        let dir = self._data[id - 1].path();
        for entry in std::fs::read_dir(dir).expect("the data dir") {
            let path = entry.expect("a data dir entry").path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        let argv: Vec<&str> = self.args[id - 1].iter().map(String::as_str).collect();
        self.nodes[id - 1].respawn(&argv);
    }

    /// Kills node `id` with SIGKILL and waits until it is gone; [`Cluster::restart`] starts
    /// it again.
    pub fn kill(&mut self, id: usize) {
        self.nodes[id - 1].signal_and_wait(libc::SIGKILL);
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let logs: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {} ---\n{}", i + 1, n.log()))
            .collect();
        logs.join("\n")
    }
}
