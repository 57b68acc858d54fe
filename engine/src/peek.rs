//! A read that leaves the store as it is: for replicas comparing their copies.

use crate::store::Store;
use crate::version::Version;

/// What a store holds for one key, as [`Store::peek`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The value; empty for a tombstone.
    pub value: &'a [u8],
    /// The version of the write that left it.
    pub version: Version,
    /// A remove's tombstone (see `Config::tombstone_grace_ms`), not a live value.
    pub tombstone: bool,
    /// The absolute deadline, 0 = never.
    pub expires_at_ms: u64,
}

impl Store {
    /// The record for `key`, live entry or tombstone, with its version; `None` when there is
    /// none or it has expired. Touches neither the LRU order nor the counters, and reclaims
    /// nothing, so replica reads (read repair, `kvmesh get --replica`) do not disturb the
    /// store.
    pub fn peek(&self, key: &[u8], now_ms: u64) -> Option<Peeked<'_>> {
        let idx = self.index.find(&self.arena, self.index.hash(key), key)?;
        let block = self.arena.block(idx);
        (!block.is_dead(now_ms)).then(|| Peeked {
            value: block.value(),
            version: block.version(),
            tombstone: block.is_tombstone(),
            expires_at_ms: block.deadline(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Store, Version};

    #[test]
    fn sees_values_and_tombstones_with_their_versions() {
        let mut s = Store::new(Config {
            tombstone_grace_ms: 1_000,
            ..Config::default()
        });
        assert_eq!(s.peek(b"k", 0), None);
        s.put(b"k", b"v", 0, Version::new(5, 1), 0).unwrap();
        let p = s.peek(b"k", 0).unwrap();
        assert_eq!(
            (p.value, p.version, p.tombstone),
            (&b"v"[..], Version::new(5, 1), false)
        );
        s.remove(b"k", Version::new(6, 2), 10).unwrap();
        let p = s.peek(b"k", 10).unwrap();
        assert_eq!((p.version, p.tombstone), (Version::new(6, 2), true));
        // The grace has passed: gone.
        assert_eq!(s.peek(b"k", 1_010), None);
        assert_eq!((s.stats().hits, s.stats().misses), (0, 0));
    }
}
