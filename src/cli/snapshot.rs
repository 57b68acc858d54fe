//! `kvmesh snapshot`: asks every shard of a node to write a snapshot now, and prints what
//! each wrote.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use kvmesh_proto::wire::{OpCode, SnapshotInfo, Status};

use crate::units::parse_duration;

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Any wire port of the node.
    #[arg(long, default_value = "127.0.0.1:7000", value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Give up on connecting, or on a shard's reply, after this long: a snapshot takes about
    /// a second per few million keys.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<i32> {
    super::client::connected(args.addr, args.timeout, move |mut client| async move {
        let shards = client.topology().shard_ports.len();
        let mut failed = 0;
        for shard in 0..shards {
            let op = kvmesh_net::client::op(OpCode::OpSnapshot, &[], &[], 0);
            let result = client
                .contacted_shard(shard)
                .await?
                .call(vec![op])
                .await?
                .pop();
            let Some(result) = result else {
                bail!("shard {shard} sent an empty reply");
            };
            match (result.status(), result.snapshot) {
                (Status::Ok, Some(info)) => {
                    writeln!(std::io::stdout().lock(), "{}", describe(&info))?
                }
                (status, _) => {
                    failed += 1;
                    eprintln!("kvmesh: shard {shard}: {status:?}: {}", result.message);
                }
            }
        }
        Ok(i32::from(failed > 0))
    })
}

fn describe(s: &SnapshotInfo) -> String {
    format!(
        "shard {}: wrote {} ({} entries, {} bytes, covers log seq < {}) in {} ms; removed {} \
         segment(s) and {} older snapshot(s)",
        s.shard,
        s.file,
        s.entries,
        s.bytes,
        s.covered_seq,
        s.elapsed_us / 1000,
        s.segments_removed,
        s.snapshots_removed
    )
}
