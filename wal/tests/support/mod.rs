//! Shared helpers for the log's tests: an executor to run on, and a model of what was replayed.

#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;

use kvmesh_wal::io::SegmentDir;
use kvmesh_wal::{Config, Entry, Log, Op, Record, Report};

/// Runs `f` to completion on a fresh glommio executor.
pub fn run<T>(f: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor (io_uring and 512 KiB of locked memory)")
        .run(f)
}

/// Small segments and blocks, so tests rotate often.
pub fn small(block: u64, blocks_per_segment: u64) -> Config {
    Config {
        block,
        segment_size: block * blocks_per_segment,
        max_write: 4 * block as usize,
        ..Config::default()
    }
}

/// Opens the log, collecting the records replayed.
pub async fn open<D: SegmentDir + 'static>(
    dir: D,
    config: &Config,
) -> kvmesh_wal::Result<(Log, Report, Vec<Record>)> {
    let mut replayed = Vec::new();
    let (log, report) =
        kvmesh_wal::open(dir, 0, config.clone(), |r| replayed.push(r.clone())).await?;
    Ok((log, report, replayed))
}

/// The value of put number `i`: different lengths, so records straddle blocks.
pub fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat((i as usize * 37) % 300)).into_bytes()
}

pub fn put(key: &[u8], value: &[u8]) -> Entry<'static> {
    // Leaked so tests can build entries inline; tiny and test-only.
    let key: &'static [u8] = Box::leak(key.to_vec().into_boxed_slice());
    let value: &'static [u8] = Box::leak(value.to_vec().into_boxed_slice());
    Entry {
        value,
        expires_at_ms: 0,
        version_hlc: 1,
        ..Entry::new(Op::Put, key)
    }
}

/// Appends puts `from..to` (key `k{i}`), each awaited before the next (so every commit after the
/// first carries a sync marker with `Fsync::Always`).
pub async fn put_each(log: &Log, from: u64, to: u64) {
    for i in from..to {
        let seq = log
            .append(&put(format!("k{i}").as_bytes(), &value(i)))
            .unwrap();
        log.durable(seq).await.unwrap();
    }
}

/// The puts among `records`, as `(key, value)`.
pub fn puts(records: &[Record]) -> Vec<(String, Vec<u8>)> {
    records
        .iter()
        .filter(|r| r.op == Op::Put)
        .map(|r| {
            (
                String::from_utf8_lossy(&r.key).into_owned(),
                r.value.clone(),
            )
        })
        .collect()
}

pub fn expected_puts(from: u64, to: u64) -> Vec<(String, Vec<u8>)> {
    (from..to).map(|i| (format!("k{i}"), value(i))).collect()
}
