//! The only state the worker threads share: which stage each has reached, and the instant the
//! main thread released each stage. Workers wait asynchronously (their executors stay
//! responsive); the main thread polls.
//!
//! Stages: every connection open → (main samples server memory) → prefill done → (main
//! samples server memory, starts the clock) → load done.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Connected = 0,
    Prefilled = 1,
    Finished = 2,
}

#[derive(Default)]
struct Slot {
    arrived: AtomicUsize,
    released: OnceLock<Instant>,
}

/// A reusable barrier between the workers and the main thread.
pub struct Gate {
    workers: usize,
    slots: [Slot; 3],
    failed: AtomicBool,
}

impl Gate {
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            slots: Default::default(),
            failed: AtomicBool::new(false),
        }
    }

    /// A worker reached `stage`.
    pub fn arrive(&self, stage: Stage) {
        self.slots[stage as usize]
            .arrived
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every worker reached `stage`.
    pub fn all_arrived(&self, stage: Stage) -> bool {
        self.slots[stage as usize].arrived.load(Ordering::Acquire) >= self.workers
    }

    /// Lets the workers past `stage`; returns the release instant they all share.
    pub fn release(&self, stage: Stage) -> Instant {
        *self.slots[stage as usize]
            .released
            .get_or_init(Instant::now)
    }

    /// Some worker failed: everyone stops.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Worker side: waits until `stage` is released (`Some(instant)`) or a worker failed.
    pub async fn wait(&self, stage: Stage) -> Option<Instant> {
        loop {
            if let Some(at) = self.slots[stage as usize].released.get() {
                return Some(*at);
            }
            if self.failed() {
                return None;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Main side: blocks until every worker reached `stage`; `false` when a worker failed
    /// instead.
    pub fn wait_all(&self, stage: Stage) -> bool {
        while !self.all_arrived(stage) {
            if self.failed() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        !self.failed()
    }
}

/// Marks the gate failed if dropped while armed, so a worker that panics or returns early
/// never leaves the others waiting.
pub struct FailOnDrop<'a> {
    gate: &'a Gate,
    armed: bool,
}

impl<'a> FailOnDrop<'a> {
    pub fn new(gate: &'a Gate) -> Self {
        Self { gate, armed: true }
    }

    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gate.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_waits_for_every_worker() {
        let gate = std::sync::Arc::new(Gate::new(2));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || gate.arrive(Stage::Connected))
            })
            .collect();
        assert!(gate.wait_all(Stage::Connected));
        workers.into_iter().for_each(|w| w.join().unwrap());
        let first = gate.release(Stage::Connected);
        assert_eq!(
            gate.release(Stage::Connected),
            first,
            "one release instant for all"
        );
        assert!(!gate.all_arrived(Stage::Prefilled));
    }

    #[test]
    fn a_dropped_guard_fails_the_gate() {
        let gate = Gate::new(2);
        FailOnDrop::new(&gate).disarm();
        assert!(!gate.failed());
        drop(FailOnDrop::new(&gate));
        assert!(gate.failed());
        assert!(
            !gate.wait_all(Stage::Finished),
            "nobody waits for a failed worker"
        );
    }
}
