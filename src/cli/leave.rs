//! `kvmesh leave`: retires a node from its cluster. The node's ranges stream to their new
//! owners while the cluster keeps serving; then it leaves the ring and exits. With `--id`, any
//! member removes node `ID`, which may be down: its ranges then stream from their other owners.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use kvmesh_proto::wire::{Op, OpCode, Status};

use crate::units::parse_duration;

#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// Any wire port of the node to retire; with `--id`, of any member.
    #[arg(long, value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// The id of the node to remove (it may be down), asked of the member at `--addr`.
    /// Default: the node at `--addr` leaves.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u32).range(1..))]
    id: Option<u32>,
    /// Leave even when fewer members than the replication factor would be left, or, for a
    /// node that is down at --replicas 1, when its keys are lost.
    #[arg(long)]
    force: bool,
    /// Give up on connecting, or on the node's answer, after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

/// Asks the node to leave (`OP_LEAVE` to its shard 0) until the change has begun; exits 0
/// then, 1 when it is refused. Another change running is waited out.
pub fn run(args: LeaveArgs) -> anyhow::Result<i32> {
    let give_up = std::time::Instant::now() + args.timeout;
    super::client::connected(args.addr, args.timeout, move |mut client| async move {
        let op = Op {
            code: OpCode::OpLeave as i32,
            force: args.force,
            leave_id: args.id.unwrap_or(0),
            ..Op::default()
        };
        let retry = [Status::Busy, Status::Unavailable];
        let result =
            super::propose::until_final(&mut client, give_up, &retry, |_| op.clone()).await?;
        if result.status() == Status::Ok {
            let then = match args.id {
                None => "its ranges stream to their new owners, then it exits",
                Some(_) => "its ranges stream to their new owners, then it is removed",
            };
            println!("{}; {then}", result.message);
            return Ok(0);
        }
        let status = result.status();
        eprintln!("kvmesh: leave refused ({status:?}): {}", result.message);
        Ok(1)
    })
}
