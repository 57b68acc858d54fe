//! The `distributed_cache.KvMesh` handlers: bytes keys and values, batches, TTLs and the
//! topology (`proto/kvmesh_api.proto` documents each call). Like the old API's, each handler
//! turns its request into wire ops, runs them on the [`Backend`] and turns the results into a
//! reply; a batch runs as one backend call, so in a node its keys go to their shards together.

use kvmesh_proto::distributed_cache::{
    KvGetRequest, KvGetResponse, KvGetResult, KvMultiGetRequest, KvMultiGetResponse,
    KvMultiPutRequest, KvMultiPutResponse, KvMultiRemoveRequest, KvMultiRemoveResponse,
    KvPutRequest, KvPutResponse, KvRemoveRequest, KvRemoveResponse, KvTopologyRequest,
    KvTopologyResponse, KvTouchRequest, KvTouchResponse, KvTtlRequest, KvTtlResponse,
    KvWriteResult,
};
use kvmesh_proto::wire::{OpCode, OpResult};

use super::backend::{ok, op, run_one, ttl_ms, Backend};
use super::status::{per_key, Error};

/// The most keys (or entries) one batch call may carry; a larger batch is refused as a whole
/// with INVALID_ARGUMENT. It keeps one call's work, and its reply, bounded.
pub const MAX_BATCH: usize = 1000;

pub async fn get<B: Backend>(b: &B, req: KvGetRequest) -> Result<KvGetResponse, Error> {
    let result = ok(run_one(b, op(OpCode::OpGet, req.key, Vec::new(), 0)).await)?;
    Ok(KvGetResponse {
        value: result.value,
    })
}

pub async fn put<B: Backend>(b: &B, req: KvPutRequest) -> Result<KvPutResponse, Error> {
    ok(run_one(b, put_op(req)?).await)?;
    Ok(KvPutResponse {})
}

pub async fn remove<B: Backend>(b: &B, req: KvRemoveRequest) -> Result<KvRemoveResponse, Error> {
    let result = ok(run_one(b, op(OpCode::OpRemove, req.key, Vec::new(), 0)).await)?;
    Ok(KvRemoveResponse {
        found: result.found,
    })
}

pub async fn touch<B: Backend>(b: &B, req: KvTouchRequest) -> Result<KvTouchResponse, Error> {
    let touch = op(OpCode::OpTouch, req.key, Vec::new(), ttl_ms(req.ttl)?);
    ok(run_one(b, touch).await)?;
    Ok(KvTouchResponse {})
}

pub async fn ttl<B: Backend>(b: &B, req: KvTtlRequest) -> Result<KvTtlResponse, Error> {
    let result = ok(run_one(b, op(OpCode::OpTtl, req.key, Vec::new(), 0)).await)?;
    Ok(KvTtlResponse {
        expires: result.ttl_ms > 0,
        remaining_ms: result.ttl_ms,
    })
}

pub async fn topology<B: Backend>(
    b: &B,
    _req: KvTopologyRequest,
) -> Result<KvTopologyResponse, Error> {
    b.topology().await
}

pub async fn multi_get<B: Backend>(
    b: &B,
    req: KvMultiGetRequest,
) -> Result<KvMultiGetResponse, Error> {
    check_batch(req.keys.len())?;
    let ops = req
        .keys
        .into_iter()
        .map(|key| op(OpCode::OpGet, key, Vec::new(), 0))
        .collect();
    let results = b.execute(ops).await.into_iter().map(get_result).collect();
    Ok(KvMultiGetResponse { results })
}

pub async fn multi_put<B: Backend>(
    b: &B,
    req: KvMultiPutRequest,
) -> Result<KvMultiPutResponse, Error> {
    check_batch(req.entries.len())?;
    // An entry with a negative TTL fails on its own; the others still run.
    let planned: Vec<Result<_, Error>> = req.entries.into_iter().map(put_op).collect();
    let ops = planned
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut ran = b.execute(ops).await.into_iter();
    let results = planned
        .into_iter()
        .map(|p| match p {
            Ok(_) => write_result(ran.next().unwrap_or_else(missing)),
            Err(e) => {
                let status = super::status::status(&e);
                KvWriteResult {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                    found: false,
                }
            }
        })
        .collect();
    Ok(KvMultiPutResponse { results })
}

pub async fn multi_remove<B: Backend>(
    b: &B,
    req: KvMultiRemoveRequest,
) -> Result<KvMultiRemoveResponse, Error> {
    check_batch(req.keys.len())?;
    let ops = req
        .keys
        .into_iter()
        .map(|key| op(OpCode::OpRemove, key, Vec::new(), 0))
        .collect();
    let results = b.execute(ops).await.into_iter().map(write_result).collect();
    Ok(KvMultiRemoveResponse { results })
}

/// Refuses a batch over [`MAX_BATCH`] before any of it runs.
pub fn check_batch(len: usize) -> Result<(), Error> {
    if len > MAX_BATCH {
        return Err(Error::BatchTooLarge {
            len,
            max: MAX_BATCH,
        });
    }
    Ok(())
}

fn put_op(req: KvPutRequest) -> Result<kvmesh_proto::wire::Op, Error> {
    Ok(op(OpCode::OpPut, req.key, req.value, ttl_ms(req.ttl)?))
}

/// A MultiGet result: OK with the value, NOT_FOUND, or the key's own error.
pub fn get_result(result: OpResult) -> KvGetResult {
    let (code, message) = per_key(&result);
    KvGetResult {
        code,
        message,
        value: result.value,
    }
}

/// A MultiPut or MultiRemove result.
pub fn write_result(result: OpResult) -> KvWriteResult {
    let (code, message) = per_key(&result);
    KvWriteResult {
        code,
        message,
        found: result.found,
    }
}

fn missing() -> OpResult {
    OpResult {
        status: kvmesh_proto::wire::Status::Internal as i32,
        message: "the backend returned fewer results than ops".to_string(),
        ..OpResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::Status as WireStatus;

    #[test]
    fn batch_limit_is_inclusive() {
        assert_eq!(check_batch(0), Ok(()));
        assert_eq!(check_batch(MAX_BATCH), Ok(()));
        assert_eq!(
            check_batch(MAX_BATCH + 1),
            Err(Error::BatchTooLarge {
                len: MAX_BATCH + 1,
                max: MAX_BATCH
            })
        );
    }

    #[test]
    fn per_key_results() {
        let hit = get_result(OpResult {
            value: vec![0xff, 0],
            found: true,
            ..OpResult::default()
        });
        assert_eq!((hit.code, hit.value), (0, vec![0xff, 0]));
        let miss = get_result(OpResult {
            status: WireStatus::NotFound as i32,
            ..OpResult::default()
        });
        assert_eq!(miss.code, tonic::Code::NotFound as i32);
        let removed = write_result(OpResult {
            found: true,
            ..OpResult::default()
        });
        assert_eq!((removed.code, removed.found), (0, true));
    }

    #[test]
    fn put_ttl_is_seconds() {
        let req = |ttl| KvPutRequest {
            key: vec![1],
            value: vec![2],
            ttl,
        };
        assert_eq!(put_op(req(3)).map(|o| o.ttl_ms), Ok(3000));
        assert_eq!(put_op(req(-1)), Err(Error::NegativeTtl(-1)));
    }
}
