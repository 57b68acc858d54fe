//! The fast path against the general path: two shards built alike get the same requests, one
//! through [`execute`] whenever the fast path would take the request, the other through what
//! `dispatch` runs for ops routed to this shard (`Shard::execute`, then
//! `reply::encode_response`). Replies must match byte for byte, and so must the shards' state
//! (their stats, read through `OP_STATS` ops mixed in and at the end).

use kvmesh_engine::Config as StoreConfig;
use kvmesh_net::simple;
use kvmesh_proto::wire::{Op, OpResult, Request, Topology};
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::node::router::route;

/// The node's key limit in these tests (routing rejects longer keys).
const MAX_KEY: usize = 6;

fn shard() -> Shard {
    let config = StoreConfig {
        // Room for about 25 small entries: writes evict.
        max_memory: 4096,
        max_value_len: 64,
        ..StoreConfig::default()
    };
    Shard::new(0, 7, config, Topology::default())
}

/// What the general path answers for `body` on a one-shard node, or `None` when the frame
/// does not decode (the connection would close).
fn general(shard: &mut Shard, body: &[u8], now_ms: u64) -> Option<Vec<u8>> {
    let request = kvmesh_net::request::decode(body).ok()?;
    let results: Vec<OpResult> = request
        .ops
        .iter()
        .map(|op| match route(op.into(), 0, 1, MAX_KEY) {
            Route::Local | Route::Here => shard.execute(op, now_ms).result,
            Route::Reject(rejection) => reply::rejection(rejection),
            // Not served by the store: the same stand-in on both shards.
            _ => reply::status(Status::Internal, "not a store op"),
        })
        .collect();
    let mut out = Vec::new();
    reply::encode_response(request.id, &results, &mut out);
    Some(out)
}

/// Whether the fast path takes `request` on a one-shard node that does not wait for a
/// topology (what `serve` checks beyond that: the same functions).
fn taken(request: &simple::SimpleRequest<'_>) -> bool {
    !request.ops().is_empty()
        && request
            .ops()
            .iter()
            .all(|op| is_simple(op.code) && route(keyed(op), 0, 1, MAX_KEY) == Route::Local)
}

/// Runs `bodies` against both shards; returns how many the fast path took.
fn compare(bodies: &[(Vec<u8>, u64)]) -> usize {
    let (mut general_shard, mut fast_shard) = (shard(), shard());
    let mut now_ms = 1_700_000_000_000;
    let mut fast = 0;
    for (body, advance) in bodies {
        now_ms += advance;
        let want = general(&mut general_shard, body, now_ms);
        let got = match simple::parse(body).filter(taken) {
            Some(request) => {
                fast += 1;
                let mut out = vec![0xAA];
                let (kinds, reply_bytes) =
                    execute(&mut fast_shard, &request, now_ms, &mut out).expect("taken");
                assert_eq!(out[0], 0xAA, "appends");
                let counted: u32 = kinds.iter().sum();
                assert_eq!(counted as usize, request.ops().len());
                let decoded = kvmesh_proto::wire::Response::decode(&out[1 + PREFIX_LEN..])
                    .expect("a reply decodes");
                let values: usize = decoded.results.iter().map(|r| r.value.len()).sum();
                assert_eq!(reply_bytes, values);
                Some(out[1..].to_vec())
            }
            None => general(&mut fast_shard, body, now_ms),
        };
        assert_eq!(got, want, "body {body:02x?}");
    }
    assert_eq!(fast_shard.stats(), general_shard.stats());
    fast
}

fn op(code: OpCode, key: &[u8], value: &[u8], ttl_ms: u64) -> Op {
    Op {
        code: code as i32,
        key: key.to_vec(),
        value: value.to_vec(),
        ttl_ms,
        ..Op::default()
    }
}

fn body(id: u64, ops: Vec<Op>) -> Vec<u8> {
    Request {
        id,
        ops,
        ..Request::default()
    }
    .encode_to_vec()
}

#[test]
fn table() {
    use OpCode::*;
    let bodies = vec![
        body(1, vec![op(OpGet, b"a", b"", 0)]),
        body(2, vec![op(OpPut, b"a", b"hello", 0)]),
        body(0, vec![op(OpGet, b"a", b"", 0), op(OpGet, b"b", b"", 0)]),
        body(3, vec![op(OpPut, b"e", b"", 0), op(OpGet, b"e", b"", 0)]),
        body(4, vec![op(OpPut, b"t", b"x", 10), op(OpGet, b"t", b"", 0)]),
        body(
            5,
            vec![op(OpRemove, b"a", b"", 0), op(OpRemove, b"a", b"", 0)],
        ),
        body(6, vec![op(OpPut, b"big", &[1; 65], 0)]),
        body(7, vec![op(OpPut, b"toolong", b"v", 0)]),
        body(8, vec![op(OpGet, b"a", b"", 0), op(OpStats, b"", b"", 0)]),
        body(i64::MAX as u64, vec![op(OpPut, b"v", &[2; 64], 0)]),
        body(u64::MAX, vec![op(OpGet, b"v", b"", 0)]),
    ];
    let taken_count = compare(&bodies.into_iter().map(|b| (b, 6)).collect::<Vec<_>>());
    // All but the key over the limit, the batch with OP_STATS and the id in a 10-byte varint.
    assert_eq!(taken_count, 8);
}

fn arbitrary_op() -> impl Strategy<Value = Op> {
    let code = prop_oneof![
        6 => Just(OpCode::OpGet as i32),
        6 => Just(OpCode::OpPut as i32),
        2 => Just(OpCode::OpRemove as i32),
        1 => Just(OpCode::OpTouch as i32),
        1 => Just(OpCode::OpTtl as i32),
        1 => Just(OpCode::OpStats as i32),
        1 => Just(0),
        1 => Just(99),
    ];
    // A few keys, so gets hit and writes replace; one too long for the node.
    let key = prop_oneof![
        Just(b"".to_vec()),
        (0u8..12).prop_map(|k| vec![b'k', k]),
        Just(b"toolong".to_vec()),
    ];
    let value = proptest::collection::vec(any::<u8>(), 0..70);
    let ttl = prop_oneof![3 => Just(0u64), 1 => 1u64..40];
    (code, key, value, ttl, proptest::bool::weighted(0.05)).prop_map(
        |(code, key, value, ttl_ms, replica)| Op {
            code,
            key,
            value,
            ttl_ms,
            replica,
            ..Op::default()
        },
    )
}

fn arbitrary_body() -> impl Strategy<Value = Vec<u8>> {
    let request = (
        prop_oneof![Just(0u64), 0u64..1 << 40, any::<u64>()],
        proptest::bool::weighted(0.05),
        prop_oneof![5 => Just(0u64), 1 => any::<u64>()],
        proptest::collection::vec(arbitrary_op(), 0..4),
    )
        .prop_map(|(id, forwarded, epoch, ops)| {
            Request {
                id,
                ops,
                forwarded,
                epoch,
            }
            .encode_to_vec()
        });
    prop_oneof![
        8 => request,
        1 => proptest::collection::vec(any::<u8>(), 0..24),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn same_replies_as_the_general_path(
        bodies in proptest::collection::vec((arbitrary_body(), 0u64..15), 1..60),
    ) {
        compare(&bodies);
    }
}
