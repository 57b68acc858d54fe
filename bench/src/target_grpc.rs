//! The gRPC target: `distributed_cache.DistributedCache` unary calls, as the old clients make
//! them, over hyper 1's HTTP/2 client with tonic's client and prost codec, on the worker's
//! glommio executor (no tokio).
//!
//! One [`GrpcConn`] is one HTTP/2 connection with up to `--pipeline` concurrent streams (unary
//! calls in flight). Unlike the byte-stream targets, replies come back in any order, so this
//! connection loop keeps its calls as futures and polls them together. It goes to the node's
//! gRPC port, which every shard serves: the kernel spreads connections over the shards and a
//! key owned by another shard is forwarded inside the node, as it is for any gRPC client.
//!
//! With `--batch N` (N > 1) it drives the bytes API instead, `distributed_cache.KvMesh`
//! `MultiGet` and `MultiPut`: the next N requests of the feed become one call per kind (the Gets
//! one `MultiGet`, the Sets one `MultiPut`), so a call carries up to N keys; each key is counted
//! as one request, with its call's latency. `--pipeline` still bounds the calls in flight.
//!
//! Failures are counted as [`crate::conn::Conn`] counts them: a call unanswered for `--timeout`
//! fails as a timeout together with every call in flight on its connection, a broken connection
//! loses what was in flight, and either way the connection is reopened. A status other than OK
//! or NOT_FOUND is an error reply; NOT_FOUND is a miss (in a batch: per key).

use std::cell::RefCell;
use std::error::Error as _;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::TcpStream;
use glommio::timer::sleep;
use glommio::Task;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use kvmesh_net::hyper_io::{Io, LocalExec};
use kvmesh_proto::distributed_cache::{
    GetRequest, GetResponse, KvMultiGetRequest, KvMultiGetResponse, KvMultiPutRequest,
    KvMultiPutResponse, KvPutRequest, PutRequest, PutResponse,
};
use tonic::body::Body;
use tonic::client::Grpc;
use tonic::Code;
use tonic_prost::ProstCodec;

use crate::codec::Reply;
use crate::feed::{Feed, Step};
use crate::stats::{Failure, Recorder};
use crate::workload::OpKind;

const GET: &str = "/distributed_cache.DistributedCache/Get";
const PUT: &str = "/distributed_cache.DistributedCache/Put";
const MULTI_GET: &str = "/distributed_cache.KvMesh/MultiGet";
const MULTI_PUT: &str = "/distributed_cache.KvMesh/MultiPut";

/// Why a call ended its connection's run.
#[derive(Debug)]
enum CallError {
    Timeout,
    Broken(String),
}

struct Pending {
    kind: OpKind,
    intended: Instant,
    measured: bool,
}

/// One call in flight: one reply per key it carries, in order.
type Call = Pin<Box<dyn Future<Output = Result<Vec<Reply>, CallError>>>>;

/// hyper's HTTP/2 request sender seen as the tower service that tonic's client drives.
#[derive(Clone)]
struct Sender(SendRequest<Body>);

impl tower_service::Service<http::Request<Body>> for Sender {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// An open HTTP/2 connection: the client, and the task that drives the connection (dropping
/// it closes the connection).
struct Open {
    grpc: Grpc<Sender>,
    _driver: Task<()>,
}

async fn open(addr: SocketAddr, timeout: Duration) -> Result<Open, String> {
    let stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set up the connection to {addr}: {e}"))?;
    let handshake = hyper::client::conn::http2::Builder::new(LocalExec).handshake(Io::new(stream));
    let expired = async {
        sleep(timeout).await;
        Err(format!(
            "HTTP/2 handshake with {addr} took over {timeout:?}"
        ))
    };
    let (sender, connection) = future::or(
        async {
            handshake
                .await
                .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))
        },
        expired,
    )
    .await?;
    let driver = glommio::spawn_local(async move {
        let _ = connection.await;
    });
    let origin = format!("http://{addr}")
        .parse()
        .map_err(|e| format!("bad origin for {addr}: {e}"))?;
    Ok(Open {
        grpc: Grpc::with_origin(Sender(sender), origin),
        _driver: driver,
    })
}

pub struct GrpcConn {
    addr: SocketAddr,
    timeout: Duration,
    open: Option<Open>,
    /// Every SET's value: the bench's values are alphanumeric, so valid UTF-8.
    value: Rc<str>,
    ttl_s: i64,
    key: Vec<u8>,
    /// Keys per call; 1 drives the old API's unary calls, more the bytes API's batches.
    batch: usize,
    inflight: Vec<(Vec<Pending>, Call)>,
}

