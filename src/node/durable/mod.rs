//! Durability: each shard's write-ahead log (`kvmesh-wal`), wired to its store.
//!
//! # The write path
//!
//! A shard **applies, then logs**: `Shard::execute` applies a write to the store, appends its
//! record (after those of the evictions and expirations it caused) to the log's pending batch,
//! and returns the record's sequence number; the front-end then awaits
//! [`kvmesh_wal::Log::durable`] before sending the reply, while the shard goes on executing
//! other ops. Applying first keeps the log an exact history of the store: every eviction is
//! logged before the put that caused it, so replay rebuilds the same store with no eviction
//! decisions of its own. The price is that a change is in the store before it is durable;
//! so every keyed op, reads included, also waits for the latest logged change to its key
//! ([`Pending`]) before it is answered. Hence:
//!
//! - a reply is sent only after the change it reports, and every change it read, is durable
//!   (written, and with `--fsync always` synced): an acknowledged write survives `kill -9`;
//! - a get sent after a put was acknowledged sees it (the store holds it);
//! - no client sees a change that a crash could still undo;
//! - when the log fails (a full disk, an I/O error), nothing it had not made durable is
//!   acknowledged: those ops, and reads of their keys, get `UNAVAILABLE`, and the shard
//!   refuses further writes before applying them, while it keeps serving every other read.
//!   The changes applied but not logged are not in the log, so a restart drops them.
//!
//! # Start
//!
//! Each shard loads its newest snapshot and replays the later segments into its store before
//! it joins the mesh ([`open_log`]), keeping TTLs' absolute deadlines, and resumes its clock
//! above the largest version replayed. A data directory written with another shard count is
//! redistributed first ([`reshard`]).
//!
//! # Snapshots
//!
//! Each shard snapshots itself in the background when its log outgrows its data, or when
//! asked (`OP_SNAPSHOT`), and then removes the segments the snapshot covers ([`snapshot`]).

pub mod datadir;
pub mod dropped;
mod pending;
mod replay;
pub mod reshard;
pub mod snapshot;

use std::path::PathBuf;
use std::rc::Rc;

use kvmesh_proto::wire::OpResult;
use kvmesh_wal::dma::DmaDir;
use kvmesh_wal::{Fsync, Log};

pub use pending::Pending;
pub use replay::Replay;
pub use snapshot::Snapshots;

use super::reply;
use super::shard::Shard;

/// A node's durability settings; present only with `--data-dir`.
#[derive(Clone, Debug)]
pub struct Durability {
    /// The locked data directory (see [`datadir`]).
    pub data_dir: PathBuf,
    /// How each shard's log syncs, rotates and recovers.
    pub wal: kvmesh_wal::Config,
    /// A shard snapshots when its log on disk is more than this many times the larger of its
    /// live data and one segment (a ratio); 0 turns automatic snapshots off. Default: 4.
    pub snapshot_factor: f64,
}

/// The default of [`Durability::snapshot_factor`].
pub const DEFAULT_SNAPSHOT_FACTOR: f64 = 4.0;

/// The flag value of a sync mode.
pub fn fsync_name(fsync: Fsync) -> &'static str {
    match fsync {
        Fsync::Always => "always",
        Fsync::Interval => "interval",
        Fsync::Never => "never",
    }
}

/// What a sync mode promises, for the start-up message.
pub fn fsync_promise(wal: &kvmesh_wal::Config) -> String {
    match wal.fsync {
        Fsync::Always => {
            "a write is acknowledged after an fdatasync covers it; survives power loss".to_string()
        }
        Fsync::Interval => format!(
            "synced every {:?}; a power loss can lose the writes of that window",
            wal.fsync_interval
        ),
        Fsync::Never => {
            "never synced; survives a crash of the process, not a power loss".to_string()
        }
    }
}

/// Opens shard `me` (of `shards`)'s log in the data directory, loads its newest snapshot and
/// replays the later records into `shard`, and attaches the log. Returns the recovery report,
/// one line per finding, and the shard's snapshot taker.
pub async fn open_log(
    me: usize,
    shards: usize,
    durability: &Durability,
    shard: &mut Shard,
) -> Result<(String, Rc<Snapshots>), String> {
    let path = datadir::shard_dir(&durability.data_dir, me);
    let dir = DmaDir::create_all(&path)
        .await
        .map_err(|e| format!("shard {me}: cannot open {}: {e}", path.display()))?;
    let replay = std::cell::RefCell::new(Replay::new(super::now_ms()));
    let store = std::cell::RefCell::new(shard.store_mut());
    let (log, report) = kvmesh_wal::open_with(
        dir.clone(),
        me as u32,
        durability.wal.clone(),
        |header| store.borrow_mut().reserve(header.entries_hint as usize),
        |entry| replay.borrow_mut().load(&mut store.borrow_mut(), entry),
        |record| replay.borrow_mut().apply(&mut store.borrow_mut(), record),
    )
    .await
    .map_err(|e| format!("shard {me}: recovery stopped: {e}"))?;
    let replay = replay.into_inner();
    if let Some(loaded) = &report.snapshot {
        if loaded.header.shards as usize != shards {
            return Err(format!(
                "shard {me}: {} was written for {} shards, the node runs {shards}: the data \
                 directory's shard count was changed by hand",
                loaded.file, loaded.header.shards
            ));
        }
    }
    let mut text = report.to_string();
    if replay.refused > 0 {
        text.push_str(&format!(
            "\nshard {me}: {} put(s) not restored under the current limits (first: {})",
            replay.refused,
            replay.first_refusal.as_deref().unwrap_or("")
        ));
    }
    shard.attach_log(log, replay);
    let snapshots = Snapshots::new(
        me,
        shards,
        dir,
        durability.snapshot_factor,
        durability.wal.segment_size,
    );
    Ok((text, Rc::new(snapshots)))
}

