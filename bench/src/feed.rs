//! What a connection sends, step by step: the prefill (every key of a slice, once, as fast as
//! the window allows) or the load (the pacer's timing with the workload's mix).

use std::sync::Arc;
use std::time::Instant;

use crate::pacer::{Next, Pacer};
use crate::workload::{write_key, KeySet, Mix, OpKind};

/// One step of a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this request now (its key is in the caller's buffer).
    Send {
        kind: OpKind,
        intended: Instant,
        measured: bool,
    },
    /// Nothing to send before this time.
    Wait(Instant),
    /// Nothing more to send.
    Done,
}

/// A source of requests for one connection.
pub trait Feed {
    /// The next step at time `now`; for [`Step::Send`], the key is written into `key`.
    fn next(&mut self, now: Instant, key: &mut Vec<u8>) -> Step;

    /// Whether a request sent as `measured` and finished at `now` counts in the results.
    fn counts(&self, measured: bool, now: Instant) -> bool;
}

/// SETs every key of `keys.keys[from..to]` once.
pub struct Prefill {
    keys: Arc<KeySet>,
    next: usize,
    to: usize,
}

impl Prefill {
    pub fn new(keys: Arc<KeySet>, from: usize, to: usize) -> Self {
        Self {
            keys,
            next: from,
            to,
        }
    }
}

impl Feed for Prefill {
    fn next(&mut self, now: Instant, key: &mut Vec<u8>) -> Step {
        if self.next >= self.to {
            return Step::Done;
        }
        write_key(self.keys.keys[self.next], key);
        self.next += 1;
        Step::Send {
            kind: OpKind::Set,
            intended: now,
            measured: true,
        }
    }

    fn counts(&self, _: bool, _: Instant) -> bool {
        true
    }
}

/// The measured load: when from the pacer, what from the mix.
pub struct Load {
    pub pacer: Pacer,
    pub mix: Mix,
}

impl Feed for Load {
    fn next(&mut self, now: Instant, key: &mut Vec<u8>) -> Step {
        match self.pacer.next(now) {
            Next::Send { intended, measured } => {
                let kind = self.mix.next(key);
                Step::Send {
                    kind,
                    intended,
                    measured,
                }
            }
            Next::Wait(at) => Step::Wait(at),
            Next::Done => Step::Done,
        }
    }

    fn counts(&self, measured: bool, now: Instant) -> bool {
        self.pacer.counts(measured, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Sampler;

    #[test]
    fn prefill_visits_its_slice_once() {
        let keys = Arc::new(KeySet {
            keys: vec![3, 5, 8, 13],
            sampler: Sampler::new(4, None),
            mass: 1.0,
        });
        let mut feed = Prefill::new(keys, 1, 3);
        let now = Instant::now();
        let mut key = Vec::new();
        let mut seen = Vec::new();
        while let Step::Send { kind, .. } = feed.next(now, &mut key) {
            assert_eq!(kind, OpKind::Set);
            seen.push(String::from_utf8(key.clone()).unwrap());
        }
        assert_eq!(seen, ["key:0000000005", "key:0000000008"]);
        assert_eq!(feed.next(now, &mut key), Step::Done);
    }
}
