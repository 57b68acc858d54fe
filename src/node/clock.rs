//! A shard's clock: the monotonic time and the wall-clock milliseconds of one instant, from
//! one clock read.
//!
//! Every request reads both: the monotonic time starts its latency, and the wall-clock
//! milliseconds are its `now_ms` (TTL deadlines, expiry, the version clock). Reading the wall
//! clock costs a second `clock_gettime` and a conversion (about 36 ns here, against 25 ns for
//! the monotonic read: 0.5% of a request at pipeline 1). So the wall clock is read at most once
//! per [`REFRESH`] and extrapolated in between along the monotonic clock: both run at the
//! rate NTP sets, so the two differ only by a step of the wall clock (`settimeofday`, an NTP
//! step), which the shard then sees within [`REFRESH`], as if it had read the wall clock then.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a wall-clock reading is extrapolated before the wall clock is read again.
pub const REFRESH: Duration = Duration::from_millis(10);
/// The longest gap between a monotonic and a wall-clock read that are kept as one anchor.
const ANCHOR_SLACK: Duration = Duration::from_micros(2);

/// See the module docs. Shard-local.
#[derive(Default)]
pub struct Clock {
    /// The last wall-clock reading: when (monotonic), and its nanoseconds since the epoch.
    anchor: Cell<Option<(Instant, u64)>>,
}

impl Clock {
    /// The monotonic time now, and the wall-clock milliseconds since the UNIX epoch at that
    /// time (see the module docs).
    pub fn now(&self) -> (Instant, u64) {
        let now = Instant::now();
        if let Some(ms) = self
            .anchor
            .get()
            .and_then(|anchor| extrapolate(anchor, now))
        {
            return (now, ms);
        }
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        // The wall clock was read just after `now`: kept as the anchor only if that was at
        // once, so an extrapolation is never ahead of the wall clock by more than ANCHOR_SLACK
        // (a thread preempted between the two reads would otherwise put it ahead by as long).
        if now.elapsed() < ANCHOR_SLACK {
            self.anchor.set(Some((now, wall_ns)));
        }
        (now, ms_of(wall_ns))
    }
}

/// The wall-clock milliseconds at `now`, from the reading `(at, wall_ns)`: `None` once the
/// reading is [`REFRESH`] old, or if `now` is before it.
fn extrapolate((at, wall_ns): (Instant, u64), now: Instant) -> Option<u64> {
    let since = now.checked_duration_since(at)?;
    // Below REFRESH, so the nanoseconds fit in a u64.
    (since < REFRESH).then(|| ms_of(wall_ns.saturating_add(since.as_nanos() as u64)))
}

/// Whole milliseconds of `ns` nanoseconds: what `as_millis` gives for the same time.
fn ms_of(ns: u64) -> u64 {
    ns / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extrapolates_a_fresh_reading_to_the_millisecond_it_reaches() {
        let at = Instant::now();
        let wall_ns = 1_700_000_000_999_400_000u64;
        assert_eq!(extrapolate((at, wall_ns), at), Some(1_700_000_000_999));
        // 0.6 ms later the wall clock has crossed into the next millisecond.
        let later = at + Duration::from_micros(600);
        assert_eq!(extrapolate((at, wall_ns), later), Some(1_700_000_001_000));
        let almost = at + REFRESH - Duration::from_nanos(1);
        assert_eq!(extrapolate((at, wall_ns), almost), Some(1_700_000_001_009));
    }

    #[test]
    fn reads_the_wall_clock_again_once_the_reading_is_old() {
        let at = Instant::now() + Duration::from_secs(1);
        assert_eq!(extrapolate((at, 0), at + REFRESH), None);
        assert_eq!(extrapolate((at, 0), at - Duration::from_nanos(1)), None);
    }

    #[test]
    fn agrees_with_the_wall_clock() {
        let clock = Clock::default();
        for _ in 0..1000 {
            let before = super::super::now_ms();
            let (_, ms) = clock.now();
            let after = super::super::now_ms();
            // An anchor is within ANCHOR_SLACK of the wall clock: at most one millisecond
            // boundary apart from it.
            assert!(
                before <= ms + 1 && ms <= after + 1,
                "{before} <= {ms} <= {after}"
            );
        }
    }
}
