//! End to end: both shards serve, keys live only on their owner, and memory is bounded by LRU.

mod common;

use common::{op, Node, WireClient};
use kvmesh_net::shard_for;
use kvmesh_proto::wire::{OpCode, Status};

#[test]
fn both_shards_serve_and_keys_stay_on_their_owner() {
    let node = Node::start(2, &[]);
    let keys: Vec<String> = (0..400).map(|i| format!("key-{i}")).collect();
    // Many connections on the shared port: the kernel spreads them over both shards, and each
    // shard forwards what it does not own.
    let handles: Vec<_> = keys
        .chunks(25)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let addr = node.addr;
            std::thread::spawn(move || {
                let mut c = WireClient::connect(addr);
                for key in &chunk {
                    c.put(key.as_bytes(), key.as_bytes());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }

    let stats = node.stats();
    for (i, s) in stats.iter().enumerate() {
        let owned = keys
            .iter()
            .filter(|k| shard_for(k.as_bytes(), 2) == i)
            .count() as u64;
        assert_eq!(s.keys, owned, "shard {i} holds exactly the keys it owns");
        assert!(
            s.connections_accepted > 1,
            "shard {i} accepted connections: {s:?}"
        );
        assert!(
            s.forwarded_out > 0 && s.forwarded_in > 0,
            "shard {i} forwarded: {s:?}"
        );
    }

    // Straight to the owner's port: served there, no forwarding.
    let before: Vec<u64> = stats.iter().map(|s| s.forwarded_out).collect();
    let mut owners: Vec<WireClient> = (0..2)
        .map(|i| WireClient::connect(node.shard_addr(i)))
        .collect();
    for key in &keys {
        let owner = shard_for(key.as_bytes(), 2);
        assert_eq!(
            owners[owner].get(key.as_bytes()).as_deref(),
            Some(key.as_bytes())
        );
    }
    let after: Vec<u64> = node.stats().iter().map(|s| s.forwarded_out).collect();
    assert_eq!(
        before, after,
        "requests sent to the owning shard are not forwarded"
    );
}

#[test]
fn a_batch_spanning_shards_answers_in_order() {
    let node = Node::start(2, &[]);
    let mut c = WireClient::connect(node.addr);
    let keys: Vec<Vec<u8>> = (0..50).map(|i| format!("b{i}").into_bytes()).collect();
    let puts = keys.iter().map(|k| op(OpCode::OpPut, k, k, 0)).collect();
    assert!(c.call(puts).iter().all(|r| r.status() == Status::Ok));
    let gets = keys.iter().map(|k| op(OpCode::OpGet, k, b"", 0)).collect();
    let results = c.call(gets);
    for (key, r) in keys.iter().zip(results) {
        assert_eq!(&r.value, key);
    }
}

#[test]
fn keys_past_the_memory_limit_evict_least_recently_used() {
    // 2 shards of 16 KiB each; 1000-byte values.
    let node = Node::start(2, &["--max-memory", "32KiB"]);
    let per_shard = 16 * 1024;
    let value = vec![b'v'; 1000];
    // All keys on shard 0, so one LRU decides.
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("lru-{i:03}").into_bytes())
        .filter(|k| shard_for(k, 2) == 0)
        .take(40)
        .collect();
    let capacity =
        (per_shard / kvmesh_engine::Store::entry_charge(keys[0].len(), value.len())) as usize;
    assert!(
        capacity >= 3 && capacity + 2 < keys.len(),
        "capacity {capacity}"
    );

    let mut c = WireClient::connect(node.shard_addr(0));
    for key in &keys[..capacity] {
        c.put(key, &value);
    }
    // Touch the oldest key, then add one more: the second oldest goes, not the first.
    assert!(c.get(&keys[0]).is_some());
    c.put(&keys[capacity], &value);
    assert!(
        c.get(&keys[1]).is_none(),
        "least recently used key was evicted"
    );
    assert!(c.get(&keys[0]).is_some(), "recently read key survived");
    assert!(c.get(&keys[capacity]).is_some());

    let s = &node.stats()[0];
    assert_eq!(s.evictions, 1);
    assert_eq!(s.keys as usize, capacity);
    assert!(s.bytes_used <= per_shard, "{s:?}");
}

/// One write carrying requests the local fast path serves and requests the general path
/// serves (another op, stats, another shard's key, a bad key), interleaved: every reply comes
/// back in request order with its own id and result, and twice more with the pass boundary
/// elsewhere (the same pipeline, split after each request).
#[test]
fn a_pipeline_mixing_fast_and_general_requests_is_answered_in_order() {
    pipeline_mixing_fast_and_general_requests(&[]);
}

/// The same on a durable node: the fast path's replies wait for the log, the general path's
/// for theirs, and they still go out in request order.
#[test]
fn a_pipeline_mixing_fast_and_general_requests_is_answered_in_order_with_a_log() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("a UTF-8 path");
    pipeline_mixing_fast_and_general_requests(&["--data-dir", data, "--fsync", "always"]);
}

