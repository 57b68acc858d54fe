//! Our own gRPC router: one HTTP/2 request in, one response out, chosen by path.
//!
//! tonic-build's generated servers need `Send + Sync` state, and a shard's state is neither, so
//! routing is done here: the path picks a handler, `tonic::server::Grpc` with the prost codec
//! does the framing, the message limits and the status trailers, and the client's
//! `grpc-timeout` bounds the whole call. An unknown path answers `UNIMPLEMENTED`. Health and
//! reflection answer at any time; every other call needs the front-end's backend, and answers
//! `UNAVAILABLE` while there is none yet (a node replaying its log).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{FutureExt, Stream, StreamExt};
use hyper::body::Incoming;
use kvmesh_proto::health::{HealthCheckRequest, HealthCheckResponse};
use kvmesh_proto::reflection::{ServerReflectionRequest, ServerReflectionResponse};
use prost::Message;
use tonic::body::Body;
use tonic::server::{Grpc, ServerStreamingService, StreamingService, UnaryService};
use tonic::Streaming;
use tonic_prost::ProstCodec;

use super::backend::Backend;
use super::status::{self, Error};
use super::{cache, health, kvmesh, reflection, timeout, Frontend};

/// The old API's paths, as every gRPC client sends them.
pub const GET: &str = "/distributed_cache.DistributedCache/Get";
pub const PUT: &str = "/distributed_cache.DistributedCache/Put";
pub const REMOVE: &str = "/distributed_cache.DistributedCache/Remove";
/// The prefix of `distributed_cache.KvMesh`'s paths.
pub const KVMESH: &str = "/distributed_cache.KvMesh/";
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
pub const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
pub const REFLECTION_V1ALPHA: &str =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Serves one request. Never fails: every problem is a gRPC status in the response.
pub async fn handle<B: Backend>(
    req: http::Request<Incoming>,
    front: Rc<Frontend<B>>,
) -> http::Response<Body> {
    let limit = timeout::from_headers(req.headers());
    within(limit, call(req, front)).await
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

/// Binds a handler `$f(&backend, request)` to the front-end's backend, for [`unary`].
macro_rules! on_backend {
    ($backend:expr, $f:path) => {{
        let backend = $backend;
        move |r| {
            let backend = backend.clone();
            async move { $f(&*backend, r).await }
        }
    }};
}

async fn call<B: Backend>(
    req: http::Request<Incoming>,
    front: Rc<Frontend<B>>,
) -> http::Response<Body> {
    let max = front.max_message;
    // A cheap clone (the path's bytes are shared), so the request can move into its handler.
    let uri = req.uri().clone();
    let path = uri.path();
    match path {
        HEALTH_CHECK => {
            let serving = front.serving.clone();
            let handler = move |r: HealthCheckRequest| {
                let answer = health::check(&serving, &r);
                async move { answer }
            };
            return unary(handler, req, max).await;
        }
        HEALTH_WATCH => return health_watch(req, &front, max).await,
        REFLECTION_V1 | REFLECTION_V1ALPHA => return reflect(req, max).await,
        _ => {}
    }
    let Some(b) = front.backend() else {
        return error_response(&Error::NotReady(format!(
            "{} is not serving yet: it is still starting, recovering its write-ahead log if it \
             has one (its health check answers NOT_SERVING until it is done)",
            front.name
        )));
    };
    match path {
        GET => unary(on_backend!(b, cache::get), req, max).await,
        PUT => unary(on_backend!(b, cache::put), req, max).await,
        REMOVE => unary(on_backend!(b, cache::remove), req, max).await,
        p => match p.strip_prefix(KVMESH).unwrap_or_default() {
            "Get" => unary(on_backend!(b, kvmesh::get), req, max).await,
            "Put" => unary(on_backend!(b, kvmesh::put), req, max).await,
            "Remove" => unary(on_backend!(b, kvmesh::remove), req, max).await,
            "MultiGet" => unary(on_backend!(b, kvmesh::multi_get), req, max).await,
            "MultiPut" => unary(on_backend!(b, kvmesh::multi_put), req, max).await,
            "MultiRemove" => unary(on_backend!(b, kvmesh::multi_remove), req, max).await,
            "Touch" => unary(on_backend!(b, kvmesh::touch), req, max).await,
            "Ttl" => unary(on_backend!(b, kvmesh::ttl), req, max).await,
            "Topology" => unary(on_backend!(b, kvmesh::topology), req, max).await,
            _ => {
                b.count_protocol_error();
                error_response(&Error::UnknownMethod(path.to_string()))
            }
        },
    }
}

fn grpc<Req, Resp>(max_message: usize) -> Grpc<ProstCodec<Resp, Req>>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
{
    Grpc::new(ProstCodec::<Resp, Req>::default())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
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
    grpc(max_message).unary(Handler(handler), req).await
}

/// `Health/Watch`: a server stream of status changes.
async fn health_watch<B: Backend>(
    req: http::Request<Incoming>,
    front: &Frontend<B>,
    max_message: usize,
) -> http::Response<Body> {
    grpc(max_message)
        .server_streaming(Watch(front.serving.clone()), req)
        .await
}

struct Watch(super::Serving);

type SendStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

impl ServerStreamingService<HealthCheckRequest> for Watch {
    type Response = HealthCheckResponse;
    type ResponseStream = SendStream<HealthCheckResponse>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        let stream = health::watch(&self.0, request.get_ref()).map(Ok);
        std::future::ready(Ok(tonic::Response::new(Box::pin(stream))))
    }
}

/// Server reflection: one response per request on a bidirectional stream.
async fn reflect(req: http::Request<Incoming>, max_message: usize) -> http::Response<Body> {
    grpc(max_message).streaming(Reflect, req).await
}

struct Reflect;

impl StreamingService<ServerReflectionRequest> for Reflect {
    type Response = ServerReflectionResponse;
    type ResponseStream = SendStream<ServerReflectionResponse>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(
        &mut self,
        request: tonic::Request<Streaming<ServerReflectionRequest>>,
    ) -> Self::Future {
        let answers = request.into_inner().map(|r| r.map(reflection::answer));
        std::future::ready(Ok(tonic::Response::new(Box::pin(answers))))
    }
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
