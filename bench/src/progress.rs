//! The once-a-second progress line: merges the workers' ticks for each second and formats the
//! line once every worker has reported that second.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::stats::Window;
use crate::worker::Tick;

pub struct Progress {
    workers: usize,
    warmup: Duration,
    pending: BTreeMap<u64, (usize, Window)>,
}

impl Progress {
    pub fn new(workers: usize, warmup: Duration) -> Self {
        Self {
            workers,
            warmup,
            pending: BTreeMap::new(),
        }
    }

    /// Adds one worker's tick; returns the lines of the seconds every running worker has
    /// now reported.
    pub fn add(&mut self, tick: Tick) -> Vec<String> {
        if tick.last {
            self.workers = self.workers.saturating_sub(1);
        } else {
            let entry = self
                .pending
                .entry(tick.second)
                .or_insert_with(|| (0, Window::default()));
            entry.0 += 1;
            entry.1.merge(&tick.window);
        }
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (n, _))| *n >= self.workers)
            .map(|(&second, _)| second)
            .collect();
        let mut lines = Vec::new();
        for second in ready {
            if let Some((_, window)) = self.pending.remove(&second) {
                let warming = Duration::from_secs(second) <= self.warmup;
                lines.push(line(second, warming, &window));
            }
        }
        lines
    }
}

/// `[  3s] measure  ops/s   412331  p50    112us  p99    480us  hit 100.0%  errors 0`
pub fn line(second: u64, warming: bool, window: &Window) -> String {
    let c = &window.counts;
    let h = &window.latency;
    let us = |q: f64| h.value_at_quantile(q) / 1000;
    let hit = if c.hits + c.misses > 0 {
        format!(
            "{:5.1}%",
            c.hits as f64 * 100.0 / (c.hits + c.misses) as f64
        )
    } else {
        "    -".to_string()
    };
    let mut text = format!(
        "[{second:3}s] {}  ops/s {:8}  p50 {:6}us  p99 {:6}us  hit {hit}  errors {}",
        if warming { "warmup " } else { "measure" },
        c.ok,
        us(0.5),
        us(0.99),
        c.errors()
    );
    if c.timeouts > 0 {
        text.push_str(&format!(" (timeouts {})", c.timeouts));
    }
    if c.reconnects > 0 {
        text.push_str(&format!(" reconnects {}", c.reconnects));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_waits_for_every_running_worker() {
        let mut progress = Progress::new(2, Duration::from_secs(1));
        let mut window = Window::default();
        window.counts.ok = 10;
        window.counts.gets = 10;
        window.counts.hits = 10;
        window.latency.record(150_000).unwrap();
        let tick = |second, last| Tick {
            second,
            window: window.clone(),
            last,
        };
        assert!(progress.add(tick(1, false)).is_empty());
        let lines = progress.add(tick(1, false));
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert!(line.contains("warmup"), "{line}");
        assert!(line.contains("ops/s       20"), "{line}");
        assert!(line.contains("p50    150us"), "{line}");
        assert!(line.contains("hit 100.0%"), "{line}");
        // One worker is done: the other's seconds print on their own.
        assert!(progress.add(tick(2, false)).is_empty());
        let lines = progress.add(tick(0, true));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("measure") && lines[0].contains("ops/s       10"));
        assert_eq!(progress.add(tick(3, false)).len(), 1);
        assert!(progress.pending.is_empty());
    }
}
