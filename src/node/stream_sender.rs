//! The stream's sender: one connection per destination shard (opened with a checked stream
//! handshake), each batch read fresh from the store before every attempt, resent until
//! acknowledged, split when it does not fit a frame, and the running report.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvmesh_net::mux::Mux;
use kvmesh_net::ring::NodeId;
use kvmesh_net::{shard_for, Connection};
use kvmesh_proto::wire::{Hello, Op, OpCode, OpResult, Status, Topology};

use super::batch::{encoded_len, payload, pick, sort_answers, Answers, Batch, Item};
use super::throttle::Throttle;
use super::{Endpoint, StreamError, StreamReport, BATCH_BYTES, FRAME_MARGIN};
use crate::node::server::ShardCtx;
use crate::node::shard::remaining;

/// First and longest wait before a failed batch is resent.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Frame errors a single entry may get before it counts as refused for good.
const FRAME_TRIES: u32 = 3;
/// Failed attempts of one batch before each WARN about it.
const WARN_EVERY: u32 = 5;
/// The shortest wait for a batch's answer: a destination fsyncs every batch, so the request
/// timeout (`--forward-timeout`) can be too short for it under load.
const BATCH_TIMEOUT_MIN: Duration = Duration::from_secs(10);

/// The stream's connections, one per destination shard, and its running report.
pub struct Sender {
    ctx: Rc<ShardCtx>,
    /// This shard's share of `--stream-rate`, for first sends and resends alike.
    throttle: RefCell<Throttle>,
    addrs: BTreeMap<NodeId, Endpoint>,
    ports: RefCell<BTreeMap<NodeId, Vec<u16>>>,
    conns: RefCell<BTreeMap<(NodeId, usize), Rc<Mux>>>,
    /// The change's epoch, which every op carries (`Op.stream_epoch`).
    epoch: u64,
    pub report: RefCell<StreamReport>,
}

impl Sender {
    pub fn new(ctx: Rc<ShardCtx>, addrs: BTreeMap<NodeId, Endpoint>, epoch: u64) -> Self {
        let throttle = Throttle::new(
            ctx.config.shard_stream_rate(),
            BATCH_BYTES as u64,
            Instant::now(),
        );
        let ports = addrs
            .iter()
            .filter(|(_, e)| !e.shard_ports.is_empty())
            .map(|(&id, e)| (id, e.shard_ports.clone()))
            .collect();
        Self {
            ctx,
            throttle: RefCell::new(throttle),
            addrs,
            ports: RefCell::new(ports),
            conns: RefCell::default(),
            epoch,
            report: RefCell::default(),
        }
    }

    /// The shard of node `node` that owns `key`, learning its shard ports first if needed
    /// (retrying while the node is down).
    pub async fn shard_of(&self, node: NodeId, key: &[u8]) -> Result<usize, StreamError> {
        let ports = self.ports_of(node).await?;
        Ok(shard_for(key, ports.len()))
    }

