//! kvmesh's network layer: the wire protocol's frame codec, shard routing, the cluster's
//! consistent-hash ring, and the pipelined client used by the CLI and the load generator.
//!
//! - [`frame`], [`request`], [`simple`], [`routing`], [`ring`] and [`moves`] are pure: no I/O,
//!   no clock.
//! - [`connection`] (one pipelined connection), [`client`] (cluster-aware, on connections) and
//!   [`mux`] (one connection shared by many tasks, for node-to-node forwarding) run on a glommio
//!   executor, on the thread that created them.
//! - [`hyper_io`] lets hyper's HTTP/2 (gRPC) server and client run on glommio, without tokio.

pub mod client;
pub mod connection;
pub mod frame;
pub mod hyper_io;
pub mod moves;
pub mod mux;
pub mod request;
pub mod ring;
pub mod routing;
pub mod simple;
mod varint;

pub use client::{Client, ClientError, ClusterMap, Connection};
pub use frame::{decode, encode, FrameError, DEFAULT_MAX_FRAME};
pub use routing::shard_for;
