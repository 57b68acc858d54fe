//! When each request of one connection goes out: closed loop (as soon as the window has room)
//! or open loop (on a fixed schedule). Pure: the caller passes the time.
//!
//! Open loop follows wrk2: every request has an *intended* send time on the schedule, and its
//! latency is measured from that time, not from when it actually left. A server that stalls
//! therefore shows its stall in every request that was due during it, instead of silently
//! slowing the client down (coordinated omission). Requests due before the end that never
//! left because the window stayed full are counted as `unsent`.

use std::time::{Duration, Instant};

/// How long past the end an open-loop connection still sends requests that were due before it.
pub const LATE_GRACE: Duration = Duration::from_millis(10);

/// The phases of a run, shared by every connection.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// Load starts (warmup).
    pub start: Instant,
    /// Measuring starts: requests sent (or due) from here on count.
    pub measure: Instant,
    /// No request is sent from here on; `None` when the run is bounded by `--requests`.
    pub end: Option<Instant>,
}

/// What the connection should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send one request now; its latency counts from `intended`. `measured`: it was due in
    /// the measured phase (and counts toward `--requests`).
    Send { intended: Instant, measured: bool },
    /// Nothing is due before this time.
    Wait(Instant),
    /// No more requests; drain what is in flight.
    Done,
}

#[derive(Debug)]
pub struct Pacer {
    phases: Phases,
    /// Measured requests still to send (`--requests`).
    quota: Option<u64>,
    /// Open loop: time between two requests of this connection.
    interval: Option<Duration>,
    next_due: Instant,
    unsent: u64,
    done: bool,
}

impl Pacer {
    /// Closed loop: a request goes out whenever the window has room.
    pub fn closed(phases: Phases, quota: Option<u64>) -> Self {
        Self {
            phases,
            quota,
            interval: None,
            next_due: phases.start,
            unsent: 0,
            done: false,
        }
    }

    /// Open loop: one request every `interval`, the first at `start + offset` (connections
    /// use different offsets so their requests do not go out in bursts).
    pub fn open(phases: Phases, quota: Option<u64>, interval: Duration, offset: Duration) -> Self {
        let next_due = phases.start + offset;
        Self {
            phases,
            quota,
            interval: Some(interval.max(Duration::from_nanos(1))),
            next_due,
            unsent: 0,
            done: false,
        }
    }

    pub fn next(&mut self, now: Instant) -> Next {
        if self.done || self.quota == Some(0) {
            self.done = true;
            return Next::Done;
        }
        let due = if self.interval.is_some() {
            self.next_due
        } else {
            now
        };
        if let Some(end) = self.phases.end {
            // Open loop: a request due just before the end still goes out if the connection
            // woke up a little late; past the grace it counts as unsent.
            let grace = if self.interval.is_some() {
                LATE_GRACE
            } else {
                Duration::ZERO
            };
            if due >= end || now >= end + grace {
                self.unsent = self.count_unsent(end);
                self.done = true;
                return Next::Done;
            }
        }
        if due > now {
            return Next::Wait(due);
        }
        let measured = due >= self.phases.measure;
        if measured {
            if let Some(quota) = &mut self.quota {
                *quota -= 1;
            }
        }
        if let Some(interval) = self.interval {
            self.next_due += interval;
        }
        Next::Send {
            intended: due,
            measured,
        }
    }

    /// Whether a request that finished at `now` counts in the results. With a duration, the
    /// requests that finish inside the measured window count (latency still runs from the
    /// intended time, so an overloaded server shows a growing backlog, not a throughput of 0).
    /// With `--requests`, exactly the measured sends count.
    pub fn counts(&self, sent_measured: bool, now: Instant) -> bool {
        match self.phases.end {
            Some(end) => now >= self.phases.measure && now < end,
            None => sent_measured,
        }
    }

    /// Open loop: measured requests that were due before the end but never sent.
    pub fn unsent(&self) -> u64 {
        self.unsent
    }

