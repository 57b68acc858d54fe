//! The `kvmesh` command line: `node` runs a node, `cluster` a local cluster of nodes, `gateway`
//! the standalone gRPC front-end; `put`, `get`, `remove`, `stats` and `snapshot` talk to a node.

mod abort;
mod client;
mod cluster;
mod gateway;
mod leave;
mod node;
mod propose;
mod snapshot;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// kvmesh: a distributed in-memory cache, one pinned shard per core.
#[derive(Parser, Debug)]
#[command(name = "kvmesh", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: one shard per core, serving the wire protocol.
    Node(Box<node::NodeArgs>),
    /// Run the gRPC front-end alone: holds no data, forwards every call to its node.
    Gateway(gateway::GatewayArgs),
    /// Run a local cluster: N node processes on loopback ports, data under ./kvmesh-data.
    Cluster(cluster::ClusterArgs),
    /// Store a value.
    Put(client::PutArgs),
    /// Print a key's value; exits with status 1 when the key is missing.
    Get(client::GetArgs),
    /// Remove a key (succeeds whether or not it existed).
    Remove(client::KeyArgs),
    /// Show every shard's counters and the node's totals.
    Stats(client::StatsArgs),
    /// Make every shard of a node write a snapshot now (needs a node with --data-dir).
    Snapshot(snapshot::SnapshotArgs),
    /// Retire a node from its cluster: its keys stream to their new owners, then it exits.
    Leave(leave::LeaveArgs),
    /// Roll back the running membership change (a join or leave that cannot finish).
    Abort(abort::AbortArgs),
}

/// The command line's definition. A flag given twice takes its last value, so that the
/// command line overrides `kvmesh node --config FILE` (see `config_file`).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("node", |node| node.args_override_self(true))
}

/// Runs the command; returns the process exit code.
pub fn main() -> i32 {
    let command = command();
    let argv = match crate::config_file::expand(std::env::args_os().collect(), &command) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("kvmesh: error: {e}");
            return 2;
        }
    };
    let matches = command.clone().get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(node) = matches.subcommand_matches("node") {
        if node.get_flag("print_config") {
            if let Some(definition) = command.find_subcommand("node") {
                print!("{}", crate::config_file::render(node, definition));
            }
            return 0;
        }
    }
    let result = match cli.command {
        Command::Node(args) => node::run(*args).map(|()| 0),
        Command::Gateway(args) => gateway::run(args).map(|()| 0),
        Command::Cluster(args) => cluster::run(args),
        Command::Put(args) => client::put(args),
        Command::Get(args) => client::get(args),
        Command::Remove(args) => client::remove(args),
        Command::Stats(args) => client::stats(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Leave(args) => leave::run(args),
        Command::Abort(args) => abort::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`kvmesh stats | head`): what it wanted was written.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("kvmesh: error: {e:#}");
            2
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
