//! The glue that lets hyper run on glommio without tokio: hyper's I/O traits over a glommio
//! [`TcpStream`], and an executor that spawns hyper's background tasks on the current executor.
//! The node's gRPC server and the load generator's gRPC client both use it.
//!
//! Both are `!Send` by design: a connection, and every HTTP/2 stream on it, lives and dies on
//! the executor (the shard, or the bench worker) that opened it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::ReadBufCursor;

/// At most this much of hyper's read buffer is zeroed and offered to one read. glommio reads
/// into initialised memory only, so every byte offered is zeroed first; bounding the offer keeps
/// that cost close to what one socket read returns anyway.
const MAX_READ: usize = 32 * 1024;
/// Writes are gathered up to this size and sent when hyper flushes; a write at least this large
/// goes straight to the socket once the gathered bytes are out.
const WRITE_BATCH: usize = 64 * 1024;

/// A glommio TCP stream seen through `hyper::rt::{Read, Write}`.
///
/// Writes are gathered and sent on flush: h2 writes each frame (headers, data, trailers) on its
/// own and flushes once per turn of its connection, so without gathering every small frame of
/// every response would cost a `send` system call.
pub struct Io {
    stream: TcpStream,
    out: Vec<u8>,
    /// `out[..sent]` is already on the socket.
    sent: usize,
}

impl Io {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            out: Vec::new(),
            sent: 0,
        }
    }

    /// Sends what is gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.out[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > 4 * WRITE_BATCH {
            self.out.shrink_to(WRITE_BATCH);
        }
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let len = buf.remaining().min(MAX_READ);
        // SAFETY: the first `len` bytes are zeroed before they are viewed as `[u8]`, and
        // `advance` is called with no more than the count the read reports as written.
        unsafe {
            let spare = &mut buf.as_mut()[..len];
            spare.as_mut_ptr().write_bytes(0, len);
            let bytes = std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), len);
            match Pin::new(&mut self.stream).poll_read(cx, bytes) {
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.out.len() + buf.len() > WRITE_BATCH {
            ready!(self.poll_drain(cx))?;
            if buf.len() >= WRITE_BATCH {
                return Pin::new(&mut self.stream).poll_write(cx, buf);
            }
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + total > WRITE_BATCH {
            ready!(self.poll_drain(cx))?;
            if total >= WRITE_BATCH {
                // Too large to gather: one slice at a time, straight to the socket.
                let first = bufs.iter().find(|b| !b.is_empty());
                return match first {
                    Some(b) => Pin::new(&mut self.stream).poll_write(cx, b),
                    None => Poll::Ready(Ok(0)),
                };
            }
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.stream).poll_close(cx)
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
            let big: Vec<u8> = (0..3 * WRITE_BATCH).map(|i| (i % 251) as u8).collect();
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