    fn count_unsent(&self, end: Instant) -> u64 {
        let Some(interval) = self.interval else {
            return 0;
        };
        // Schedule slots k >= 0 at next_due + k * interval; count those in [measure, end).
        let slots_before = |t: Instant| -> u64 {
            let span = t.saturating_duration_since(self.next_due).as_nanos();
            span.div_ceil(interval.as_nanos()) as u64
        };
        let count = slots_before(end).saturating_sub(slots_before(self.phases.measure));
        self.quota.map_or(count, |q| count.min(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn phases(t0: Instant, end: Option<u32>) -> Phases {
        Phases {
            start: t0,
            measure: t0 + 10 * MS,
            end: end.map(|e| t0 + e * MS),
        }
    }

    #[test]
    fn closed_loop_sends_now_and_stops_at_the_end() {
        let t0 = Instant::now();
        let mut p = Pacer::closed(phases(t0, Some(20)), None);
        assert_eq!(
            p.next(t0 + MS),
            Next::Send {
                intended: t0 + MS,
                measured: false
            }
        );
        assert_eq!(
            p.next(t0 + 10 * MS),
            Next::Send {
                intended: t0 + 10 * MS,
                measured: true
            }
        );
        assert_eq!(p.next(t0 + 20 * MS), Next::Done);
        assert_eq!(p.next(t0 + 5 * MS), Next::Done, "done stays done");
        assert_eq!(p.unsent(), 0);
    }

    #[test]
    fn closed_loop_quota_counts_only_measured_sends() {
        let t0 = Instant::now();
        let mut p = Pacer::closed(phases(t0, None), Some(2));
        assert!(matches!(
            p.next(t0),
            Next::Send {
                measured: false,
                ..
            }
        ));
        assert!(matches!(
            p.next(t0 + 11 * MS),
            Next::Send { measured: true, .. }
        ));
        assert!(matches!(
            p.next(t0 + 12 * MS),
            Next::Send { measured: true, .. }
        ));
        assert_eq!(p.next(t0 + 13 * MS), Next::Done);
    }

    #[test]
    fn open_loop_keeps_the_schedule_when_late() {
        let t0 = Instant::now();
        let mut p = Pacer::open(phases(t0, Some(20)), None, 2 * MS, MS);
        assert_eq!(p.next(t0), Next::Wait(t0 + MS));
        assert_eq!(
            p.next(t0 + MS),
            Next::Send {
                intended: t0 + MS,
                measured: false
            }
        );
        // Late by 6 ms: the due requests go out back to back, each keeping its intended time.
        let late = t0 + 9 * MS;
        assert_eq!(
            p.next(late),
            Next::Send {
                intended: t0 + 3 * MS,
                measured: false
            }
        );
        assert_eq!(
            p.next(late),
            Next::Send {
                intended: t0 + 5 * MS,
                measured: false
            }
        );
        assert_eq!(
            p.next(late),
            Next::Send {
                intended: t0 + 7 * MS,
                measured: false
            }
        );
        assert_eq!(
            p.next(late),
            Next::Send {
                intended: t0 + 9 * MS,
                measured: false
            }
        );
        assert_eq!(p.next(late), Next::Wait(t0 + 11 * MS));
        assert_eq!(
            p.next(t0 + 11 * MS),
            Next::Send {
                intended: t0 + 11 * MS,
                measured: true
            }
        );
    }

    #[test]
    fn open_loop_counts_what_it_could_not_send() {
        let t0 = Instant::now();
        let mut p = Pacer::open(phases(t0, Some(20)), None, 2 * MS, MS);
        for _ in 0..6 {
            assert!(matches!(p.next(t0 + 11 * MS), Next::Send { .. }));
        }
        // Sent slots 1,3,5,7,9,11 ms (then 13 ms); due and never sent: 15,17,19 ms.
        // Within the grace after the end, what was due still goes out.
        assert_eq!(
            p.next(t0 + 25 * MS),
            Next::Send {
                intended: t0 + 13 * MS,
                measured: true
            }
        );
        assert_eq!(p.next(t0 + 31 * MS), Next::Done);
        assert_eq!(p.unsent(), 3);
    }

    #[test]
    fn what_counts_is_what_finishes_in_the_window() {
        let t0 = Instant::now();
        let timed = Pacer::closed(phases(t0, Some(20)), None);
        assert!(!timed.counts(true, t0 + 9 * MS));
        assert!(
            timed.counts(false, t0 + 10 * MS),
            "sent in the warmup, finished in the window"
        );
        assert!(!timed.counts(true, t0 + 20 * MS), "finished after the end");
        let counted = Pacer::closed(phases(t0, None), Some(5));
        assert!(counted.counts(true, t0 + 50 * MS));
        assert!(!counted.counts(false, t0 + 50 * MS));
    }

    #[test]
    fn unsent_ignores_the_warmup() {
        let t0 = Instant::now();
        let mut p = Pacer::open(phases(t0, Some(20)), None, 2 * MS, MS);
        // Nothing sent at all: slots 11..19 ms are measured and missed, 1..9 ms were warmup.
        assert_eq!(p.next(t0 + 30 * MS), Next::Done);
        assert_eq!(p.unsent(), 5);
    }
}
