//! One wire connection shared by every task of an executor: requests from many tasks are
//! pipelined on it, and replies are matched to their requests by id.
//!
//! [`Mux::send`] encodes a request into the outgoing buffer and returns at once; a writer task
//! sends everything queued in one write after the current task's turn, so requests queued
//! together leave together. A reader task decodes replies and hands each to its waiting
//! [`Reply`]. When the connection fails, every waiting reply gets the error and
//! [`Mux::is_closed`] turns true: the owner opens a new one. Dropping the `Mux` closes the
//! connection and fails the replies still waiting.
//!
//! Everything lives on the executor that created it (`Rc`, no locks).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::Task;
use kvmesh_proto::wire::{Op, OpResult, Request, Response, Status};

use crate::client::{ClientError, Connection};
use crate::frame::{self, DEFAULT_MAX_FRAME, PREFIX_LEN};

const READ_BUF: usize = 64 * 1024;

type Answer = Result<Vec<OpResult>, ClientError>;

/// A shared, pipelined connection. See the module docs.
pub struct Mux {
    shared: Rc<Shared>,
    _reader: Task<()>,
}

struct Shared {
    stream: RefCell<TcpStream>,
    addr: SocketAddr,
    out: RefCell<Vec<u8>>,
    /// A writer task is scheduled or running.
    writing: Cell<bool>,
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Why the connection failed, once it has.
    failed: RefCell<Option<String>>,
}

/// The reply to one request sent with [`Mux::send`].
pub struct Reply {
    addr: SocketAddr,
    id: u64,
    ops: usize,
    rx: oneshot::Receiver<Answer>,
    shared: Rc<Shared>,
}