    async fn ports_of(&self, node: NodeId) -> Result<Vec<u16>, StreamError> {
        if let Some(ports) = self.ports.borrow().get(&node) {
            return Ok(ports.clone());
        }
        let addr = self
            .addrs
            .get(&node)
            .ok_or(StreamError::NoAddress(node))?
            .addr;
        let timeout = self.ctx.config.forward_timeout;
        let (mut backoff, mut failures) = (RETRY_FIRST, 0u32);
        loop {
            if !self.ctx.serving.is_serving() {
                return Err(StreamError::Stopping);
            }
            let asked = async {
                let mut conn = Connection::connect(addr, timeout).await?;
                kvmesh_net::connection::fetch_topology(&mut conn).await
            };
            match glommio::timer::timeout(timeout, async { Ok(asked.await) }).await {
                Ok(Ok(topology)) if !topology.shard_ports.is_empty() => {
                    let cluster = &self.ctx.peers.membership().cluster;
                    if topology.node_id != node || &topology.cluster != cluster {
                        let why = format!(
                            "{addr} answers as node {} of cluster {:?}, not node {node} of \
                             cluster {cluster:?}",
                            topology.node_id, topology.cluster
                        );
                        return Err(StreamError::WrongDestination { node, why });
                    }
                    let ports: Vec<u16> = topology.shard_ports.iter().map(|&p| p as u16).collect();
                    self.ports.borrow_mut().insert(node, ports.clone());
                    return Ok(ports);
                }
                outcome => {
                    failures += 1;
                    if failures % WARN_EVERY == 0 {
                        tracing::warn!(
                            "stream: node {node} at {addr} did not say its shard ports \
                             {failures} times, still asking: {outcome:?}"
                        );
                    } else {
                        tracing::debug!(
                            "stream: node {node} at {addr} did not say its shard ports: \
                             {outcome:?}"
                        );
                    }
                }
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// Sends `batch` to shard `shard` of `node` until every op is acknowledged (or refused for
    /// good, or no longer current), resending after failures with backoff. A part too large
    /// for a frame (ours, or the destination's: it refuses the frame) is split in halves; a
    /// single entry too large for the destination's frame is refused for good.
    pub async fn deliver(
        &self,
        node: NodeId,
        shard: usize,
        batch: Batch,
    ) -> Result<(), StreamError> {
        let mut parts = vec![batch.items];
        while let Some(items) = parts.pop() {
            if let Some((first, second)) = self.deliver_part(node, shard, items).await? {
                parts.push(second);
                parts.push(first);
            }
        }
        Ok(())
    }

    /// Sends `items` until done; or returns them in two halves to send apart, when they do
    /// not fit a frame.
    async fn deliver_part(
        &self,
        node: NodeId,
        shard: usize,
        mut items: Vec<Item>,
    ) -> Result<Option<(Vec<Item>, Vec<Item>)>, StreamError> {
        let limit = self.ctx.config.max_frame.saturating_sub(FRAME_MARGIN);
        let (mut backoff, mut frame_errors, mut failures) = (RETRY_FIRST, 0, 0);
        // The first send was paced by the window; a resend is paced here, once it is sure to
        // go on the wire (it costs the wire as much as the first).
        let mut resend = false;
        loop {
            if !self.ctx.serving.is_serving() {
                return Err(StreamError::Stopping);
            }
            let (ops, mut current) = self.fresh(items);
            if ops.is_empty() {
                return Ok(None);
            }
            if ops.len() > 1 && encoded_len(&ops) > limit {
                let second = current.split_off(current.len() / 2);
                return Ok(Some((current, second)));
            }
            let answered = self.attempt(node, shard, &ops, resend).await?;
            match answered {
                Ok(results) => {
                    let answers = sort_answers(&ops, &results);
                    self.acked(&answers);
                    if answers.retry.is_empty() {
                        // Counted once, when every op of it is answered for good.
                        self.report.borrow_mut().batches += 1;
                        return Ok(None);
                    }
                    tracing::debug!(
                        "stream: node {node} shard {shard} did not take {} op(s) yet",
                        answers.retry.len()
                    );
                    items = pick(current, &answers.retry);
                }
                // The destination refused a frame (its --max-frame is below ours) and closed
                // the connection, failing every request on it with this reason: this part's
                // or another's. Split; a single entry is refused for good only after a few
                // times alone.
                Err(why) if why.contains("FrameTooLarge") && current.len() > 1 => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    let second = current.split_off(current.len() / 2);
                    return Ok(Some((current, second)));
                }
                Err(why) if why.contains("FrameTooLarge") && frame_errors < FRAME_TRIES => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    frame_errors += 1;
                    items = current;
                }
                Err(why) if why.contains("FrameTooLarge") => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    tracing::warn!(
                        "stream: node {node} shard {shard} refused key {:?} for good: {why}",
                        String::from_utf8_lossy(&ops[0].key[..ops[0].key.len().min(64)])
                    );
                    self.acked(&Answers {
                        refused: 1,
                        ..Answers::default()
                    });
                    return Ok(None);
                }
                Err(why) => {
                    self.conns.borrow_mut().remove(&(node, shard));
                    failures += 1;
                    if failures % WARN_EVERY == 0 {
                        tracing::warn!(
                            "stream: a batch to node {node} shard {shard} failed {failures} \
                             times, still resending: {why}"
                        );
                    } else {
                        tracing::debug!("stream: batch to node {node} shard {shard} failed: {why}");
                    }
                    items = current;
                }
            }
            self.report.borrow_mut().retries += 1;
            self.ctx.shard.borrow_mut().stream.retries += 1;
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
            resend = true;
        }
    }

