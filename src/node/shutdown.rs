//! Graceful shutdown of a node, and each shard's serving state.
//!
//! On the first SIGINT or SIGTERM every shard, on its own executor:
//!
//! 1. stops serving: [`Serving::drain`] flips its state (what a health check reads as
//!    `NOT_SERVING`) and wakes every connection waiting for input, and its listeners close, so
//!    it accepts nothing new;
//! 2. drains: each connection finishes the requests it has read, sends their replies and
//!    closes (a wire connection at once; an HTTP/2 connection after a GOAWAY, once its open
//!    streams finish). The shard waits until it has no connection left, or until its share of
//!    `--shutdown-timeout` has passed;
//! 3. waits for every other shard to have drained too, so the ops they still forward to it
//!    over the mesh are answered;
//! 4. syncs and closes its write-ahead log, and returns.
//!
//! Replies are sent only for durable writes (see `durable`), so what a client saw acknowledged
//! survives whatever the drain did not finish. A second signal exits at once (status 1), and
//! recovery at the next start covers that case as it covers a crash. A watchdog ends the
//! process with status 1 if the shards have not stopped within `--shutdown-timeout`.
//!
//! Thread model: [`Serving`] is shard-local (`Rc`); [`Stop`] is the only state shared across
//! shards, read a few times per second and written once per shard at shutdown.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;

/// How often a stopping shard checks for its connections and the other shards.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often a serving shard checks whether the node was asked to stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Whether one shard serves: `true` from start until shutdown begins. Shard-local.
///
/// This is the hook for health checks (`grpc.health.v1.Health` answers `NOT_SERVING` once
/// [`Serving::is_serving`] is false) and what connections wait on to stop reading.
pub struct Serving {
    serving: Cell<bool>,
    /// Never has a permit; closed when draining starts, which wakes every waiter.
    wake: Semaphore,
    /// The wakers of the [`DrainWatch`]es, by slot; woken when draining starts.
    watchers: RefCell<Watchers>,
}

/// The slots of the [`DrainWatch`]es of one shard: a waker each (`None` until it first waits)
/// and the free slots, reused.
#[derive(Default)]
struct Watchers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Default for Serving {
    fn default() -> Self {
        Self::new()
    }
}

impl Serving {
    pub fn new() -> Serving {
        Serving {
            serving: Cell::new(true),
            wake: Semaphore::new(0),
            watchers: RefCell::default(),
        }
    }

    /// True until the shard starts draining.
    pub fn is_serving(&self) -> bool {
        self.serving.get()
    }

    /// Starts draining: [`Serving::is_serving`] turns false, every [`Serving::draining`]
    /// future completes and every [`DrainWatch`] waiting in [`DrainWatch::or_drained`] stops.
    pub fn drain(&self) {
        self.serving.set(false);
        self.wake.close();
        let wakers: Vec<Waker> = self
            .watchers
            .borrow_mut()
            .slots
            .iter_mut()
            .flat_map(Option::take)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// A watch for one connection, which races each of its reads against the drain
    /// ([`DrainWatch::or_drained`]).
    pub fn watch(&self) -> DrainWatch<'_> {
        let mut watchers = self.watchers.borrow_mut();
        let slot = match watchers.free.pop() {
            Some(slot) => slot,
            None => {
                watchers.slots.push(None);
                watchers.slots.len() - 1
            }
        };
        DrainWatch {
            serving: self,
            slot,
        }
    }

    /// Completes once the shard drains. Cheap to create and to drop unfinished, so a
    /// connection races it against each read.
    pub async fn draining(&self) {
        if self.serving.get() {
            // Fails only once closed: that is the wake-up.
            let _ = self.wake.acquire(1).await;
        }
    }
}

/// One connection's registration with its shard's [`Serving`], to stop waiting for input
/// when the shard drains. What [`Serving::draining`] does for any future, made cheap enough
/// for every read of a connection: the connection's waker is stored once, not once per read
/// (a `draining` future registers a waiter, a waker clone, and removes it when dropped), and
/// each wait costs a flag check and a waker comparison.
pub struct DrainWatch<'a> {
    serving: &'a Serving,
    slot: usize,
}

