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
use crate::cluster::replication::ReadFrom;
use crate::cluster::topology::{Change, Member, Topology as Agreed, Transition};
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

/// Whether the fast path takes `request` on a one-node, one-shard node without a log that does
/// not wait for a topology: [`open`] and [`takes`], as `serve` decides.
fn taken(request: &simple::SimpleRequest<'_>) -> bool {
    let membership = Membership::single(1, addr(1));
    let replication = Replication::default();
    plan(&view(&membership, &replication, 1), request)
}

fn addr(n: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + n))
}

/// A node's state: not durable, not gated, shard 0 of `shards`.
fn view<'a>(membership: &'a Membership, replication: &'a Replication, shards: usize) -> View<'a> {
    View {
        durable: false,
        replication,
        membership,
        gated: false,
        epoch_now: 0,
        me: 0,
        shards,
        max_key_len: MAX_KEY,
        live: &|_| true,
    }
}

/// The whole decision for one request, as `serve` makes it.
fn plan(view: &View<'_>, request: &simple::SimpleRequest<'_>) -> bool {
    open(view) && takes(view, request)
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
    // All but the key over the limit and the batch with OP_STATS (the ids from 2^63, in
    // 10-byte varints, included).
    assert_eq!(taken_count, 9);
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
    // Requests the fast path should mostly take: plain ops on keys within the limit.
    let plain_op = (
        prop_oneof![
            Just(OpCode::OpGet),
            Just(OpCode::OpPut),
            Just(OpCode::OpRemove)
        ],
        (0u8..12).prop_map(|k| vec![b'k', k]),
        proptest::collection::vec(any::<u8>(), 0..70),
        prop_oneof![3 => Just(0u64), 1 => 1u64..40],
    )
        .prop_map(|(code, key, value, ttl_ms)| op(code, &key, &value, ttl_ms));
    let plain = (
        prop_oneof![Just(0u64), 0u64..1 << 40, any::<u64>()],
        proptest::collection::vec(plain_op, 1..4),
    )
        .prop_map(|(id, ops)| body(id, ops));
    prop_oneof![
        5 => request,
        4 => plain,
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

/// A two-node cluster (this node is node 1) at topology epoch 5, during a change to three
/// nodes when `moving`.
fn two_nodes(moving: bool) -> Membership {
    let member = |id: u32| Member {
        id,
        addr: addr(id as u16),
    };
    let alone = Membership::new("c", 1, addr(1), vec![(1, addr(1)), (2, addr(2))])
        .expect("a valid member list");
    let mut agreed = Agreed::initial(vec![member(1), member(2)]).expect("a valid bootstrap");
    agreed.epoch = 5;
    if moving {
        agreed.transition = Some(Transition {
            change: Change::Join(member(3)),
            old: vec![member(1), member(2)],
            new: vec![member(1), member(2), member(3)],
            done: Default::default(),
            down: false,
        });
    }
    alone.with_topology(&agreed).expect("a valid topology")
}

/// A key routed `want` on shard 0 of `shards` on a single node.
fn key_routed(shards: usize, want: fn(&Route) -> bool) -> Vec<u8> {
    (0u8..=255)
        .map(|k| vec![b'k', k])
        .find(|key| {
            let keyed = Keyed {
                code: GET,
                key,
                replica: false,
            };
            want(&route(keyed, 0, shards, MAX_KEY))
        })
        .expect("some key routes so")
}

/// A key node 1 owns, or not, on `membership`'s ring with one owner per key.
fn key_owned(membership: &Membership, mine: bool) -> Vec<u8> {
    (0u8..=255)
        .map(|k| vec![b'k', k])
        .find(|key| (membership.ring().owners(key, 1)[0] == 1) == mine)
        .expect("some key is owned so")
}

/// `serve`'s decision (`open`, then `takes`) for each case where the general path
/// (`dispatch::start_from`) does something other than run the ops on this shard's store
/// and reply at once; and for the cases next to them where it does just that. What the
/// general path does is written in each case's name: `start_from` itself needs a whole
/// `ShardCtx` (mesh, peers), so it is not run here.
#[test]
fn the_decision_case_by_case() {
    let one = Membership::single(1, addr(1));
    let (two, moving) = (two_nodes(false), two_nodes(true));
    let replicas = |replicas: usize, read_from: ReadFrom| Replication {
        replicas,
        read_from,
        ..Replication::default()
    };
    let (default, single) = (Replication::default(), replicas(1, ReadFrom::One));
    let quorum = replicas(2, ReadFrom::Quorum);
    let get = |key: &[u8], epoch: u64| {
        let mut request = Request {
            id: 9,
            ops: vec![op(OpCode::OpGet, key, b"", 0)],
            epoch,
            ..Request::default()
        };
        if key.is_empty() {
            request.ops.clear();
        }
        request.encode_to_vec()
    };
    let here = key_routed(2, |r| *r == Route::Local);
    let other_shard = key_routed(2, |r| matches!(r, Route::Forward(_)));
    let (mine, theirs) = (key_owned(&two, true), key_owned(&two, false));
    let touch = body(1, vec![op(OpCode::OpTouch, b"k", b"", 5)]);
    let cases: Vec<(&str, View<'_>, Vec<u8>, bool)> = vec![
        (
            "one node, one shard: runs here",
            view(&one, &default, 1),
            get(b"k", 0),
            true,
        ),
        ("no ops", view(&one, &default, 1), get(b"", 0), false),
        (
            "OP_TOUCH: not a fast op",
            view(&one, &default, 1),
            touch,
            false,
        ),
        (
            "key over the limit: rejected",
            view(&one, &default, 1),
            get(b"toolong", 0),
            false,
        ),
        (
            "a log: the reply waits for the record",
            View {
                durable: true,
                ..view(&one, &default, 1)
            },
            get(b"k", 0),
            false,
        ),
        (
            "gated, no agreed topology: STATUS_UNAVAILABLE",
            View {
                gated: true,
                ..view(&one, &default, 1)
            },
            get(b"k", 0),
            false,
        ),
        (
            "gated, topology agreed: runs here",
            View {
                gated: true,
                epoch_now: 1,
                ..view(&one, &default, 1)
            },
            get(b"k", 0),
            true,
        ),
        (
            "2 shards, this shard's key: runs here",
            view(&one, &default, 2),
            get(&here, 0),
            true,
        ),
        (
            "2 shards, the other's key: forwarded",
            view(&one, &default, 2),
            get(&other_shard, 0),
            false,
        ),
        (
            "replicas 2 on 2 nodes: replicated writes",
            view(&two, &default, 1),
            get(&mine, 0),
            false,
        ),
        (
            "read-from quorum: asks a quorum",
            view(&two, &quorum, 1),
            get(&mine, 0),
            false,
        ),
        (
            "replicas 1, a key of this node: runs here",
            view(&two, &single, 1),
            get(&mine, 0),
            true,
        ),
        (
            "replicas 1, the other node's key: sent there",
            view(&two, &single, 1),
            get(&theirs, 0),
            false,
        ),
        (
            "a pending ring: writes go to new owners too",
            view(&moving, &single, 1),
            get(&mine, 0),
            false,
        ),
        (
            "epoch behind: STATUS_MOVED",
            view(&two, &single, 1),
            get(&mine, 4),
            false,
        ),
        (
            "epoch current: runs here",
            view(&two, &single, 1),
            get(&mine, 5),
            true,
        ),
        (
            "epoch ahead: runs here",
            view(&two, &single, 1),
            get(&mine, 6),
            true,
        ),
    ];
    for (case, view, body, want) in cases {
        let request = simple::parse(&body).expect("a plain request");
        assert_eq!(plan(&view, &request), want, "{case}");
    }
}

/// The property test's requests take the fast path often enough to test it.
#[test]
fn the_property_test_mostly_takes_the_fast_path() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arbitrary_body();
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|_| strategy.new_tree(&mut runner).expect("a body").current())
        .collect();
    let taken_count = bodies
        .iter()
        .filter(|body| simple::parse(body).is_some_and(|r| taken(&r)))
        .count();
    assert!(taken_count > 250, "{taken_count} of 1000 taken");
}
