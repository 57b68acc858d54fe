//! `kvmesh cluster`: flags for a local cluster (see `cluster::local`).

use std::path::PathBuf;

use clap::Args;

use crate::cluster::local::{self, Plan};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_name = "N")]
    nodes: usize,
    /// Shards per node. The shards of all nodes are pinned round-robin over the usable cores.
    #[arg(long, default_value_t = 1, value_name = "N")]
    shards: usize,
    /// Where the nodes keep their data: node i in DIR/node-i (kept across runs with the same
    /// --nodes and --shards).
    #[arg(long, default_value = "kvmesh-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// The first wire port to try; each node takes the next free block of shards+1 ports.
    #[arg(long, default_value_t = 7000, value_name = "PORT")]
    base_port: u16,
    /// The first gRPC port to try; each node takes the next free one.
    #[arg(long, default_value_t = 50051, value_name = "PORT")]
    grpc_base_port: u16,
    /// The cluster's name (--cluster of every node).
    #[arg(long, default_value = "local", value_name = "NAME")]
    cluster: String,
    /// More flags for every node, after `--`, e.g. `-- --fsync never --max-memory 256MiB`.
    #[arg(last = true, value_name = "NODE FLAGS")]
    node_args: Vec<String>,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<i32> {
    crate::node::raise_memlock().map_err(|e| anyhow::anyhow!(e))?;
    local::run(Plan {
        nodes: args.nodes,
        shards: args.shards,
        data_dir: args.data_dir,
        base_port: args.base_port,
        grpc_base_port: args.grpc_base_port,
        cluster: args.cluster,
        node_args: args.node_args,
    })
}
