use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;
use glommio::LocalExecutorBuilder;
use kvmesh_proto::wire::{OpCode, OpResult, Request, Response};

use super::*;
use crate::client::op;

const T: Duration = Duration::from_secs(10);

/// Reads requests until `batch` have arrived, then answers them in reverse order, each result
/// carrying the request id and the op's key; closes after `close_after` requests.
async fn serve(listener: TcpListener, batch: usize, close_after: usize) {
    let mut stream = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut held = Vec::new();
    let mut seen = 0;
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Ok(Some((req, used))) = frame::decode::<Request>(&buf, DEFAULT_MAX_FRAME) {
            buf.drain(..used);
            assert!(
                req.forwarded,
                "a Mux marks what it sends as forwarded when asked"
            );
            held.push(req);
            seen += 1;
        }
        if seen >= close_after {
            return; // drops the stream: the client sees the connection close
        }
        if held.len() >= batch {
            let mut out = Vec::new();
            for req in held.drain(..).rev() {
                let results = req
                    .ops
                    .iter()
                    .map(|o| OpResult {
                        value: [req.id.to_be_bytes().as_slice(), &o.key].concat(),
                        ..OpResult::default()
                    })
                    .collect();
                let response = Response {
                    id: req.id,
                    results,
                    ..Response::default()
                };
                frame::encode(&response, &mut out);
            }
            stream.write_all(&out).await.unwrap();
        }
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn on_executor<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn replies_find_their_requests_whatever_the_order() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = glommio::spawn_local(serve(listener, 3, usize::MAX));
        let mux = Mux::new(Connection::connect(addr, T).await.unwrap()).unwrap();
        let replies: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|k| {
                mux.send(vec![op(OpCode::OpGet, k.as_bytes(), b"", 0)], true)
                    .unwrap()
            })
            .collect();
        for (i, (reply, key)) in replies.into_iter().zip(["a", "b", "c"]).enumerate() {
            let results = reply.wait(T).await.unwrap();
            let id = (i as u64 + 1).to_be_bytes();
            assert_eq!(results[0].value, [id.as_slice(), key.as_bytes()].concat());
        }
        assert!(!mux.is_closed());
        drop(mux);
        drop(server);
    });
}

#[test]
fn a_closed_connection_fails_what_waits_and_what_follows() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = glommio::spawn_local(serve(listener, usize::MAX, 2));
        let mux = Mux::new(Connection::connect(addr, T).await.unwrap()).unwrap();
        let first = mux
            .send(vec![op(OpCode::OpGet, b"a", b"", 0)], true)
            .unwrap();
        let second = mux
            .send(vec![op(OpCode::OpGet, b"b", b"", 0)], true)
            .unwrap();
        for reply in [first, second] {
            match reply.wait(T).await {
                Err(ClientError::Lost { why, .. }) => assert!(why.contains("closed"), "{why}"),
                other => panic!("expected Lost, got {:?}", other.map(|r| r.len())),
            }
        }
        assert!(mux.is_closed());
        assert!(matches!(
            mux.send(vec![op(OpCode::OpGet, b"c", b"", 0)], true),
            Err(ClientError::Lost { .. })
        ));
    });
}

#[test]
fn a_silent_peer_times_out() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Never answers: waits for 100 requests before it replies.
        let _server = glommio::spawn_local(serve(listener, 100, usize::MAX));
        let mux = Mux::new(Connection::connect(addr, T).await.unwrap()).unwrap();
        let reply = mux
            .send(vec![op(OpCode::OpGet, b"a", b"", 0)], true)
            .unwrap();
        let waited = reply.wait(Duration::from_millis(50)).await;
        assert!(
            matches!(waited, Err(ClientError::Timeout(_))),
            "{:?}",
            waited.map(|r| r.len())
        );
    });
}
