//! Snapshots of one shard, taken in the background while it serves.
//!
//! A snapshot covers the log below `covered` = the log's next seq when it starts. The store is
//! then scanned in steps of [`SCAN_SLOTS`] slots (see `kvmesh_engine::scan`), the executor
//! serving requests between steps, while their writes go on to the log as usual. Every change
//! from `covered` on is in the log, so the snapshot plus the records from `covered` on rebuild
//! the store, whatever the scan saw of those changes. Before the snapshot is renamed into
//! place, every record appended up to the end of the scan is made durable: a snapshot never
//! holds a change that the log could still lose. Then the segments it covers are removed.
//!
//! Triggers: automatically when the log on disk outgrows the live data by `--snapshot-factor`
//! ([`should_snapshot`], checked every [`CHECK_EVERY`]), and on demand (`OP_SNAPSHOT`, from
//! `kvmesh snapshot`). One snapshot per shard runs at a time; a request during one waits for
//! it, then takes its own.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvmesh_engine::Cursor;
use kvmesh_proto::wire::{OpResult, SnapshotInfo, Status};
use kvmesh_wal::dma::DmaDir;
use kvmesh_wal::snapfile::{self, Writer};
use kvmesh_wal::snapshot::{Entry, Header};

use super::super::reply;
use super::super::shard::Shard;

/// Slots scanned per step before the executor serves requests again.
const SCAN_SLOTS: usize = 4096;
/// How often a shard checks whether its log has outgrown its data.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// One shard's snapshots: where they go and whether one is running.
pub struct Snapshots {
    me: usize,
    shards: usize,
    dir: DmaDir,
    /// `--snapshot-factor`; 0 turns automatic snapshots off.
    factor: f64,
    segment_size: u64,
    running: Cell<bool>,
    /// Snapshots taken since start, and the last failure.
    pub taken: Cell<u64>,
    pub last_error: RefCell<Option<String>>,
}

/// Marks a snapshot as running until dropped.
struct Running<'a>(&'a Cell<bool>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// What one snapshot did.
#[derive(Clone, Debug)]
pub struct Taken {
    pub written: snapfile::Written,
    pub released: snapfile::Released,
    pub elapsed: Duration,
}

/// True when a log of `log_bytes` on disk should be snapshotted for `live_bytes` of data:
/// when it is more than `factor` times the larger of the live data and one segment (so a
/// nearly empty store is not snapshotted after every segment). `factor` 0: never.
pub fn should_snapshot(factor: f64, log_bytes: u64, live_bytes: u64, segment_size: u64) -> bool {
    factor > 0.0 && log_bytes as f64 > factor * live_bytes.max(segment_size) as f64
}