fn pipeline_mixing_fast_and_general_requests(extra: &[&str]) {
    use kvmesh_net::frame;
    use kvmesh_proto::wire::Request;

    let node = Node::start(2, extra);
    let key_of = |shard: usize| {
        (0..)
            .map(|i| format!("pipe-{i}").into_bytes())
            .find(|k| shard_for(k, 2) == shard)
            .expect("a key of each shard")
    };
    let (here, there) = (key_of(0), key_of(1));
    let mut c = WireClient::connect(node.shard_addr(0));
    c.put(&here, b"mine");
    c.put(&there, b"theirs");
    let requests: Vec<(u64, Vec<_>)> = vec![
        (1, vec![op(OpCode::OpGet, &here, b"", 0)]),
        (2, vec![op(OpCode::OpTouch, &here, b"", 60_000)]),
        (3, vec![op(OpCode::OpGet, &here, b"", 0)]),
        (4, vec![op(OpCode::OpStats, b"", b"", 0)]),
        (5, vec![op(OpCode::OpGet, &there, b"", 0)]),
        (6, vec![op(OpCode::OpPut, &here, b"again", 0)]),
        (u64::MAX, vec![op(OpCode::OpGet, &here, b"", 0)]),
        (8, vec![op(OpCode::OpPut, b"", b"no key", 0)]),
        (9, vec![op(OpCode::OpRemove, &there, b"", 0)]),
        (10, vec![op(OpCode::OpPut, &there, b"back", 0)]),
        (
            11,
            vec![
                op(OpCode::OpGet, &here, b"", 0),
                op(OpCode::OpGet, &there, b"", 0),
            ],
        ),
    ];
    let encode = |id: u64, ops: &Vec<_>| {
        let mut bytes = Vec::new();
        frame::encode(
            &Request {
                id,
                ops: ops.clone(),
                ..Request::default()
            },
            &mut bytes,
        );
        bytes
    };
    let all: Vec<u8> = requests
        .iter()
        .flat_map(|(id, ops)| encode(*id, ops))
        .collect();
    for round in 0..3 {
        // Round 0: one write. Rounds 1 and 2: the same bytes in two writes, split after the
        // first request, then in the middle of the fifth.
        let split = match round {
            0 => all.len(),
            1 => encode(1, &requests[0].1).len(),
            _ => {
                requests[..4]
                    .iter()
                    .map(|(id, ops)| encode(*id, ops).len())
                    .sum::<usize>()
                    + 3
            }
        };
        c.send_raw(&all[..split]);
        if split < all.len() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            c.send_raw(&all[split..]);
        }
        let value = |r: &kvmesh_proto::wire::Response, i: usize| r.results[i].value.clone();
        let mut replies = Vec::new();
        for _ in &requests {
            replies.push(c.recv().expect("a reply for each request"));
        }
        let ids: Vec<u64> = replies.iter().map(|r| r.id).collect();
        let want: Vec<u64> = requests.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, want, "round {round}: replies in request order");
        let expected_first = if round == 0 {
            &b"mine"[..]
        } else {
            &b"again"[..]
        };
        assert_eq!(value(&replies[0], 0), expected_first, "round {round}");
        assert_eq!(replies[1].results[0].status(), Status::Ok);
        assert!(replies[3].results[0].stats.is_some(), "stats answered");
        let there_before = if round == 0 {
            &b"theirs"[..]
        } else {
            &b"back"[..]
        };
        assert_eq!(
            value(&replies[4], 0),
            there_before,
            "round {round}: forwarded"
        );
        assert_eq!(replies[5].results[0].status(), Status::Ok);
        assert_eq!(
            value(&replies[6], 0),
            b"again",
            "round {round}: after the put"
        );
        assert_ne!(replies[7].results[0].status(), Status::Ok, "an empty key");
        assert_eq!(replies[8].results[0].status(), Status::Ok);
        assert_eq!(replies[9].results[0].status(), Status::Ok);
        assert_eq!(value(&replies[10], 0), b"again");
        assert_eq!(value(&replies[10], 1), b"back");
    }
}
