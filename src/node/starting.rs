//! What shard 0 answers while it decides whether it may bootstrap the topology group (see
//! `raft::bootstrap_guard`).
//!
//! At a cluster's first start every node, its data directory empty, asks every other one at
//! once whether the cluster already exists. A node that held its connections unanswered until
//! it had decided left its peers' same question unanswered too, so each waited out its
//! timeouts (twice 3 s) before it could start. So meanwhile shard 0 accepts connections and
//! answers that question on its own: a request of `OP_TOPOLOGY` ops gets the node's topology
//! as configured (epoch 0: it holds no agreed topology, runs no change, and heard from no
//! one), which is all the question needs, and the connection closes. Any other first request
//! (a client's, a peer's hello) waits until the shard serves, then is served as on any
//! connection, with the bytes already read: to it, nothing changed.
//!
//! Such a waiting connection is not counted against `--max-connections` until the shard
//! serves (the share is checked then, in `conn::serve_read`), and holds its read buffer
//! meanwhile: at most for the bootstrap check, twice `bootstrap_guard::ask_within`.

use std::cell::RefCell;
use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use kvmesh_net::frame;
use kvmesh_proto::wire::{OpCode, OpResult, Request, Topology};

use super::reply;
use super::server::ShardCtx;

/// A shard that decides whether it may bootstrap, and then serves.
pub struct Deciding {
    /// The node's topology as configured: epoch 0, no change, no Raft peer heard.
    topology: Topology,
    max_frame: usize,
    /// Set once the shard serves.
    serving: RefCell<Option<Rc<ShardCtx>>>,
    /// Never has a permit; closed once the shard serves, which wakes every waiter.
    served: Semaphore,
}

impl Deciding {
    pub fn new(topology: Topology, max_frame: usize) -> Deciding {
        Deciding {
            topology,
            max_frame,
            serving: RefCell::new(None),
            served: Semaphore::new(0),
        }
    }

    /// The shard serves from now on: connections waiting for it are served.
    pub fn serve_with(&self, ctx: Rc<ShardCtx>) {
        *self.serving.borrow_mut() = Some(ctx);
        self.served.close();
    }

    /// The shard's context once it serves.
    pub fn serving(&self) -> Option<Rc<ShardCtx>> {
        self.serving.borrow().clone()
    }

    /// The answer to `request` while the shard decides: `Some` for a request of
    /// `OP_TOPOLOGY` ops only.
    pub fn answer(&self, request: &Request) -> Option<Vec<OpResult>> {
        let topology_only = !request.ops.is_empty()
            && request
                .ops
                .iter()
                .all(|op| op.code == OpCode::OpTopology as i32);
        topology_only.then(|| {
            let result = OpResult {
                topology: Some(Box::new(self.topology.clone())),
                ..OpResult::default()
            };
            vec![result; request.ops.len()]
        })
    }
}

/// Serves a connection accepted by a shard that decides or decided: while it decides, answers
/// a first request of `OP_TOPOLOGY` ops and closes, and anything else waits for the shard to
/// serve.
pub async fn serve(mut stream: TcpStream, deciding: Rc<Deciding>) {
    if let Some(ctx) = deciding.serving() {
        return super::conn::serve(stream, ctx).await;
    }
    let mut buf = vec![0u8; super::conn::READ_BUF];
    let end = super::conn::first_bytes(&mut stream, &mut buf, 0, deciding.max_frame).await;
    if deciding.serving().is_none() {
        let decoded = frame::decode::<Request>(&buf[..end], deciding.max_frame);
        if let Ok(Some((request, _))) = decoded {
            if let Some(results) = deciding.answer(&request) {
                let mut out = Vec::new();
                reply::encode_response(request.id, &results, &mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.close().await;
                return;
            }
        }
        // Fails only once closed: that is the wake-up.
        let _ = deciding.served.acquire(1).await;
    }
    if let Some(ctx) = deciding.serving() {
        super::conn::serve_read(stream, ctx, &buf[..end]).await;
    }
}

#[cfg(test)]
mod tests {
    use kvmesh_proto::wire::Op;

    use super::*;

    #[test]
    fn only_the_bootstrap_question_is_answered_while_deciding() {
        let deciding = Deciding::new(
            Topology {
                node_id: 2,
                shard_ports: vec![7001, 7002],
                ..Topology::default()
            },
            1 << 20,
        );
        let request = |codes: &[OpCode]| Request {
            ops: codes
                .iter()
                .map(|&code| Op {
                    code: code as i32,
                    ..Op::default()
                })
                .collect(),
            ..Request::default()
        };
        let answered = deciding
            .answer(&request(&[OpCode::OpTopology, OpCode::OpTopology]))
            .expect("answered");
        assert_eq!(answered.len(), 2);
        let t = answered[0].topology.as_deref().expect("a topology");
        assert_eq!((t.epoch, t.shard_ports.clone()), (0, vec![7001, 7002]));
        assert!(t.transition.is_none() && t.raft_heard.is_empty());
        for codes in [
            &[][..],
            &[OpCode::OpGet],
            &[OpCode::OpHello],
            &[OpCode::OpTopology, OpCode::OpPut],
        ] {
            assert_eq!(deciding.answer(&request(codes)), None, "{codes:?}");
        }
    }
}
