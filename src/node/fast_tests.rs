//! The fast path against the general path: two shards built alike, both without a log or both
//! with one, get the same requests, one through [`execute`] whenever the fast path would take
//! the request, the other through what `dispatch` runs for ops routed to this shard
//! (`Shard::execute`, then `reply::encode_response`). Replies must match byte for byte, so must
//! the log records they wait for, and so must the shards' state (their stats, read through
//! `OP_STATS` ops mixed in and at the end). The connection's write step is tested in
//! `fast_send_tests.rs`.

use kvmesh_engine::Config as StoreConfig;
use kvmesh_net::simple;
use kvmesh_proto::wire::{Op, OpResult, Request, Response, Topology};
use kvmesh_wal::testing::MemDir;
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

/// The time of the tests' first request.
pub(super) const NOW: u64 = 1_700_000_000_000;

/// A [`shard`] with a log in `dir`, as on a node with `--data-dir`.
pub(super) async fn durable_shard(dir: MemDir) -> Shard {
    crate::node::durable::with_mem_log(shard(), dir, NOW).await
}

pub(super) fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("an executor")
        .run(f)
}

/// What the general path answers for `body` on a one-shard node, with the largest log record
/// the reply waits for (as `durable::settle` awaits it), or `None` when the frame does not
/// decode (the connection would close).
fn general(shard: &mut Shard, body: &[u8], now_ms: u64) -> Option<(Vec<u8>, Option<u64>)> {
    let request = kvmesh_net::request::decode(body).ok()?;
    let mut wait = None;
    let results: Vec<OpResult> = request
        .ops
        .iter()
        .map(|op| match route(op.into(), 0, 1, MAX_KEY) {
            Route::Local | Route::Here => {
                let executed = shard.execute(op, now_ms);
                wait = wait.max(executed.wait);
                executed.result
            }
            Route::Reject(rejection) => reply::rejection(rejection),
            // Not served by the store: the same stand-in on both shards.
            _ => reply::status(Status::Internal, "not a store op"),
        })
        .collect();
    let mut out = Vec::new();
    reply::encode_response(request.id, &results, &mut out);
    Some((out, wait))
}

/// A reply frame, with the log's time counters in its stats (if it has any) zeroed: they
/// differ between two logs doing the same work.
fn timeless(reply: Vec<u8>) -> Vec<u8> {
    let Ok(mut response) = Response::decode(&reply[PREFIX_LEN..]) else {
        return reply;
    };
    if response.results.iter().all(|r| r.stats.is_none()) {
        return reply;
    }
    for stats in response.results.iter_mut().filter_map(|r| r.stats.as_mut()) {
        (stats.wal_write_us, stats.wal_sync_us) = (0, 0);
    }
    let mut out = Vec::new();
    frame::encode(&response, &mut out);
    out
}

/// A shard's stats without the log's time counters.
fn state(shard: &Shard) -> kvmesh_proto::wire::ShardStats {
    kvmesh_proto::wire::ShardStats {
        wal_write_us: 0,
        wal_sync_us: 0,
        ..shard.stats()
    }
}

/// Waits until every record `shard`'s log holds is durable.
async fn settle(shard: &Shard) {
    if let Some(log) = shard.log() {
        let last = log.next_seq().saturating_sub(1);
        log.durable(last).await.expect("the log works");
    }
}

/// Whether the fast path takes `request` on a one-node, one-shard node without a failed log
/// that does not wait for a topology: [`open`] and [`takes`], as `serve` decides.
fn taken(request: &simple::SimpleRequest<'_>) -> bool {
    let membership = Membership::single(1, addr(1));
    let replication = Replication::default();
    plan(&view(&membership, &replication, 1), request)
}

fn addr(n: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + n))
}

/// A node's state: no failed log, not gated, shard 0 of `shards`.
fn view<'a>(membership: &'a Membership, replication: &'a Replication, shards: usize) -> View<'a> {
    View {
        log_failed: false,
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

/// Runs `bodies` (each with the milliseconds that pass before it) against both shards, with
/// a log each when `durable`; returns how many the fast path took, and how many of those
/// waited for a log record. Both logs are settled (every record durable) after each body
/// whose time step is a multiple of 3, so later requests find some keys settled and some
/// not; nothing else awaits, so both logs number their records alike.
async fn compare(bodies: &[(Vec<u8>, u64)], durable: bool) -> (usize, usize) {
    let (mut general_shard, mut fast_shard) = if durable {
        (
            durable_shard(MemDir::new(512)).await,
            durable_shard(MemDir::new(512)).await,
        )
    } else {
        (shard(), shard())
    };
    let mut now_ms = NOW;
    let (mut fast, mut waited) = (0, 0);
    for (body, advance) in bodies {
        now_ms += advance;
        let want = general(&mut general_shard, body, now_ms);
        let got = match simple::parse(body).filter(taken) {
            Some(request) => {
                fast += 1;
                let mut out = vec![0xAA];
                // Read ahead as a run of this one request would (a request of two gets or
                // more); the gets then take the hashes computed ahead.
                let ahead = read_ahead(&fast_shard, std::iter::once(&request));
                let mut hashes = ahead.iter().map_while(|h| *h);
                let served = execute(&mut fast_shard, &request, &mut hashes, now_ms, &mut out)
                    .expect("taken");
                assert_eq!(out[0], 0xAA, "appends");
                let counted: u32 = served.kinds.iter().sum();
                assert_eq!(counted as usize, request.ops().len());
                let decoded = Response::decode(&out[1 + PREFIX_LEN..]).expect("a reply decodes");
                let values: usize = decoded.results.iter().map(|r| r.value.len()).sum();
                assert_eq!(served.reply_bytes, values);
                waited += usize::from(served.wait.is_some());
                Some((out[1..].to_vec(), served.wait))
            }
            None => general(&mut fast_shard, body, now_ms),
        };
        let timeless = |got: Option<(Vec<u8>, Option<u64>)>| got.map(|(r, w)| (timeless(r), w));
        assert_eq!(timeless(got), timeless(want), "body {body:02x?}");
        if durable && advance % 3 == 0 {
            settle(&general_shard).await;
            settle(&fast_shard).await;
        }
    }
    assert_eq!(state(&fast_shard), state(&general_shard));
    (fast, waited)
}

pub(super) fn op(code: OpCode, key: &[u8], value: &[u8], ttl_ms: u64) -> Op {
    Op {
        code: code as i32,
        key: key.to_vec(),
        value: value.to_vec(),
        ttl_ms,
        ..Op::default()
    }
}

pub(super) fn body(id: u64, ops: Vec<Op>) -> Vec<u8> {
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
    let bodies: Vec<_> = bodies.into_iter().map(|b| (b, 7)).collect();
    // All but the key over the limit and the batch with OP_STATS (the ids from 2^63, in
    // 10-byte varints, included).
    assert_eq!(run(compare(&bodies, false)), (9, 0));
    // With a log, nothing settles between these requests: the writes wait, and so do the
    // reads of keys written before; the first get (of a key never written) and the refused
    // put of a value over the limit do not.
    let (taken_count, waited) = run(compare(&bodies, true));
    assert_eq!((taken_count, waited), (9, 7));
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
        run(compare(&bodies, false));
    }

    #[test]
    fn same_replies_and_waits_as_the_general_path_with_a_log(
        bodies in proptest::collection::vec((arbitrary_body(), 0u64..15), 1..60),
    ) {
        run(compare(&bodies, true));
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
            "a failed log: writes refused, reads answered precisely",
            View {
                log_failed: true,
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
