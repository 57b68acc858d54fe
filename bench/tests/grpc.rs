//! End to end: the real `kvmesh-bench --target grpc` against a small fake DistributedCache (and
//! KvMesh MultiGet/MultiPut) server (hyper's HTTP/2 server and tonic's `Grpc` on glommio, as the node serves it), so the
//! gRPC client machinery runs without a kvmesh node.

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use glommio::net::TcpListener;
use kvmesh_net::hyper_io::{Io, LocalExec};
use kvmesh_proto::distributed_cache::{
    GetRequest, GetResponse, KvGetResult, KvMultiGetRequest, KvMultiGetResponse, KvMultiPutRequest,
    KvMultiPutResponse, KvWriteResult, PutRequest, PutResponse,
};
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use common::bench;

/// What the fake server answers and counts.
#[derive(Default)]
struct Fake {
    /// Put answers this status instead of success.
    put_fails: bool,
    gets: AtomicU64,
    puts: AtomicU64,
    /// Requests whose grpc-timeout header was missing.
    without_deadline: AtomicU64,
    /// Batch calls, and the keys they carried.
    multi_calls: AtomicU64,
    multi_keys: AtomicU64,
}

struct Get(Arc<Fake>);
struct Put(Arc<Fake>);

impl UnaryService<GetRequest> for Get {
    type Response = GetResponse;
    type Future = Ready<Result<Response<GetResponse>, Status>>;
    fn call(&mut self, req: Request<GetRequest>) -> Self::Future {
        self.0.gets.fetch_add(1, Ordering::Relaxed);
        // Keys ending in 7 are missing: a tenth of them, counted as misses, not errors.
        ready(if req.get_ref().key.ends_with('7') {
            Err(Status::not_found("no such key"))
        } else {
            Ok(Response::new(GetResponse {
                value: "hello".into(),
                success: true,
            }))
        })
    }
}

impl UnaryService<PutRequest> for Put {
    type Response = PutResponse;
    type Future = Ready<Result<Response<PutResponse>, Status>>;
    fn call(&mut self, req: Request<PutRequest>) -> Self::Future {
        self.0.puts.fetch_add(1, Ordering::Relaxed);
        assert_eq!(req.get_ref().value.len(), 100, "the bench's value size");
        ready(if self.0.put_fails {
            Err(Status::unavailable("nope"))
        } else {
            Ok(Response::new(PutResponse { success: true }))
        })
    }
}

struct MultiGet(Arc<Fake>);
struct MultiPut(Arc<Fake>);

impl UnaryService<KvMultiGetRequest> for MultiGet {
    type Response = KvMultiGetResponse;
    type Future = Ready<Result<Response<KvMultiGetResponse>, Status>>;
    fn call(&mut self, req: Request<KvMultiGetRequest>) -> Self::Future {
        let keys = &req.get_ref().keys;
        self.0.multi_calls.fetch_add(1, Ordering::Relaxed);
        self.0
            .multi_keys
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        // Keys ending in 7 are missing, per key.
        let results = keys
            .iter()
            .map(|k| KvGetResult {
                code: if k.ends_with(b"7") { 5 } else { 0 },
                ..KvGetResult::default()
            })
            .collect();
        ready(Ok(Response::new(KvMultiGetResponse { results })))
    }
}

impl UnaryService<KvMultiPutRequest> for MultiPut {
    type Response = KvMultiPutResponse;
    type Future = Ready<Result<Response<KvMultiPutResponse>, Status>>;
    fn call(&mut self, req: Request<KvMultiPutRequest>) -> Self::Future {
        let entries = &req.get_ref().entries;
        self.0.multi_calls.fetch_add(1, Ordering::Relaxed);
        self.0
            .multi_keys
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let results = entries.iter().map(|_| KvWriteResult::default()).collect();
        ready(Ok(Response::new(KvMultiPutResponse { results })))
    }
}

