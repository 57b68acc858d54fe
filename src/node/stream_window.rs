//! The stream's batches in flight: at most [`WINDOW`] per destination node, waited for in the
//! order they finish, so a destination that is down or slow holds up only its own batches
//! (until [`PENDING_MAX`] batches wait for it), never the others'.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_lite::StreamExt;
use kvmesh_net::ring::NodeId;

use super::batch::Batch;
use super::sender::Sender;
use super::StreamError;

/// Batches in flight to one destination node at once.
pub const WINDOW: usize = 4;
/// Batches waiting for a window, over all destinations: past this the scan waits for one to
/// finish (they hold keys and versions only, no values).
pub const PENDING_MAX: usize = 64;

/// A destination shard: node and shard.
type To = (NodeId, usize);
/// A batch that finished: its number and destination node, and how.
type Finished = (u64, NodeId, Result<(), StreamError>);

/// The window of one shard's stream. Dropping it cancels the batches in flight.
pub struct Window {
    sender: Rc<Sender>,
    tasks: BTreeMap<u64, glommio::Task<()>>,
    next: u64,
    in_flight: BTreeMap<NodeId, usize>,
    pending: BTreeMap<NodeId, VecDeque<(To, Batch)>>,
    queued: usize,
    done_tx: UnboundedSender<Finished>,
    done_rx: UnboundedReceiver<Finished>,
}

impl Window {
    pub fn new(sender: Rc<Sender>) -> Self {
        let (done_tx, done_rx) = unbounded();
        Self {
            sender,
            tasks: BTreeMap::new(),
            next: 0,
            in_flight: BTreeMap::new(),
            pending: BTreeMap::new(),
            queued: 0,
            done_tx,
            done_rx,
        }
    }

    /// Queues `batch` for shard `to.1` of node `to.0`, starts what the windows allow, and waits
    /// while too many batches are queued. A batch that failed for good fails the stream.
    pub async fn push(&mut self, to: To, batch: Batch) -> Result<(), StreamError> {
        self.pending.entry(to.0).or_default().push_back((to, batch));
        self.queued += 1;
        self.start().await;
        while self.queued > PENDING_MAX {
            self.finish_one().await?;
            self.start().await;
        }
        Ok(())
    }

    /// Waits until every batch queued is acknowledged.
    pub async fn drain(&mut self) -> Result<(), StreamError> {
        loop {
            self.start().await;
            if self.tasks.is_empty() {
                return Ok(());
            }
            self.finish_one().await?;
        }
    }

    /// Starts every queued batch whose destination has room, each after the throttle allows
    /// it.
    async fn start(&mut self) {
        let ready: Vec<NodeId> = self
            .pending
            .iter()
            .filter(|(node, q)| !q.is_empty() && self.room(**node))
            .map(|(node, _)| *node)
            .collect();
        for node in ready {
            while self.room(node) {
                let Some((to, batch)) = self.pending.get_mut(&node).and_then(|q| q.pop_front())
                else {
                    break;
                };
                self.queued -= 1;
                self.sender.pace(batch.bytes as u64).await;
                *self.in_flight.entry(node).or_default() += 1;
                let (id, sender, done) = (self.next, self.sender.clone(), self.done_tx.clone());
                self.next += 1;
                let task = glommio::spawn_local(async move {
                    let outcome = sender.deliver(to.0, to.1, batch).await;
                    let _ = done.unbounded_send((id, to.0, outcome));
                });
                self.tasks.insert(id, task);
            }
        }
    }

    fn room(&self, node: NodeId) -> bool {
        self.in_flight.get(&node).copied().unwrap_or(0) < WINDOW
    }

    /// Waits for whichever batch in flight finishes first.
    async fn finish_one(&mut self) -> Result<(), StreamError> {
        let Some((id, node, outcome)) = self.done_rx.next().await else {
            return Ok(());
        };
        self.tasks.remove(&id);
        if let Some(n) = self.in_flight.get_mut(&node) {
            *n = n.saturating_sub(1);
        }
        outcome
    }
}
