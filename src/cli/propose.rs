//! Asking a member for a topology change until it answers for good: what `kvmesh leave` and
//! `kvmesh abort` share.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use kvmesh_net::Client;
use kvmesh_proto::wire::{Op, OpResult, Status};

/// How long to wait before asking again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Sends `op` to the member's shard 0, built from the previous answer (`None` the first time),
/// and asks again every [`RETRY_EVERY`] while the answer's status is one of `retry` and
/// `give_up` has not passed, printing each such answer as "not yet". Returns the last answer:
/// OK, a refusal, or a retryable status once time ran out.
pub async fn until_final(
    client: &mut Client,
    give_up: Instant,
    retry: &[Status],
    mut op: impl FnMut(Option<&OpResult>) -> Op,
) -> anyhow::Result<OpResult> {
    let mut previous = None;
    loop {
        let result = client
            .contacted_shard(0)
            .await?
            .call(vec![op(previous.as_ref())])
            .await?
            .pop()
            .ok_or_else(|| anyhow!("the node sent an empty reply"))?;
        if !retry.contains(&result.status()) || Instant::now() >= give_up {
            return Ok(result);
        }
        eprintln!("kvmesh: not yet: {}", result.message);
        previous = Some(result);
        glommio::timer::sleep(RETRY_EVERY).await;
    }
}
