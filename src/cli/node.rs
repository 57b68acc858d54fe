//! `kvmesh node`: flags, with their defaults and units, turned into a [`NodeConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::node::{self, NodeConfig};
use crate::units::{parse_duration, ByteSize};

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Wire address served by every shard. Shard i also listens on PORT+1+i.
    #[arg(long, default_value = "127.0.0.1:7000", value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// Number of shards [default: one per --cpus entry, else one per usable core]. More shards
    /// than cores run unpinned.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Cores to pin shards to, in shard order, e.g. `0,1` [default: the online cores].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cpus: Vec<usize>,
    /// Memory the node may use for keys, values and per-entry overhead, split evenly across
    /// shards. Past it, the least recently used keys are evicted.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    max_memory: ByteSize,
    /// Node id carried by every version this node issues [default: random at each start, until
    /// durability keeps it in the data directory].
    #[arg(long, value_name = "ID")]
    id: Option<u32>,
    /// Largest key accepted.
    #[arg(long, default_value = "64KiB", value_name = "SIZE")]
    max_key_size: ByteSize,
    /// Largest value accepted.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    max_value_size: ByteSize,
    /// Largest wire frame accepted; must fit the largest key plus the largest value.
    #[arg(long, default_value = "17MiB", value_name = "SIZE")]
    max_frame: ByteSize,
    /// How long a shard waits for another shard to answer a forwarded request.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    forward_timeout: Duration,
    /// gRPC address (the `distributed_cache.DistributedCache` API) served by every shard.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    grpc: SocketAddr,
    /// Largest gRPC message accepted or sent; must fit the largest key plus the largest value.
    #[arg(long, default_value = "17MiB", value_name = "SIZE")]
    grpc_max_message: ByteSize,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let shards = match args.shards {
        Some(n) => n,
        None if !args.cpus.is_empty() => args.cpus.len(),
        None => node_default_shards()?,
    };
    let to_usize = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
    let config = NodeConfig {
        node_id: args.id.unwrap_or_else(random_id),
        listen: args.listen,
        shards,
        cpus: args.cpus,
        max_memory: args.max_memory.0,
        max_key_len: to_usize(args.max_key_size),
        max_value_len: to_usize(args.max_value_size),
        max_frame: to_usize(args.max_frame),
        forward_timeout: args.forward_timeout,
        grpc: args.grpc,
        grpc_max_message: to_usize(args.grpc_max_message),
    };
    node::run(config)
}

fn node_default_shards() -> anyhow::Result<usize> {
    Ok(node::usable_cpus().map_err(|e| anyhow::anyhow!(e))?.len())
}

/// A non-zero id that differs between starts.
fn random_id() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let seed = (std::process::id(), node::now_ms());
    (RandomState::new().hash_one(seed) as u32).max(1)
}
