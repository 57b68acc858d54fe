//! The store's limits. All sizes are in bytes; the node turns its flags into a [`Config`].

/// Limits of one shard's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes this store may charge, counted as [`Store::entry_charge`](crate::Store::entry_charge) says
    /// (keys, values and per-entry overhead). Least-recently-used entries are evicted to stay
    /// within it. Default: 1 GiB.
    pub max_memory: u64,
    /// Longest key accepted, in bytes. Default: 64 KiB.
    pub max_key_len: usize,
    /// Longest value accepted, in bytes. Default: 16 MiB.
    pub max_value_len: usize,
    /// How long a remove's tombstone is kept, in milliseconds. While it lives, writes with an
    /// older version are ignored, so a late replica write cannot resurrect a removed key.
    /// `0` keeps no tombstones. Default: 0.
    pub tombstone_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_memory: 1 << 30,
            max_key_len: 64 << 10,
            max_value_len: 16 << 20,
            tombstone_grace_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.max_memory, 1_073_741_824);
        assert_eq!(c.max_key_len, 65_536);
        assert_eq!(c.max_value_len, 16_777_216);
        assert_eq!(c.tombstone_grace_ms, 0);
    }
}
