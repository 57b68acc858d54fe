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
