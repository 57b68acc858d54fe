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
        let synced = active.file.sync().await;
        let mut st = inner.state.borrow_mut();
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

/// One `fdatasync` in flight: the seq it covers below, when it started, its segment, and the
/// call.
struct InFlight<F> {
    target: u64,
    started: Instant,
    active: Rc<Active<F>>,
    call: Pin<Box<dyn Future<Output = std::io::Result<()>>>>,
}

/// `Fsync::Always`: a sync of everything written so far as soon as something written is not
/// covered by a sync already started, with up to `Config::syncs_in_flight` syncs at a time. A
/// sync covers the records whose writes completed before it started, whatever the other syncs
/// in flight do, so a record is acknowledged once any sync that started after its write has
/// returned, and never waits for an older sync to finish before one covering it can start.
async fn sync_always<D: SegmentDir + 'static>(inner: Rc<Inner<D>>) {
    let depth = inner.config.syncs_in_flight.max(1);
    let mut in_flight: Vec<InFlight<D::File>> = Vec::with_capacity(depth);
    let mut issued_below = inner.state.borrow().synced_below;
    poll_fn(|cx| loop {
        let mut i = 0;
        while i < in_flight.len() {
            let Poll::Ready(synced) = in_flight[i].call.as_mut().poll(cx) else {
                i += 1;
                continue;
            };
            let done = in_flight.swap_remove(i);
            let mut st = inner.state.borrow_mut();
            match synced {
                Ok(()) => {
                    st.synced_below = st.synced_below.max(done.target);
                    st.stats.syncs += 1;
                    st.stats.sync_micros += done.started.elapsed().as_micros() as u64;
                    st.advance_durable(done.target);
                }
                Err(e) => {
                    st.fail(&Error::io("syncing", done.active.path.clone(), e));
                    return Poll::Ready(());
                }
            }
        }
        let mut st = inner.state.borrow_mut();
        // A rotation syncs the segment it closes on its own.
        issued_below = issued_below.max(st.synced_below);
        // Closing: the writer makes the rest durable; syncs in flight still finish first.
        if st.failure.is_some() || (st.closing && in_flight.is_empty()) {
            return Poll::Ready(());
        }
        if !st.closing && st.written_below > issued_below && in_flight.len() < depth {
            issued_below = st.written_below;
            drop(st);
            let active = inner.active.borrow().clone();
            let segment = active.clone();
            in_flight.push(InFlight {
                target: issued_below,
                started: Instant::now(),
                active,
                call: Box::pin(async move { segment.file.sync().await }),
            });
            continue;
        }
        st.syncer = Some(cx.waker().clone());
        return Poll::Pending;
    })
    .await
}
