//! The gRPC front-end, served directly on glommio (no tokio runtime runs): by every shard of a
//! node on its `--grpc` port, and by every executor of `kvmesh gateway`.
//!
//! How a call flows: an executor accepts a connection (the kernel spreads connections over the
//! executors with SO_REUSEPORT) → hyper 1's HTTP/2 server drives it over `kvmesh_net::hyper_io`'s
//! `Io`, spawning each stream on the same executor through its `LocalExec` → [`router`] picks
//! the handler by path and lets `tonic::server::Grpc` with the prost codec do framing and status
//! trailers → the service turns the message into wire ops and runs them on the front-end's
//! [`Backend`]: in a node, its one dispatch path, which forwards to the owning shard if need be;
//! in the gateway, the wire client to the owning node → [`status`] maps any error to a gRPC
//! status.
//!
//! - [`router`]: dispatch by path, message limits, the client's deadline;
//! - [`backend`]: what the services run on (in-node dispatch or the remote wire client);
//! - [`cache`]: the old `distributed_cache.DistributedCache` API (Get, Put, Remove);
//! - [`kvmesh`]: the `distributed_cache.KvMesh` bytes API, with batches, TTLs and topology;
//! - [`health`], [`serving`]: `grpc.health.v1.Health` and the per-executor state behind it;
//! - [`reflection`]: server reflection v1 and v1alpha from protox's descriptor set;
//! - [`status`]: errors to gRPC statuses, in one place;
//! - [`timeout`]: the `grpc-timeout` header (pure);
//! - [`limits`]: `--max-connections` and `--idle-timeout` on the gRPC port.

pub mod backend;
mod cache;
mod health;
mod kvmesh;
mod limits;
mod reflection;
mod router;
pub mod serving;
pub mod status;
mod timeout;

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use kvmesh_net::hyper_io::{Io, LocalExec};

pub use backend::Backend;
pub use serving::Serving;

/// One executor's gRPC front-end: its health state, and the backend its services run on once
/// there is one.
pub struct Frontend<B> {
    /// Names this executor in messages, e.g. "node 7's shard 0".
    name: String,
    /// Bounds every request and reply, in bytes.
    max_message: usize,
    serving: Serving,
    backend: RefCell<Option<Rc<B>>>,
}

impl<B: Backend> Frontend<B> {
    /// A front-end that answers health (from `serving`) and reflection at once, and every other
    /// call `UNAVAILABLE` until [`Frontend::attach`] gives it a backend.
    pub fn new(name: String, max_message: usize, serving: Serving) -> Rc<Self> {
        Rc::new(Frontend {
            name,
            max_message,
            serving,
            backend: RefCell::new(None),
        })
    }

    /// From now on the services run on `backend`. Health still follows `serving`, which the
    /// caller flips.
    pub fn attach(&self, backend: Rc<B>) {
        *self.backend.borrow_mut() = Some(backend);
    }

    fn backend(&self) -> Option<Rc<B>> {
        self.backend.borrow().clone()
    }
}

/// Accepts gRPC connections on `listener` until the task is dropped.
pub async fn accept_loop<B: Backend>(listener: TcpListener, front: Rc<Frontend<B>>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(serve(stream, front.clone())).detach();
            }
            Err(e) => {
                // Out of file descriptors or a transient network error: back off, keep serving
                // the connections we have.
                tracing::warn!("{}: gRPC accept failed: {e}", front.name);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one HTTP/2 connection until the peer closes it or breaks the protocol. A connection
/// error ends only this connection.
async fn serve<B: Backend>(stream: TcpStream, front: Rc<Frontend<B>>) {
    let backend = front.backend();
    let _open = backend.as_ref().map(|b| b.connection_opened());
    // Small replies must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    if let Some(why) = backend.as_ref().and_then(|b| b.refuse_connection()) {
        return limits::refuse(stream, why).await;
    }
    let service_front = front.clone();
    let activity = Rc::new(limits::Activity::default());
    let calls = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let call_in_flight = calls.begin();
        // A call's future is several KiB (tonic's decoding and encoding state); boxed, it is
        // built in place once instead of being moved into each task hyper spawns for a stream.
        let call = Box::pin(router::handle(req, service_front.clone()));
        async move {
            let response = call.await;
            drop(call_in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    // An error here (not HTTP/2, a protocol violation, a reset) ends this connection only;
    // hyper has already answered with GOAWAY where it could.
    let conn = hyper::server::conn::http2::Builder::new(LocalExec)
        .serve_connection(Io::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    // A connection accepted during recovery has no backend: no limits, nothing to drain.
    let Some(backend) = backend else {
        let _ = conn.await;
        return;
    };
    let idle_timeout = backend.idle_timeout();
    let served = futures_lite::future::or(async { Some(conn.as_mut().await) }, async {
        match idle_timeout {
            Some(idle) => {
                futures_lite::future::or(backend.draining(), async {
                    activity.idle_for(idle).await;
                    backend.count_idle_closed();
                })
                .await
            }
            None => backend.draining().await,
        }
        None
    })
    .await;
    if served.is_none() {
        // Shutdown or idle: GOAWAY, then let the streams already open finish.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
