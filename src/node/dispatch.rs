//! Executes a batch of ops arriving at one shard, whatever the front-end: the ops this shard
//! owns run here, the rest go to their owners over the mesh, batched per owner.

use kvmesh_proto::wire::{Op, OpResult};

use super::reply;
use super::router::{route, Rejection, Route};
use super::server::ShardCtx;

/// Runs `ops` and returns one result per op, in order. Never fails as a whole: an op that could
/// not run gets an error status of its own.
pub async fn execute(ctx: &ShardCtx, ops: Vec<Op>) -> Vec<OpResult> {
    let now = super::now_ms();
    let mut results = vec![OpResult::default(); ops.len()];
    // (owning shard, indices into `results`, ops) for ops this shard does not own.
    let mut remote: Vec<(usize, Vec<usize>, Vec<_>)> = Vec::new();
    {
        let mut shard = ctx.shard.borrow_mut();
        for (i, op) in ops.into_iter().enumerate() {
            match route(&op, ctx.me, ctx.config.shards, ctx.config.max_key_len) {
                Route::Local | Route::Here => results[i] = shard.execute(&op, now),
                Route::Reject(rejection) => {
                    if matches!(rejection, Rejection::UnknownOperation(_)) {
                        shard.counters.protocol_errors += 1;
                    }
                    results[i] = reply::rejection(rejection);
                }
                Route::Forward(owner) => {
                    shard.counters.forwarded_out += 1;
                    match remote.iter_mut().find(|(s, _, _)| *s == owner) {
                        Some((_, idx, ops)) => {
                            idx.push(i);
                            ops.push(op);
                        }
                        None => remote.push((owner, vec![i], vec![op])),
                    }
                }
            }
        }
    }
    // Send every batch before waiting for any, so the owners work in parallel.
    let mut waiting = Vec::with_capacity(remote.len());
    for (owner, idx, ops) in remote {
        waiting.push((idx, ctx.mesh.send(owner, ops, now).await));
    }
    for (idx, sent) in waiting {
        let answered = match sent {
            Ok(pending) => ctx.mesh.wait(pending).await,
            Err(e) => Err(e),
        };
        match answered {
            Ok(answers) if answers.len() == idx.len() => {
                for (i, answer) in idx.into_iter().zip(answers) {
                    results[i] = answer;
                }
            }
            Ok(answers) => {
                let e = reply::ForwardError::Unreachable {
                    shard: usize::MAX,
                    why: format!("{} answers for {} ops", answers.len(), idx.len()),
                };
                for i in idx {
                    results[i] = reply::forward_error(&e);
                }
            }
            Err(e) => {
                for i in idx {
                    results[i] = reply::forward_error(&e);
                }
            }
        }
    }
    results
}