/// Waits until the records in `waits` (`(index into results, seq)`) are durable. If the log
/// fails first, each result whose record it did not make durable becomes `UNAVAILABLE`.
pub async fn settle(me: usize, log: Option<Log>, results: &mut [OpResult], waits: &[(usize, u64)]) {
    let (Some(log), Some(&last)) = (log, waits.iter().map(|(_, seq)| seq).max()) else {
        return;
    };
    if let Err(e) = log.durable(last).await {
        let why = log.failure().unwrap_or_else(|| e.to_string());
        for &(i, seq) in waits {
            if !log.is_durable(seq) {
                results[i] = reply::not_logged(me, &why);
            }
        }
    }
}

/// Tests: `shard` with a log on the in-memory directory `dir`, replayed at `now_ms`, with small
/// blocks and segments so that tests rotate segments too.
#[cfg(test)]
pub(crate) async fn with_mem_log(
    mut shard: Shard,
    dir: kvmesh_wal::testing::MemDir,
    now_ms: u64,
) -> Shard {
    let config = kvmesh_wal::Config {
        block: 512,
        segment_size: 512 * 64,
        max_write: 4096,
        ..kvmesh_wal::Config::default()
    };
    let mut replay = Replay::new(now_ms);
    let (log, _) = kvmesh_wal::open(dir, 0, config, |r| replay.apply(shard.store_mut(), r))
        .await
        .expect("a new log opens");
    shard.attach_log(log, replay);
    shard
}

#[cfg(test)]
mod tests {
    use kvmesh_engine::Config as StoreConfig;
    use kvmesh_proto::wire::{Op, OpCode, Status, Topology};
    use kvmesh_wal::testing::{Fault, MemDir};

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(f)
    }

    async fn durable_shard(dir: MemDir) -> Shard {
        let shard = Shard::new(0, 7, StoreConfig::default(), Topology::default());
        with_mem_log(shard, dir, NOW).await
    }

    fn op(code: OpCode, key: &str, value: &str) -> Op {
        kvmesh_net::client::op(code, key.as_bytes(), value.as_bytes(), 0)
    }

    /// Executes `op` and waits, as a front-end does, for what its reply depends on.
    async fn call(shard: &mut Shard, op: Op) -> OpResult {
        let executed = shard.execute(&op, NOW);
        let mut results = [executed.result];
        let waits: Vec<(usize, u64)> = executed.wait.map(|seq| (0, seq)).into_iter().collect();
        settle(0, shard.log().cloned(), &mut results, &waits).await;
        let [result] = results;
        result
    }

    #[test]
    fn a_read_waits_for_an_unlogged_write_to_its_key_only() {
        run(async {
            let mut shard = durable_shard(MemDir::new(512)).await;
            let put = shard.execute(&op(OpCode::OpPut, "k", "v"), NOW);
            let seq = put.wait.expect("a logged put waits");
            // Another connection reads before the put is durable: it sees the value, but its
            // reply waits for the same record.
            let get = shard.execute(&op(OpCode::OpGet, "k", ""), NOW);
            assert_eq!(
                (get.result.value.as_slice(), get.wait),
                (&b"v"[..], Some(seq))
            );
            let other = shard.execute(&op(OpCode::OpGet, "other", ""), NOW);
            assert_eq!(other.wait, None);
            shard.log().unwrap().durable(seq).await.unwrap();
            assert_eq!(shard.execute(&op(OpCode::OpGet, "k", ""), NOW).wait, None);
        });
    }

    #[test]
    fn a_failed_log_refuses_writes_and_keeps_serving_reads() {
        run(async {
            let dir = MemDir::new(512);
            let mut shard = durable_shard(dir.clone()).await;
            assert_eq!(
                call(&mut shard, op(OpCode::OpPut, "a", "1")).await.status(),
                Status::Ok
            );

            dir.faults().on_write(0, Fault::Error(libc::ENOSPC));
            let lost = call(&mut shard, op(OpCode::OpPut, "b", "2")).await;
            assert_eq!(lost.status(), Status::Unavailable);
            assert!(
                lost.message.contains("not acknowledged"),
                "{}",
                lost.message
            );
            assert!(lost.message.contains("no space left"), "{}", lost.message);
            // A read of that key cannot be answered with a change the log never got.
            let read = call(&mut shard, op(OpCode::OpGet, "b", "")).await;
            assert_eq!(read.status(), Status::Unavailable, "{}", read.message);

            for write in [
                op(OpCode::OpPut, "c", "3"),
                op(OpCode::OpRemove, "a", ""),
                op(OpCode::OpTouch, "a", ""),
            ] {
                let refused = call(&mut shard, write).await;
                assert_eq!(refused.status(), Status::Unavailable);
                assert!(
                    refused.message.contains("write refused"),
                    "{}",
                    refused.message
                );
            }
            // Refused writes were not applied; reads of everything else go on.
            let a = call(&mut shard, op(OpCode::OpGet, "a", "")).await;
            assert_eq!((a.status(), a.value.as_slice()), (Status::Ok, &b"1"[..]));
            let c = call(&mut shard, op(OpCode::OpGet, "c", "")).await;
            assert_eq!(c.status(), Status::NotFound);
            assert_eq!(shard.stats().wal_failed, 1);
        });
    }
}