impl DrainWatch<'_> {
    /// `io`'s output, or `None` if the shard drains first. `io` is polled first, so what it
    /// has ready is taken even once draining has started.
    pub async fn or_drained<F: Future>(&mut self, io: F) -> Option<F::Output> {
        let mut io = pin!(io);
        poll_fn(|cx| {
            if let Poll::Ready(output) = io.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if !self.serving.is_serving() {
                return Poll::Ready(None);
            }
            let mut watchers = self.serving.watchers.borrow_mut();
            let waker = &mut watchers.slots[self.slot];
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for DrainWatch<'_> {
    fn drop(&mut self) {
        let mut watchers = self.serving.watchers.borrow_mut();
        watchers.slots[self.slot] = None;
        watchers.free.push(self.slot);
    }
}

/// The node-wide stop request and the shards' progress through it.
#[derive(Clone)]
pub struct Stop {
    /// Set by the first SIGINT or SIGTERM.
    pub requested: Arc<AtomicBool>,
    drained: Arc<AtomicUsize>,
    shards: usize,
    timeout: Duration,
}

impl Stop {
    pub fn new(shards: usize, timeout: Duration) -> Stop {
        Stop {
            requested: Arc::new(AtomicBool::new(false)),
            drained: Arc::new(AtomicUsize::new(0)),
            shards,
            timeout,
        }
    }

    /// The part of `--shutdown-timeout` that draining connections may use; the rest is left
    /// for syncing the log.
    pub fn drain_budget(&self) -> Duration {
        self.timeout - self.timeout / 4
    }

    /// Completes once a stop is requested.
    pub async fn requested(&self) {
        while !self.requested.load(Ordering::Relaxed) {
            glommio::timer::sleep(STOP_POLL).await;
        }
    }

    /// The log line for step 1, written once per node (by shard 0) before anything drains,
    /// so it always precedes the "stopped" line.
    pub fn announce(&self) {
        tracing::info!(
            "stop requested: no longer accepting, draining connections (at most {:?}); \
             a second signal exits at once",
            self.timeout
        );
    }

    /// Shard side of steps 2 and 3 (see the module doc): waits until `open()` reports no
    /// connection left, then until every shard has drained; both bounded by the drain budget
    /// counted from `since`. Returns the connections still open when it gave up waiting.
    pub async fn drain(&self, since: Instant, open: impl Fn() -> u64) -> u64 {
        let deadline = since + self.drain_budget();
        while open() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(DRAIN_POLL).await;
        }
        let left = open();
        self.drained.fetch_add(1, Ordering::AcqRel);
        while self.drained.load(Ordering::Acquire) < self.shards && Instant::now() < deadline {
            glommio::timer::sleep(DRAIN_POLL).await;
        }
        left
    }

    /// Starts a thread that ends the process with status 1 if it is still running
    /// `--shutdown-timeout` after a stop was requested.
    pub fn spawn_watchdog(&self) -> std::io::Result<()> {
        let stop = self.clone();
        std::thread::Builder::new()
            .name("kvmesh-stop".to_string())
            .spawn(move || {
                while !stop.requested.load(Ordering::Relaxed) {
                    std::thread::sleep(STOP_POLL);
                }
                std::thread::sleep(stop.timeout);
                tracing::error!(
                    "shutdown did not finish within --shutdown-timeout {:?}; exiting now \
                     (recovery at the next start covers what was not synced)",
                    stop.timeout
                );
                std::process::exit(1);
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(f)
    }

    #[test]
    fn draining_wakes_every_waiter_and_stays_drained() {
        run(async {
            let serving = std::rc::Rc::new(Serving::new());
            assert!(serving.is_serving());
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let s = serving.clone();
                    glommio::spawn_local(async move { s.draining().await })
                })
                .collect();
            // A waiter dropped unfinished leaves nothing behind.
            let dropped = futures_lite::future::poll_once(serving.draining()).await;
            assert!(dropped.is_none());
            serving.drain();
            for w in waiters {
                w.await;
            }
            assert!(!serving.is_serving());
            serving.draining().await;
        });
    }

    #[test]
    fn a_drain_watch_takes_what_is_ready_and_otherwise_stops_at_the_drain() {
        run(async {
            let serving = std::rc::Rc::new(Serving::new());
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let s = serving.clone();
                    glommio::spawn_local(async move {
                        let mut watch = s.watch();
                        // Polled again after each wake-up by the timer: the same waker.
                        let pending = async {
                            loop {
                                glommio::timer::sleep(Duration::from_millis(5)).await;
                            }
                        };
                        watch.or_drained(pending).await
                    })
                })
                .collect();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            // A watch dropped frees its slot for the next one.
            let slots = serving.watchers.borrow().slots.len();
            drop(serving.watch());
            drop(serving.watch());
            assert_eq!(serving.watchers.borrow().slots.len(), slots + 1);
            serving.drain();
            for w in waiters {
                assert_eq!(w.await, None::<()>);
            }
            // Ready input is taken even while draining; otherwise the drain ends the wait.
            let mut watch = serving.watch();
            assert_eq!(watch.or_drained(async { 7 }).await, Some(7));
            assert_eq!(
                watch
                    .or_drained(futures_lite::future::pending::<()>())
                    .await,
                None
            );
        });
    }

    #[test]
    fn drain_waits_for_connections_and_for_the_other_shards() {
        run(async {
            let stop = Stop::new(2, Duration::from_secs(4));
            assert_eq!(stop.drain_budget(), Duration::from_secs(3));
            let other = stop.clone();
            let open = std::rc::Rc::new(Cell::new(2u64));
            let closing = open.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(30)).await;
                closing.set(0);
                glommio::timer::sleep(Duration::from_millis(30)).await;
                other.drained.fetch_add(1, Ordering::AcqRel);
            })
            .detach();
            let began = Instant::now();
            assert_eq!(stop.drain(began, || open.get()).await, 0);
            assert!(began.elapsed() >= Duration::from_millis(60));
            assert!(began.elapsed() < Duration::from_secs(3));
        });
    }

    #[test]
    fn drain_gives_up_at_its_budget() {
        run(async {
            let stop = Stop::new(2, Duration::from_millis(80));
            let began = Instant::now();
            assert_eq!(stop.drain(began, || 5).await, 5);
            assert!(began.elapsed() >= Duration::from_millis(60));
        });
    }
}
