//! `kvmesh gateway`: flags, with their defaults and units, turned into a [`GatewayConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::gateway::config::{parse_peer, Peer};
use crate::gateway::{self, GatewayConfig};
use crate::units::{parse_duration, ByteSize};

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// gRPC address to serve (both services, health and reflection), on every thread.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    grpc: SocketAddr,
    /// The cluster's members, as each node's id and wire address (the nodes' own --peers list),
    /// e.g. `1=127.0.0.1:7000,2=127.0.0.1:7100`. The gateway learns the cluster through the
    /// first that answers and checks that its member list is this one.
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_peer, value_name = "ID=HOST:PORT,...")]
    peers: Vec<Peer>,
    /// Threads (glommio executors, unpinned) serving gRPC.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Bounds each connect to a node and each wait for its reply; past it the call answers
    /// UNAVAILABLE.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
    /// Largest gRPC message accepted or sent.
    #[arg(long, default_value = "17MiB", value_name = "SIZE")]
    grpc_max_message: ByteSize,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    gateway::run(GatewayConfig {
        grpc: args.grpc,
        peers: args.peers,
        executors: args.threads,
        timeout: args.timeout,
        grpc_max_message: usize::try_from(args.grpc_max_message.0).unwrap_or(usize::MAX),
    })
}
