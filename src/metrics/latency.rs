//! Request latency histograms: fixed buckets, plain counters, no locks. One set per shard,
//! updated on the shard's own thread and copied out on scrape.

use std::time::Duration;

use kvmesh_proto::wire::OpCode;

/// Upper bounds of the buckets, in microseconds (Prometheus's `le`, in seconds, on export).
/// A last bucket, `+Inf`, holds the rest.
pub const BOUNDS_US: [u64; 17] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000,
];

/// The `op` label of each kind of op, indexed by [`kind`].
pub const KINDS: [&str; 5] = ["get", "put", "remove", "touch", "other"];

/// The index into [`KINDS`] of an op code.
pub fn kind(code: i32) -> usize {
    match OpCode::try_from(code) {
        Ok(OpCode::OpGet) => 0,
        Ok(OpCode::OpPut) => 1,
        Ok(OpCode::OpRemove) => 2,
        Ok(OpCode::OpTouch) => 3,
        _ => 4,
    }
}

/// One latency distribution: a count per bucket, the total count and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `buckets[i]` counts observations in `(BOUNDS_US[i-1], BOUNDS_US[i]]`; the last one
    /// counts those above every bound. Not cumulative.
    pub buckets: [u64; BOUNDS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
}

impl Histogram {
    /// Records `n` observations of `latency`.
    pub fn record(&mut self, latency: Duration, n: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // A request served from memory nearly always lands in the first bucket.
        let i = if us <= BOUNDS_US[0] {
            0
        } else {
            BOUNDS_US.partition_point(|&bound| bound < us)
        };
        self.buckets[i] += n;
        self.count += n;
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
    }
}

/// A shard's request latencies by op kind: the time from parsing a request to its reply being
/// ready (its writes durable, its forwarded ops answered), as seen by the shard that received
/// it. Each op of a batch counts once, with its batch's latency. Requests served on the local
/// fast path (`node::fast`) count, instead, the time from the first fast-path request of
/// their pass over the connection's read buffer to the last one served (an upper bound for
/// each; no general-path await is in it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latencies(pub [Histogram; KINDS.len()]);

impl Latencies {
    /// Records one request: `per_kind[k]` of its ops were of kind `k`.
    pub fn record(&mut self, per_kind: &[u32; KINDS.len()], latency: Duration) {
        for (histogram, &n) in self.0.iter_mut().zip(per_kind) {
            if n > 0 {
                histogram.record(latency, u64::from(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_include_their_upper_bound() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(10), 1);
        h.record(Duration::from_micros(11), 2);
        h.record(Duration::from_secs(10), 1);
        h.record(Duration::ZERO, 1);
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 2);
        assert_eq!(h.buckets[BOUNDS_US.len()], 1);
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_us, 10 + 22 + 10_000_000);
    }

    #[test]
    fn a_batch_counts_each_op_by_kind() {
        let mut l = Latencies::default();
        let mut per_kind = [0u32; KINDS.len()];
        per_kind[kind(OpCode::OpPut as i32)] = 3;
        per_kind[kind(OpCode::OpStats as i32)] = 1;
        l.record(&per_kind, Duration::from_micros(300));
        assert_eq!((l.0[1].count, l.0[1].buckets[5]), (3, 3));
        assert_eq!(l.0[4].count, 1);
        assert_eq!(l.0[0].count, 0);
    }
}
