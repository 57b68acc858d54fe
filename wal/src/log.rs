//! One shard's log: appending, group commit, and when a record counts as durable.
//!
//! [`Log::append`] encodes a record into the pending batch at once (no I/O, no await), straight
//! into the aligned buffer its commit write will be issued from ([`pending`]), and returns its
//! sequence number; [`Log::durable`] resolves once the record may be acknowledged.
//! Two tasks do the I/O:
//!
//! - the **writer** takes the whole pending batch as soon as it is idle, writes its buffers at
//!   the next fresh block of the active segment (one write per buffer, usually one; a batch
//!   that crosses a segment's end is copied into new buffers there), and takes the next batch
//!   the moment that write completes; records appended meanwhile fill new buffers and form
//!   that next batch;
//! - the **syncer** ([`sync`]; `Fsync::Always`, `Fsync::Interval`) calls `fdatasync` on the
//!   active segment for everything written so far. With `Fsync::Always` it starts another as
//!   soon as more has been written, with up to `Config::syncs_in_flight` (default 2) in flight,
//!   so a record written while a sync runs does not wait for that sync to finish before one
//!   covering it starts. One sync covers every record written before it started (group
//!   commit), and writes overlap syncs, so the disk never idles while records wait. Results
//!   apply in the order the syncs started: a sync acknowledges its records once it and every
//!   older sync returned `Ok`, and any failed sync fails the log.
//!
//! With `Fsync::Always` the writer links the sync behind a batch's last write where the file
//! can ([`SegmentFile::write_commit_then_sync`]): the device starts it as soon as the write
//! completed, and the writer hands it to the syncer's queue, so no turn of the executor passes
//! between a commit's write and its sync.
//!
//! Each commit starts on a fresh block: a block holding acknowledged records is never written
//! again. When the sync frontier has moved since the last commit, the writer ends the batch
//! with a `Synced` record stating it, so recovery can tell a torn, never-synced tail from
//! damage to records that had been synced.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use glommio::io::DmaBuffer;
use glommio::Task;

use crate::config::{Config, Fsync};
use crate::error::{Error, Result};
use crate::header::Header;
use crate::io::{Linked, SegmentDir, SegmentFile};
use crate::record::{self, Entry, Op, FRAME_LEN};
use crate::segment;

mod pending;
mod sync;
use pending::{Pending, Sealed};
use sync::{sync_loop, InFlight};

/// Counters of one log since it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records appended (sync markers included).
    pub records: u64,
    /// Write operations issued for commits.
    pub writes: u64,
    /// Bytes written for commits, padding included.
    pub bytes: u64,
    /// `fdatasync` calls completed.
    pub syncs: u64,
    /// Segments started (rotations, and the first segment of a new log).
    pub segments: u64,
    /// Time spent in commit writes, in microseconds (summed; writes may overlap syncs).
    pub write_micros: u64,
    /// Time spent in `fdatasync`, in microseconds (summed).
    pub sync_micros: u64,
}

/// What the writer, the syncer and the handles share.
struct State {
    next_seq: u64,
    /// Encoded records not yet taken by the writer, from seq `pending_from`.
    pending: Pending,
    pending_from: u64,
    /// Every seq below has been written.
    written_below: u64,
    /// Every seq below has been synced.
    synced_below: u64,
    /// Every seq below may be acknowledged (written or synced, as the mode says).
    durable_below: u64,
    /// `synced_below` as last stated in a `Synced` record.
    marked_below: u64,
    failure: Option<String>,
    closing: bool,
    closed: bool,
    /// Syncs in flight (`Inner::syncs`).
    syncing: usize,
    /// The writer has a write in flight with a sync linked behind it, not yet in `Inner::syncs`.
    linking: bool,
    /// The writer, waiting for `syncing` to reach zero.
    drain_waiter: Option<Waker>,
    max_payload: usize,
    segment_size: u64,
    waiters: Vec<(u64, Waker)>,
    writer: Option<Waker>,
    syncer: Option<Waker>,
    stats: Stats,
}

impl State {
    fn wake_waiters(&mut self) {
        let all = self.failure.is_some() || self.closed;
        let durable = self.durable_below;
        self.waiters.retain(|(seq, waker)| {
            let ready = all || *seq < durable;
            if ready {
                waker.wake_by_ref();
            }
            !ready
        });
    }

