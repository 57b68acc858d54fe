//! The `distributed_cache.DistributedCache` handlers: each turns a request into one wire [`Op`],
//! runs it through [`dispatch::execute`] (so forwarding, limits and durability apply exactly as
//! for the wire protocol), and turns the result into a reply or an [`Error`].
//!
//! The conversions are pure functions, tested below without a node.

use kvmesh_proto::distributed_cache::{
    GetRequest, GetResponse, PutRequest, PutResponse, RemoveRequest, RemoveResponse,
};
use kvmesh_proto::wire::{Op, OpCode, OpResult, Status as WireStatus};

use super::status::Error;
use crate::node::{dispatch, ShardCtx};

/// `Get`: the value, `NOT_FOUND` when missing or expired, `FAILED_PRECONDITION` when it is not
/// UTF-8.
pub async fn get(ctx: &ShardCtx, req: GetRequest) -> Result<GetResponse, Error> {
    get_reply(run(ctx, get_op(req)).await)
}

/// `Put`: `success = true` once the write is applied; refused writes are errors, never `false`.
pub async fn put(ctx: &ShardCtx, req: PutRequest) -> Result<PutResponse, Error> {
    ok(run(ctx, put_op(req)?).await)?;
    Ok(PutResponse { success: true })
}

/// `Remove`: `success = true` once applied, whether or not the key existed.
pub async fn remove(ctx: &ShardCtx, req: RemoveRequest) -> Result<RemoveResponse, Error> {
    // Removing a missing key succeeds: the op is idempotent, and `found` is not part of this API.
    ok(run(ctx, remove_op(req)).await)?;
    Ok(RemoveResponse { success: true })
}

async fn run(ctx: &ShardCtx, op: Op) -> OpResult {
    dispatch::execute(ctx, vec![op])
        .await
        .pop()
        .unwrap_or_else(|| OpResult {
            status: WireStatus::Internal as i32,
            message: "dispatch returned no result".to_string(),
            ..OpResult::default()
        })
}

/// The wire op of a `Get`: the key's UTF-8 bytes.
pub fn get_op(req: GetRequest) -> Op {
    op(OpCode::OpGet, req.key, Vec::new(), 0)
}

/// `ttl` is seconds, `0` never expires, negative is refused. Field 4 (`is_replica`, the old
/// node-to-node flag) and field 5 (never used) are ignored.
pub fn put_op(req: PutRequest) -> Result<Op, Error> {
    let ttl_s = u64::try_from(req.ttl).map_err(|_| Error::NegativeTtl(req.ttl))?;
    // Past u64::MAX milliseconds (half a billion years) the key simply never expires.
    Ok(op(
        OpCode::OpPut,
        req.key,
        req.value.into_bytes(),
        ttl_s.saturating_mul(1000),
    ))
}

/// The wire op of a `Remove`.
pub fn remove_op(req: RemoveRequest) -> Op {
    op(OpCode::OpRemove, req.key, Vec::new(), 0)
}

/// A `Get`'s reply from its op's result: the value must be valid UTF-8 to travel in a `string`.
pub fn get_reply(result: OpResult) -> Result<GetResponse, Error> {
    let result = ok(result)?;
    let len = result.value.len();
    let value = String::from_utf8(result.value).map_err(|e| Error::NotUtf8 {
        len,
        valid_up_to: e.utf8_error().valid_up_to(),
    })?;
    Ok(GetResponse {
        value,
        success: true,
    })
}

fn ok(result: OpResult) -> Result<OpResult, Error> {
    match result.status() {
        WireStatus::Ok => Ok(result),
        status => Err(Error::Op {
            status,
            message: result.message,
        }),
    }
}

fn op(code: OpCode, key: String, value: Vec<u8>, ttl_ms: u64) -> Op {
    Op {
        code: code as i32,
        key: key.into_bytes(),
        value,
        ttl_ms,
        ..Op::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ttl: i64) -> PutRequest {
        PutRequest {
            key: "k".into(),
            value: "v".into(),
            ttl,
            is_replica: true,
            success: true,
        }
    }

    #[test]
    fn ttl_is_seconds_zero_never_negative_refused() {
        assert_eq!(put_op(put(0)).unwrap().ttl_ms, 0);
        assert_eq!(put_op(put(1)).unwrap().ttl_ms, 1000);
        assert_eq!(put_op(put(i64::MAX)).unwrap().ttl_ms, u64::MAX);
        assert_eq!(put_op(put(-1)), Err(Error::NegativeTtl(-1)));
        let op = put_op(put(3)).unwrap();
        assert_eq!(
            (op.code(), op.key.as_slice(), op.value.as_slice()),
            (OpCode::OpPut, &b"k"[..], &b"v"[..])
        );
    }

    #[test]
    fn get_replies() {
        let found = OpResult {
            value: "héllo".as_bytes().to_vec(),
            found: true,
            ..OpResult::default()
        };
        assert_eq!(
            get_reply(found),
            Ok(GetResponse {
                value: "héllo".into(),
                success: true
            })
        );
        let missing = OpResult {
            status: WireStatus::NotFound as i32,
            ..OpResult::default()
        };
        assert!(matches!(
            get_reply(missing),
            Err(Error::Op {
                status: WireStatus::NotFound,
                ..
            })
        ));
        let binary = OpResult {
            value: vec![b'a', 0xff, b'b'],
            ..OpResult::default()
        };
        assert_eq!(
            get_reply(binary),
            Err(Error::NotUtf8 {
                len: 3,
                valid_up_to: 1
            })
        );
    }

    #[test]
    fn keys_travel_as_their_utf8_bytes() {
        let op = get_op(GetRequest {
            key: "ключ".into()
        });
        assert_eq!(op.key, "ключ".as_bytes());
        assert_eq!(op.code(), OpCode::OpGet);
        let op = remove_op(RemoveRequest { key: "k".into() });
        assert_eq!(op.code(), OpCode::OpRemove);
    }
}
