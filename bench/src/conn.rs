//! One pipelined connection, driven the same way for every target: fill the window from the
//! feed, send it in one write, read once, account for every complete reply in the buffer, and
//! repeat. Runs on its worker's glommio executor.
//!
//! Failures are never hidden: a request unanswered for `--timeout` fails as a timeout, and
//! every other request in flight on that connection with it; a connection that breaks (reset,
//! closed, garbled reply) loses what was in flight. Either way the connection is reopened and
//! the load goes on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;

use crate::codec::Codec;
use crate::feed::{Feed, Step};
use crate::stats::{Failure, Recorder};
use crate::workload::OpKind;

/// Largest reply buffer a connection grows to before it gives up on the server.
const MAX_BUFFER: usize = 1 << 30;
/// Pause between attempts to reopen a broken connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Consecutive failed reopen attempts after which a connection stops.
const RECONNECT_ATTEMPTS: u32 = 20;

/// Reopens a broken connection with `open`, pausing between attempts; counts the reconnect and
/// notes every failed attempt, and gives up after [`RECONNECT_ATTEMPTS`].
pub(crate) async fn reconnect<T, F, Fut>(
    addr: SocketAddr,
    rec: &RefCell<Recorder>,
    open: F,
) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..RECONNECT_ATTEMPTS {
        match open().await {
            Ok(opened) => {
                rec.borrow_mut().count(1, 0);
                return Ok(opened);
            }
            Err(why) => {
                rec.borrow_mut().note_error(&why);
                last = why;
                sleep(RECONNECT_PAUSE).await;
            }
        }
    }
    Err(format!(
        "gave up on {addr} after {RECONNECT_ATTEMPTS} attempts: {last}"
    ))
}

/// Why a connection stopped working.
#[derive(Debug)]
enum ConnError {
    Timeout,
    Broken(String),
}

struct Pending {
    kind: OpKind,
    intended: Instant,
    measured: bool,
}

pub struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    codec: Box<dyn Codec>,
    value: Rc<Vec<u8>>,
    ttl_ms: u64,
    key: Vec<u8>,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    inflight: VecDeque<Pending>,
}

async fn open(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let setup = || -> glommio::Result<(), ()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))
    };
    setup().map_err(|e| format!("cannot set up the connection to {addr}: {e}"))?;
    Ok(stream)
}

