//! The pipelined wire client, used by the CLI and the load generator.
//!
//! [`Connection`] is one TCP connection on which any number of requests may be in flight:
//! [`Connection::queue`] buffers requests, [`Connection::flush`] sends them in one write, and
//! [`Connection::recv`] returns replies in the order the node sends them. [`Client`] sits on top:
//! it learns the node's topology and sends each key straight to its owning shard's port.
//!
//! Both run on the glommio executor of the thread that created them. Every read, write and
//! connect is bounded by the timeout given at connect time.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kvmesh_proto::wire::{Op, OpCode, OpResult, Request, Response, ShardStats, Status, Topology};

use crate::frame::{self, FrameError, DEFAULT_MAX_FRAME};
use crate::routing::shard_for;

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
    /// The node answered something that does not match what was asked.
    #[error("protocol violation from {addr}: {what}")]
    Protocol { addr: SocketAddr, what: String },
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
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Buffers one request and returns its id. Nothing is sent until [`Connection::flush`].
    pub fn queue(&mut self, ops: Vec<Op>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        frame::encode(&Request { id, ops }, &mut self.out);
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
    }
}

/// A topology-aware client: each key goes to its owning shard's own port, so no request pays
/// the hop between shards.
pub struct Client {
    topology: Topology,
    host: std::net::IpAddr,
    timeout: Duration,
    shards: Vec<Option<Connection>>,
}

impl Client {
    /// Connects to a node's wire port and learns its topology.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let mut first = Connection::connect(addr, timeout).await?;
        let topology = fetch_topology(&mut first).await?;
        let nr = topology.shards as usize;
        if nr == 0 || topology.shard_ports.len() != nr {
            return Err(ClientError::Protocol {
                addr,
                what: format!(
                    "topology lists {} shards but {} shard ports",
                    nr,
                    topology.shard_ports.len()
                ),
            });
        }
        let mut shards: Vec<Option<Connection>> = (0..nr).map(|_| None).collect();
        // Keep the first connection if it already is a shard's own port.
        if let Some(i) = topology
            .shard_ports
            .iter()
            .position(|&p| u32::from(addr.port()) == p)
        {
            shards[i] = Some(first);
        }
        Ok(Self {
            topology,
            host: addr.ip(),
            timeout,
            shards,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The connection to shard `shard`'s own port, opened on first use.
    pub async fn shard(&mut self, shard: usize) -> Result<&mut Connection, ClientError> {
        let slot = &mut self.shards[shard];
        if slot.is_none() {
            let port = self.topology.shard_ports[shard] as u16;
            let addr = SocketAddr::new(self.host, port);
            *slot = Some(Connection::connect(addr, self.timeout).await?);
        }
        Ok(slot.as_mut().expect("connection was just opened"))
    }

    /// Runs one op on the shard that owns its key.
    pub async fn execute(&mut self, op: Op) -> Result<OpResult, ClientError> {
        let shard = shard_for(&op.key, self.shards.len());
        let conn = self.shard(shard).await?;
        let addr = conn.addr();
        let mut results = conn.call(vec![op]).await.inspect_err(|_| {
            // A failed connection is not reused: the next call reconnects.
            self.shards[shard] = None;
        })?;
        results.pop().ok_or(ClientError::Protocol {
            addr,
            what: "empty reply".into(),
        })
    }

    /// The value of `key`, or `None` when it is missing or expired.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let result = self.execute(op(OpCode::OpGet, key, &[], 0)).await?;
        match result.status() {
            Status::Ok => Ok(Some(result.value)),
            Status::NotFound => Ok(None),
            status => Err(refused(status, result.message)),
        }
    }

    /// Stores `value` under `key`, expiring after `ttl` (`None` = never).
    pub async fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), ClientError> {
        let ttl_ms = ttl.map_or(0, |d| d.as_millis().max(1) as u64);
        let result = self.execute(op(OpCode::OpPut, key, value, ttl_ms)).await?;
        match result.status() {
            Status::Ok => Ok(()),
            status => Err(refused(status, result.message)),
        }
    }

    /// Removes `key`; `true` when a live key was removed.
    pub async fn remove(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        let result = self.execute(op(OpCode::OpRemove, key, &[], 0)).await?;
        match result.status() {
            Status::Ok => Ok(result.found),
            status => Err(refused(status, result.message)),
        }
    }

    /// The counters of every shard, in shard order.
    pub async fn stats(&mut self) -> Result<Vec<ShardStats>, ClientError> {
        let mut all = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let conn = self.shard(shard).await?;
            let addr = conn.addr();
            let result = conn
                .call(vec![op(OpCode::OpStats, &[], &[], 0)])
                .await?
                .pop()
                .ok_or(ClientError::Protocol {
                    addr,
                    what: "empty reply".into(),
                })?;
            let stats = result.stats.ok_or(ClientError::Protocol {
                addr,
                what: "stats reply without stats".into(),
            })?;
            all.push(stats);
        }
        Ok(all)
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
        .and_then(|r| r.topology)
        .ok_or(ClientError::Protocol {
            addr,
            what: "topology reply without topology".into(),
        })
}

fn refused(status: Status, message: String) -> ClientError {
    ClientError::Refused { status, message }
}