    fn advance_durable(&mut self, below: u64) {
        if below > self.durable_below {
            self.durable_below = below;
            self.wake_waiters();
        }
    }

    fn fail(&mut self, e: &Error) {
        if self.failure.is_none() {
            self.failure = Some(e.to_string());
        }
        self.wake_waiters();
        for waker in [
            self.writer.take(),
            self.syncer.take(),
            self.drain_waiter.take(),
        ]
        .into_iter()
        .flatten()
        {
            waker.wake();
        }
    }
}

/// A handle to one shard's log. Clones share it. Lives on the executor that opened it.
#[derive(Clone)]
pub struct Log {
    state: Rc<RefCell<State>>,
    _tasks: Rc<Vec<Task<()>>>,
}

impl Log {
    /// Adds a record to the pending batch and returns its sequence number. No I/O happens
    /// here; await [`Log::durable`] before acknowledging what the record says.
    ///
    /// Errors: [`Error::Failed`] once the log has failed (it then accepts nothing until
    /// restart) or is closing; [`Error::RecordTooLarge`] when the record cannot fit in a segment.
    pub fn append(&self, entry: &Entry<'_>) -> Result<u64> {
        let mut st = self.state.borrow_mut();
        if let Some(why) = &st.failure {
            return Err(Error::Failed(why.clone()));
        }
        if st.closing {
            return Err(Error::Failed("the log is closing".into()));
        }
        let seq = st.next_seq;
        // The bound first: the exact length is only needed near the limit.
        if entry.max_encoded_len() - FRAME_LEN > st.max_payload {
            let len = entry.encoded_len(seq);
            if len - FRAME_LEN > st.max_payload {
                return Err(Error::RecordTooLarge {
                    len,
                    segment_size: st.segment_size,
                });
            }
        }
        st.pending.push(seq, entry);
        st.next_seq += 1;
        st.stats.records += 1;
        if let Some(writer) = st.writer.take() {
            writer.wake();
        }
        Ok(seq)
    }

    /// Resolves once record `seq` may be acknowledged: written, and with `Fsync::Always`
    /// synced. Fails with [`Error::Failed`] if the log failed before that.
    pub fn durable(&self, seq: u64) -> impl Future<Output = Result<()>> + 'static {
        let state = self.state.clone();
        poll_fn(move |cx| {
            let mut st = state.borrow_mut();
            if st.durable_below > seq {
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = &st.failure {
                return Poll::Ready(Err(Error::Failed(why.clone())));
            }
            st.waiters.push((seq, cx.waker().clone()));
            Poll::Pending
        })
    }

    /// True once record `seq` may be acknowledged.
    pub fn is_durable(&self, seq: u64) -> bool {
        self.state.borrow().durable_below > seq
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.state.borrow().next_seq
    }

    /// Why the log failed, if it did. A failed log accepts no records until restart.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failure.clone()
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> Stats {
        self.state.borrow().stats.clone()
    }

