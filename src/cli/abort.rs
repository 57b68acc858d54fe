//! `kvmesh abort`: rolls back the running membership change, through any member. The topology
//! goes back to the change's old members at a new epoch; a joining node stops; copies already
//! streamed to nodes that own nothing under the old ring are dropped.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use kvmesh_proto::wire::{Op, OpCode, Status};

use crate::units::parse_duration;

#[derive(Args, Debug)]
pub struct AbortArgs {
    /// Any wire port of any member.
    #[arg(long, value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Give up on connecting, or on the node's answer, after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

/// Asks the member to abort the running change (`OP_ABORT` to its shard 0) until it is
/// agreed; exits 0 then, 1 when it is refused (no change runs, or it finished first).
pub fn run(args: AbortArgs) -> anyhow::Result<i32> {
    let give_up = std::time::Instant::now() + args.timeout;
    super::client::connected(args.addr, args.timeout, move |mut client| async move {
        // A retry names the change the first attempt was about, so it is answered OK when
        // that abort committed meanwhile, and never aborts a later change.
        let mut abort_epoch = 0;
        let result =
            super::propose::until_final(&mut client, give_up, &[Status::Unavailable], |previous| {
                if let (0, Some(previous)) = (abort_epoch, previous) {
                    abort_epoch = previous.moved_epoch;
                }
                Op {
                    code: OpCode::OpAbort as i32,
                    abort_epoch,
                    ..Op::default()
                }
            })
            .await?;
        if result.status() == Status::Ok {
            println!("{}", result.message);
            return Ok(0);
        }
        let status = result.status();
        eprintln!("kvmesh: abort refused ({status:?}): {}", result.message);
        Ok(1)
    })
}