/// Starts the fake server on its own glommio executor; returns its address.
fn fake_server(fake: Arc<Fake>) -> String {
    let (tx, rx) = mpsc::channel();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            while let Ok(stream) = listener.accept().await {
                let fake = fake.clone();
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let fake = fake.clone();
                    async move {
                        if !req.headers().contains_key("grpc-timeout") {
                            fake.without_deadline.fetch_add(1, Ordering::Relaxed);
                        }
                        let path = req.uri().path().to_string();
                        let response = if path.ends_with("/MultiGet") {
                            Grpc::new(ProstCodec::default())
                                .unary(MultiGet(fake), req)
                                .await
                        } else if path.ends_with("/MultiPut") {
                            Grpc::new(ProstCodec::default())
                                .unary(MultiPut(fake), req)
                                .await
                        } else if path.ends_with("/Get") {
                            Grpc::new(ProstCodec::default()).unary(Get(fake), req).await
                        } else {
                            Grpc::new(ProstCodec::default()).unary(Put(fake), req).await
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                glommio::spawn_local(async move {
                    let _ = hyper::server::conn::http2::Builder::new(LocalExec)
                        .serve_connection(Io::new(stream), service)
                        .await;
                })
                .detach();
            }
        })
        .unwrap();
    rx.recv().unwrap()
}

#[test]
fn grpc_target_counts_hits_misses_and_sets() {
    let fake = Arc::new(Fake::default());
    let addr = fake_server(fake.clone());
    let report = bench(&[
        "--target",
        "grpc",
        "--addr",
        &addr,
        "--requests",
        "3000",
        "--connections",
        "3",
        "--pipeline",
        "8",
        "--keys",
        "500",
        "--ttl",
        "30s",
    ]);
    assert_eq!(report["requests"], 3000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["prefill_keys"], 500);
    let gets = report["gets"].as_u64().unwrap();
    let sets = report["sets"].as_u64().unwrap();
    assert_eq!(gets + sets, 3000);
    assert_eq!(fake.gets.load(Ordering::Relaxed), gets);
    assert_eq!(fake.puts.load(Ordering::Relaxed), sets + 500);
    // Keys ending in 7 are a tenth of the key space, so roughly a tenth of GETs miss.
    let hit_rate = report["hit_rate"].as_f64().unwrap();
    assert!((0.85..0.95).contains(&hit_rate), "{report}");
    assert_eq!(fake.without_deadline.load(Ordering::Relaxed), 0);
}

#[test]
fn grpc_error_statuses_are_error_replies() {
    let fake = Arc::new(Fake {
        put_fails: true,
        ..Fake::default()
    });
    let addr = fake_server(fake.clone());
    let report = bench(&[
        "--target",
        "grpc",
        "--addr",
        &addr,
        "--requests",
        "400",
        "--read-ratio",
        "0",
        "--no-prefill",
        "--connections",
        "2",
    ]);
    assert_eq!(report["requests"], 400);
    assert_eq!(report["errors"], 400);
    assert_eq!(report["error_replies"], 400);
    assert_eq!(report["first_errors"][0], "Unavailable: nope", "{report}");
}

#[test]
fn grpc_batches_count_every_key() {
    let fake = Arc::new(Fake::default());
    let addr = fake_server(fake.clone());
    let report = bench(&[
        "--target",
        "grpc",
        "--addr",
        &addr,
        "--requests",
        "5000",
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--batch",
        "100",
        "--keys",
        "1000",
    ]);
    assert_eq!(report["requests"], 5000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["batch"], 100);
    // The prefill's 1000 keys and the 5000 measured ones, all through the batch calls.
    assert_eq!(fake.multi_keys.load(Ordering::Relaxed), 6000);
    assert_eq!(
        fake.gets.load(Ordering::Relaxed) + fake.puts.load(Ordering::Relaxed),
        0
    );
    // 90% Gets and 10% Sets in each batch of 100: at most two calls per batch, some
    // partial batches at the ends; far fewer calls than keys.
    let calls = fake.multi_calls.load(Ordering::Relaxed);
    assert!((60..=200).contains(&calls), "{calls} calls");
    let hit_rate = report["hit_rate"].as_f64().unwrap();
    assert!((0.85..0.95).contains(&hit_rate), "{report}");
}
