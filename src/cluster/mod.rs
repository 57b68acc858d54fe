//! The cluster: which node owns a key, who the members are, and the connections between them.
//!
//! - [`membership`]: a shard's view of the member list (`--peers`, then the agreed topology)
//!   and the handshake's checks (pure);
//! - [`peers`]: one shard's persistent, pipelined connections to the other nodes (glommio I/O);
//! - [`local`]: `kvmesh cluster`, a local cluster of node processes on loopback ports;
//! - [`replication`]: owners, acknowledgement counts and when a write is done (pure);
//! - [`hints`]: hinted handoff's bounded queue of writes an owner missed (pure);
//! - [`hint_log`]: that queue's copy on disk, in the write-ahead log's record format;
//! - [`topology`]: the agreed, epoch-stamped member list and the one state machine that changes
//!   it (pure); [`topology_wire`]: its wire form, the payload of a topology Raft entry;
//! - [`raft_state`]: the topology Raft group's state file in the data directory.
//!
//! The routing decision itself (ring owner first, then shard) is `node::router`, pure.

pub mod hint_log;
pub mod hints;
pub mod local;
pub mod membership;
pub mod peers;
pub mod raft_state;
pub mod replication;
pub mod topology;
pub mod topology_wire;

pub use membership::Membership;
pub use peers::{PeerError, Peers};
