//! Our own gRPC router: one HTTP/2 request in, one response out, chosen by path.
//!
//! tonic-build's generated servers need `Send + Sync` state, and a shard's state is neither, so
//! routing is done here: the path picks a handler, `tonic::server::Grpc` with the prost codec
//! does the framing, the message limits and the status trailers, and the client's
//! `grpc-timeout` bounds the whole call. An unknown path answers `UNIMPLEMENTED`.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use hyper::body::Incoming;
use prost::Message;
use tonic::body::Body;
use tonic::server::{Grpc, UnaryService};
use tonic_prost::ProstCodec;

use super::status::{self, Error};
use super::{cache, timeout};
use crate::node::ShardCtx;

/// The paths of the three methods, as every gRPC client sends them.
pub const GET: &str = "/distributed_cache.DistributedCache/Get";
pub const PUT: &str = "/distributed_cache.DistributedCache/Put";
pub const REMOVE: &str = "/distributed_cache.DistributedCache/Remove";

/// Serves one request. Never fails: every problem is a gRPC status in the response.
pub async fn handle(
    req: http::Request<Incoming>,
    ctx: Rc<ShardCtx>,
    max_message: usize,
) -> http::Response<Body> {
    let limit = timeout::from_headers(req.headers());
    within(limit, call(req, ctx, max_message)).await
}

/// Runs `call`, or answers `DEADLINE_EXCEEDED` once `limit` has passed, whichever comes first.
/// The call is dropped at the deadline: an op already handed to its shard still completes there.
async fn within(
    limit: Option<Duration>,
    call: impl Future<Output = http::Response<Body>>,
) -> http::Response<Body> {
    match limit {
        None => call.await,
        Some(limit) => {
            let expired = async move {
                glommio::timer::sleep(limit).await;
                error_response(&Error::Deadline(limit))
            };
            call.or(expired).await
        }
    }
}

async fn call(
    req: http::Request<Incoming>,
    ctx: Rc<ShardCtx>,
    max_message: usize,
) -> http::Response<Body> {
    match req.uri().path() {
        GET => {
            let handler = move |r| {
                let ctx = ctx.clone();
                async move { cache::get(&ctx, r).await }
            };
            unary(handler, req, max_message).await
        }
        PUT => {
            let handler = move |r| {
                let ctx = ctx.clone();
                async move { cache::put(&ctx, r).await }
            };
            unary(handler, req, max_message).await
        }
        REMOVE => {
            let handler = move |r| {
                let ctx = ctx.clone();
                async move { cache::remove(&ctx, r).await }
            };
            unary(handler, req, max_message).await
        }
        path => {
            ctx.shard.borrow_mut().counters.protocol_errors += 1;
            error_response(&Error::UnknownMethod(path.to_string()))
        }
    }
}

/// Decodes one `Req`, runs `handler`, encodes its `Resp` or its error, both within
/// `max_message` bytes. A body that is not one well-framed `Req` gets an error status from
/// tonic and never reaches the handler.
async fn unary<Req, Resp, F, Fut>(
    handler: F,
    req: http::Request<Incoming>,
    max_message: usize,
) -> http::Response<Body>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Error>> + 'static,
{
    Grpc::new(ProstCodec::<Resp, Req>::default())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
        .unary(Handler(handler), req)
        .await
}

fn error_response(e: &Error) -> http::Response<Body> {
    status::status(e).into_http()
}

/// A closure seen as tonic's `UnaryService`, mapping our [`Error`] to a status on the way out.
struct Handler<F>(F);

impl<Req, Resp, F, Fut> UnaryService<Req> for Handler<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Error>> + 'static,
{
    type Response = Resp;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Resp>, tonic::Status>>>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let reply = (self.0)(request.into_inner());
        Box::pin(async move {
            reply
                .await
                .map(tonic::Response::new)
                .map_err(|e| status::status(&e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_status(response: &http::Response<Body>) -> &str {
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[test]
    fn deadline_wins_over_a_call_that_never_ends() {
        crate::node::raise_memlock().unwrap();
        glommio::LocalExecutor::default().run(async {
            let never = futures_lite::future::pending();
            let response = within(Some(Duration::from_millis(5)), never).await;
            // 4 is DEADLINE_EXCEEDED.
            assert_eq!(grpc_status(&response), "4");
        });
    }

    #[test]
    fn a_call_that_finishes_first_is_answered() {
        crate::node::raise_memlock().unwrap();
        glommio::LocalExecutor::default().run(async {
            let unknown = async { error_response(&Error::UnknownMethod("/x".into())) };
            let response = within(Some(Duration::from_secs(60)), unknown).await;
            // 12 is UNIMPLEMENTED: the call's own answer, not the deadline's.
            assert_eq!(grpc_status(&response), "12");
            let response = within(None, async { error_response(&Error::NegativeTtl(-1)) }).await;
            assert_eq!(grpc_status(&response), "3");
        });
    }
}
