//! The refresh-and-retry on `STATUS_MOVED`, against a fake one-shard node whose topology epoch
//! the test moves.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::LocalExecutorBuilder;
use kvmesh_proto::wire::{Member, OpCode, OpResult, Request, Response, Status, Topology};

use super::*;
use crate::frame::{self, DEFAULT_MAX_FRAME};

const T: Duration = Duration::from_secs(10);

/// What the fake node does: its topology epoch, and whether it answers every key op MOVED
/// whatever the request's epoch (a topology that never settles).
struct Fake {
    epoch: Cell<u64>,
    always_moved: bool,
    /// The epochs key-op requests said they were routed by, in arrival order.
    seen: std::cell::RefCell<Vec<u64>>,
}

/// Node 1, alone, one shard on `port`: answers OP_TOPOLOGY with `fake`'s epoch, key ops
/// routed by an older non-zero epoch MOVED, and other key ops OK with the key as the value.
async fn serve(listener: TcpListener, fake: Rc<Fake>) {
    let port = listener.local_addr().unwrap().port();
    while let Ok(stream) = listener.accept().await {
        glommio::spawn_local(connection(stream, port, fake.clone())).detach();
    }
}

async fn connection(mut stream: TcpStream, port: u16, fake: Rc<Fake>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Ok(Some((req, used))) = frame::decode::<Request>(&buf, DEFAULT_MAX_FRAME) {
            buf.drain(..used);
            let now = fake.epoch.get();
            let results = req
                .ops
                .iter()
                .map(|op| {
                    if op.code == OpCode::OpTopology as i32 {
                        return OpResult {
                            topology: Some(Box::new(Topology {
                                node_id: 1,
                                shards: 1,
                                shard_ports: vec![u32::from(port)],
                                members: vec![Member {
                                    id: 1,
                                    addr: format!("127.0.0.1:{port}"),
                                }],
                                epoch: now,
                                ..Topology::default()
                            })),
                            ..OpResult::default()
                        };
                    }
                    fake.seen.borrow_mut().push(req.epoch);
                    if fake.always_moved || (req.epoch != 0 && req.epoch < now) {
                        return OpResult {
                            status: Status::Moved as i32,
                            moved_epoch: now,
                            ..OpResult::default()
                        };
                    }
                    OpResult {
                        value: op.key.clone(),
                        ..OpResult::default()
                    }
                })
                .collect();
            let mut out = Vec::new();
            frame::encode(
                &Response {
                    id: req.id,
                    results,
                    ..Response::default()
                },
                &mut out,
            );
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs `test` on a glommio executor with a fake node at `epoch`.
fn with_fake<F: std::future::Future<Output = ()> + 'static>(
    epoch: u64,
    always_moved: bool,
    test: impl FnOnce(std::net::SocketAddr, Rc<Fake>) -> F + Send + 'static,
) {
    LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let fake = Rc::new(Fake {
                epoch: Cell::new(epoch),
                always_moved,
                seen: Default::default(),
            });
            let _server = glommio::spawn_local(serve(listener, fake.clone()));
            test(addr, fake).await;
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_moved_answer_refreshes_the_topology_and_sends_the_op_again() {
    with_fake(1, false, |addr, fake| async move {
        let mut client = Client::connect(addr, T).await.unwrap();
        assert_eq!(client.epoch(), 1);
        assert_eq!(client.get(b"k").await.unwrap().as_deref(), Some(&b"k"[..]));
        assert_eq!(client.moved_answers(), 0);

        fake.epoch.set(3);
        assert_eq!(client.get(b"k").await.unwrap().as_deref(), Some(&b"k"[..]));
        assert_eq!(client.moved_answers(), 1);
        assert_eq!(client.epoch(), 3);
        assert_eq!(*fake.seen.borrow(), [1, 1, 3]);

        fake.epoch.set(5);
        let ops = ["a", "b", "c"]
            .iter()
            .map(|k| op(OpCode::OpGet, k.as_bytes(), &[], 0))
            .collect();
        let results = client.execute_many(ops).await.unwrap();
        let values: Vec<&[u8]> = results.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, [b"a", b"b", b"c"]);
        assert!(results.iter().all(|r| r.status() == Status::Ok));
        assert_eq!(client.moved_answers(), 4);
        assert_eq!(client.epoch(), 5);
    });
}

#[test]
fn a_topology_that_never_settles_is_a_clear_error_after_bounded_refreshes() {
    with_fake(2, true, |addr, fake| async move {
        let mut client = Client::connect(addr, T).await.unwrap();
        match client.get(b"k").await {
            Err(ClientError::Moved { epoch, refreshes }) => {
                assert_eq!((epoch, refreshes), (2, MAX_REFRESHES));
            }
            other => panic!("expected a MOVED error, got {other:?}"),
        }
        assert_eq!(fake.seen.borrow().len(), MAX_REFRESHES + 1);
        let ops = vec![op(OpCode::OpPut, b"k", b"v", 0)];
        assert!(matches!(
            client.execute_many(ops).await,
            Err(ClientError::Moved { .. })
        ));
    });
}

#[test]
fn a_client_of_a_node_alone_says_no_epoch_and_is_never_moved() {
    with_fake(0, false, |addr, fake| async move {
        let mut client = Client::connect(addr, T).await.unwrap();
        assert_eq!(client.epoch(), 0);
        client.put(b"k", b"v", None).await.unwrap();
        assert_eq!(*fake.seen.borrow(), [0]);
        assert_eq!(client.moved_answers(), 0);
    });
}
