//! The `kvmesh` command line: `node` runs a node, `cluster` a local cluster of nodes; `put`, `get`,
//! `remove` and `stats` talk to one.

mod client;
mod cluster;
mod node;

use clap::{Parser, Subcommand};

/// kvmesh: a distributed in-memory cache, one pinned shard per core.
#[derive(Parser, Debug)]
#[command(name = "kvmesh", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once per process: the size of the node's flags does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a node: one shard per core, serving the wire protocol.
    Node(node::NodeArgs),
    /// Run a local cluster: N node processes on loopback ports, data under ./kvmesh-data.
    Cluster(cluster::ClusterArgs),
    /// Store a value.
    Put(client::PutArgs),
    /// Print a key's value; exits with status 1 when the key is missing.
    Get(client::KeyArgs),
    /// Remove a key (succeeds whether or not it existed).
    Remove(client::KeyArgs),
    /// Show every shard's counters and the node's totals.
    Stats(client::StatsArgs),
}

/// Runs the command; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => node::run(args).map(|()| 0),
        Command::Cluster(args) => cluster::run(args),
        Command::Put(args) => client::put(args),
        Command::Get(args) => client::get(args),
        Command::Remove(args) => client::remove(args),
        Command::Stats(args) => client::stats(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmesh: error: {e:#}");
            2
        }
    }
}
