//! Store micro-benchmark: get (hit) and put (overwrite) on a store holding 1 000 000 entries
//! (12-byte keys, 100-byte values, no deadline), and bytes per entry measured for real.
//!
//! Run: `cargo bench -p kvmesh-engine --bench store`
//!
//! Memory is measured by this binary's `#[global_allocator]`, a wrapper around the system
//! allocator (glibc malloc) that counts, for every live block, the bytes asked for and the
//! chunk glibc really uses (`malloc_usable_size` + its 8-byte header), and by the resident
//! set size. Both are taken before and after filling the store and divided by the entries;
//! the result is printed next to what the store charges (`bytes_used() / len()`). The arena's
//! class pages are mapped from the kernel (region.rs), not allocated, so the allocator's lines
//! count the hash index (and any large blocks) only; the resident set counts everything.
//!
//! `baseline_hashbrown_get*` is context, not kvmesh: a plain `hashbrown::HashMap` of the same
//! keys to boxed 100-byte values (no LRU, TTL, versions or accounting), reading one value byte,
//! with the same access pattern. At 1M entries both are bound by cache and TLB misses.
//!
//! Plain benches pick keys independently, so the CPU overlaps the misses of consecutive
//! lookups; a short loop like the baseline's gains most from that. The `_dependent` variants
//! pick each key from the previous value read, so lookups cannot overlap, as in a shard that
//! serves one request at a time between parsing and I/O: that is the latency to quote.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use criterion::{Criterion, Throughput};
use kvmesh_engine::{Config, Hlc, Store};

const ENTRIES: usize = 1_000_000;
const VALUE_LEN: usize = 100;
const NOW: u64 = 1_700_000_000_000;

static REQUESTED: AtomicI64 = AtomicI64::new(0);
static CHUNKS: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn chunk(ptr: *mut u8) -> i64 {
    // SAFETY: `ptr` is a live block from the system allocator (glibc malloc).
    unsafe { libc::malloc_usable_size(ptr.cast()) as i64 + 8 }
}

// SAFETY: forwards to `System` unchanged; only adds counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            REQUESTED.fetch_add(layout.size() as i64, Relaxed);
            CHUNKS.fetch_add(chunk(p), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            REQUESTED.fetch_add(layout.size() as i64, Relaxed);
            CHUNKS.fetch_add(chunk(p), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size() as i64, Relaxed);
        CHUNKS.fetch_sub(chunk(ptr), Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = chunk(ptr);
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            REQUESTED.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
            CHUNKS.fetch_add(chunk(p) - old, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64
}

/// xorshift64: a cheap, repeatable spread over the keys.
fn next(state: &mut u64) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % ENTRIES as u64) as usize
}

fn filled_store(keys: &[[u8; 12]], clock: &mut Hlc) -> Store {
    let value = [0xabu8; VALUE_LEN];
    let (requested, chunks, rss) = (REQUESTED.load(Relaxed), CHUNKS.load(Relaxed), rss_bytes());
    let mut store = Store::new(Config::default());
    for key in keys {
        store
            .put(key, &value, 0, clock.now(NOW), NOW)
            .expect("1 GiB holds 1M small entries");
    }
    let per = |bytes: i64| bytes as f64 / ENTRIES as f64;
    println!(
        "store memory at {} entries (12-byte keys, {VALUE_LEN}-byte values, no deadline):",
        store.len()
    );
    println!(
        "  charged  bytes_used/len       {:>7.1} B/entry",
        store.bytes_used() as f64 / store.len() as f64
    );
    println!(
        "  real     malloc chunks        {:>7.1} B/entry (the index; pages are mapped)",
        per(CHUNKS.load(Relaxed) - chunks)
    );
    println!(
        "  real     resident set (RSS)   {:>7.1} B/entry",
        per(rss_bytes() - rss)
    );
    println!(
        "  (asked   of the allocator     {:>7.1} B/entry; key+value payload 112 B)",
        per(REQUESTED.load(Relaxed) - requested)
    );
    store
}

fn main() {
    let keys: Vec<[u8; 12]> = (0..ENTRIES)
        .map(|i| {
            format!("key:{i:08}")
                .into_bytes()
                .try_into()
                .expect("12-byte key")
        })
        .collect();
    let mut clock = Hlc::new(1);
    let mut store = filled_store(&keys, &mut clock);
    store.drain_removals().for_each(drop);

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("store_1M_entries");
    group.throughput(Throughput::Elements(1));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    group.bench_function("get_hit", |b| {
        b.iter(|| black_box(store.get(&keys[next(&mut rng)], NOW).map(<[u8]>::len)))
    });
    group.bench_function("get_hit_dependent", |b| {
        b.iter(|| {
            let byte = store
                .get(&keys[next(&mut rng)], NOW)
                .map_or(0, |v| v[VALUE_LEN / 2]);
            rng ^= u64::from(byte) | 1;
        })
    });
    let value = [0xcdu8; VALUE_LEN];
    group.bench_function("put_overwrite", |b| {
        b.iter(|| {
            let version = clock.now(NOW);
            black_box(store.put(&keys[next(&mut rng)], &value, 0, version, NOW))
        })
    });
    assert_eq!(store.len(), ENTRIES, "no evictions: every put overwrote");
    drop(store);

    let mut map: hashbrown::HashMap<[u8; 12], Box<[u8]>, ahash::RandomState> = Default::default();
    for key in &keys {
        map.insert(*key, Box::new([0xabu8; VALUE_LEN]));
    }
    group.bench_function("baseline_hashbrown_get", |b| {
        b.iter(|| black_box(map.get(&keys[next(&mut rng)]).map(|v| v[VALUE_LEN / 2])))
    });
    group.bench_function("baseline_hashbrown_get_dependent", |b| {
        b.iter(|| {
            let byte = map
                .get(&keys[next(&mut rng)])
                .map_or(0, |v| v[VALUE_LEN / 2]);
            rng ^= u64::from(byte) | 1;
        })
    });
    group.finish();
    c.final_summary();
}
