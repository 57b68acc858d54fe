//! What each request is: the key naming, the value bytes, and the mix of GETs and SETs. Pure.

use std::sync::Arc;

use crate::sampler::Sampler;

/// The kind of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Set,
}

/// Bytes of every key: `key:` and ten decimal digits, so all keys have the same length.
pub const KEY_LEN: usize = 14;

/// Writes the key of index `index` (`key:0000000042`) into `out`, replacing its contents.
pub fn write_key(index: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"key:");
    let mut digits = [b'0'; KEY_LEN - 4];
    let mut n = index;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

/// A value of `size` printable bytes, the same for every SET of a run (the bytes differ by
/// seed so a server cannot share them across runs).
pub fn make_value(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.alphanumeric() as u8).collect()
}

/// One shard's (or, for a single server, the whole) share of the key space.
#[derive(Debug)]
pub struct KeySet {
    /// Global key indices this endpoint owns, ascending.
    pub keys: Vec<u32>,
    /// Draws a position in `keys`.
    pub sampler: Sampler,
    /// This set's share of all draws under the key distribution, in 0..=1.
    pub mass: f64,
}

/// Chooses what each request of one connection does.
pub struct Mix {
    keys: Arc<KeySet>,
    read_ratio: f64,
    rng: fastrand::Rng,
}

impl Mix {
    pub fn new(keys: Arc<KeySet>, read_ratio: f64, seed: u64) -> Self {
        Self {
            keys,
            read_ratio,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The next request: its kind, with its key written into `key`.
    pub fn next(&mut self, key: &mut Vec<u8>) -> OpKind {
        let kind = if self.read_ratio >= 1.0 || self.rng.f64() < self.read_ratio {
            OpKind::Get
        } else {
            OpKind::Set
        };
        let position = self.keys.sampler.sample(&mut self.rng);
        write_key(self.keys.keys[position], key);
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width() {
        let mut key = b"stale".to_vec();
        for (index, want) in [
            (0, "key:0000000000"),
            (42, "key:0000000042"),
            (u32::MAX, "key:4294967295"),
        ] {
            write_key(index, &mut key);
            assert_eq!(key, want.as_bytes());
            assert_eq!(key.len(), KEY_LEN);
        }
    }

    #[test]
    fn values_have_the_size_asked() {
        assert_eq!(make_value(100, 1).len(), 100);
        assert!(make_value(0, 1).is_empty());
        assert_ne!(make_value(16, 1), make_value(16, 2));
    }

    #[test]
    fn mix_follows_the_read_ratio() {
        let set = Arc::new(KeySet {
            keys: vec![5, 7],
            sampler: Sampler::new(2, None),
            mass: 1.0,
        });
        let mut key = Vec::new();
        let mut mix = Mix::new(set.clone(), 0.75, 3);
        let gets = (0..40_000)
            .filter(|_| mix.next(&mut key) == OpKind::Get)
            .count();
        assert!((29_000..31_000).contains(&gets), "{gets}");
        assert!(key == b"key:0000000005" || key == b"key:0000000007");
        let mut writes = Mix::new(set, 0.0, 3);
        assert!((0..1000).all(|_| writes.next(&mut key) == OpKind::Set));
    }
}