    /// Sends `ops` once and waits for their answers: `Err` is why they were not answered (to
    /// retry), the outer error a reason to stop. A resend waits for the throttle once its
    /// connection is up, so only what goes on the wire is charged.
    async fn attempt(
        &self,
        node: NodeId,
        shard: usize,
        ops: &[Op],
        resend: bool,
    ) -> Result<Result<Vec<OpResult>, String>, StreamError> {
        let mux = match self.conn(node, shard).await {
            Ok(mux) => mux,
            Err(Dial::Failed(why)) => return Ok(Err(why)),
            Err(Dial::Fatal(e)) => return Err(e),
        };
        if resend {
            self.pace(payload(ops)).await;
        }
        let reply = match mux.send(ops.to_vec(), false) {
            Ok(reply) => reply,
            Err(e) => return Ok(Err(e.to_string())),
        };
        self.sent(ops);
        let timeout = self.ctx.config.forward_timeout.max(BATCH_TIMEOUT_MIN);
        Ok(reply.wait(timeout).await.map_err(|e| e.to_string()))
    }

    /// Waits until the throttle lets `bytes` go.
    pub async fn pace(&self, bytes: u64) {
        let wait = self.throttle.borrow_mut().take(bytes, Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }

    /// The ops for `items` as the store holds them now, and the items still current. An entry
    /// removed, expired or rewritten (a put or a touch gives it a new version) since the scan
    /// saw it is skipped: its newer state reaches the new owner through the coordinators'
    /// old ∪ new routing, and a stale copy sent now could undo it there. The remaining TTL is
    /// computed at each send, so a resend does not extend it.
    fn fresh(&self, items: Vec<Item>) -> (Vec<Op>, Vec<Item>) {
        let now_ms = crate::node::now_ms();
        let (mut ops, mut current) = (Vec::new(), Vec::new());
        let mut skipped = 0;
        {
            let shard = self.ctx.shard.borrow();
            for item in items {
                match shard.store().peek(&item.key, now_ms) {
                    Some(p) if !p.tombstone && p.version == item.version => {
                        ops.push(Op {
                            code: OpCode::OpPut as i32,
                            key: item.key.clone(),
                            value: p.value.to_vec(),
                            ttl_ms: remaining(p.expires_at_ms, now_ms),
                            replica: true,
                            version_hlc: p.version.hlc,
                            version_node: p.version.node,
                            stream_epoch: self.epoch,
                            ..Op::default()
                        });
                        current.push(item);
                    }
                    _ => skipped += 1,
                }
            }
        }
        self.report.borrow_mut().skipped += skipped;
        (ops, current)
    }

    /// `ops` went on the wire: their cost.
    fn sent(&self, ops: &[Op]) {
        let bytes = payload(ops);
        self.report.borrow_mut().bytes_sent += bytes;
        self.ctx.shard.borrow_mut().stream.sent(bytes);
    }

    /// A batch was answered: its progress.
    fn acked(&self, answers: &Answers) {
        let mut report = self.report.borrow_mut();
        report.keys_acked += answers.acked;
        report.bytes_acked += answers.acked_bytes;
        report.refused += answers.refused;
        self.ctx.shard.borrow_mut().stream.acked(
            answers.acked,
            answers.acked_bytes,
            Instant::now(),
        );
    }

    /// The open connection to shard `shard` of `node`, opened if needed with a handshake
    /// whose answer must show that node of this cluster (see [`check_answer`]).
    async fn conn(&self, node: NodeId, shard: usize) -> Result<Rc<Mux>, Dial> {
        if let Some(mux) = self.conns.borrow().get(&(node, shard)) {
            if !mux.is_closed() {
                return Ok(mux.clone());
            }
        }
        let ports = self.ports_of(node).await.map_err(Dial::Fatal)?;
        let endpoint = self
            .addrs
            .get(&node)
            .ok_or(Dial::Fatal(StreamError::NoAddress(node)))?;
        let port = ports.get(shard).copied().unwrap_or(endpoint.addr.port());
        let addr = SocketAddr::new(endpoint.addr.ip(), port);
        let config = &self.ctx.config;
        let failed = |e: &dyn std::fmt::Display| Dial::Failed(e.to_string());
        let conn = Connection::connect(addr, config.forward_timeout)
            .await
            .map_err(|e| failed(&e))?;
        let mux = Rc::new(Mux::new(conn).map_err(|e| failed(&e))?);
        let hello = Hello {
            stream: true,
            ..config.cluster.hello(&Topology {
                shards: config.shards as u32,
                shard_ports: config.shard_ports(),
                ..Topology::default()
            })
        };
        let op = Op {
            code: OpCode::OpHello as i32,
            hello: Some(Box::new(hello)),
            ..Op::default()
        };
        let answer = mux
            .send(vec![op], false)
            .map_err(|e| failed(&e))?
            .wait(config.forward_timeout)
            .await
            .map_err(|e| failed(&e))?;
        check_answer(&self.ctx.peers.membership(), node, &ports, answer.first())?;
        self.conns.borrow_mut().insert((node, shard), mux.clone());
        Ok(mux)
    }
}

/// Why a connection to a destination shard is not usable.
enum Dial {
    /// For now (down, slow, closed): retried.
    Failed(String),
    /// For good: the stream ends with this error.
    Fatal(StreamError),
}

/// Checks a destination's answer to the stream's handshake: it must be OK and carry the hello
/// of node `node` of this cluster, at this protocol version, with the shard ports the stream
/// routes by. Otherwise a reused address or another cluster's node could acknowledge batches,
/// and the source would drop copies no owner holds.
fn check_answer(
    me: &crate::cluster::Membership,
    node: NodeId,
    ports: &[u16],
    answer: Option<&OpResult>,
) -> Result<(), Dial> {
    let wrong = |why: String| Dial::Fatal(StreamError::WrongDestination { node, why });
    let Some(answer) = answer else {
        return Err(Dial::Failed("the handshake got no answer".into()));
    };
    match answer.status() {
        Status::Ok => {}
        Status::Refused => return Err(wrong(answer.message.clone())),
        other => {
            let why = format!("the handshake got {other:?}: {}", answer.message);
            return Err(Dial::Failed(why));
        }
    }
    let Some(hello) = answer.hello.as_ref() else {
        return Err(wrong("its handshake answer carries no hello".into()));
    };
    me.check_identity(hello, Some(node)).map_err(wrong)?;
    let theirs: Vec<u16> = hello.shard_ports.iter().map(|&p| p as u16).collect();
    if theirs != ports {
        return Err(wrong(format!(
            "it has shard ports {theirs:?}, the stream routes by {ports:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: Status) -> OpResult {
        OpResult {
            status: status as i32,
            ..OpResult::default()
        }
    }

    #[test]
    fn only_the_named_node_of_this_cluster_may_take_a_stream() {
        use crate::cluster::Membership;
        let me = Membership::single(1, "127.0.0.1:7000".parse().unwrap());
        let at = |id| Membership::single(id, "127.0.0.1:7100".parse().unwrap());
        let topology = Topology {
            shards: 1,
            shard_ports: vec![7101],
            ..Topology::default()
        };
        let ok = |hello| OpResult {
            hello: Some(Box::new(hello)),
            ..OpResult::default()
        };
        let fatal = |r: Result<(), Dial>| matches!(r, Err(Dial::Fatal(_)));
        let two = ok(at(2).hello(&topology));
        assert!(check_answer(&me, 2, &[7101], Some(&two)).is_ok());
        assert!(fatal(check_answer(&me, 3, &[7101], Some(&two))));
        assert!(fatal(check_answer(&me, 2, &[7101, 7102], Some(&two))));
        let mut other = at(2);
        other.cluster = "staging".into();
        let other = ok(other.hello(&topology));
        assert!(fatal(check_answer(&me, 2, &[7101], Some(&other))));
        assert!(fatal(check_answer(
            &me,
            2,
            &[7101],
            Some(&OpResult::default())
        )));
        let refused = answered(Status::Refused);
        assert!(fatal(check_answer(&me, 2, &[7101], Some(&refused))));
        let busy = answered(Status::Unavailable);
        assert!(matches!(
            check_answer(&me, 2, &[7101], Some(&busy)),
            Err(Dial::Failed(_))
        ));
    }
}
