//! Where an op runs: a pure decision, so it can be tested without executors or sockets.

use kvmesh_proto::wire::{Op, OpCode};

/// The decision for one op arriving at shard `me`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A keyed op this shard owns.
    Local,
    /// A keyed op owned by another shard of this node.
    Forward(usize),
    /// About this shard itself (stats, topology): answered here, never forwarded.
    Here,
    /// Refused before it reaches any store.
    Reject(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    UnknownOperation(i32),
    KeyTooLarge { len: usize, max: usize },
}

/// Routes `op`, arriving at shard `me` of `nr_shards`, whose keys may be at most `max_key_len`.
pub fn route(op: &Op, me: usize, nr_shards: usize, max_key_len: usize) -> Route {
    let code = match OpCode::try_from(op.code) {
        Ok(OpCode::OpUnspecified) | Err(_) => {
            return Route::Reject(Rejection::UnknownOperation(op.code))
        }
        Ok(code) => code,
    };
    match code {
        OpCode::OpStats | OpCode::OpTopology | OpCode::OpSnapshot => Route::Here,
        OpCode::OpGet | OpCode::OpPut | OpCode::OpRemove | OpCode::OpTouch | OpCode::OpTtl => {
            if op.key.len() > max_key_len {
                return Route::Reject(Rejection::KeyTooLarge {
                    len: op.key.len(),
                    max: max_key_len,
                });
            }
            match kvmesh_net::shard_for(&op.key, nr_shards) {
                owner if owner == me => Route::Local,
                owner => Route::Forward(owner),
            }
        }
        OpCode::OpUnspecified => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(code: i32, key: &[u8]) -> Op {
        Op {
            code,
            key: key.to_vec(),
            ..Op::default()
        }
    }

    #[test]
    fn table() {
        // "user:42" is owned by shard 1 of 2 (see kvmesh-net's routing test vectors).
        let get = OpCode::OpGet as i32;
        let cases = [
            (op(get, b"user:42"), 1, Route::Local),
            (op(get, b"user:42"), 0, Route::Forward(1)),
            (op(get, b"\x00\xff\x10"), 0, Route::Local),
            (op(OpCode::OpStats as i32, b""), 0, Route::Here),
            (op(OpCode::OpTopology as i32, b"user:42"), 0, Route::Here),
            (
                op(0, b"k"),
                0,
                Route::Reject(Rejection::UnknownOperation(0)),
            ),
            (
                op(99, b"k"),
                0,
                Route::Reject(Rejection::UnknownOperation(99)),
            ),
            (
                op(OpCode::OpPut as i32, &[b'x'; 9]),
                0,
                Route::Reject(Rejection::KeyTooLarge { len: 9, max: 8 }),
            ),
        ];
        for (op, me, want) in cases {
            assert_eq!(route(&op, me, 2, 8), want, "{op:?} at shard {me}");
        }
    }
}