    /// Stops taking records, writes what is pending, lets the syncs in flight return and syncs
    /// the rest. Records appended before are durable, and no sync is in flight, when it returns
    /// `Ok`; a sync that fails meanwhile makes it return the error.
    pub async fn close(&self) -> Result<()> {
        {
            let mut st = self.state.borrow_mut();
            st.closing = true;
            for waker in [st.writer.take(), st.syncer.take()].into_iter().flatten() {
                waker.wake();
            }
        }
        let state = self.state.clone();
        poll_fn(move |cx| {
            let mut st = state.borrow_mut();
            if st.closed {
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = &st.failure {
                return Poll::Ready(Err(Error::Failed(why.clone())));
            }
            st.waiters.push((u64::MAX, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

/// The segment being appended to.
pub(crate) struct Active<F> {
    pub file: F,
    pub index: u64,
    pub path: String,
    pub block: u64,
    pub size: u64,
    /// Where the next commit starts: a multiple of `block`.
    pub pos: Cell<u64>,
}

/// What the writer and the syncer share besides [`State`].
struct Inner<D: SegmentDir> {
    state: Rc<RefCell<State>>,
    dir: Rc<D>,
    shard: u32,
    config: Config,
    active: RefCell<Rc<Active<D::File>>>,
    /// `Fsync::Always`: the syncs in flight, oldest first (the syncer's, and those the writer
    /// linked behind its writes), until their results are applied.
    syncs: RefCell<VecDeque<InFlight<D::File>>>,
    /// The next segment, being prepared in the background.
    spare: RefCell<Option<Task<Result<D::File>>>>,
    /// Index of the next segment.
    next_index: Cell<u64>,
}

/// Starts the writer and syncer of a recovered (or new) log whose next record is `next_seq`
/// and whose active segment is `active`.
pub(crate) fn start<D: SegmentDir + 'static>(
    dir: Rc<D>,
    shard: u32,
    config: Config,
    active: Active<D::File>,
    next_seq: u64,
    new_segments: u64,
) -> Log {
    let state = Rc::new(RefCell::new(State {
        next_seq,
        pending: Pending::new(active.block, config.max_write),
        pending_from: next_seq,
        written_below: next_seq,
        synced_below: next_seq,
        durable_below: next_seq,
        marked_below: 0,
        failure: None,
        closing: false,
        closed: false,
        syncing: 0,
        linking: false,
        drain_waiter: None,
        max_payload: config.max_payload(),
        segment_size: config.segment_size,
        waiters: Vec::new(),
        writer: None,
        syncer: None,
        stats: Stats {
            segments: new_segments,
            ..Stats::default()
        },
    }));
    let next_index = active.index + 1;
    let inner = Rc::new(Inner {
        state: state.clone(),
        dir,
        shard,
        config,
        active: RefCell::new(Rc::new(active)),
        syncs: RefCell::new(VecDeque::new()),
        spare: RefCell::new(None),
        next_index: Cell::new(next_index),
    });
    inner.prepare_spare();
    let mut tasks = vec![glommio::spawn_local(write_loop(inner.clone()))];
    if inner.config.fsync != Fsync::Never {
        tasks.push(glommio::spawn_local(sync_loop(inner)));
    }
    Log {
        state,
        _tasks: Rc::new(tasks),
    }
}

async fn write_loop<D: SegmentDir + 'static>(inner: Rc<Inner<D>>) {
    // The batch's buffers; the vector is kept from batch to batch.
    let mut batch = Vec::new();
    loop {
        let Some((first_seq, end_seq)) = next_batch(&inner.state, &mut batch).await else {
            break;
        };
        let written = inner.write_batch(&mut batch, first_seq).await;
        let mut st = inner.state.borrow_mut();
        if let Err(e) = written {
            st.fail(&e);
            return;
        }
        st.written_below = end_seq;
        if inner.config.fsync != Fsync::Always {
            st.advance_durable(end_seq);
        }
        if let Some(syncer) = st.syncer.take() {
            syncer.wake();
        }
    }
    // Closing: once the syncer's syncs in flight have returned, make everything written
    // durable, whatever the mode.
    if inner.syncs_returned().await.is_err() {
        return;
    }
    let active = inner.active.borrow().clone();
    let synced = active.file.sync().await;
    let mut st = inner.state.borrow_mut();
    match synced {
        Ok(()) => {
            let written = st.written_below;
            st.synced_below = written;
            st.stats.syncs += 1;
            st.closed = true;
            st.advance_durable(written);
            st.wake_waiters();
        }
        Err(e) => st.fail(&Error::io("syncing", active.path.clone(), e)),
    }
}

/// Moves the next batch to write into `batch` (empty) and returns `(first seq, seq after the
/// last)`, or `None` when the log is closing (and nothing is pending) or has failed.
async fn next_batch(state: &Rc<RefCell<State>>, batch: &mut Vec<Sealed>) -> Option<(u64, u64)> {
    poll_fn(|cx| {
        let mut st = state.borrow_mut();
        if st.failure.is_some() {
            return Poll::Ready(None);
        }
        if !st.pending.is_empty() {
            if st.synced_below > st.marked_below {
                let seq = st.next_seq;
                let marker = Entry {
                    synced_below: st.synced_below,
                    ..Entry::new(Op::Synced, b"")
                };
                st.pending.push(seq, &marker);
                st.next_seq += 1;
                st.stats.records += 1;
                st.marked_below = st.synced_below;
            }
            let first = st.pending_from;
            let end = st.next_seq;
            st.pending.take_into(batch);
            st.pending_from = end;
            return Poll::Ready(Some((first, end)));
        }
        if st.closing {
            return Poll::Ready(None);
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

impl<D: SegmentDir + 'static> Inner<D> {
    /// Writes (and empties) a batch whose first record is `first_seq`, rotating segments as
    /// needed.
    async fn write_batch(&self, batch: &mut Vec<Sealed>, first_seq: u64) -> Result<()> {
        let mut seq = first_seq;
        let buffers = batch.len();
        for (i, mut sealed) in batch.drain(..).enumerate() {
            let active = self.active.borrow().clone();
            let pos = active.pos.get();
            // The records padded to this segment's block. A buffer sealed for another block
            // size (a rotation changed it) holds zeros after its records to at least its own
            // block: trimmed to this one when that is shorter, copied when it is longer, so no
            // commit is followed by a whole block of zeros.
            let len = (sealed.len as u64).div_ceil(active.block) * active.block;
            let records = sealed.records;
            if len <= sealed.buf.len() as u64 && len <= active.size.saturating_sub(pos) {
                sealed.buf.trim_to_size(len as usize);
                let started = Instant::now();
                let link = (i + 1 == buffers).then_some(seq + records);
                self.write_sealed(&active, sealed, pos, link).await?;
                self.wrote(&active, pos, len, started);
            } else {
                // The segment's end, or a buffer padded for a smaller block: copied.
                self.write_copied(&sealed.buf.as_bytes()[..sealed.len], seq)
                    .await?;
            }
            seq += records;
        }
        Ok(())
    }

    /// Writes `sealed` whole at `pos` from its own buffer; a short write is continued from a
    /// copy of what it left. `link`, for a batch's last buffer, is the seq after its records.
    async fn write_sealed(
        &self,
        active: &Rc<Active<D::File>>,
        sealed: Sealed,
        pos: u64,
        link: Option<u64>,
    ) -> Result<()> {
        let buf = Rc::new(sealed.buf);
        let written = match link.and_then(|below| self.link_sync(active, &buf, pos, below)) {
            Some((below, Linked { write, sync })) => {
                let written = write.await;
                self.state.borrow_mut().linking = false;
                if matches!(written, Ok(n) if n >= buf.len()) {
                    let mut syncs = self.syncs.borrow_mut();
                    syncs.push_back(InFlight::new(below, active.clone(), sync));
                    self.state.borrow_mut().syncing = syncs.len();
                    return Ok(());
                }
                // The write failed or was short, so the kernel cancelled the sync: once the
                // write is whole, the syncer syncs it.
                let _ = sync.await;
                written
            }
            None => active.file.write_commit(buf.clone(), pos).await,
        };
        let n = written.map_err(|e| Error::io("writing", &active.path, e))?;
        if n >= buf.len() {
            return Ok(());
        }
        let align = active.file.alignment();
        if n == 0 || n as u64 % align != 0 {
            return Err(Error::ShortWrite {
                file: active.path.clone(),
                offset: pos,
                written: n,
                len: buf.len(),
            });
        }
        // The rest already holds its zero padding: pad no further than the alignment.
        let rest = &buf.as_bytes()[n..];
        segment::write_padded(&active.file, &active.path, rest, pos + n as u64, align).await?;
        Ok(())
    }

    /// With `Fsync::Always`, and room for one more sync in flight: writes `buf` at `pos` with
    /// the sync that makes every seq below `below` durable linked behind it, where the file can
    /// (the sync then starts on the device as soon as the write completed, not after the
    /// writer and the syncer have each had their turn on the executor; bench/PERFORMANCE.md,
    /// "A commit's sync linked behind its write").
    fn link_sync(
        &self,
        active: &Active<D::File>,
        buf: &Rc<DmaBuffer>,
        pos: u64,
        below: u64,
    ) -> Option<(u64, Linked)> {
        if self.config.fsync != Fsync::Always
            || self.syncs.borrow().len() >= self.config.syncs_in_flight
        {
            return None;
        }
        let mut st = self.state.borrow_mut();
        if st.closing {
            return None;
        }
        let linked = active.file.write_commit_then_sync(buf.clone(), pos)?;
        st.linking = true;
        Some((below, linked))
    }

    /// Counts a commit write of `len` bytes at `pos` and moves the next commit past it.
    fn wrote(&self, active: &Active<D::File>, pos: u64, len: u64, started: Instant) {
        active.pos.set(pos + len);
        let mut st = self.state.borrow_mut();
        st.stats.writes += 1;
        st.stats.bytes += len;
        st.stats.write_micros += started.elapsed().as_micros() as u64;
    }

    /// Writes `records` (whole records, the first `first_seq`) from copies, rotating segments
    /// as needed.
    async fn write_copied(&self, records: &[u8], first_seq: u64) -> Result<()> {
        let (mut start, mut seq) = (0, first_seq);
        while start < records.len() {
            let active = self.active.borrow().clone();
            let room = active.size.saturating_sub(active.pos.get());
            let (end, count) = chunk(records, start, room, self.config.max_write);
            if count == 0 {
                self.rotate(seq).await?;
                continue;
            }
            let pos = active.pos.get();
            let started = Instant::now();
            let written = segment::write_padded(
                &active.file,
                &active.path,
                &records[start..end],
                pos,
                active.block,
            )
            .await?;
            self.wrote(&active, pos, written, started);
            start = end;
            seq += count;
        }
        Ok(())
    }

    /// Waits until the syncer has no sync in flight; the log's failure if it has failed.
    async fn syncs_returned(&self) -> Result<()> {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if let Some(why) = &st.failure {
                return Poll::Ready(Err(Error::Failed(why.clone())));
            }
            if st.syncing == 0 {
                return Poll::Ready(Ok(()));
            }
            st.drain_waiter = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes the active segment (synced) and starts the next one, whose first record is
    /// `first_seq`.
    async fn rotate(&self, first_seq: u64) -> Result<()> {
        // The syncer's older syncs return first: this sync's results must not be applied
        // before theirs.
        self.syncs_returned().await?;
        let old = self.active.borrow().clone();
        old.file
            .sync()
            .await
            .map_err(|e| Error::io("syncing", old.path.clone(), e))?;
        {
            let mut st = self.state.borrow_mut();
            let written = st.written_below;
            st.synced_below = st.synced_below.max(written);
            st.stats.syncs += 1;
            if self.config.fsync == Fsync::Always {
                st.advance_durable(written);
            }
        }
        let index = self.next_index.get();
        let spare = self.spare.borrow_mut().take();
        let prepared = match spare {
            Some(task) => task.await,
            None => segment::prepare(&*self.dir, index, self.config.segment_size).await,
        };
        let file = match prepared {
            Ok(file) => file,
            // The background attempt failed (say, the disk was full then): try once more.
            Err(_) => segment::prepare(&*self.dir, index, self.config.segment_size).await?,
        };
        let name = segment::name(index);
        let path = self.dir.path(&name);
        let block = self.config.block.max(file.alignment());
        let header = Header {
            shard: self.shard,
            first_seq,
            block: block as u32,
        };
        segment::write_header(&file, &path, &header).await?;
        self.state.borrow_mut().pending.set_block(block);
        *self.active.borrow_mut() = Rc::new(Active {
            file,
            index,
            path,
            block,
            size: self.config.segment_size,
            pos: Cell::new(block),
        });
        self.next_index.set(index + 1);
        self.state.borrow_mut().stats.segments += 1;
        self.prepare_spare();
        Ok(())
    }

    /// Starts preparing segment `next_index` in the background.
    fn prepare_spare(&self) {
        let (dir, index, size) = (
            self.dir.clone(),
            self.next_index.get(),
            self.config.segment_size,
        );
        let task = glommio::spawn_local(async move { segment::prepare(&*dir, index, size).await });
        *self.spare.borrow_mut() = Some(task);
    }
}

/// The records of `batch` from `start` that fit in `room` bytes, and in `max_write` bytes
/// unless a single record is larger: `(end offset, how many records)`.
fn chunk(batch: &[u8], start: usize, room: u64, max_write: usize) -> (usize, u64) {
    let (mut end, mut records) = (start, 0);
    while end < batch.len() {
        let len = record::peek_len(&batch[end..]).map_or(0, |l| l as usize) + FRAME_LEN;
        let next = end + len;
        if (next - start) as u64 > room || (records > 0 && next - start > max_write) {
            break;
        }
        end = next;
        records += 1;
    }
    (end, records)
}
