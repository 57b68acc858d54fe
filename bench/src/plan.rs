//! Who does what, decided once before the run. Pure.
//!
//! The key space is split into one [`KeySet`] per endpoint (per shard for kvmesh, one for
//! redis). Connections go to endpoints in proportion to each set's share of the load, so a
//! skewed distribution loads the hot shard harder, as real traffic would. Each connection
//! prefills a contiguous slice of its endpoint's keys, and connections are dealt round-robin
//! to the worker threads.

use std::ops::Range;

use crate::sampler::{weight, Sampler};
use crate::units::KeyDist;
use crate::workload::KeySet;

/// Splits keys `0..keys` by `owner` into `parts` sets, each with its sampler and share.
pub fn key_sets(
    keys: u32,
    parts: usize,
    mut owner: impl FnMut(u32) -> usize,
    dist: KeyDist,
) -> Result<Vec<KeySet>, String> {
    let mut lists: Vec<Vec<u32>> = vec![Vec::with_capacity(keys as usize / parts + 16); parts];
    for key in 0..keys {
        lists[owner(key)].push(key);
    }
    let total: f64 = (0..keys).map(|k| weight(dist, k)).sum();
    lists
        .into_iter()
        .enumerate()
        .map(|(part, keys)| {
            if keys.is_empty() {
                return Err(format!(
                    "shard {part} owns none of the keys: use a larger --keys"
                ));
            }
            let weights: Vec<f64> = keys.iter().map(|&k| weight(dist, k)).collect();
            let mass = weights.iter().sum::<f64>() / total;
            let uniform = matches!(dist, KeyDist::Uniform);
            let sampler = Sampler::new(keys.len(), (!uniform).then_some(&weights[..]));
            Ok(KeySet {
                keys,
                sampler,
                mass,
            })
        })
        .collect()
}

/// Splits `total` connections in proportion to `masses`, at least one each.
pub fn allocate(total: usize, masses: &[f64]) -> Result<Vec<usize>, String> {
    if total < masses.len() {
        return Err(format!(
            "--connections {total} is fewer than the {} shards: each connection serves one shard",
            masses.len()
        ));
    }
    let sum: f64 = masses.iter().sum();
    let ideal: Vec<f64> = masses.iter().map(|m| m / sum * total as f64).collect();
    let mut given: Vec<usize> = ideal.iter().map(|x| (x.floor() as usize).max(1)).collect();
    while given.iter().sum::<usize>() < total {
        let i = argmax(given.len(), |i| ideal[i] - given[i] as f64);
        given[i] += 1;
    }
    while given.iter().sum::<usize>() > total {
        let i = argmax(given.len(), |i| {
            if given[i] > 1 {
                given[i] as f64 - ideal[i]
            } else {
                f64::MIN
            }
        });
        given[i] -= 1;
    }
    Ok(given)
}

fn argmax(n: usize, score: impl Fn(usize) -> f64) -> usize {
    (0..n)
        .max_by(|&a, &b| score(a).total_cmp(&score(b)))
        .unwrap_or(0)
}

/// One connection's share of the work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSpec {
    /// Global connection number, `0..connections`.
    pub index: usize,
    pub endpoint: usize,
    /// Positions in the endpoint's key list this connection prefills.
    pub prefill: Range<usize>,
    /// Measured requests this connection sends (`--requests`).
    pub quota: Option<u64>,
}

/// Lays out `alloc[e]` connections on each endpoint `e`, whose key list has `lens[e]` keys.
pub fn connections(alloc: &[usize], lens: &[usize], requests: Option<u64>) -> Vec<ConnSpec> {
    let total: usize = alloc.iter().sum();
    let mut specs = Vec::with_capacity(total);
    for (endpoint, (&count, &len)) in alloc.iter().zip(lens).enumerate() {
        for j in 0..count {
            let index = specs.len();
            let quota =
                requests.map(|n| n / total as u64 + u64::from((index as u64) < n % total as u64));
            let prefill = len * j / count..len * (j + 1) / count;
            specs.push(ConnSpec {
                index,
                endpoint,
                prefill,
                quota,
            });
        }
    }
    specs
}

/// Deals connection numbers `0..conns` round-robin to `workers` workers.
pub fn deal(conns: usize, workers: usize) -> Vec<Vec<usize>> {
    let mut hands = vec![Vec::new(); workers];
    for c in 0..conns {
        hands[c % workers].push(c);
    }
    hands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_partition_the_space() {
        let sets = key_sets(1000, 3, |k| (k % 3) as usize, KeyDist::Uniform).unwrap();
        let mut all: Vec<u32> = sets.iter().flat_map(|s| s.keys.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let mass: f64 = sets.iter().map(|s| s.mass).sum();
        assert!((mass - 1.0).abs() < 1e-9);
        assert!((sets[0].mass - 334.0 / 1000.0).abs() < 1e-9);
    }

    #[test]
    fn zipf_mass_follows_the_hot_keys() {
        // Shard 0 owns rank 0, the hottest key.
        let sets = key_sets(1000, 2, |k| (k % 2) as usize, KeyDist::Zipf(0.99)).unwrap();
        assert!(sets[0].mass > 0.54, "{}", sets[0].mass);
        assert!((sets[0].mass + sets[1].mass - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_shard_without_keys_is_an_error() {
        assert!(key_sets(2, 3, |k| k as usize, KeyDist::Uniform).is_err());
    }

    #[test]
    fn allocation_is_proportional_with_one_each() {
        assert_eq!(allocate(50, &[0.5, 0.5]).unwrap(), [25, 25]);
        assert_eq!(allocate(50, &[0.54, 0.46]).unwrap(), [27, 23]);
        assert_eq!(allocate(3, &[0.98, 0.01, 0.01]).unwrap(), [1, 1, 1]);
        assert_eq!(allocate(10, &[0.9, 0.05, 0.05]).unwrap(), [8, 1, 1]);
        assert_eq!(allocate(7, &[1.0]).unwrap(), [7]);
        assert!(allocate(1, &[0.5, 0.5]).is_err());
        for total in 3..60 {
            assert_eq!(
                allocate(total, &[0.7, 0.2, 0.1])
                    .unwrap()
                    .iter()
                    .sum::<usize>(),
                total
            );
        }
    }

    #[test]
    fn connections_cover_prefill_and_quota_exactly() {
        let specs = connections(&[3, 2], &[10, 7], Some(11));
        assert_eq!(specs.len(), 5);
        let ranges: Vec<_> = specs
            .iter()
            .map(|s| (s.endpoint, s.prefill.clone()))
            .collect();
        assert_eq!(
            ranges,
            [(0, 0..3), (0, 3..6), (0, 6..10), (1, 0..3), (1, 3..7)]
        );
        let quotas: Vec<u64> = specs.iter().map(|s| s.quota.unwrap()).collect();
        assert_eq!(quotas, [3, 2, 2, 2, 2]);
        assert!(connections(&[2], &[4], None)
            .iter()
            .all(|s| s.quota.is_none()));
    }

    #[test]
    fn dealing_is_round_robin() {
        assert_eq!(deal(5, 2), [vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(deal(1, 3), [vec![0], vec![], vec![]]);
    }
}
