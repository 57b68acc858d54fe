//! Drawing positions from a key list: uniform, or by arbitrary weights with Walker's alias
//! method (O(1) per draw, exact). Zipf is weights `1 / (rank + 1)^s`.
//!
//! The kvmesh target splits the key space by owning shard, and each connection draws only
//! from its shard's list. Building the alias table from the *global* Zipf weights of that
//! list's keys makes each connection's draw exactly the global distribution conditioned on
//! the shard, and the list's total weight is the shard's share of the load.

use crate::units::KeyDist;

/// The weight of the key of 0-based `rank` under `dist` (not normalised).
pub fn weight(dist: KeyDist, rank: u32) -> f64 {
    match dist {
        KeyDist::Uniform => 1.0,
        KeyDist::Zipf(s) => (f64::from(rank) + 1.0).powf(-s),
    }
}

/// Draws a position in `0..len` of one key list.
#[derive(Debug)]
pub enum Sampler {
    Uniform {
        len: usize,
    },
    /// Walker's alias table: pick a column uniformly, keep it with probability `keep[i]`,
    /// otherwise take `alias[i]`.
    Alias {
        keep: Vec<f64>,
        alias: Vec<u32>,
    },
}

impl Sampler {
    /// A sampler over `len` positions with the given weights (`None` = uniform).
    ///
    /// # Panics
    /// If `weights` is empty, or its length does not fit in a `u32`.
    pub fn new(len: usize, weights: Option<&[f64]>) -> Self {
        assert!(len > 0, "cannot sample from an empty key list");
        let Some(weights) = weights else {
            return Sampler::Uniform { len };
        };
        assert_eq!(weights.len(), len);
        assert!(u32::try_from(len).is_ok());
        let total: f64 = weights.iter().sum();
        // Scaled so the mean column holds exactly 1.
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * len as f64 / total).collect();
        let mut keep = vec![1.0; len];
        let mut alias: Vec<u32> = (0..len as u32).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) =
            (0..len as u32).partition(|&i| scaled[i as usize] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s as usize] = scaled[s as usize];
            alias[s as usize] = l;
            scaled[l as usize] -= 1.0 - scaled[s as usize];
            if scaled[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is 1 up to rounding: kept always (the defaults).
        Sampler::Alias { keep, alias }
    }

    /// One position in `0..len`.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        match self {
            Sampler::Uniform { len } => rng.usize(..*len),
            Sampler::Alias { keep, alias } => {
                let i = rng.usize(..keep.len());
                if rng.f64() < keep[i] {
                    i
                } else {
                    alias[i] as usize
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(sampler: &Sampler, len: usize, draws: usize) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut counts = vec![0usize; len];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn alias_matches_small_weights() {
        let weights = [1.0, 2.0, 3.0, 4.0, 0.0];
        let sampler = Sampler::new(5, Some(&weights));
        let got = frequencies(&sampler, 5, 400_000);
        for (i, w) in weights.iter().enumerate() {
            let want = w / 10.0;
            assert!(
                (got[i] - want).abs() < 0.005,
                "position {i}: {} vs {want}",
                got[i]
            );
        }
        assert_eq!(got[4], 0.0, "a zero weight is never drawn");
    }

    #[test]
    fn uniform_covers_evenly() {
        let got = frequencies(&Sampler::new(10, None), 10, 200_000);
        for f in got {
            assert!((f - 0.1).abs() < 0.005, "{f}");
        }
    }

    #[test]
    fn zipf_head_has_the_expected_mass() {
        let n = 1000u32;
        let dist = KeyDist::Zipf(0.99);
        let weights: Vec<f64> = (0..n).map(|r| weight(dist, r)).collect();
        let total: f64 = weights.iter().sum();
        let sampler = Sampler::new(n as usize, Some(&weights));
        let got = frequencies(&sampler, n as usize, 1_000_000);
        for rank in [0usize, 1, 9, 99] {
            let want = weights[rank] / total;
            assert!(
                (got[rank] - want).abs() < want * 0.05 + 0.0005,
                "rank {rank}: {} vs {want}",
                got[rank]
            );
        }
        // The head dominates: rank 0 is ~1/H(1000, 0.99) of all draws, about 13%.
        assert!(got[0] > 0.12 && got[0] < 0.14, "{}", got[0]);
        // And the ordering holds for well-separated ranks.
        assert!(got[0] > got[1] && got[1] > got[9] && got[9] > got[99]);
    }

    #[test]
    fn uniform_weight_is_flat() {
        assert_eq!(weight(KeyDist::Uniform, 0), weight(KeyDist::Uniform, 999));
        assert_eq!(weight(KeyDist::Zipf(1.0), 1), 0.5);
    }
}