impl Conn {
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        codec: Box<dyn Codec>,
        value: Rc<Vec<u8>>,
        ttl_ms: u64,
    ) -> Result<Self, String> {
        let stream = open(addr, timeout).await?;
        Ok(Self {
            addr,
            timeout,
            stream: Some(stream),
            codec,
            value,
            ttl_ms,
            key: Vec::with_capacity(64),
            out: Vec::with_capacity(16 * 1024),
            buf: vec![0; 64 * 1024],
            pos: 0,
            end: 0,
            inflight: VecDeque::new(),
        })
    }

    /// Runs `feed` to its end with up to `depth` requests in flight, reopening the connection
    /// after failures. Gives up (`Err`) only when the connection cannot be reopened.
    pub async fn run(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), String> {
        loop {
            let error = match self.drive(feed, depth, rec).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let (failure, why) = match error {
                ConnError::Timeout => (
                    Failure::Timeout,
                    format!("no reply from {} within {:?}", self.addr, self.timeout),
                ),
                ConnError::Broken(why) => (Failure::Lost, why),
            };
            let now = Instant::now();
            let counted = self
                .inflight
                .iter()
                .filter(|p| feed.counts(p.measured, now));
            let measured = counted.count() as u64;
            rec.borrow_mut()
                .fail(failure, self.inflight.len() as u64, measured, &why);
            self.reset();
            self.reopen(rec).await?;
        }
    }

    /// Like [`Conn::run`], but any failure ends it: for the prefill, which must be complete.
    pub async fn run_strict(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), String> {
        self.drive(feed, depth, rec).await.map_err(|e| match e {
            ConnError::Timeout => format!("no reply from {} within {:?}", self.addr, self.timeout),
            ConnError::Broken(why) => why,
        })
    }

    fn reset(&mut self) {
        self.stream = None;
        self.inflight.clear();
        self.out.clear();
        self.pos = 0;
        self.end = 0;
        self.codec.reset();
    }

    async fn reopen(&mut self, rec: &RefCell<Recorder>) -> Result<(), String> {
        let (addr, timeout) = (self.addr, self.timeout);
        self.stream = Some(reconnect(addr, rec, || open(addr, timeout)).await?);
        Ok(())
    }

    async fn drive(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), ConnError> {
        let addr = self.addr;
        let Some(stream) = self.stream.as_mut() else {
            return Err(ConnError::Broken(format!(
                "connection to {addr} is not open"
            )));
        };
        loop {
            let now = Instant::now();
            let mut wait = None;
            let mut done = false;
            while self.inflight.len() < depth {
                match feed.next(now, &mut self.key) {
                    Step::Send {
                        kind,
                        intended,
                        measured,
                    } => {
                        self.codec
                            .encode(kind, &self.key, &self.value, self.ttl_ms, &mut self.out);
                        self.inflight.push_back(Pending {
                            kind,
                            intended,
                            measured,
                        });
                    }
                    Step::Wait(at) => {
                        wait = Some(at);
                        break;
                    }
                    Step::Done => {
                        done = true;
                        break;
                    }
                }
            }
            if !self.out.is_empty() {
                stream
                    .write_all(&self.out)
                    .await
                    .map_err(|e| io_error(addr, e))?;
                self.out.clear();
            }
            if self.inflight.is_empty() {
                match (done, wait) {
                    (true, _) => return Ok(()),
                    (false, Some(at)) => sleep(at.saturating_duration_since(Instant::now())).await,
                    (false, None) => {}
                }
                continue;
            }
            make_room(&mut self.buf, &mut self.pos, &mut self.end).map_err(ConnError::Broken)?;
            let read = stream.read(&mut self.buf[self.end..]);
            let read = match wait {
                // Open loop: stop reading when the next request is due.
                Some(at) => {
                    let due = async {
                        sleep(at.saturating_duration_since(Instant::now())).await;
                        None
                    };
                    future::or(async { Some(read.await) }, due).await
                }
                None => Some(read.await),
            };
            match read {
                None => continue,
                Some(Ok(0)) => {
                    return Err(ConnError::Broken(format!("{addr} closed the connection")))
                }
                Some(Ok(n)) => self.end += n,
                Some(Err(e)) => return Err(io_error(addr, e)),
            }
            let now = Instant::now();
            let mut rec = rec.borrow_mut();
            while let Some((reply, used)) = self
                .codec
                .decode(&self.buf[self.pos..self.end])
                .map_err(|f| ConnError::Broken(format!("bad reply from {addr}: {}", f.0)))?
            {
                self.pos += used;
                let Some(p) = self.inflight.pop_front() else {
                    return Err(ConnError::Broken(format!(
                        "{addr} answered a request that was never sent"
                    )));
                };
                let counted = feed.counts(p.measured, now);
                rec.complete(p.kind, &reply, p.intended, now, counted);
            }
        }
    }
}

fn io_error(addr: SocketAddr, e: std::io::Error) -> ConnError {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ConnError::Timeout,
        _ => ConnError::Broken(format!("connection to {addr} failed: {e}")),
    }
}

/// Makes room at the end of `buf` for a read: drops parsed bytes, then grows (up to a limit).
fn make_room(buf: &mut Vec<u8>, pos: &mut usize, end: &mut usize) -> Result<(), String> {
    if *pos == *end {
        *pos = 0;
        *end = 0;
    }
    if *end < buf.len() {
        return Ok(());
    }
    if *pos > 0 {
        buf.copy_within(*pos..*end, 0);
        *end -= *pos;
        *pos = 0;
    } else if buf.len() >= MAX_BUFFER {
        return Err(format!("a reply is larger than {MAX_BUFFER} bytes"));
    } else {
        let grown = buf.len() * 2;
        buf.resize(grown, 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_made_by_compacting_then_growing() {
        let mut buf = vec![0u8; 8];
        buf[6..8].copy_from_slice(b"ab");
        let (mut pos, mut end) = (6, 8);
        make_room(&mut buf, &mut pos, &mut end).unwrap();
        assert_eq!((pos, end, &buf[..2]), (0, 2, &b"ab"[..]));
        let (mut pos, mut end) = (0, 8);
        make_room(&mut buf, &mut pos, &mut end).unwrap();
        assert_eq!((pos, end, buf.len()), (0, 8, 16));
        let (mut pos, mut end) = (5, 5);
        make_room(&mut buf, &mut pos, &mut end).unwrap();
        assert_eq!((pos, end), (0, 0));
    }
}