impl GrpcConn {
    /// Opens the connection. `ttl_ms` must be whole seconds (checked by the flags).
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        value: &[u8],
        ttl_ms: u64,
        batch: usize,
    ) -> Result<Self, String> {
        let value = std::str::from_utf8(value)
            .map_err(|e| format!("the value is not UTF-8, which gRPC strings need: {e}"))?;
        Ok(Self {
            addr,
            timeout,
            open: Some(open(addr, timeout).await?),
            value: value.into(),
            ttl_s: i64::try_from(ttl_ms / 1000).unwrap_or(i64::MAX),
            key: Vec::with_capacity(64),
            batch: batch.max(1),
            inflight: Vec::new(),
        })
    }

    /// Runs `feed` to its end with up to `depth` calls in flight, reopening the connection
    /// after failures. Gives up (`Err`) only when the connection cannot be reopened.
    pub async fn run(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), String> {
        loop {
            let (failure, why) = match self.drive(feed, depth, rec).await {
                Ok(()) => return Ok(()),
                Err(CallError::Timeout) => (
                    Failure::Timeout,
                    format!("no reply from {} within {:?}", self.addr, self.timeout),
                ),
                Err(CallError::Broken(why)) => (Failure::Lost, why),
            };
            let now = Instant::now();
            let pending = self.inflight.iter().flat_map(|(p, _)| p);
            let measured = pending
                .clone()
                .filter(|p| feed.counts(p.measured, now))
                .count() as u64;
            let lost = pending.count() as u64;
            rec.borrow_mut().fail(failure, lost, measured, &why);
            self.inflight.clear();
            self.open = None;
            self.reopen(rec).await?;
        }
    }

    /// Like [`GrpcConn::run`], but any failure ends it: for the prefill, which must be complete.
    pub async fn run_strict(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), String> {
        self.drive(feed, depth, rec).await.map_err(|e| match e {
            CallError::Timeout => format!("no reply from {} within {:?}", self.addr, self.timeout),
            CallError::Broken(why) => why,
        })
    }

    async fn reopen(&mut self, rec: &RefCell<Recorder>) -> Result<(), String> {
        let (addr, timeout) = (self.addr, self.timeout);
        self.open = Some(crate::conn::reconnect(addr, rec, || open(addr, timeout)).await?);
        Ok(())
    }

    async fn drive(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), CallError> {
        let Some(open) = self.open.as_ref() else {
            return Err(CallError::Broken(format!(
                "connection to {} is not open",
                self.addr
            )));
        };
        loop {
            let now = Instant::now();
            let mut wait = None;
            let mut done = false;
            while self.inflight.len() < depth && !done && wait.is_none() {
                // Up to `batch` requests, split by kind: one call for the Gets, one for the Sets.
                let mut gets = (Vec::new(), Vec::new());
                let mut sets = (Vec::new(), Vec::new());
                while gets.0.len() + sets.0.len() < self.batch {
                    match feed.next(now, &mut self.key) {
                        Step::Send {
                            kind,
                            intended,
                            measured,
                        } => {
                            let (pending, keys) = match kind {
                                OpKind::Get => &mut gets,
                                OpKind::Set => &mut sets,
                            };
                            pending.push(Pending {
                                kind,
                                intended,
                                measured,
                            });
                            keys.push(self.key.clone());
                        }
                        Step::Wait(at) => {
                            wait = Some(at);
                            break;
                        }
                        Step::Done => {
                            done = true;
                            break;
                        }
                    }
                }
                for (kind, (pending, keys)) in [(OpKind::Get, gets), (OpKind::Set, sets)] {
                    if !pending.is_empty() {
                        let call = self.call(open.grpc.clone(), kind, keys);
                        self.inflight.push((pending, call));
                    }
                }
            }
            if self.inflight.is_empty() {
                match (done, wait) {
                    (true, _) => return Ok(()),
                    (false, Some(at)) => sleep(at.saturating_duration_since(Instant::now())).await,
                    (false, None) => {}
                }
                continue;
            }
            let finished = next_finished(&mut self.inflight);
            let finished = match wait {
                // Open loop: stop waiting when the next call is due.
                Some(at) => {
                    let due = async {
                        sleep(at.saturating_duration_since(Instant::now())).await;
                        None
                    };
                    future::or(async { Some(finished.await) }, due).await
                }
                None => Some(finished.await),
            };
            let Some(finished) = finished else { continue };
            let (answered, failed) = finished;
            let now = Instant::now();
            let mut rec = rec.borrow_mut();
            for (pending, replies) in answered {
                for (p, reply) in pending.into_iter().zip(replies) {
                    let counted = feed.counts(p.measured, now);
                    rec.complete(p.kind, &reply, p.intended, now, counted);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }

    /// One call for `keys` (all of one kind), bounded by the timeout both here and, through
    /// `grpc-timeout`, on the server: the old API's unary Get or Put for one key, `MultiGet` or
    /// `MultiPut` for a batch.
    fn call(&self, grpc: Grpc<Sender>, kind: OpKind, keys: Vec<Vec<u8>>) -> Call {
        let (addr, timeout) = (self.addr, self.timeout);
        let value = self.value.clone();
        let ttl = self.ttl_s;
        let batched = self.batch > 1;
        let call = async move {
            let mut grpc = grpc;
            grpc.ready()
                .await
                .map_err(|e| CallError::Broken(format!("connection to {addr} failed: {e}")))?;
            let n = keys.len();
            let result = match (kind, batched) {
                (OpKind::Get, false) => {
                    // The bench's keys are ASCII (`key:0000000042`).
                    let key = String::from_utf8_lossy(&keys[0]).into_owned();
                    let codec = ProstCodec::<GetRequest, GetResponse>::default();
                    grpc.unary(request(GetRequest { key }, timeout), path(GET), codec)
                        .await
                        .map(|_| vec![Reply::Ok])
                }
                (OpKind::Set, false) => {
                    let put = PutRequest {
                        key: String::from_utf8_lossy(&keys[0]).into_owned(),
                        value: value.to_string(),
                        ttl,
                        ..PutRequest::default()
                    };
                    let codec = ProstCodec::<PutRequest, PutResponse>::default();
                    grpc.unary(request(put, timeout), path(PUT), codec)
                        .await
                        .map(|_| vec![Reply::Ok])
                }
                (OpKind::Get, true) => {
                    let codec = ProstCodec::<KvMultiGetRequest, KvMultiGetResponse>::default();
                    let req = request(KvMultiGetRequest { keys }, timeout);
                    grpc.unary(req, path(MULTI_GET), codec).await.map(|r| {
                        let r = r.into_inner().results;
                        r.iter().map(|r| per_key(r.code, &r.message)).collect()
                    })
                }
                (OpKind::Set, true) => {
                    let entries = keys
                        .into_iter()
                        .map(|key| KvPutRequest {
                            key,
                            value: value.as_bytes().to_vec(),
                            ttl,
                        })
                        .collect();
                    let codec = ProstCodec::<KvMultiPutRequest, KvMultiPutResponse>::default();
                    let req = request(KvMultiPutRequest { entries }, timeout);
                    grpc.unary(req, path(MULTI_PUT), codec).await.map(|r| {
                        let r = r.into_inner().results;
                        r.iter().map(|r| per_key(r.code, &r.message)).collect()
                    })
                }
            };
            match result {
                Ok(replies) if replies.len() == n => Ok(replies),
                Ok(replies) => Err(CallError::Broken(format!(
                    "{addr} answered {} results for {n} keys",
                    replies.len()
                ))),
                Err(status) if status.code() == Code::NotFound => Ok(vec![Reply::Missing]),
                // A status with a source came from the transport, not from the server.
                Err(status) if status.source().is_some() => Err(CallError::Broken(format!(
                    "connection to {addr} failed: {status}"
                ))),
                Err(status) => {
                    let why = format!("{:?}: {}", status.code(), status.message());
                    Ok((0..n).map(|_| Reply::Error(why.clone())).collect())
                }
            }
        };
        let expired = async move {
            sleep(timeout).await;
            Err(CallError::Timeout)
        };
        Box::pin(future::or(call, expired))
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    req
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

/// One key's reply inside a batch, from its gRPC status code.
fn per_key(code: i32, message: &str) -> Reply {
    match Code::from_i32(code) {
        Code::Ok => Reply::Ok,
        Code::NotFound => Reply::Missing,
        code => Reply::Error(format!("{code:?}: {message}")),
    }
}

/// Waits until at least one call in `inflight` finishes, and takes out those that answered.
/// A call that failed stays in `inflight`, so the caller counts it with the rest of the
/// connection's calls; the calls that answered before it are still returned, to be recorded.
async fn next_finished(
    inflight: &mut Vec<(Vec<Pending>, Call)>,
) -> (Vec<(Vec<Pending>, Vec<Reply>)>, Option<CallError>) {
    poll_fn(|cx| {
        let mut finished = Vec::new();
        let mut i = 0;
        while i < inflight.len() {
            match inflight[i].1.as_mut().poll(cx) {
                Poll::Ready(Ok(reply)) => {
                    let (pending, _) = inflight.swap_remove(i);
                    finished.push((pending, reply));
                }
                Poll::Ready(Err(e)) => return Poll::Ready((finished, Some(e))),
                Poll::Pending => i += 1,
            }
        }
        if finished.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready((finished, None))
        }
    })
    .await
}
