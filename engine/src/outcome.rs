//! What a write did, and what the store dropped on its own (evictions and expirations).

use std::fmt;

use crate::block::Block;
use crate::version::Version;

/// Outcome of [`Store::put`](crate::Store::put).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The value is stored.
    Stored,
    /// Ignored: a live entry or tombstone with a newer or equal version is stored.
    Stale,
}

/// Outcome of [`Store::remove`](crate::Store::remove).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// A live key was removed.
    Removed,
    /// No live key (a tombstone may still have been written, see `Config::tombstone_grace_ms`).
    NotFound,
    /// Ignored: a live entry or tombstone with a newer or equal version is stored.
    Stale,
}

/// Why the store dropped a live entry on its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RemovalKind {
    /// Evicted as least recently used, to make room.
    Evicted,
    /// Its deadline passed.
    Expired,
}

/// A live entry the store dropped on its own; the WAL logs it like a remove so a restart does
/// not bring the key back. It owns a copy of the key (the entry's slot is reused at once).
pub struct Removal {
    /// Why it was dropped.
    pub kind: RemovalKind,
    /// The dropped entry's version.
    pub version: Version,
    key: Box<[u8]>,
}

impl Removal {
    pub(crate) fn new(kind: RemovalKind, block: Block<'_>) -> Removal {
        Removal {
            kind,
            version: block.version(),
            key: block.key().into(),
        }
    }

    /// The dropped key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The dropped key, owned, without copying it again.
    pub fn into_key(self) -> Box<[u8]> {
        self.key
    }
}

impl fmt::Debug for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Removal")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("key", &self.key().escape_ascii().to_string())
            .finish()
    }
}
