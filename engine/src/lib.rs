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
//! ```
//! use kvmesh_engine::{Applied, Config, Hlc, RemovalKind, Store};
//!
//! let mut store = Store::new(Config::default());
//! let mut clock = Hlc::new(1); // this node's id
//! let now = 1_700_000_000_000; // ms since the UNIX epoch, from the caller's clock
//! let version = clock.now(now);
//! assert_eq!(store.put(b"user:1", b"alice", now + 60_000, version, now)?, Applied::Stored);
//! assert_eq!(store.get(b"user:1", now), Some(&b"alice"[..]));
//! assert_eq!(store.get(b"user:1", now + 60_000), None); // deadline reached
//! for removal in store.drain_removals() {
//!     assert_eq!((removal.kind, removal.key()), (RemovalKind::Expired, &b"user:1"[..]));
//! }
//! # Ok::<(), kvmesh_engine::Error>(())
//! ```
//!
//! # Thread model
//!
//! A [`Store`] is single-threaded: it is owned by exactly one shard (one glommio executor pinned
//! to one core) and is never shared. Every method takes `&mut self` or `&self`; there are no
//! locks and no atomics. Other cores reach its keys only by message passing to the owning shard.
//!
//! # Memory
//!
//! Each entry costs one slot of the hash index and one block in the store's arena holding its
//! LRU links, version, lengths, key, value and (only when it has one) its deadline; the arena
//! packs blocks into 64 KiB pages by 8-byte size classes, with no per-block header, in memory
//! mapped from the kernel and marked for transparent huge pages (region.rs). The charge
//! per entry is documented at [`Store::entry_charge`]; `benches/store.rs` checks it against a
//! counting allocator.
// Only region.rs, the arena's memory from the kernel, allows `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod ahead;
mod arena;
mod block;
mod charge;
mod config;
mod error;
mod index;
mod lru;
mod outcome;
mod pages;
mod peek;
mod reclaim;
mod region;
mod scan;
mod stats;
mod store;
#[cfg(test)]
mod test_blocks;
mod varint;
mod version;
mod wheel;
mod write;

pub use ahead::KeyHash;
pub use config::Config;
pub use error::Error;
pub use outcome::{Applied, Removal, RemovalKind, Removed};
pub use peek::Peeked;
pub use scan::{Cursor, EntryRef, MAX_SCANS};
pub use stats::Stats;
pub use store::Store;
pub use version::{Hlc, Version};
