//! `GET /metrics` over HTTP/1.1 with hyper on glommio (`kvmesh_net::hyper_io`), served by one
//! shard; and the gathering of every shard's snapshot on each scrape.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::shared_channel::{ConnectedSender, SharedSender};
use glommio::net::TcpListener;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use kvmesh_net::hyper_io::Io;

use super::{encode, Ask, Snapshot};
use crate::node::ShardCtx;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Accepts scrapes until the task is dropped. `shards` reach every shard, in order.
pub async fn serve(listener: TcpListener, shards: Vec<SharedSender<Ask>>, ctx: Rc<ShardCtx>) {
    let mut connected = Vec::with_capacity(shards.len());
    for shard in shards {
        connected.push(shard.connect().await);
    }
    let shards = Rc::new(connected);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (shards, ctx) = (shards.clone(), ctx.clone());
                glommio::spawn_local(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (shards, ctx) = (shards.clone(), ctx.clone());
                        async move { Ok::<_, Infallible>(answer(req, &shards, &ctx).await) }
                    });
                    // A broken scrape connection ends only itself.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(Io::new(stream), service)
                        .await;
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!("shard {}: metrics accept failed: {e}", ctx.me);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer<B>(
    req: Request<B>,
    shards: &[ConnectedSender<Ask>],
    ctx: &ShardCtx,
) -> Response<Full<Bytes>> {
    let reply = |status, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        if let Ok(value) = CONTENT_TYPE.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "kvmesh serves its metrics on /metrics\n".to_string(),
        );
    }
    let snapshots = gather(shards, ctx.config.forward_timeout).await;
    match encode::render(snapshots) {
        Ok(text) => reply(StatusCode::OK, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

/// Asks every shard at once; returns the snapshots that arrived within `timeout`.
async fn gather(shards: &[ConnectedSender<Ask>], timeout: Duration) -> Vec<Snapshot> {
    let mut asked = Vec::with_capacity(shards.len());
    for shard in shards {
        let (tx, rx) = oneshot::channel();
        if shard.try_send(tx).is_ok() {
            asked.push(rx);
        }
    }
    let mut snapshots = Vec::with_capacity(asked.len());
    for rx in asked {
        let answer = glommio::timer::timeout(timeout, async {
            rx.await
                .map_err(|_| glommio::GlommioError::IoError(std::io::Error::other("shard gone")))
        })
        .await;
        match answer {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(e) => tracing::debug!("a shard gave no metrics snapshot: {e}"),
        }
    }
    snapshots
}
