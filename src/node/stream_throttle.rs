//! The stream's rate limit: a token bucket in bytes. Pure: time is passed in, so the tests
//! drive it with a fake clock.

use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second on average, with bursts of at most `burst` bytes.
/// A send larger than the burst is allowed once the bucket is full, and leaves it in debt.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    /// Bytes that may go now; negative while paying off a large send.
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// A full bucket at `now`. `rate_bytes_per_sec` 0 means unlimited.
    pub fn new(rate_bytes_per_sec: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate_bytes_per_sec as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Takes `bytes` from the bucket at `now`; returns how long the caller must wait before
    /// sending them (zero when it may send at once). Sends are paced so that, from a full
    /// bucket, at most `burst + rate × t` bytes go out in any `t`.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        // Wait until the bucket holds what this send needs, capped at a full bucket, so a
        // send above the burst goes once the bucket is full and leaves it in debt.
        let need = (bytes as f64).min(self.burst);
        let wait = if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        };
        self.tokens -= bytes as f64;
        // The wait refills the bucket by `need - tokens`: account it as elapsed from now on.
        self.tokens += wait.as_secs_f64() * self.rate;
        self.last += wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Sends as fast as the throttle allows for a simulated `secs` seconds; returns the bytes.
    fn drive(rate: u64, burst: u64, chunk: u64, secs: f64) -> u64 {
        let t0 = Instant::now();
        let mut t = t0;
        let mut th = Throttle::new(rate, burst, t0);
        let mut sent = 0;
        loop {
            t += th.take(chunk, t);
            if (t - t0).as_secs_f64() > secs {
                return sent;
            }
            sent += chunk;
        }
    }

    #[test]
    fn paces_to_the_rate() {
        for (rate, burst, chunk) in [
            (MIB, 256 << 10, 64 << 10),
            (10 * MIB, MIB, 4096),
            (MIB, 1000, 300_000),
        ] {
            let sent = drive(rate, burst, chunk, 10.0) as f64;
            let allowed = (burst + 10 * rate) as f64 + chunk as f64;
            assert!(
                sent <= allowed,
                "{rate}/{burst}/{chunk}: sent {sent} > {allowed}"
            );
            assert!(
                sent >= 0.95 * (10 * rate) as f64,
                "{rate}/{burst}/{chunk}: sent only {sent}"
            );
        }
    }

    #[test]
    fn zero_is_unlimited_and_idle_time_refills_only_a_burst() {
        let t0 = Instant::now();
        let mut th = Throttle::new(0, 1, t0);
        assert_eq!(th.take(u64::MAX / 2, t0), Duration::ZERO);
        let mut th = Throttle::new(1000, 500, t0);
        assert_eq!(th.take(500, t0), Duration::ZERO);
        // A minute idle refills 500 bytes, not 60,000.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(th.take(500, later), Duration::ZERO);
        assert_eq!(th.take(500, later), Duration::from_millis(500));
    }
}