impl Snapshots {
    pub fn new(me: usize, shards: usize, dir: DmaDir, factor: f64, segment_size: u64) -> Self {
        Snapshots {
            me,
            shards,
            dir,
            factor,
            segment_size,
            running: Cell::new(false),
            taken: Cell::new(0),
            last_error: RefCell::new(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.dir().to_path_buf()
    }

    /// Bytes of log segments on disk (preallocated: whole segments, the spare included).
    pub fn log_bytes(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(self.path()) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Takes a snapshot now (after the one running, if any).
    pub async fn take(&self, shard: &Rc<RefCell<Shard>>) -> Result<Taken, String> {
        while self.running.get() {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        self.running.set(true);
        // Cleared also when this future is dropped (the asking connection went away).
        let _running = Running(&self.running);
        let result = self.write(shard).await;
        match &result {
            Ok(_) => self.taken.set(self.taken.get() + 1),
            Err(e) => *self.last_error.borrow_mut() = Some(e.clone()),
        }
        result
    }

    async fn write(&self, shard: &Rc<RefCell<Shard>>) -> Result<Taken, String> {
        let started = Instant::now();
        let me = self.me;
        let log = shard
            .borrow()
            .log()
            .cloned()
            .ok_or_else(|| format!("shard {me} has no write-ahead log"))?;
        if let Some(why) = log.failure() {
            return Err(format!("shard {me}'s write-ahead log failed: {why}"));
        }
        let covered = log.next_seq();
        let header = Header {
            shard: me as u32,
            shards: self.shards as u32,
            covered_seq: covered,
            entries_hint: u32::try_from(shard.borrow().store().len()).unwrap_or(u32::MAX),
        };
        let fail = |e: kvmesh_wal::Error| format!("shard {me}: snapshot failed: {e}");
        let mut writer = Writer::create(self.dir.clone(), header)
            .await
            .map_err(fail)?;
        let mut cursor = Some(Cursor::START);
        while let Some(at) = cursor {
            cursor =
                shard
                    .borrow_mut()
                    .store_mut()
                    .scan(at, SCAN_SLOTS, super::super::now_ms(), |e| {
                        writer.push(&Entry {
                            key: e.key,
                            value: e.value,
                            expires_at_ms: e.expires_at_ms,
                            version_hlc: e.version.hlc,
                            version_node: e.version.node,
                        })
                    });
            writer.flush().await.map_err(fail)?;
            futures_lite::future::yield_now().await;
        }
        // Nothing the scan saw may be less durable than the snapshot.
        let last = log.next_seq().saturating_sub(1);
        if last > 0 {
            log.durable(last).await.map_err(fail)?;
        }
        let written = writer.finish().await.map_err(fail)?;
        let released = snapfile::release(&self.dir, covered).await.map_err(fail)?;
        Ok(Taken {
            written,
            released,
            elapsed: started.elapsed(),
        })
    }

    /// The reply to `OP_SNAPSHOT`.
    pub async fn reply(&self, shard: &Rc<RefCell<Shard>>) -> OpResult {
        match self.take(shard).await {
            Ok(t) => OpResult {
                snapshot: Some(Box::new(SnapshotInfo {
                    shard: self.me as u32,
                    file: t.written.file,
                    covered_seq: t.written.covered_seq,
                    entries: t.written.entries,
                    bytes: t.written.bytes,
                    segments_removed: t.released.segments.len() as u64,
                    snapshots_removed: t.released.snapshots.len() as u64,
                    elapsed_us: t.elapsed.as_micros() as u64,
                })),
                ..OpResult::default()
            },
            Err(e) => reply::status(Status::Unavailable, e),
        }
    }

    /// Checks every [`CHECK_EVERY`] whether the log has outgrown the data, and snapshots then.
    pub async fn run_automatic(self: Rc<Self>, shard: Rc<RefCell<Shard>>) {
        if self.factor <= 0.0 {
            return;
        }
        loop {
            glommio::timer::sleep(CHECK_EVERY).await;
            let live = shard.borrow().store().bytes_used();
            if self.running.get()
                || !should_snapshot(self.factor, self.log_bytes(), live, self.segment_size)
            {
                continue;
            }
            match self.take(&shard).await {
                Ok(t) => tracing::info!(
                    "shard {}: snapshot {} ({} entries, {} bytes) in {} ms; removed {} \
                     segment(s)",
                    self.me,
                    t.written.file,
                    t.written.entries,
                    t.written.bytes,
                    t.elapsed.as_millis(),
                    t.released.segments.len()
                ),
                Err(e) => {
                    tracing::warn!("{e}; retrying in 10s");
                    glommio::timer::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_table() {
        const MIB: u64 = 1 << 20;
        // (factor, log bytes, live bytes, segment size, snapshot?)
        let cases = [
            (4.0, 4 * 64 * MIB, MIB, 64 * MIB, false), // small data: 4 segments are fine
            (4.0, 5 * 64 * MIB, MIB, 64 * MIB, true),
            (4.0, 5 * 64 * MIB, 100 * MIB, 64 * MIB, false), // big data: up to 400 MiB
            (4.0, 7 * 64 * MIB, 100 * MIB, 64 * MIB, true),
            (0.0, 1000 * 64 * MIB, 0, 64 * MIB, false), // off
            (2.0, 3 * MIB, 0, MIB, true),
        ];
        for (factor, log, live, seg, want) in cases {
            assert_eq!(
                should_snapshot(factor, log, live, seg),
                want,
                "{factor} {log} {live} {seg}"
            );
        }
    }
}
