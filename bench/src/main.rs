//! `kvmesh-bench`: kvmesh's load generator.
//!
//! It drives a kvmesh node (wire protocol, straight to each key's owning shard, or its gRPC
//! API) or redis-server (RESP) with the same machinery: glommio client workers, one per client core,
//! each driving its share of the connections with `--pipeline` requests in flight, closed loop
//! or open loop (`--rate`, coordinated-omission corrected). Latencies go to one hdrhistogram
//! per worker, merged at the end. See `--help`, and `bench/compare.sh` for the side-by-side
//! comparison with Redis.
//!
//! Thread model: the main thread plans, starts the workers, prints progress and the report;
//! each worker thread owns its connections and recorder and shares nothing but the
//! [`gate::Gate`] and a channel of progress ticks.

mod args;
mod codec;
mod conn;
mod feed;
mod fsync_probe;
mod gate;
mod pacer;
mod plan;
mod probe;
mod procstat;
mod progress;
mod report;
mod resp;
mod run;
mod sampler;
mod stats;
mod sys;
mod table;
mod target_grpc;
mod target_kvmesh;
mod target_redis;
mod units;
mod worker;
mod workload;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Table(table)) => table::run(table),
        Some(Command::FreePort { count }) => sys::free_ports(count).map(|port| println!("{port}")),
        Some(Command::FsyncProbe(probe)) => fsync_probe::run(probe),
        Some(Command::ProbeServer(args)) => probe::run(args),
        None => sys::raise_memlock().and_then(|()| run::run(cli.run)),
    };
    if let Err(e) = result {
        eprintln!("kvmesh-bench: {e:#}");
        std::process::exit(1);
    }
}
