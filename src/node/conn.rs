//! One client connection: parse what is buffered, execute, answer, and read only when a frame
//! is incomplete.
//!
//! Every request parsed from one read is started before any is waited for, and their replies
//! go out in one write, once every log record they report is durable (see `fast::send`). A
//! frame that is too large or does not decode gets a frame-level error reply and the
//! connection closes; other connections are unaffected. EOF between frames is a
//! clean close; EOF inside a frame is counted as a protocol error. When the shard drains for
//! shutdown, a connection answers what it has read and closes.

use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kvmesh_net::frame::{self, PREFIX_LEN};
use kvmesh_proto::wire::{OpCode, Request, Status};

use super::dispatch;
use super::fast;
use super::limits;
use super::reply;
use super::server::ShardCtx;

pub(super) const READ_BUF: usize = 64 * 1024;

/// Reads into `buf`, which holds `end` bytes already, until it holds a whole frame, the peer
/// stops sending, or [`limits::PEER_GRACE`] passes; returns how many bytes it holds.
pub(super) async fn first_bytes(
    stream: &mut TcpStream,
    buf: &mut [u8],
    mut end: usize,
    max_frame: usize,
) -> usize {
    let _ = glommio::timer::timeout(limits::PEER_GRACE, async {
        while end < buf.len()
            && !matches!(
                frame::decode::<Request>(&buf[..end], max_frame),
                Ok(Some(_)) | Err(_)
            )
        {
            match stream.read(&mut buf[end..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => end += n,
            }
        }
        Ok(())
    })
    .await;
    end
}

/// Serves one accepted connection until the peer closes it or sends something unacceptable.
pub async fn serve(stream: TcpStream, ctx: Rc<ShardCtx>) {
    serve_read(stream, ctx, &[]).await;
}

/// [`serve`], for a connection whose first bytes, `read`, were read already.
pub async fn serve_read(mut stream: TcpStream, ctx: Rc<ShardCtx>, read: &[u8]) {
    let mut open = Some(ctx.connection_opened());
    // Small replies must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let max_frame = ctx.config.max_frame;
    let mut buf = vec![0u8; READ_BUF.max(read.len())];
    buf[..read.len()].copy_from_slice(read);
    let (mut pos, mut end) = (0usize, read.len());
    if limits::over_share(&ctx) {
        // Connections between nodes are not counted, so a flood of clients cannot cut the
        // cluster apart: a peer's connection starts with its hello.
        end = first_bytes(&mut stream, &mut buf, end, max_frame).await;
        if limits::starts_with_hello(&buf[..end], max_frame) {
            open = None;
        } else {
            let mut out = Vec::new();
            frame::encode(&limits::refusal_frame(limits::refusal(&ctx)), &mut out);
            let _ = stream.write_all(&out).await;
            let _ = stream.close().await;
            return;
        }
    }
    let mut out = Vec::with_capacity(READ_BUF);
    let mut started = Vec::new();
    let mut fast_batch = fast::Batch::default();
    // Whether this connection began with a peer's hello that passed the handshake.
    let mut peer = false;
    let mut watch = ctx.serving.watch();
    loop {
        // Start every buffered request before waiting for any: their writes then share the
        // log's commits, and a pipelining client fills the next batch. Stop at MAX_UNSENT
        // reply bytes: the rest waits in the buffer until the client has read these replies,
        // so one that never reads cannot make the node hold more.
        let mut bad_frame = None;
        let mut unsent = 0;
        while unsent < limits::MAX_UNSENT {
            // A plain request whose ops all run here is served from the buffer as it stands
            // (see `fast`), while no request of the general path waits before it: replies go
            // out in request order.
            if started.is_empty() {
                let buffered = &buf[pos..end];
                let budget = limits::MAX_UNSENT - unsent;
                if let Some((used, bytes)) =
                    fast::serve(&ctx, buffered, max_frame, budget, &mut out, &mut fast_batch)
                {
                    pos += used;
                    unsent += bytes;
                    continue;
                }
            }
            match frame::decode_with(&buf[pos..end], max_frame, kvmesh_net::request::decode) {
                Ok(Some((request, used))) => {
                    pos += used;
                    if started.is_empty() {
                        // The pass's fast-path requests are served: their time ends here,
                        // before any await of the general path.
                        fast_batch.record(&ctx);
                    }
                    let Request {
                        id,
                        ops,
                        forwarded,
                        epoch,
                    } = request;
                    if let Some(hello) = ops.first().filter(|op| op.code == OpCode::OpHello as i32)
                    {
                        // A peer node's connection: not a client's, so not counted.
                        drop(open.take());
                        peer = ctx.peers.check_peer_hello(hello.hello.as_deref()).is_ok();
                    }
                    if !peer && ops.iter().any(|op| op.code == OpCode::OpRaft as i32) {
                        // The topology Raft group trusts what it steps: only a peer node
                        // that passed the handshake on this connection may send to it.
                        let refused = reply::status(
                            Status::Refused,
                            "OP_RAFT is accepted only on a peer connection that completed \
                             the handshake (OP_HELLO)",
                        );
                        let results = vec![refused; ops.len()];
                        unsent += results.iter().map(|r| r.message.len()).sum::<usize>();
                        started.push((id, Err(results)));
                        continue;
                    }
                    let running = dispatch::start_from(&ctx, ops, forwarded, epoch).await;
                    unsent += running.reply_bytes();
                    started.push((id, Ok(running)));
                }
                Ok(None) => break,
                Err(e) => {
                    bad_frame = Some(e);
                    break;
                }
            }
        }
        fast_batch.record(&ctx);
        for (id, request) in started.drain(..) {
            let results = match request {
                Ok(request) => request.finish(&ctx).await,
                Err(refused) => refused,
            };
            reply::encode_response(id, &results, &mut out);
        }
        if let Some(e) = &bad_frame {
            ctx.shard.borrow_mut().counters.protocol_errors += 1;
            frame::encode(&reply::frame_error(e), &mut out);
        }
        if !out.is_empty() {
            // Not before the log records the fast path's replies report are durable; never,
            // if the log failed first (see `fast`): the connection then closes unanswered.
            match fast::send(&ctx, &mut fast_batch, &out, &mut stream).await {
                fast::Sent::Written => {}
                fast::Sent::NotLogged(_) => {
                    let _ = stream.close().await;
                    return;
                }
                fast::Sent::Failed => return,
            }
            out.clear();
            // Do not keep a burst's worth of memory for a connection that goes quiet.
            if out.capacity() > 4 * READ_BUF {
                out.shrink_to(READ_BUF);
            }
        }
        if bad_frame.is_some() {
            let _ = stream.close().await;
            return;
        }
        // Make room for the rest of the current frame.
        if pos == end {
            (pos, end) = (0, 0);
            if buf.len() > READ_BUF {
                buf.truncate(READ_BUF);
                buf.shrink_to_fit();
            }
        } else if pos > 0 {
            buf.copy_within(pos..end, 0);
            (pos, end) = (0, end - pos);
        }
        if let Ok(Some(len)) = frame::peek_len(&buf[..end], max_frame) {
            // The prefix was checked against the limit, so this allocation is bounded.
            if buf.len() < PREFIX_LEN + len {
                buf.resize(PREFIX_LEN + len, 0);
            }
        }
        if unsent >= limits::MAX_UNSENT {
            // Requests are still buffered: serve them before reading more.
            continue;
        }
        // A draining shard stops reading: what was read has been answered above. So does a
        // connection that sends nothing for --idle-timeout.
        let read = watch.or_drained(stream.read(&mut buf[end..]));
        let read = match ctx.config.idle_timeout {
            Some(idle) => {
                futures_lite::future::or(read, async {
                    glommio::timer::sleep(idle).await;
                    limits::idle_closed(&ctx);
                    None
                })
                .await
            }
            None => read.await,
        };
        let Some(read) = read else {
            let _ = stream.close().await;
            return;
        };
        match read {
            Ok(0) | Err(_) => {
                if end > 0 {
                    ctx.shard.borrow_mut().counters.protocol_errors += 1;
                }
                return;
            }
            Ok(n) => end += n,
        }
    }
}
