//! One shard's store for kvmesh: the key→value map, an exact LRU bounded by bytes, TTLs as
//! absolute deadlines with a timer wheel for background reclaim, versions (hybrid logical clock
//! plus node id) with last-writer-wins and tombstones, memory accounting, and plain counters.
//!
//! # What it owns
//!
//! Everything a shard needs to decide the outcome of a `put`, `get`, `remove` or `touch`, and
//! nothing else: no I/O, no async, no clock of its own. Time comes in as `now_ms` (milliseconds
//! since the UNIX epoch), so tests drive it directly. Evictions and expirations are reported as
//! [`Removal`]s through [`Store::drain_removals`], so the WAL can log them like removes.
//!
//! # Thread model
//!
//! A [`Store`] is single-threaded: it is owned by exactly one shard (one glommio executor pinned
//! to one core) and is never shared. Every method takes `&mut self` or `&self`; there are no
//! locks and no atomics. Other cores reach its keys only by message passing to the owning shard.
//!
//! # Memory
//!
//! Each entry costs one 16-byte slab slot, one slot of the hash index and one heap block holding
//! its version, lengths, key, value and (only when it has one) its deadline. The charge per entry
//! is documented at [`Store::charge`]; `benches/store.rs` checks it against a counting allocator.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod blob;
mod charge;
mod config;
mod error;
mod index;
mod lru;
mod outcome;
mod reclaim;
mod slab;
mod stats;
mod store;
mod varint;
mod version;
mod wheel;
mod write;

pub use config::Config;
pub use error::Error;
pub use outcome::{Applied, Removal, RemovalKind, Removed};
pub use stats::Stats;
pub use store::Store;
pub use version::{Hlc, Version};
