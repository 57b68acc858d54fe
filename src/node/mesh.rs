//! Shard-to-shard messaging inside one node, over glommio's channel mesh.
//!
//! A shard that receives an op it does not own sends it, batched per owning shard, as a
//! [`Envelope::Forward`]; the owner executes it and answers with an [`Envelope::Reply`] over the
//! mesh's reverse channel. Replies are matched to waiting requests by tag. Nothing here is shared
//! between threads except the mesh's own channels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use kvmesh_proto::wire::{ClusterTopology, Op, OpResult};

use super::durable;
use super::reply::ForwardError;
use super::shard::Shard;

/// How long a forward may wait for room in the owner's queue (bounded, `MESH_CHANNEL`
/// messages) before it is answered busy.
const BUSY_AFTER: Duration = Duration::from_millis(100);

/// What shards send each other.
#[derive(Debug)]
pub enum Envelope {
    /// Ops for the receiving shard to execute, from shard `from`.
    Forward {
        from: usize,
        tag: u64,
        ops: Vec<Op>,
        now_ms: u64,
    },
    /// The results of the Forward with this tag, in op order.
    Reply { tag: u64, results: Vec<OpResult> },
    /// Membership control between the shards of this node (see `node::change`).
    Control(Control),
}

/// What shards tell each other about a membership change.
#[derive(Debug, Clone)]
pub enum Control {
    /// A topology the node's topology Raft group applied (shard 0 sends it to every other
    /// shard; see `node::raft`).
    Topology(ClusterTopology),
    /// Shard `shard` streamed everything it owes for the change of `epoch` (to shard 0).
    StreamDone { epoch: u64, shard: usize },
    /// Shard `shard` of a node that left by the change of `epoch` delivered its hints, or gave
    /// up on them (to shard 0, which stops the node once every shard did).
    HintsDelivered { epoch: u64, shard: usize },
}

/// A forwarded request whose reply has not arrived yet.
pub struct Pending {
    shard: usize,
    tag: u64,
    rx: oneshot::Receiver<Vec<OpResult>>,
}

/// This shard's end of the mesh.
pub struct Mesh {
    senders: Senders<Envelope>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Vec<OpResult>>>>,
    next_tag: Cell<u64>,
    timeout: Duration,
}

impl Mesh {
    pub fn new(senders: Senders<Envelope>, timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            senders,
            pending: RefCell::new(HashMap::new()),
            next_tag: Cell::new(1),
            timeout,
        })
    }

    pub fn me(&self) -> usize {
        self.senders.peer_id()
    }

    /// Sends `ops` to shard `to`; the reply is awaited with [`Mesh::wait`]. Sending first and
    /// waiting later lets one request's forwards to several shards run at the same time.
    pub async fn send(
        &self,
        to: usize,
        ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<Pending, ForwardError> {
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(tag, tx);
        let envelope = Envelope::Forward {
            from: self.me(),
            tag,
            ops,
            now_ms,
        };
        // A queue that stays full means the owner is saturated: answer busy rather than wait.
        let queue_wait = self.timeout.min(BUSY_AFTER);
        let sent = glommio::timer::timeout(queue_wait, async {
            self.senders
                .send_to(to, envelope)
                .await
                .map_err(|e| glommio::GlommioError::IoError(std::io::Error::other(e.to_string())))
        })
        .await;
        if let Err(e) = sent {
            self.pending.borrow_mut().remove(&tag);
            return Err(match e {
                glommio::GlommioError::TimedOut(_) => ForwardError::Busy {
                    shard: to,
                    ms: queue_wait.as_millis(),
                },
                other => self.failure(to, other),
            });
        }
        Ok(Pending { shard: to, tag, rx })
    }

    /// Waits for the reply to a forwarded request, at most the forward timeout.
    pub async fn wait(&self, pending: Pending) -> Result<Vec<OpResult>, ForwardError> {
        let Pending { shard, tag, rx } = pending;
        let result = glommio::timer::timeout(self.timeout, async {
            rx.await
                .map_err(|_| glommio::GlommioError::IoError(std::io::Error::other("reply dropped")))
        })
        .await;
        self.pending.borrow_mut().remove(&tag);
        result.map_err(|e| self.failure(shard, e))
    }

    fn failure<T>(&self, shard: usize, e: glommio::GlommioError<T>) -> ForwardError {
        match e {
            glommio::GlommioError::TimedOut(_) => ForwardError::Timeout {
                shard,
                ms: self.timeout.as_millis(),
            },
            other => ForwardError::Unreachable {
                shard,
                why: other.to_string(),
            },
        }
    }

    /// Sends `topology` to every other shard of this node, without waiting for room.
    pub fn broadcast_topology(self: &Rc<Self>, topology: &ClusterTopology) {
        for to in (0..self.senders.nr_consumers()).filter(|&s| s != self.me()) {
            self.reply(to, Envelope::Control(Control::Topology(topology.clone())));
        }
    }

    /// Sends `control` to shard `to`, without waiting for room.
    pub fn control(self: &Rc<Self>, to: usize, control: Control) {
        self.reply(to, Envelope::Control(control));
    }

    fn deliver(&self, tag: u64, results: Vec<OpResult>) {
        // A missing tag means the requester gave up (timed out); the late reply is dropped.
        if let Some(tx) = self.pending.borrow_mut().remove(&tag) {
            let _ = tx.send(results);
        }
    }

    /// Replies without blocking the receive loop: if the peer's channel is full, a task waits
    /// for room, so two shards replying to each other can never deadlock.
    fn reply(self: &Rc<Self>, to: usize, envelope: Envelope) {
        if let Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(envelope))) =
            self.senders.try_send_to(to, envelope)
        {
            let mesh = self.clone();
            glommio::spawn_local(async move {
                // The peer has stopped if this fails; its requester has gone with it.
                let _ = mesh.senders.send_to(to, envelope).await;
            })
            .detach();
        }
    }
}

