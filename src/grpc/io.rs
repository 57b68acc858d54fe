//! The glue that lets hyper run on glommio without tokio: hyper's I/O traits over a glommio
//! [`TcpStream`], and an executor that spawns hyper's per-stream tasks on the current shard.
//!
//! Both are `!Send` by design: a connection, and every HTTP/2 stream on it, lives and dies on
//! the shard that accepted it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::ReadBufCursor;

/// At most this much of hyper's read buffer is zeroed and offered to one read. glommio reads
/// into initialised memory only, so every byte offered is zeroed first; bounding the offer keeps
/// that cost proportional to what a socket read returns anyway.
const MAX_READ: usize = 64 * 1024;

/// A glommio TCP stream seen through `hyper::rt::{Read, Write}`.
pub struct Io(pub TcpStream);

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
            match Pin::new(&mut self.0).poll_read(cx, bytes) {
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
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Runs hyper's background futures (one per HTTP/2 stream) as detached tasks on the current
/// glommio executor. Must be used from inside a shard's executor.
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
