//! The `kvmesh` binary: thin wiring over the node and the CLI.

mod cli;
mod cluster;
mod grpc;
mod node;
mod units;

fn main() {
    std::process::exit(cli::main());
}
