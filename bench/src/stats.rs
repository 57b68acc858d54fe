//! What a worker records: counters and a latency histogram, for the whole measured phase and
//! for the current one-second progress interval. Owned by one worker thread; merged by the
//! main thread.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::codec::Reply;
use crate::workload::OpKind;

/// Highest latency the histograms track exactly (larger values are clamped to it).
const MAX_LATENCY: Duration = Duration::from_secs(60);
/// Error messages kept to show the user (counts are always complete).
const KEEP_ERRORS: usize = 5;

/// Plain counters of requests, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests answered without error.
    pub ok: u64,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    /// Requests the server answered with an error.
    pub error_replies: u64,
    /// Requests that got no answer within `--timeout`.
    pub timeouts: u64,
    /// Requests in flight on a connection that broke (closed, reset, garbled reply).
    pub lost: u64,
    /// Connections reopened after a failure.
    pub reconnects: u64,
    /// Open loop: requests due before the end that could not be sent in time.
    pub unsent: u64,
}

impl Counters {
    /// Failed requests of every kind.
    pub fn errors(&self) -> u64 {
        self.error_replies + self.timeouts + self.lost
    }

    pub fn add(&mut self, other: &Counters) {
        self.ok += other.ok;
        self.gets += other.gets;
        self.hits += other.hits;
        self.misses += other.misses;
        self.sets += other.sets;
        self.error_replies += other.error_replies;
        self.timeouts += other.timeouts;
        self.lost += other.lost;
        self.reconnects += other.reconnects;
        self.unsent += other.unsent;
    }
}

/// Latencies (nanoseconds) and counters over some span of time.
#[derive(Clone, Debug)]
pub struct Window {
    pub latency: Histogram<u64>,
    pub counts: Counters,
}

impl Default for Window {
    fn default() -> Self {
        let max = MAX_LATENCY.as_nanos() as u64;
        Self {
            latency: Histogram::new_with_bounds(1, max, 3)
                .expect("static histogram bounds are valid"),
            counts: Counters::default(),
        }
    }
}

impl Window {
    pub fn merge(&mut self, other: &Window) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.counts.add(&other.counts);
    }

    fn record(&mut self, kind: OpKind, reply: &Reply, latency_ns: u64) {
        let c = &mut self.counts;
        match kind {
            OpKind::Get => c.gets += 1,
            OpKind::Set => c.sets += 1,
        }
        let ok = match (kind, reply) {
            (OpKind::Get, Reply::Ok) => {
                c.hits += 1;
                true
            }
            (OpKind::Get, Reply::Missing) => {
                c.misses += 1;
                true
            }
            (OpKind::Set, Reply::Ok) => true,
            // Error replies, and a SET answered "missing", which GET/SET never should be.
            _ => {
                c.error_replies += 1;
                false
            }
        };
        if ok {
            c.ok += 1;
            self.latency.saturating_record(latency_ns.max(1));
        }
    }
}

/// How a request failed without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Lost,
}

/// One worker's recorder: the measured phase (`total`) and the running progress interval.
#[derive(Debug, Default)]
pub struct Recorder {
    pub total: Window,
    pub interval: Window,
    /// When the last measured request finished.
    pub last_done: Option<Instant>,
    /// The first few error messages, verbatim.
    pub first_errors: Vec<String>,
}

impl Recorder {
    /// Records one answered request sent (or due, in open loop) at `intended`.
    pub fn complete(
        &mut self,
        kind: OpKind,
        reply: &Reply,
        intended: Instant,
        now: Instant,
        measured: bool,
    ) {
        let latency = now.saturating_duration_since(intended).as_nanos() as u64;
        self.interval.record(kind, reply, latency);
        if measured {
            self.total.record(kind, reply, latency);
            self.last_done = Some(now);
        }
        if let Reply::Error(message) = reply {
            self.note_error(message);
        }
    }

    /// Records `n` requests that failed without an answer.
    pub fn fail(&mut self, failure: Failure, n: u64, measured: u64, why: &str) {
        for (window, n) in [(&mut self.interval, n), (&mut self.total, measured)] {
            match failure {
                Failure::Timeout => window.counts.timeouts += n,
                Failure::Lost => window.counts.lost += n,
            }
        }
        self.note_error(why);
    }

    /// Counts a reopened connection, and requests due that were never sent.
    pub fn count(&mut self, reconnects: u64, unsent: u64) {
        for window in [&mut self.interval, &mut self.total] {
            window.counts.reconnects += reconnects;
            window.counts.unsent += unsent;
        }
    }

    pub fn note_error(&mut self, message: &str) {
        if self.first_errors.len() < KEEP_ERRORS && !self.first_errors.iter().any(|m| m == message)
        {
            self.first_errors.push(message.to_string());
        }
    }

    /// Hands over the progress interval and starts a new one.
    pub fn take_interval(&mut self) -> Window {
        let mut fresh = Window::default();
        std::mem::swap(&mut fresh, &mut self.interval);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_only_successes_timed() {
        let mut rec = Recorder::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_micros(100);
        rec.complete(OpKind::Get, &Reply::Ok, t0, t1, true);
        rec.complete(OpKind::Get, &Reply::Missing, t0, t1, true);
        rec.complete(OpKind::Set, &Reply::Ok, t0, t1, false);
        rec.complete(OpKind::Set, &Reply::Error("OOM".into()), t0, t1, true);
        rec.fail(Failure::Timeout, 3, 2, "no reply");
        let c = rec.total.counts;
        assert_eq!((c.ok, c.hits, c.misses, c.gets, c.sets), (2, 1, 1, 2, 1));
        assert_eq!((c.error_replies, c.timeouts, c.errors()), (1, 2, 3));
        assert_eq!(rec.total.latency.len(), 2);
        assert_eq!(rec.interval.counts.ok, 3);
        assert_eq!(rec.interval.counts.timeouts, 3);
        assert_eq!(
            rec.first_errors,
            vec!["OOM".to_string(), "no reply".to_string()]
        );
        let taken = rec.take_interval();
        assert_eq!(taken.counts.ok, 3);
        assert_eq!(rec.interval.counts, Counters::default());
    }
}
