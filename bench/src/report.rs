//! The result of a run: one flat record, printed as a human summary and as one JSON line.
//! Latencies are in microseconds; `null` means "not measured" (e.g. no server pid given).

use serde::{Deserialize, Serialize};

use crate::stats::Window;

/// Everything a run reports. Unknown or missing fields are tolerated when reading (tables).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub addr: String,
    pub shards: u32,
    pub mode: String,
    pub connections: usize,
    pub pipeline: usize,
    /// gRPC: keys per call (`MultiGet`/`MultiPut` when above 1); 0 in reports from before it.
    pub batch: usize,
    pub keys: u32,
    pub key_dist: String,
    pub value_size: usize,
    pub read_ratio: f64,
    pub ttl_ms: u64,
    pub rate: Option<f64>,
    pub workers: usize,
    pub cpus: Option<String>,

    /// Seconds measured: the `--duration` window (requests that finish inside it count), or
    /// with `--requests`, from the start of measuring to the last reply.
    pub elapsed_s: f64,
    /// Requests measured: answered or failed.
    pub requests: u64,
    /// Failed requests: error replies, timeouts and requests lost on broken connections.
    pub errors: u64,
    pub error_replies: u64,
    pub timeouts: u64,
    pub lost: u64,
    pub reconnects: u64,
    /// Open loop: measured requests due that could not be sent before the end.
    pub unsent: u64,
    /// Successful requests per second.
    pub ops_per_sec: f64,
    pub gets: u64,
    pub sets: u64,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); `null` without GETs.
    pub hit_rate: Option<f64>,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,

    pub prefill_keys: u64,
    pub prefill_errors: u64,
    pub prefill_s: f64,

    pub server_pid: Option<u32>,
    /// Server user + system CPU seconds over the measured phase.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_req: Option<f64>,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// (RSS after the prefill − RSS before) / keys prefilled.
    pub rss_bytes_per_key: Option<f64>,

    /// The first few distinct error messages, verbatim.
    pub first_errors: Vec<String>,
    /// Connections that stopped early, and why.
    pub failures: Vec<String>,
}

impl Report {
    /// Fills the counters and latencies from the merged measured window.
    pub fn set_results(&mut self, total: &Window, elapsed_s: f64) {
        let c = &total.counts;
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        let h = &total.latency;
        self.elapsed_s = elapsed_s;
        self.requests = c.ok + c.errors();
        self.errors = c.errors();
        self.error_replies = c.error_replies;
        self.timeouts = c.timeouts;
        self.lost = c.lost;
        self.reconnects = c.reconnects;
        self.unsent = c.unsent;
        self.ops_per_sec = if elapsed_s > 0.0 {
            (c.ok as f64 / elapsed_s).round()
        } else {
            0.0
        };
        self.gets = c.gets;
        self.sets = c.sets;
        self.hits = c.hits;
        self.misses = c.misses;
        self.hit_rate = (c.hits + c.misses > 0).then(|| c.hits as f64 / (c.hits + c.misses) as f64);
        self.mean_us = if h.is_empty() {
            0.0
        } else {
            us(h.mean() as u64)
        };
        self.p50_us = us(h.value_at_quantile(0.50));
        self.p90_us = us(h.value_at_quantile(0.90));
        self.p99_us = us(h.value_at_quantile(0.99));
        self.p999_us = us(h.value_at_quantile(0.999));
        self.max_us = us(h.max());
    }

    /// The human summary, several lines.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "{} ({}) at {}: {} connections x pipeline {}{}, {} keys {}, {} B values, {:.0}% GET, {} loop{}",
            self.label,
            self.target,
            self.addr,
            self.connections,
            self.pipeline,
            if self.batch > 1 {
                format!(" x batch {} (requests are keys)", self.batch)
            } else {
                String::new()
            },
            self.keys,
            self.key_dist,
            self.value_size,
            self.read_ratio * 100.0,
            self.mode,
            self.rate.map_or(String::new(), |r| format!(" at {r} ops/s")),
        ));
        if self.prefill_keys > 0 {
            line(format!(
                "prefill:    {} keys in {:.2}s, {} errors",
                self.prefill_keys, self.prefill_s, self.prefill_errors
            ));
        }
        if let Some(per_key) = self.rss_bytes_per_key {
            line(format!("memory:     {per_key:.1} B of server RSS per key"));
        }
        if self.mode != "prefill-only" {
            line(format!(
                "throughput: {:.0} ops/s ({} requests in {:.2}s)",
                self.ops_per_sec, self.requests, self.elapsed_s
            ));
            let hit_rate = self
                .hit_rate
                .map_or("-".into(), |h| format!("{:.2}%", h * 100.0));
            line(format!(
                "hit rate:   {hit_rate} ({} hits, {} misses)",
                self.hits, self.misses
            ));
            line(format!(
                "errors:     {} ({} error replies, {} timeouts, {} lost; {} reconnects){}",
                self.errors,
                self.error_replies,
                self.timeouts,
                self.lost,
                self.reconnects,
                if self.unsent > 0 {
                    format!("; {} due but never sent", self.unsent)
                } else {
                    String::new()
                },
            ));
            line(format!(
                "latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {})",
                self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us, self.mean_us
            ));
        }
        if let (Some(cpu), Some(per_req)) = (self.server_cpu_s, self.server_cpu_us_per_req) {
            line(format!(
                "server CPU: {cpu:.2}s, {per_req:.2} us per request"
            ));
        }
        for e in &self.first_errors {
            line(format!("error seen: {e}"));
        }
        for f in &self.failures {
            line(format!("FAILED:     {f}"));
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counters;

    #[test]
    fn json_has_the_promised_fields_and_round_trips() {
        let mut window = Window::default();
        for us in 1..=1000u64 {
            window.latency.record(us * 1000).unwrap();
        }
        window.counts = Counters {
            ok: 1000,
            gets: 1000,
            hits: 900,
            misses: 100,
            timeouts: 2,
            ..Counters::default()
        };
        let mut report = Report {
            label: "kvmesh".into(),
            ..Report::default()
        };
        report.set_results(&window, 2.0);
        let json = report.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for field in [
            "ops_per_sec",
            "requests",
            "errors",
            "hit_rate",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
        ] {
            assert!(
                value.get(field).is_some_and(|v| !v.is_null()),
                "{field} missing in {json}"
            );
        }
        assert_eq!(value["requests"], 1002);
        assert_eq!(value["errors"], 2);
        assert_eq!(value["ops_per_sec"], 500.0);
        assert_eq!(value["hit_rate"], 0.9);
        let p50 = value["p50_us"].as_f64().unwrap();
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        assert!((value["max_us"].as_f64().unwrap() - 1000.0).abs() <= 1.0);
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert!(!json.contains('\n'));
    }

    #[test]
    fn no_gets_means_no_hit_rate() {
        let mut report = Report::default();
        report.set_results(&Window::default(), 1.0);
        assert_eq!(report.hit_rate, None);
        assert!(report.to_json().contains("\"hit_rate\":null"));
        assert!(report.summary().contains("hit rate:   -"));
    }

    #[test]
    fn older_or_partial_json_still_reads() {
        let report: Report =
            serde_json::from_str(r#"{"label":"x","ops_per_sec":5.0,"extra":1}"#).unwrap();
        assert_eq!((report.label.as_str(), report.ops_per_sec), ("x", 5.0));
    }
}
