//! One shard's log: appending, group commit, and when a record counts as durable.
//!
//! [`Log::append`] encodes a record into the pending batch at once (no I/O, no await), straight
//! into the aligned buffer its commit write will be issued from ([`pending`]), and returns its
//! sequence number; [`Log::durable`] resolves once the record may be acknowledged.
//! Two tasks do the I/O:
//!
//! - the **writer** ([`write`]) takes the whole pending batch as soon as it is idle, writes its buffers at
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
//! can ([`crate::io::SegmentFile::write_commit_then_sync`]): the kernel starts it when it
//! processes the write's completion, not after the writer and then the syncer have run, and
//! the writer hands it to the syncer's queue once the write returned. The syncer issues no
//! sync of its own meanwhile: the linked one covers everything written before it.
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

use glommio::Task;

use crate::config::{Config, Fsync};
use crate::error::{Error, Result};
use crate::io::SegmentDir;
use crate::record::{Entry, FRAME_LEN};

mod pending;
mod sync;
mod write;
use pending::Pending;
use sync::{sync_loop, InFlight};
use write::write_loop;

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
