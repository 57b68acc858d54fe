//! A criterion-free driver of the store's hot paths, for exact instruction counts under
//! callgrind (this machine has no hardware counters, and wall-clock time on a shared machine
//! moves by ±15%). It fills a store, then runs one kind of request in a loop of its own, so
//! callgrind can count just that loop:
//!
//! ```sh
//! cargo build --release -p kvmesh-engine --example hotpath
//! valgrind --tool=callgrind --toggle-collect='*hotpath*run_*' \
//!     target/release/examples/hotpath get 100000 200000
//! ```
//!
//! Arguments: `get | put | put_new` (hits, overwrites of the same length, inserts of new keys
//! into a full store, which evict), the entries to fill (12-byte keys, 100-byte values, no
//! deadline) and the requests to run. Keys are drawn by a fixed xorshift, so every run does the
//! same work; the only variation is the store's random hash seed. Instructions per request =
//! the collected total divided by the requests.

use std::hint::black_box;

use kvmesh_engine::{Config, Hlc, Store};

const VALUE_LEN: usize = 100;
const NOW: u64 = 1_700_000_000_000;

fn key(i: usize) -> [u8; 12] {
    let mut k = *b"key:00000000";
    let mut n = i;
    for b in k[4..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

fn next(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n as u64) as usize
}

#[inline(never)]
fn run_gets(store: &mut Store, keys: &[[u8; 12]], entries: usize, ops: usize) -> usize {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sum = 0;
    for _ in 0..ops {
        sum += store
            .get(&keys[next(&mut rng, entries)], NOW)
            .map_or(0, <[u8]>::len);
    }
    sum
}

#[inline(never)]
fn run_puts(store: &mut Store, clock: &mut Hlc, keys: &[[u8; 12]], entries: usize, fresh: bool) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let value = [0xcdu8; VALUE_LEN];
    let ops = keys.len() - entries;
    for i in 0..ops {
        let k = if fresh {
            entries + i
        } else {
            next(&mut rng, entries)
        };
        let applied = store.put(&keys[k], &value, 0, clock.now(NOW), NOW);
        black_box(applied.is_ok());
        store.drain_removals().for_each(drop);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: hotpath get|put|put_new ENTRIES OPS";
    let (op, entries, ops) = match &args[..] {
        [_, op, entries, ops] => (
            op.as_str(),
            entries.parse::<usize>().expect(usage),
            ops.parse::<usize>().expect(usage),
        ),
        _ => panic!("{usage}"),
    };
    let mut clock = Hlc::new(1);
    let value = [0xabu8; VALUE_LEN];
    // put_new runs against a full store: max_memory holds exactly `entries`, so each insert
    // evicts the least recently used entry.
    let max_memory = Store::entry_charge(12, VALUE_LEN) * entries as u64;
    let mut store = Store::new(Config {
        max_memory,
        ..Config::default()
    });
    let keys: Vec<[u8; 12]> = (0..entries + ops).map(key).collect();
    for key in &keys[..entries] {
        store
            .put(key, &value, 0, clock.now(NOW), NOW)
            .expect("max_memory holds every entry");
    }
    match op {
        "get" => {
            black_box(run_gets(&mut store, &keys, entries, ops));
        }
        "put" => run_puts(&mut store, &mut clock, &keys, entries, false),
        "put_new" => run_puts(&mut store, &mut clock, &keys, entries, true),
        _ => panic!("{usage}"),
    }
    println!("{op}: {} entries after {ops} requests", store.len());
}
