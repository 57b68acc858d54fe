//! Which shard of a node owns a key. Pure, and stable across processes, versions and machines,
//! because clients route with it and data on disk is laid out by it.
//!
//! The shard of `key` among `n` shards is
//!
//! ```text
//! h     = xxh3_64_with_seed(key, SHARD_SEED)        // XXH3, 64-bit, over the raw key bytes
//! shard = (h as u128 * n as u128) >> 64             // Lemire's multiply-shift range reduction
//! ```
//!
//! The seed keeps this hash independent of the cluster ring's (which uses XXH3 with seed 0), so
//! the keys one node owns still spread evenly over its shards.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the shard hash: the ASCII bytes `kvmeshsh` read as a big-endian u64.
pub const SHARD_SEED: u64 = u64::from_be_bytes(*b"kvmeshsh");

/// The name the node reports in its topology, so a client can check it routes the same way.
pub const SHARD_HASH_NAME: &str = "xxh3-64(seed=0x6b766d6573687368),multiply-shift";

/// A hash of raw key bytes. A type parameter of the routing functions, so tests can use a
/// predictable one.
pub trait KeyHash {
    fn hash_key(&self, key: &[u8]) -> u64;
}

/// The production shard hash: XXH3-64 with [`SHARD_SEED`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardHash;

impl KeyHash for ShardHash {
    fn hash_key(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, SHARD_SEED)
    }
}

/// Maps a 64-bit hash onto `0..n` without division and without modulo bias.
pub fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// The shard, in `0..nr_shards`, that owns `key` under `hasher`.
///
/// # Panics
/// If `nr_shards` is zero.
pub fn shard_with<H: KeyHash>(hasher: &H, key: &[u8], nr_shards: usize) -> usize {
    assert!(nr_shards > 0, "a node has at least one shard");
    reduce(hasher.hash_key(key), nr_shards)
}

/// The shard, in `0..nr_shards`, that owns `key`.
pub fn shard_for(key: &[u8], nr_shards: usize) -> usize {
    // Every hash reduces to shard 0 of one: the key need not be hashed.
    if nr_shards == 1 {
        return 0;
    }
    shard_with(&ShardHash, key, nr_shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors, computed with an independent XXH3 implementation (Python's `xxhash`). If any
    /// of these change, every client and every data directory breaks.
    #[test]
    fn vectors() {
        let cases: [(&[u8], u64, [usize; 3]); 4] = [
            (b"", 0x94627af4224c96a3, [1, 1, 4]),
            (b"a", 0x92cd9737efc884ad, [1, 1, 4]),
            (b"user:42", 0xb19684fea948baa5, [1, 2, 5]),
            (b"\x00\xff\x10", 0x515734380f64579c, [0, 0, 2]),
        ];
        for (key, hash, shards) in cases {
            assert_eq!(ShardHash.hash_key(key), hash, "hash of {key:?}");
            for (n, want) in [2usize, 3, 8].into_iter().zip(shards) {
                assert_eq!(shard_for(key, n), want, "shard of {key:?} among {n}");
            }
            assert_eq!(shard_for(key, 1), 0);
        }
    }

    struct Fixed(u64);
    impl KeyHash for Fixed {
        fn hash_key(&self, _: &[u8]) -> u64 {
            self.0
        }
    }

    #[test]
    fn reduction_covers_the_range() {
        assert_eq!(shard_with(&Fixed(0), b"x", 4), 0);
        assert_eq!(shard_with(&Fixed(u64::MAX), b"x", 4), 3);
        assert_eq!(shard_with(&Fixed(1 << 63), b"x", 4), 2);
        assert_eq!(shard_with(&Fixed(u64::MAX), b"x", 1), 0);
    }

    #[test]
    fn spreads_evenly() {
        let n = 4;
        let mut counts = [0usize; 4];
        for i in 0..40_000u32 {
            counts[shard_for(format!("key:{i}").as_bytes(), n)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread {counts:?}");
        }
    }
}
