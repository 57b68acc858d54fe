//! The log's syncer task: when `fdatasync` is called, and what each completed sync lets the
//! log acknowledge.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use super::{Active, Inner};
use crate::config::Fsync;
use crate::error::Error;
use crate::io::{SegmentDir, SegmentFile};

/// The syncer (`Fsync::Always`, `Fsync::Interval`; there is none with `Fsync::Never`).
pub(super) async fn sync_loop<D: SegmentDir + 'static>(inner: Rc<Inner<D>>) {
    if inner.config.fsync == Fsync::Always {
        return sync_always(inner).await;
    }
    let mut last_sync = Instant::now();
    loop {
        let due = inner
            .config
            .fsync_interval
            .saturating_sub(last_sync.elapsed());
        glommio::timer::sleep(due).await;
        let (target, active) = {
            let st = inner.state.borrow();
            if st.failure.is_some() || st.closing {
                return;
            }
            (st.written_below, inner.active.borrow().clone())
        };
        last_sync = Instant::now();
        if target <= inner.state.borrow().synced_below {
            continue;
        }
        inner.state.borrow_mut().syncing = 1;
        let synced = active.file.sync().await;
        let mut st = inner.state.borrow_mut();
        st.syncing = 0;
        if let Some(writer) = st.drain_waiter.take() {
            writer.wake();
        }
        match synced {
            Ok(()) => {
                st.synced_below = st.synced_below.max(target);
                st.stats.syncs += 1;
                st.stats.sync_micros += last_sync.elapsed().as_micros() as u64;
            }
            Err(e) => {
                st.fail(&Error::io("syncing", active.path.clone(), e));
                return;
            }
        }
    }
}

/// One `fdatasync` in flight: the seq it covers below, when it was queued (a linked one: when
/// its write returned, so its time is counted from there), its segment, the call, and once
/// returned its result and how long it took, held until every older sync has returned.
pub(super) struct InFlight<F> {
    target: u64,
    started: Instant,
    active: Rc<Active<F>>,
    call: Pin<Box<dyn Future<Output = std::io::Result<()>>>>,
    returned: Option<(std::io::Result<()>, u64)>,
}

impl<F> InFlight<F> {
    /// A sync of `active`, queued now, that makes every seq below `target` durable.
    pub(super) fn new(
        target: u64,
        active: Rc<Active<F>>,
        call: Pin<Box<dyn Future<Output = std::io::Result<()>>>>,
    ) -> InFlight<F> {
        InFlight {
            target,
            started: Instant::now(),
            active,
            call,
            returned: None,
        }
    }
}

/// `Fsync::Always`: a sync of everything written so far as soon as something written is not
/// covered by a sync already started, with up to `Config::syncs_in_flight` syncs at a time
/// (`Inner::syncs`, where the writer also puts the syncs it linked behind its writes). A
/// sync covers the records whose writes completed before it started, whatever the other syncs
/// in flight do, so a record never waits for an older sync to finish before one covering it
/// can start. Results are applied in the order the syncs started: a sync's records are
/// acknowledged once it and every older sync have returned `Ok`, and any error fails the log
/// without applying the results held behind it (a device that loses written data on a failed
/// flush may report the next flush as a success).
async fn sync_always<D: SegmentDir + 'static>(inner: Rc<Inner<D>>) {
    let depth = inner.config.syncs_in_flight;
    let mut issued_below = inner.state.borrow().synced_below;
    poll_fn(|cx| loop {
        let mut in_flight = inner.syncs.borrow_mut();
        // The writer's linked syncs are pushed in order, each covering all written before.
        issued_below = issued_below.max(in_flight.back().map_or(0, |s| s.target));
        for sync in in_flight.iter_mut().filter(|s| s.returned.is_none()) {
            if let Poll::Ready(returned) = sync.call.as_mut().poll(cx) {
                sync.returned = Some((returned, sync.started.elapsed().as_micros() as u64));
            }
        }
        let mut st = inner.state.borrow_mut();
        if let Some(failed) = in_flight
            .iter_mut()
            .find(|s| matches!(s.returned, Some((Err(_), _))))
        {
            if let Some((Err(e), _)) = failed.returned.take() {
                st.fail(&Error::io("syncing", failed.active.path.clone(), e));
            }
            return Poll::Ready(());
        }
        while in_flight.front().is_some_and(|s| s.returned.is_some()) {
            let Some(done) = in_flight.pop_front() else {
                break;
            };
            st.synced_below = st.synced_below.max(done.target);
            st.stats.syncs += 1;
            st.stats.sync_micros += done.returned.map_or(0, |(_, micros)| micros);
            st.advance_durable(done.target);
        }
        st.syncing = in_flight.len();
        if st.syncing == 0 {
            if let Some(writer) = st.drain_waiter.take() {
                writer.wake();
            }
        }
        // A rotation syncs the segment it closes on its own.
        issued_below = issued_below.max(st.synced_below);
        if st.failure.is_some() {
            return Poll::Ready(());
        }
        // Closing: the syncs in flight return first (a linked one too, once the writer hands
        // it over), then the writer makes the rest durable.
        if st.closing && in_flight.is_empty() && !st.linking {
            return Poll::Ready(());
        }
        // While the writer has a write in flight with a sync linked behind it, that sync will
        // cover everything written so far, and the kernel may already have started it: a sync
        // issued here now could start after it yet sit before it in `in_flight`, and be applied
        // before it returned.
        if !st.closing && !st.linking && st.written_below > issued_below && in_flight.len() < depth
        {
            issued_below = st.written_below;
            drop(st);
            let active = inner.active.borrow().clone();
            let segment = active.clone();
            let call = Box::pin(async move { segment.file.sync().await });
            in_flight.push_back(InFlight::new(issued_below, active, call));
            continue;
        }
        st.syncer = Some(cx.waker().clone());
        return Poll::Pending;
    })
    .await
}