impl Mux {
    /// Takes over an open connection with no request in flight (say, right after a handshake).
    pub fn new(conn: Connection) -> Result<Mux, ClientError> {
        let addr = conn.addr();
        let stream = conn.into_stream()?;
        // Idle is normal here: a shared connection waits for replies only while some are due,
        // and each `Reply::wait` carries its own deadline.
        stream.set_read_timeout(None).map_err(|e| ClientError::Io {
            addr,
            error: e.into(),
        })?;
        let shared = Rc::new(Shared {
            stream: RefCell::new(stream),
            addr,
            out: RefCell::new(Vec::with_capacity(4096)),
            writing: Cell::new(false),
            next_id: Cell::new(1),
            waiting: RefCell::new(HashMap::new()),
            failed: RefCell::new(None),
        });
        let reader = glommio::spawn_local(read_loop(shared.clone()));
        Ok(Mux {
            shared,
            _reader: reader,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// True once the connection has failed; every later `send` fails at once.
    pub fn is_closed(&self) -> bool {
        self.shared.failed.borrow().is_some()
    }

    /// Queues one request and returns its reply to wait for. `forwarded` marks ops a node
    /// forwards to their owner (see `Request.forwarded`).
    pub fn send(&self, ops: Vec<Op>, forwarded: bool) -> Result<Reply, ClientError> {
        self.send_at(ops, forwarded, 0)
    }

    /// [`Mux::send`], saying which topology epoch the sender routed by (`Request.epoch`).
    pub fn send_at(&self, ops: Vec<Op>, forwarded: bool, epoch: u64) -> Result<Reply, ClientError> {
        let shared = &self.shared;
        if let Some(why) = shared.failed.borrow().clone() {
            return Err(ClientError::Lost {
                addr: shared.addr,
                why,
            });
        }
        let id = shared.next_id.get();
        shared.next_id.set(id + 1);
        let n = ops.len();
        frame::encode(
            &Request {
                id,
                ops,
                forwarded,
                epoch,
            },
            &mut shared.out.borrow_mut(),
        );
        let (tx, rx) = oneshot::channel();
        shared.waiting.borrow_mut().insert(id, tx);
        if !shared.writing.replace(true) {
            glommio::spawn_local(write_loop(shared.clone())).detach();
        }
        Ok(Reply {
            addr: shared.addr,
            id,
            ops: n,
            rx,
            shared: shared.clone(),
        })
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.shared
            .fail("the connection was closed by its owner".into());
    }
}

impl Reply {
    /// The results, one per op, or why they did not come within `timeout`.
    pub async fn wait(self, timeout: Duration) -> Result<Vec<OpResult>, ClientError> {
        let Reply {
            addr,
            id,
            ops,
            rx,
            shared,
        } = self;
        let answered = glommio::timer::timeout(timeout, async {
            Ok(rx.await.unwrap_or_else(|_| {
                Err(ClientError::Lost {
                    addr,
                    why: "the reply was dropped".into(),
                })
            }))
        })
        .await;
        match answered {
            Ok(Ok(results)) if results.len() == ops => Ok(results),
            Ok(Ok(results)) => Err(ClientError::Protocol {
                addr,
                what: format!("{} results for {ops} ops", results.len()),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                // A late reply finds no one waiting and is dropped.
                shared.waiting.borrow_mut().remove(&id);
                Err(ClientError::Timeout(timeout))
            }
        }
    }
}

impl Shared {
    fn fail(&self, why: String) {
        if self.failed.borrow().is_none() {
            *self.failed.borrow_mut() = Some(why.clone());
            // Close our end now, not when the owner replaces this connection: a peer that died
            // leaves its end waiting for ours (FIN_WAIT2), which would keep it from binding its
            // port again when it restarts.
            // SAFETY: the descriptor is open (owned by `stream`, which outlives this call), and
            // ManuallyDrop keeps the std wrapper from closing it.
            let std = std::mem::ManuallyDrop::new(unsafe {
                std::net::TcpStream::from_raw_fd(self.stream.borrow().as_raw_fd())
            });
            let _ = std.shutdown(std::net::Shutdown::Both);
        }
        for (_, tx) in self.waiting.borrow_mut().drain() {
            let _ = tx.send(Err(ClientError::Lost {
                addr: self.addr,
                why: why.clone(),
            }));
        }
    }
}

async fn write_loop(shared: Rc<Shared>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Let every task that is ready now queue its requests first: they leave in one send.
        futures_lite::future::yield_now().await;
        std::mem::swap(&mut buf, &mut shared.out.borrow_mut());
        if buf.is_empty() || shared.failed.borrow().is_some() {
            shared.writing.set(false);
            return;
        }
        let mut off = 0;
        while off < buf.len() {
            let written = poll_fn(|cx| {
                Pin::new(&mut *shared.stream.borrow_mut()).poll_write(cx, &buf[off..])
            })
            .await;
            match written {
                Ok(0) => {
                    shared.writing.set(false);
                    return shared.fail("the peer stopped reading".into());
                }
                Ok(n) => off += n,
                Err(e) => {
                    shared.writing.set(false);
                    return shared.fail(format!("write failed: {e}"));
                }
            }
        }
        buf.clear();
    }
}

async fn read_loop(shared: Rc<Shared>) {
    let mut buf = vec![0u8; READ_BUF];
    let (mut pos, mut end) = (0usize, 0usize);
    loop {
        loop {
            match frame::decode::<Response>(&buf[pos..end], DEFAULT_MAX_FRAME) {
                Ok(Some((response, used))) => {
                    pos += used;
                    if response.error() != Status::Ok {
                        return shared.fail(format!(
                            "the peer refused a frame: {:?}: {}",
                            response.error(),
                            response.message
                        ));
                    }
                    let tx = shared.waiting.borrow_mut().remove(&response.id);
                    if let Some(tx) = tx {
                        let _ = tx.send(Ok(response.results));
                    }
                }
                Ok(None) => break,
                Err(e) => return shared.fail(format!("bad frame: {e}")),
            }
        }
        if pos == end {
            (pos, end) = (0, 0);
        } else if pos > 0 {
            buf.copy_within(pos..end, 0);
            (pos, end) = (0, end - pos);
        }
        if let Ok(Some(len)) = frame::peek_len(&buf[..end], DEFAULT_MAX_FRAME) {
            if buf.len() < PREFIX_LEN + len {
                buf.resize(PREFIX_LEN + len, 0);
            }
        }
        let read =
            poll_fn(|cx| Pin::new(&mut *shared.stream.borrow_mut()).poll_read(cx, &mut buf[end..]))
                .await;
        match read {
            Ok(0) => return shared.fail("the peer closed the connection".into()),
            Ok(n) => end += n,
            Err(e) => return shared.fail(format!("read failed: {e}")),
        }
    }
}

#[cfg(test)]
#[path = "mux_tests.rs"]
mod tests;
