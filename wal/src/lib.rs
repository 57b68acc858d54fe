//! kvmesh's write-ahead log: one log per shard, so shards share nothing on disk either.
//!
//! # What it owns
//!
//! - the record format ([`record`]) and the segment header ([`header`]): pure codecs with their
//!   byte layouts written above the encoders;
//! - reading a segment back ([`scan`], pure) and recovery ([`recover`]): replay in order,
//!   truncate a torn tail, stop at (or, if asked, skip) damage to synced records;
//! - segment files ([`segment`]): `DIR/000000000042.wal`, preallocated and zeroed before first
//!   use so that an `fdatasync` has no metadata to commit, rotated at a size limit;
//! - group commit ([`log`]): appends are batched while the previous write is in flight, one
//!   `fdatasync` covers every record written before it, and a record is acknowledged only once
//!   its write (and, with `Fsync::Always`, its sync) has completed;
//! - the file seam ([`io`]): the writer and recovery use two small traits, implemented with
//!   glommio's `DmaFile` ([`dma`]) and, for tests, in memory with injected faults ([`testing`]);
//! - snapshots ([`snapshot`], a pure codec; [`snapfile`], their files): a shard's live
//!   entries as of a log position, written beside the segments, checked and renamed into
//!   place; recovery loads the newest and replays only the records after it, and the segments
//!   it covers are removed, so the log stays bounded;
//! - the start-up probe ([`probe`]).
//!
//! It knows nothing of the store: records carry bytes, deadlines and versions, and the caller
//! applies them.
//!
//! # Thread model
//!
//! A [`Log`] lives on the glommio executor of its shard and is `!Send`. [`open`] must run on
//! that executor: it spawns the writer and syncer tasks there. Appending never blocks and never
//! awaits; only waiting for durability does.
//!
//! ```no_run
//! # async fn demo() -> kvmesh_wal::Result<()> {
//! use kvmesh_wal::{dma::DmaDir, Config, Entry, Op};
//!
//! let dir = DmaDir::create_all("/var/lib/kvmesh/shard-0").await.expect("directory");
//! let (log, report) = kvmesh_wal::open(dir, 0, Config::default(), |record| {
//!     // apply `record` to the store
//! })
//! .await?;
//! eprintln!("{report}");
//! let seq = log.append(&Entry { value: b"v", ..Entry::new(Op::Put, b"k") })?;
//! log.durable(seq).await?; // now the put may be acknowledged
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod dma;
pub mod error;
pub mod header;
pub mod io;
pub mod log;
pub mod probe;
pub mod record;
pub mod recover;
pub mod scan;
pub mod segment;
pub mod snapfile;
pub mod snapshot;
pub mod testing;

use std::cell::Cell;
use std::rc::Rc;

pub use config::{Config, Fsync, Recovery};
pub use error::{Error, Result};
pub use log::{Log, Stats};
pub use record::{Entry, Op, Record};
pub use recover::{Loss, Report};

use crate::header::Header;
use crate::io::{SegmentDir, SegmentFile};

/// Opens shard `shard`'s log in `dir`: replays every record into `apply`, in log order,
/// repairs a torn tail, and starts the writer. On a new directory it creates the first
/// segment. Fails on damage to synced records unless `config.recovery` tolerates it.
///
/// The entries of a snapshot, if the directory holds one, come to `apply` first as `Put`
/// records (seq 0); [`open_with`] hands them over without copying.
pub async fn open<D: SegmentDir + 'static>(
    dir: D,
    shard: u32,
    config: Config,
    apply: impl FnMut(&Record),
) -> Result<(Log, Report)> {
    let apply = std::cell::RefCell::new(apply);
    let load = |e: &snapshot::Entry<'_>| (apply.borrow_mut())(&snapshot_record(e));
    open_with(
        dir,
        shard,
        config,
        |_| {},
        load,
        |r| (apply.borrow_mut())(r),
    )
    .await
}

/// A snapshot entry as the `Put` record that would have stored it.
pub fn snapshot_record(e: &snapshot::Entry<'_>) -> Record {
    Record {
        seq: 0,
        op: Op::Put,
        key: e.key.to_vec(),
        value: e.value.to_vec(),
        expires_at_ms: e.expires_at_ms,
        version_hlc: e.version_hlc,
        version_node: e.version_node,
        synced_below: 0,
    }
}

/// Recovers shard `shard`'s state without opening its log for writing: loads the newest
/// snapshot into `load` (after `start` got its header), then replays the later records into
/// `apply` (a torn tail is still truncated). Used to read a data directory written with
/// another shard count.
pub async fn replay<D: SegmentDir>(
    dir: &D,
    shard: u32,
    config: &Config,
    start: impl FnOnce(&snapshot::Header),
    load: impl FnMut(&snapshot::Entry<'_>),
    mut apply: impl FnMut(&Record),
) -> Result<Report> {
    config.validate().map_err(Error::Unsupported)?;
    let mut notes = Vec::new();
    let loaded = snapfile::load_newest(dir, shard, config, &mut notes, start, load).await?;
    let from = loaded.as_ref().map(|l| l.header.covered_seq);
    let mut recovered = recover::recover(dir, shard, config, from, &mut apply).await?;
    recovered.report.snapshot = loaded;
    recovered.report.notes.extend(notes);
    Ok(recovered.report)
}

/// [`open`], with the snapshot's header handed to `start` (to size a table, say) and its
/// entries to `load`, borrowed, before any record goes to `apply`. Also removes what an
/// interrupted snapshot left: a temporary file, segments and older snapshots that the newest
/// one covers.
pub async fn open_with<D: SegmentDir + 'static>(
    dir: D,
    shard: u32,
    config: Config,
    start: impl FnOnce(&snapshot::Header),
    load: impl FnMut(&snapshot::Entry<'_>),
    mut apply: impl FnMut(&Record),
) -> Result<(Log, Report)> {
    config.validate().map_err(Error::Unsupported)?;
    let dir = Rc::new(dir);
    let mut notes = Vec::new();
    let loaded = snapfile::load_newest(&*dir, shard, &config, &mut notes, start, load).await?;
    let from = loaded.as_ref().map(|l| l.header.covered_seq);
    if let Some(seq) = from {
        snapfile::release(&*dir, seq).await?;
    }
    let mut recovered = recover::recover(&*dir, shard, &config, from, &mut apply).await?;
    recovered.report.snapshot = loaded;
    recovered.report.notes.extend(notes);
    let mut new_segments = 0;
    let active = match recovered.tail {
        Some((index, file, block, size, end_of_records)) => log::Active {
            file,
            index,
            path: dir.path(&segment::name(index)),
            block,
            size,
            pos: Cell::new(end_of_records.max(block).div_ceil(block) * block),
        },
        None => {
            let index = recovered.next_index;
            let file = segment::prepare(&*dir, index, config.segment_size).await?;
            let path = dir.path(&segment::name(index));
            let block = config.block.max(file.alignment());
            let header = Header {
                shard,
                first_seq: recovered.next_seq,
                block: block as u32,
            };
            segment::write_header(&file, &path, &header).await?;
            file.sync()
                .await
                .map_err(|e| Error::io("syncing", path.clone(), e))?;
            new_segments = 1;
            log::Active {
                file,
                index,
                path,
                block,
                size: config.segment_size,
                pos: Cell::new(block),
            }
        }
    };
    let log = log::start(dir, shard, config, active, recovered.next_seq, new_segments);
    Ok((log, recovered.report))
}
