//! The glue that lets hyper run on glommio without tokio: hyper's I/O traits over a glommio
//! [`TcpStream`], and an executor that spawns hyper's background tasks on the current executor.
//! The node's gRPC server and the load generator's gRPC client both use it.
//!
//! Both are `!Send` by design: a connection, and every HTTP/2 stream on it, lives and dies on
//! the executor (the shard, or the bench worker) that opened it.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::ReadBufCursor;

/// At most this much of hyper's read buffer is zeroed and offered to one read. glommio reads
/// into initialised memory only, so every byte offered is zeroed first; bounding the offer keeps
/// that cost close to what one socket read returns anyway.
const MAX_READ: usize = 32 * 1024;
/// Bytes written but not yet sent, past which writes wait for the socket.
const MAX_PENDING: usize = 256 * 1024;

/// A glommio TCP stream seen through `hyper::rt::{Read, Write}`, with write-behind flushing.
///
/// h2 flushes once per frame it handles: a connection that reads 30 requests in one `recv` and
/// answers each at once would flush 30 times, a `send` system call each (and, on loopback, a
/// wake-up of the peer each). Instead, writes are gathered, and a flush schedules one send task
/// that runs after the current task's turn: everything the shard answered meanwhile leaves in
/// one `send`. Only that task writes to the socket, so it is the socket's one waiter; a send
/// error is reported by the next write, flush or shutdown.
pub struct Io {
    shared: Rc<Shared>,
}

struct Shared {
    stream: RefCell<TcpStream>,
    out: RefCell<Vec<u8>>,
    /// `out[..sent]` is already on the socket.
    sent: Cell<usize>,
    /// A send task is scheduled or running.
    sending: Cell<bool>,
    /// Why the last send failed.
    failed: Cell<Option<io::ErrorKind>>,
    /// hyper, waiting for the send task to make room or to finish.
    waiting: Cell<Option<Waker>>,
}

impl Io {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            shared: Rc::new(Shared {
                stream: RefCell::new(stream),
                out: RefCell::new(Vec::new()),
                sent: Cell::new(0),
                sending: Cell::new(false),
                failed: Cell::new(None),
                waiting: Cell::new(None),
            }),
        }
    }

    fn failed(&self) -> io::Result<()> {
        match self.shared.failed.get() {
            Some(kind) => Err(io::Error::new(
                kind,
                "an earlier send on this connection failed",
            )),
            None => Ok(()),
        }
    }

    /// Makes sure a send task will send what is gathered.
    fn schedule_send(&self) {
        if self.shared.sending.get() || self.shared.out.borrow().is_empty() {
            return;
        }
        self.shared.sending.set(true);
        let shared = self.shared.clone();
        glommio::spawn_local(async move {
            // Let the task that flushed finish its turn, and the tasks ready now run theirs,
            // so that what they write leaves in the same send.
            futures_lite::future::yield_now().await;
            if let Err(e) = poll_fn(|cx| shared.poll_send(cx)).await {
                shared.failed.set(Some(e.kind()));
            }
            shared.sending.set(false);
            if let Some(waker) = shared.waiting.take() {
                waker.wake();
            }
        })
        .detach();
    }

    /// Waits, as hyper, until no send task is running.
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.sending.get() {
            self.shared.waiting.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl Shared {
    /// Sends everything gathered, including what is added while it waits.
    fn poll_send(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let out = self.out.borrow();
            let sent = self.sent.get();
            if sent == out.len() {
                break;
            }
            let mut stream = self.stream.borrow_mut();
            match Pin::new(&mut *stream).poll_write(cx, &out[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent.set(sent + n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut out = self.out.borrow_mut();
        out.clear();
        if out.capacity() > MAX_PENDING {
            out.shrink_to(MAX_PENDING / 4);
        }
        self.sent.set(0);
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let len = buf.remaining().min(MAX_READ);
        let mut stream = self.shared.stream.borrow_mut();
        // SAFETY: the first `len` bytes are zeroed before they are viewed as `[u8]`, and
        // `advance` is called with no more than the count the read reports as written.
        unsafe {
            let spare = &mut buf.as_mut()[..len];
            spare.as_mut_ptr().write_bytes(0, len);
            let bytes = std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), len);
            match Pin::new(&mut *stream).poll_read(cx, bytes) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.failed()?;
        let pending = self.shared.out.borrow().len() - self.shared.sent.get();
        if pending >= MAX_PENDING {
            // Let the send task make room first.
            self.schedule_send();
            if self.poll_idle(cx).is_pending() {
                return Poll::Pending;
            }
            self.failed()?;
        }
        let mut out = self.shared.out.borrow_mut();
        let mut taken = 0;
        for b in bufs {
            let room = MAX_PENDING.saturating_sub(out.len() - self.shared.sent.get());
            let take = b.len().min(room.max(1));
            out.extend_from_slice(&b[..take]);
            taken += take;
            if take < b.len() {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Schedules the send and returns at once: the bytes leave after this task's turn.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.failed()?;
        self.schedule_send();
        Poll::Ready(Ok(()))
    }

    /// Sends everything gathered, then shuts the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.schedule_send();
        if self.poll_idle(cx).is_pending() {
            return Poll::Pending;
        }
        self.failed()?;
        let mut stream = self.shared.stream.borrow_mut();
        Pin::new(&mut *stream).poll_close(cx)
    }
}

/// Runs hyper's background futures (one per HTTP/2 stream) as detached tasks on the current
/// glommio executor. Must be used from inside a glommio executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;
    use hyper::rt::{Read, Write};

    use super::*;

    /// Runs `f` on a fresh executor with a connected pair: (our `Io`, the plain peer).
    fn with_pair<F, Fut>(f: F)
    where
        F: FnOnce(Io, TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let connect = glommio::spawn_local(TcpStream::connect(addr));
                let peer = listener.accept().await.unwrap();
                let ours = connect.await.unwrap();
                f(Io::new(ours), peer).await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn gathered_and_direct_writes_arrive_in_order() {
        with_pair(|mut io, mut peer| async move {
            let big: Vec<u8> = (0..3 * MAX_PENDING).map(|i| (i % 251) as u8).collect();
            let mut want = Vec::new();
            for chunk in [&b"head"[..], &b"er"[..]] {
                let n = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, chunk)).await;
                assert_eq!(n.unwrap(), chunk.len());
                want.extend_from_slice(chunk);
            }
            // Larger than a batch: the gathered bytes go first, then this, partly or whole.
            let mut rest = &big[..];
            while !rest.is_empty() {
                let n = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, rest))
                    .await
                    .unwrap();
                want.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            let slices = [io::IoSlice::new(b"a"), io::IoSlice::new(b"bc")];
            let n = poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &slices)).await;
            assert_eq!(n.unwrap(), 3);
            want.extend_from_slice(b"abc");
            poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx))
                .await
                .unwrap();
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), want.len());
            assert!(got == want, "bytes arrive in the order they were written");
        });
    }

    #[test]
    fn reads_fill_hypers_buffer() {
        with_pair(|mut io, mut peer| async move {
            peer.write_all(b"hello").await.unwrap();
            peer.close().await.unwrap();
            let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 16];
            let mut got = Vec::new();
            loop {
                let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
                poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled()))
                    .await
                    .unwrap();
                if buf.filled().is_empty() {
                    break;
                }
                got.extend_from_slice(buf.filled());
            }
            assert_eq!(got, b"hello");
        });
    }
}
