//! [`send_when_durable`], the connection's write step on a durable shard: nothing is written
//! before the log record the fast path's replies wait for is durable (the covering sync held
//! with `Fault::Stall`), and nothing at all if the log fails first (a failed write or sync).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use kvmesh_net::simple;
use kvmesh_proto::wire::{OpCode, Status};
use kvmesh_wal::testing::{Fault, MemDir};

use super::tests::{body, durable_shard, op, run, NOW};
use super::{execute, send_when_durable, Sent};
use crate::node::shard::Shard;

/// A connection's write side that keeps what was written to it.
#[derive(Clone, Default)]
struct Sink(Rc<RefCell<Vec<u8>>>);

impl futures_lite::AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves a put of `key` on `shard` through the fast path: its reply frame, and the record
/// it waits for.
fn put_here(shard: &mut Shard, key: &[u8]) -> (Vec<u8>, u64) {
    let body = body(1, vec![op(OpCode::OpPut, key, b"v", 0)]);
    let request = simple::parse(&body).expect("a plain request");
    let mut out = Vec::new();
    let served =
        execute(shard, &request, &mut std::iter::empty(), NOW, &mut out).expect("a plain put");
    (out, served.wait.expect("a logged put waits"))
}

#[test]
fn a_reply_is_not_sent_before_its_record_is_durable() {
    run(async {
        let dir = MemDir::new(512);
        let mut shard = durable_shard(dir.clone()).await;
        let log = shard.log().cloned().expect("a log");
        // The record's sync takes long.
        dir.faults().on_sync(0, Fault::Stall(400));
        let (out, seq) = put_here(&mut shard, b"k");
        let sink = Sink::default();
        let sending = glommio::spawn_local({
            let (log, out, mut sink) = (log.clone(), out.clone(), sink.clone());
            async move { send_when_durable(Some(&log), Some(seq), &out, &mut sink).await }
        });
        let syncs = dir.faults().syncs();
        while dir.faults().syncs() == syncs {
            futures_lite::future::yield_now().await;
            assert!(
                sink.0.borrow().is_empty(),
                "sent before its record was synced"
            );
        }
        // The sync that covers the record has started and not returned: still nothing.
        for _ in 0..100 {
            futures_lite::future::yield_now().await;
            assert!(!log.is_durable(seq));
            assert!(
                sink.0.borrow().is_empty(),
                "sent before its record was synced"
            );
        }
        // Another connection's get of the key waits for the same record.
        let (_, read_wait) = shard.get(b"k", NOW, |_| ());
        assert_eq!(read_wait, Some(seq));
        assert!(matches!(sending.await, Sent::Written));
        assert!(log.is_durable(seq));
        assert_eq!(*sink.0.borrow(), out);
        // Without a log (nothing waits then), it goes at once.
        let sink = Sink::default();
        let sent = send_when_durable(None, Some(seq + 100), &out, &mut sink.clone()).await;
        assert!(matches!(sent, Sent::Written));
        assert_eq!(*sink.0.borrow(), out);
    });
}

#[test]
fn a_failed_log_sends_nothing_of_the_pass() {
    for (fault_write, fault) in [
        (true, Fault::Error(libc::ENOSPC)),
        (false, Fault::Error(libc::EIO)),
        (false, Fault::StallThenError(20, libc::EIO)),
    ] {
        run(async move {
            let dir = MemDir::new(512);
            let mut shard = durable_shard(dir.clone()).await;
            let log = shard.log().cloned().expect("a log");
            if fault_write {
                dir.faults().on_write(0, fault);
            } else {
                dir.faults().on_sync(0, fault);
            }
            let (mut out, _) = put_here(&mut shard, b"k");
            // Another write served in the same pass: its OK must not go out either.
            let (second, last) = put_here(&mut shard, b"j");
            out.extend_from_slice(&second);
            let sink = Sink::default();
            let sent = send_when_durable(Some(&log), Some(last), &out, &mut sink.clone()).await;
            let Sent::NotLogged(why) = sent else {
                panic!("{fault:?}: sent {sent:?}");
            };
            assert!(why.contains("mem/"), "{fault:?}: {why}");
            assert!(
                sink.0.borrow().is_empty(),
                "{fault:?}: sent what the log lost"
            );
            // The log failed: the pass decision now sends every request to the general path
            // (`View::log_failed`, see the decision table), where the store refuses writes.
            assert!(log.failure().is_some());
            let refused = shard.put(b"k", b"v", 0, NOW);
            assert_eq!(refused.result.status(), Status::Unavailable);
        });
    }
}
