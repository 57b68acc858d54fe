//! kvmesh's write-ahead log.
//!
//! Not built yet: the durability issue fills this crate with the record codec, per-shard segment
//! files written through glommio's `DmaFile`, group commit and recovery. Until then a node is a
//! pure in-memory cache and says so at start.
