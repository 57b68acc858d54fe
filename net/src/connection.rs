//! One pipelined connection to a wire port: [`Connection::queue`] buffers requests,
//! [`Connection::flush`] sends them in one write, and [`Connection::recv`] returns replies in
//! the order the node sends them. Any number of requests may be in flight.
//!
//! It runs on the glommio executor of the thread that created it. Every read, write and connect
//! is bounded by the timeout given at connect time.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kvmesh_proto::wire::{Op, OpCode, OpResult, Request, Response, Status, Topology};

use crate::frame::{self, FrameError, DEFAULT_MAX_FRAME};

/// Why a call failed. Server-side refusals of a single op are not errors here: they come back as
/// that op's [`OpResult::status`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection to {addr} failed: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{addr} closed the connection")]
    Closed { addr: SocketAddr },
    #[error("bad frame from {addr}: {error}")]
    Frame { addr: SocketAddr, error: FrameError },
    /// The node rejected a whole frame (the connection is closed after this).
    #[error("node refused the request: {status:?}: {message}")]
    Refused { status: Status, message: String },
    /// A shared connection ([`crate::mux::Mux`]) failed before the reply came.
    #[error("connection to {addr} lost: {why}")]
    Lost { addr: SocketAddr, why: String },
    /// The cluster's topology, as the nodes report it, does not add up.
    #[error("bad cluster topology: {0}")]
    Topology(String),
    /// The node answered something that does not match what was asked.
    #[error("protocol violation from {addr}: {what}")]
    Protocol { addr: SocketAddr, what: String },
    /// The nodes kept answering `STATUS_MOVED`: the topology kept changing faster than the
    /// client could refresh it.
    #[error(
        "still answered MOVED (node epoch {epoch}) after refreshing the topology {refreshes} times"
    )]
    Moved { epoch: u64, refreshes: usize },
}

/// One pipelined connection to a wire port.
pub struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
    next_id: u64,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Start of unparsed bytes in `buf`.
    pos: usize,
    /// End of valid bytes in `buf`.
    end: usize,
    /// The topology epoch its requests say they were routed by (`Request.epoch`); 0: none.
    epoch: u64,
}

impl Connection {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                error: e.into(),
            })?;
        let io = |error: std::io::Error| ClientError::Io { addr, error };
        stream.set_nodelay(true).map_err(|e| io(e.into()))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| io(e.into()))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| io(e.into()))?;
        Ok(Self {
            stream,
            addr,
            timeout,
            next_id: 1,
            out: Vec::with_capacity(4096),
            buf: vec![0; 64 * 1024],
            pos: 0,
            end: 0,
            epoch: 0,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes the requests queued from now on say they were routed by topology `epoch`
    /// (`Request.epoch`; 0, the default: they do not say). A node on a newer topology answers
    /// their key ops `STATUS_MOVED` instead of running them.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// The stream, for a [`crate::mux::Mux`] to take over. Refused while replies are buffered.
    pub fn into_stream(self) -> Result<TcpStream, ClientError> {
        if self.pos != self.end || !self.out.is_empty() {
            return Err(ClientError::Protocol {
                addr: self.addr,
                what: "bytes still buffered when the connection was handed over".into(),
            });
        }
        Ok(self.stream)
    }

    /// Buffers one request and returns its id. Nothing is sent until [`Connection::flush`].
    pub fn queue(&mut self, ops: Vec<Op>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        frame::encode(
            &Request {
                id,
                ops,
                forwarded: false,
                epoch: self.epoch,
            },
            &mut self.out,
        );
        id
    }

    /// Buffers raw bytes, for tests that must send what a well-behaved client never would.
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out).await;
        self.out.clear();
        result.map_err(|e| self.io_error(e))
    }

    /// The next reply on this connection, in the order the node sent them. A frame-level
    /// refusal from the node becomes [`ClientError::Refused`].
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        loop {
            match frame::decode::<Response>(&self.buf[self.pos..self.end], DEFAULT_MAX_FRAME) {
                Ok(Some((response, used))) => {
                    self.pos += used;
                    let status = response.error();
                    if status != Status::Ok {
                        return Err(ClientError::Refused {
                            status,
                            message: response.message,
                        });
                    }
                    return Ok(response);
                }
                Ok(None) => self.fill().await?,
                Err(error) => {
                    return Err(ClientError::Frame {
                        addr: self.addr,
                        error,
                    })
                }
            }
        }
    }

    /// Sends one request and waits for its reply. Must not be mixed with replies still pending
    /// from [`Connection::queue`].
    pub async fn call(&mut self, ops: Vec<Op>) -> Result<Vec<OpResult>, ClientError> {
        let n = ops.len();
        let id = self.queue(ops);
        self.flush().await?;
        let response = self.recv().await?;
        if response.id != id || response.results.len() != n {
            return Err(ClientError::Protocol {
                addr: self.addr,
                what: format!(
                    "asked request {id} with {n} ops, got request {} with {} results",
                    response.id,
                    response.results.len()
                ),
            });
        }
        Ok(response.results)
    }

    /// Reads more bytes into the buffer, compacting or growing it as needed.
    async fn fill(&mut self) -> Result<(), ClientError> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                let wanted = frame::peek_len(&self.buf[..self.end], DEFAULT_MAX_FRAME)
                    .ok()
                    .flatten()
                    .map_or(self.buf.len() * 2, |len| len + frame::PREFIX_LEN);
                self.buf.resize(wanted.max(self.buf.len() * 2), 0);
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(ClientError::Closed { addr: self.addr });
        }
        self.end += n;
        Ok(())
    }

    fn io_error(&self, error: std::io::Error) -> ClientError {
        if matches!(
            error.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) {
            ClientError::Timeout(self.timeout)
        } else {
            ClientError::Io {
                addr: self.addr,
                error,
            }
        }
    }
}

/// Builds an op; the small helpers below name the common ones.
pub fn op(code: OpCode, key: &[u8], value: &[u8], ttl_ms: u64) -> Op {
    Op {
        code: code as i32,
        key: key.to_vec(),
        value: value.to_vec(),
        ttl_ms,
        ..Op::default()
    }
}

/// Asks a connection's node for its topology.
pub async fn fetch_topology(conn: &mut Connection) -> Result<Topology, ClientError> {
    let addr = conn.addr();
    let result = conn
        .call(vec![op(OpCode::OpTopology, &[], &[], 0)])
        .await?
        .pop();
    result
        .and_then(|r| r.topology.map(|t| *t))
        .ok_or(ClientError::Protocol {
            addr,
            what: "topology reply without topology".into(),
        })
}
