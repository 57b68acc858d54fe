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
pub async fn open<D: SegmentDir + 'static>(
    dir: D,
    shard: u32,
    config: Config,
    mut apply: impl FnMut(&Record),
) -> Result<(Log, Report)> {
    config.validate().map_err(Error::Unsupported)?;
    let dir = Rc::new(dir);
    let recovered = recover::recover(&*dir, shard, &config, &mut apply).await?;
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
