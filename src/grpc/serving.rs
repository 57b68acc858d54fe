//! Whether a shard (or a gateway executor) serves requests: the one per-shard state behind
//! `grpc.health.v1.Health`. The node flips it to serving once recovery is done, and a shutdown
//! path flips it to stopping; every health `Watch` hears each change.

use std::cell::RefCell;
use std::rc::Rc;

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};

/// The life of a front-end. Only `Serving` is healthy.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Started, not serving yet: the node is replaying its log. Health answers NOT_SERVING and
    /// every other call UNAVAILABLE.
    Recovering,
    /// Serving requests. Health answers SERVING.
    Serving,
    /// Shutting down: health answers NOT_SERVING so load balancers drain it; requests that
    /// still arrive are served until the listeners close.
    Stopping,
}

/// A shared handle to one executor's [`State`]; clones see the same state. Single-threaded,
/// like everything a shard owns.
#[derive(Clone)]
pub struct Serving(Rc<RefCell<Inner>>);

struct Inner {
    state: State,
    watchers: Vec<UnboundedSender<State>>,
}

impl Serving {
    /// A front-end that is not serving yet.
    pub fn recovering() -> Serving {
        Serving(Rc::new(RefCell::new(Inner {
            state: State::Recovering,
            watchers: Vec::new(),
        })))
    }

    pub fn state(&self) -> State {
        self.0.borrow().state
    }

    /// Recovery is done: health answers SERVING from now on.
    pub fn set_serving(&self) {
        self.set(State::Serving);
    }

    /// The shutdown path calls this first: health answers NOT_SERVING from now on, for good.
    pub fn set_stopping(&self) {
        self.set(State::Stopping);
    }

    /// Moves to `state` and tells every watcher, if it changed. Once stopping, stays stopping.
    fn set(&self, state: State) {
        let mut inner = self.0.borrow_mut();
        if inner.state == state || inner.state == State::Stopping {
            return;
        }
        inner.state = state;
        // A watcher whose stream was dropped (the client went away) is forgotten here.
        inner.watchers.retain(|w| w.unbounded_send(state).is_ok());
    }

    /// The current state at once, then every change. The receiver is `Send`, as tonic wants
    /// of a response stream; it ends when this executor's `Serving` is dropped.
    pub fn watch(&self) -> UnboundedReceiver<State> {
        let (tx, rx) = unbounded();
        let mut inner = self.0.borrow_mut();
        inner.watchers.retain(|w| !w.is_closed());
        if tx.unbounded_send(inner.state).is_ok() {
            inner.watchers.push(tx);
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_hear_each_change_once_and_stopping_is_final() {
        let serving = Serving::recovering();
        let mut early = serving.watch();
        serving.set_serving();
        serving.set_serving();
        let mut late = serving.watch();
        serving.set_stopping();
        serving.set_serving();
        assert_eq!(serving.state(), State::Stopping);
        let drain = |rx: &mut UnboundedReceiver<State>| {
            let mut seen = Vec::new();
            while let Ok(s) = rx.try_recv() {
                seen.push(s);
            }
            seen
        };
        assert_eq!(
            drain(&mut early),
            [State::Recovering, State::Serving, State::Stopping]
        );
        assert_eq!(drain(&mut late), [State::Serving, State::Stopping]);
    }

    #[test]
    fn dropped_watchers_are_forgotten() {
        let serving = Serving::recovering();
        drop(serving.watch());
        serving.set_serving();
        assert!(serving.0.borrow().watchers.is_empty());
    }
}
