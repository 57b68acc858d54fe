//! kvmesh's network layer: the wire protocol's frame codec, shard routing, and the pipelined
//! client used by the CLI and the load generator.
//!
//! - [`frame`] and [`routing`] are pure: no I/O, no clock.
//! - [`client`] runs on a glommio executor, on the thread that created it.

pub mod client;
pub mod frame;
pub mod routing;

pub use client::{Client, ClientError, Connection};
pub use frame::{decode, encode, FrameError, DEFAULT_MAX_FRAME};
pub use routing::shard_for;
