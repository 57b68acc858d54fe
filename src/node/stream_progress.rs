//! A shard's streaming progress: what it has to send, what its destinations acknowledged, what
//! it put on the wire, how fast, and what the last stream cost against its theoretical minimum.
//! Plain counters (the node exports them in `ShardStats`); the rate and the ETA are pure
//! functions of the times passed in.

use std::time::{Duration, Instant};

use kvmesh_net::moves::MoveCost;
use kvmesh_proto::wire::ShardStats;

/// Width of the window the moving rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One shard's streaming counters. `ranges_pending` to `bytes_sent` describe the current (or
/// last) stream; `bytes_streamed`, `retries` and `keys_dropped` add up over the node's life.
#[derive(Clone, Debug, Default)]
pub struct StreamProgress {
    /// The current (or last) stream's state, as `ShardStats.stream_state` carries it.
    pub state: StreamState,
    /// Moved ring ranges this shard still has to finish (its slice of each): set when a stream
    /// starts, 0 once every batch was acknowledged.
    pub ranges_pending: u64,
    /// What the stream has to send: from a counting pass before it starts.
    pub planned: MoveCost,
    /// Key copies and key + value bytes acknowledged by their destinations (progress).
    pub keys_acked: u64,
    pub bytes_acked: u64,
    /// Key + value bytes put on the wire, resends included (cost).
    pub bytes_sent: u64,
    /// Over the node's life: key + value bytes put on the wire, batches resent, keys dropped
    /// as no longer owned.
    pub bytes_streamed: u64,
    pub retries: u64,
    pub keys_dropped: u64,
    /// (time, bytes_acked) samples within the rate window, oldest first.
    samples: Vec<(Instant, u64)>,
}

/// Where a shard's current (or last) stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamState {
    #[default]
    None = 0,
    Running = 1,
    /// Every batch was acknowledged and nothing was refused.
    Done = 2,
    /// It returned an error or was cancelled: the source is not done.
    Failed = 3,
}

impl StreamProgress {
    /// A stream starts: `ranges` moved ranges, `planned` the cost the counting pass found.
    pub fn begin(&mut self, ranges: u64, planned: MoveCost, now: Instant) {
        self.state = StreamState::Running;
        self.ranges_pending = ranges;
        self.planned = planned;
        self.keys_acked = 0;
        self.bytes_acked = 0;
        self.bytes_sent = 0;
        self.samples = vec![(now, 0)];
    }

    /// `bytes` key + value bytes went on the wire (a batch, or a resend of one).
    pub fn sent(&mut self, bytes: u64) {
        self.bytes_sent += bytes;
        self.bytes_streamed += bytes;
    }

    /// `keys` copies of `bytes` key + value bytes were acknowledged at `now`.
    pub fn acked(&mut self, keys: u64, bytes: u64, now: Instant) {
        self.keys_acked += keys;
        self.bytes_acked += bytes;
        self.samples.push((now, self.bytes_acked));
        let cut = now.checked_sub(RATE_WINDOW);
        // Keep one sample at or before the window's start, so the rate spans the window.
        while self.samples.len() > 2 && cut.is_some_and(|c| self.samples[1].0 <= c) {
            self.samples.remove(0);
        }
    }

    /// The stream ended: `done` when every batch was acknowledged and nothing refused, else
    /// it failed or was dropped.
    pub fn finish(&mut self, done: bool) {
        self.state = if done {
            StreamState::Done
        } else {
            StreamState::Failed
        };
        self.ranges_pending = 0;
        self.samples.clear();
    }

    /// The moving rate of acknowledged bytes per second up to `now`; 0 when idle.
    pub fn rate(&self, now: Instant) -> u64 {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return 0;
        };
        let secs = now.saturating_duration_since(first.0).as_secs_f64();
        if secs < 0.001 {
            return 0;
        }
        ((last.1 - first.1) as f64 / secs) as u64
    }

    /// Copies these counters into `stats` (fields 60-69 of `ShardStats`).
    pub fn annotate(&self, stats: &mut ShardStats, now: Instant) {
        stats.stream_ranges_pending = self.ranges_pending;
        stats.stream_keys_planned = self.planned.copies;
        stats.stream_bytes_planned = self.planned.bytes;
        stats.stream_keys_acked = self.keys_acked;
        stats.stream_bytes_acked = self.bytes_acked;
        stats.stream_bytes_sent = self.bytes_sent;
        stats.stream_rate = self.rate(now);
        stats.stream_bytes_total = self.bytes_streamed;
        stats.stream_retries = self.retries;
        stats.stream_keys_dropped = self.keys_dropped;
        stats.stream_state = self.state as u32;
    }
}

/// Planned bytes a shard has not had acknowledged yet: 0 once its stream is done.
pub fn bytes_left(stats: &ShardStats) -> u64 {
    if stats.stream_ranges_pending == 0 {
        return 0;
    }
    stats
        .stream_bytes_planned
        .saturating_sub(stats.stream_bytes_acked)
}

/// Seconds until `bytes_left` are sent at `rate` bytes per second; `None` when nothing moves.
pub fn eta_secs(bytes_left: u64, rate: u64) -> Option<u64> {
    (rate > 0 && bytes_left > 0).then(|| bytes_left.div_ceil(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_left_and_eta() {
        let t0 = Instant::now();
        let mut p = StreamProgress::default();
        let planned = MoveCost {
            keys: 10,
            copies: 10,
            bytes: 10_000,
        };
        p.begin(3, planned, t0);
        assert_eq!(p.rate(t0), 0);
        for s in 1..=4 {
            p.sent(1000);
            p.acked(1, 1000, t0 + Duration::from_secs(s));
        }
        p.sent(1000); // a resend: cost, not progress
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(p.rate(at(4)), 1000);
        let mut stats = ShardStats::default();
        p.annotate(&mut stats, at(4));
        assert_eq!(bytes_left(&stats), 6000);
        assert_eq!(
            (stats.stream_bytes_acked, stats.stream_bytes_sent),
            (4000, 5000)
        );
        assert_eq!(eta_secs(bytes_left(&stats), stats.stream_rate), Some(6));
        // After a burst, the window forgets the slow start.
        for s in 0..10 {
            p.acked(0, 0, at(5 + s));
        }
        p.acked(1, 3000, at(20));
        let r = p.rate(at(20));
        assert!((500..=700).contains(&r), "rate {r}");
        p.finish(true);
        let mut stats = ShardStats::default();
        p.annotate(&mut stats, at(20));
        assert_eq!(
            (
                stats.stream_rate,
                bytes_left(&stats),
                stats.stream_ranges_pending
            ),
            (0, 0, 0)
        );
        assert_eq!(
            (stats.stream_bytes_acked, stats.stream_bytes_total),
            (7000, 5000)
        );
        assert_eq!(eta_secs(0, 10), None);
        assert_eq!(eta_secs(10, 0), None);
    }
}