/// Spawns one task per peer that executes forwarded ops, delivers replies and hands each
/// control message to `on_control`.
pub fn spawn_receivers(
    mesh: Rc<Mesh>,
    mut receivers: Receivers<Envelope>,
    shard: Rc<RefCell<Shard>>,
    on_control: Rc<dyn Fn(Control)>,
) {
    for (_peer, stream) in receivers.streams() {
        let mesh = mesh.clone();
        let shard = shard.clone();
        let on_control = on_control.clone();
        glommio::spawn_local(async move {
            while let Some(envelope) = stream.recv().await {
                match envelope {
                    Envelope::Forward {
                        from,
                        tag,
                        ops,
                        now_ms,
                    } => {
                        // Executed here, in arrival order; only the wait for the log runs
                        // apart, so forwards from one peer share commits.
                        let (mut results, mut waits) = (Vec::with_capacity(ops.len()), Vec::new());
                        let log = {
                            let mut shard = shard.borrow_mut();
                            shard.counters.forwarded_in += ops.len() as u64;
                            for (i, op) in ops.iter().enumerate() {
                                let executed = shard.execute(op, now_ms);
                                results.push(executed.result);
                                waits.extend(executed.wait.map(|seq| (i, seq)));
                            }
                            shard.log().cloned()
                        };
                        if waits.is_empty() {
                            mesh.reply(from, Envelope::Reply { tag, results });
                        } else {
                            let (mesh, me) = (mesh.clone(), mesh.me());
                            glommio::spawn_local(async move {
                                durable::settle(me, log, &mut results, &waits).await;
                                mesh.reply(from, Envelope::Reply { tag, results });
                            })
                            .detach();
                        }
                    }
                    Envelope::Reply { tag, results } => mesh.deliver(tag, results),
                    Envelope::Control(control) => on_control(control),
                }
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use glommio::channels::channel_mesh::MeshBuilder;
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    #[test]
    fn a_queue_that_stays_full_answers_busy() {
        // Queues of one message; the other shard joins but never receives. Ids follow the
        // order of joining, so the sender looks its peer up.
        let mesh = MeshBuilder::full(2, 1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let idle = {
            let mesh = mesh.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let _joined = mesh.join().await.expect("join");
                    let _ = done_rx.recv();
                })
                .expect("executor")
        };
        let sender = LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let (senders, _receivers) = mesh.join().await.expect("join");
                let mesh = Mesh::new(senders, Duration::from_secs(5));
                let peer = 1 - mesh.me();
                let first = mesh.send(peer, vec![], 0).await.err();
                let began = std::time::Instant::now();
                let busy = mesh.send(peer, vec![], 0).await.err();
                let waited = began.elapsed();
                let _ = done_tx.send(());
                (peer, first, busy, waited)
            })
            .expect("executor");
        let (peer, first, busy, waited) = sender.join().expect("sender");
        idle.join().expect("idle shard");
        assert!(first.is_none(), "{first:?}");
        assert!(
            matches!(busy, Some(ForwardError::Busy { shard, ms: 100 }) if shard == peer),
            "{busy:?}"
        );
        assert!(
            waited >= BUSY_AFTER && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
