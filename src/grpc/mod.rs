//! The gRPC front-end, served by every shard on the node's `--grpc` port, directly on glommio:
//! no tokio runtime runs.
//!
//! How a call flows: a shard accepts a connection (the kernel spreads connections over the
//! shards with SO_REUSEPORT) → hyper 1's HTTP/2 server drives it over `kvmesh_net::hyper_io`'s
//! `Io`, spawning each stream on the same shard through its `LocalExec` → [`router`] picks the handler by path and
//! lets `tonic::server::Grpc` with the prost codec do framing and status trailers → [`cache`]
//! turns the message into a wire op and runs it through the node's one dispatch path, which
//! forwards it to the owning shard if need be → [`status`] maps any error to a gRPC status.
//!
//! - [`router`]: dispatch by path, message limits, the client's deadline;
//! - [`cache`]: the `distributed_cache.DistributedCache` API (Get, Put, Remove);
//! - [`status`]: errors to gRPC statuses, in one place;
//! - [`timeout`]: the `grpc-timeout` header (pure);
//! - [`limits`]: `--max-connections` and `--idle-timeout` on the gRPC port.

mod cache;
mod limits;
mod router;
mod status;
mod timeout;

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use kvmesh_net::hyper_io::{Io, LocalExec};

use crate::node::ShardCtx;

/// Accepts gRPC connections on `listener` until the task is dropped.
pub async fn accept_loop(listener: TcpListener, ctx: Rc<ShardCtx>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(serve(stream, ctx.clone())).detach();
            }
            Err(e) => {
                // Out of file descriptors or a transient network error: back off, keep serving
                // the connections we have.
                tracing::warn!("shard {}: gRPC accept failed: {e}", ctx.me);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one HTTP/2 connection until the peer closes it or breaks the protocol. A connection
/// error ends only this connection.
async fn serve(stream: TcpStream, ctx: Rc<ShardCtx>) {
    let _open = ctx.connection_opened();
    // Small replies must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    if let Some(why) = crate::node::refuse_connection(&ctx) {
        return limits::refuse(stream, why).await;
    }
    let max_message = ctx.config.grpc_max_message;
    let service_ctx = ctx.clone();
    let activity = Rc::new(limits::Activity::default());
    let calls = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let call_in_flight = calls.begin();
        // A call's future is several KiB (tonic's decoding and encoding state); boxed, it is
        // built in place once instead of being moved into each task hyper spawns for a stream.
        let call = Box::pin(router::handle(req, service_ctx.clone(), max_message));
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
    let drain = ctx.clone();
    let idle_timeout = ctx.config.idle_timeout;
    let served = futures_lite::future::or(async { Some(conn.as_mut().await) }, async {
        match idle_timeout {
            Some(idle) => {
                futures_lite::future::or(drain.serving.draining(), async {
                    activity.idle_for(idle).await;
                    drain.metrics.borrow_mut().connections_idle_closed += 1;
                })
                .await
            }
            None => drain.serving.draining().await,
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
