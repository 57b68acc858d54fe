//! The `kvmesh` binary: thin wiring over the node and the CLI.

mod cli;
mod cluster;
mod config_file;
mod gateway;
mod grpc;
mod logging;
mod metrics;
mod node;
mod units;

fn main() {
    std::process::exit(cli::main());
}
