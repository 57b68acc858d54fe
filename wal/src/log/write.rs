//! The log's writer task: takes the pending batch, writes it at the next fresh block of the
//! active segment (linking the commit's sync behind the write where it can), rotates segments,
//! and tells the syncer and the waiters what was written.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use glommio::io::DmaBuffer;

use super::pending::Sealed;
use super::sync::InFlight;
use super::{Active, Inner, State};
use crate::config::Fsync;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::io::{Linked, SegmentDir, SegmentFile};
use crate::record::{self, Entry, Op, FRAME_LEN};
use crate::segment;

pub(super) async fn write_loop<D: SegmentDir + 'static>(inner: Rc<Inner<D>>) {
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
        let linked = link.and_then(|below| Some((below, self.link_sync(active, &buf, pos)?)));
        let written = match linked {
            Some((below, Linked { write, sync })) => {
                let written = write.await;
                self.state.borrow_mut().linking = false;
                if matches!(written, Ok(n) if n >= buf.len()) {
                    let mut syncs = self.syncs.borrow_mut();
                    syncs.push_back(InFlight::new(below, active.clone(), sync));
                    self.state.borrow_mut().syncing = syncs.len();
                    return Ok(());
                }
                // The write failed or was short, so the kernel cancelled the sync (or, were it
                // to run, it covers only part): once the write is whole, the syncer syncs it. A
                // sync that ran and failed fails the log, as any failed sync does.
                match sync.await {
                    Err(e) if e.raw_os_error() != Some(libc::ECANCELED) => {
                        return Err(Error::io("syncing", active.path.clone(), e));
                    }
                    _ => written,
                }
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
    /// a sync linked behind it, where the file can.
    /// The kernel starts that sync when it processes the write's completion (the shard's rings
    /// defer that work to its next reaping of completions), not after the writer and then the
    /// syncer have run and queued it (bench/PERFORMANCE.md, "A commit's sync linked behind its
    /// write").
    fn link_sync(&self, active: &Active<D::File>, buf: &Rc<DmaBuffer>, pos: u64) -> Option<Linked> {
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
        Some(linked)
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
    pub(super) fn prepare_spare(&self) {
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
