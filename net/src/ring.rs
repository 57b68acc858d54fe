//! The cluster's consistent-hash ring: which nodes own a key. Pure and deterministic: every
//! node, client and version computes the same owners from the same member list.
//!
//! ```text
//! key point    = xxh3_64(key)                                   // XXH3, 64-bit, seed 0
//! vnode token  = xxh3_64_with_seed(id_be32 ++ i_be32, VNODE_SEED)   for i in 0..vnodes
//! owners(k, n) = the first n distinct nodes met walking clockwise (upwards, wrapping at 2^64)
//!                from the first token >= key point; ties between equal tokens go to the
//!                smaller node id
//! ```
//!
//! Each node places [`DEFAULT_VNODES`] virtual nodes, which keeps the largest node's share of
//! the hash space within 6% of the mean for ids 1..=k, 10% for any ids (see [`Ring::shares`] and the tests). Adding a
//! node moves only the keys it takes over; removing one moves only its keys.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::routing::KeyHash;

/// A node's id in the cluster.
pub type NodeId = u32;

/// Virtual nodes per node by default: with 1024, the largest node of a cluster of up to 16
/// owns at most 1.06× the mean share of the hash space when the ids are 1..=k (checked by the
/// tests for every size from 1 to 16), and at most 1.10× for any ids (a property test over
/// random id sets). A lookup is a binary search over `vnodes × nodes` tokens.
pub const DEFAULT_VNODES: u32 = 1024;

/// Seed of the vnode token hash: the ASCII bytes `kvmeshvn` read as a big-endian u64.
pub const VNODE_SEED: u64 = u64::from_be_bytes(*b"kvmeshvn");

/// The production key hash on the ring: XXH3-64 with seed 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingHash;

impl KeyHash for RingHash {
    fn hash_key(&self, key: &[u8]) -> u64 {
        xxh3_64(key)
    }
}

/// Why a member list cannot form a ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("a ring needs at least one node")]
    Empty,
    #[error("node id {0} appears twice in the member list")]
    DuplicateNode(NodeId),
    #[error("a ring needs at least one virtual node per node")]
    NoVnodes,
}

/// A consistent-hash ring over a fixed member list.
#[derive(Clone, Debug)]
pub struct Ring<H = RingHash> {
    hasher: H,
    nodes: Vec<NodeId>,
    /// (token, node), sorted.
    tokens: Vec<(u64, NodeId)>,
}

impl Ring<RingHash> {
    /// A ring over `nodes` with [`DEFAULT_VNODES`] virtual nodes each.
    pub fn new(nodes: &[NodeId]) -> Result<Self, RingError> {
        Self::with_hasher(nodes, DEFAULT_VNODES, RingHash)
    }
}

impl<H: KeyHash> Ring<H> {
    /// A ring over `nodes` with `vnodes` virtual nodes each, placing keys with `hasher`.
    pub fn with_hasher(nodes: &[NodeId], vnodes: u32, hasher: H) -> Result<Self, RingError> {
        if nodes.is_empty() {
            return Err(RingError::Empty);
        }
        if vnodes == 0 {
            return Err(RingError::NoVnodes);
        }
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(RingError::DuplicateNode(pair[0]));
        }
        let mut tokens: Vec<(u64, NodeId)> = sorted
            .iter()
            .flat_map(|&node| (0..vnodes).map(move |i| (vnode_token(node, i), node)))
            .collect();
        tokens.sort_unstable();
        Ok(Self {
            hasher,
            nodes: sorted,
            tokens,
        })
    }

    /// The members, in ascending id order.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The node that owns `key` first (its primary).
    pub fn owner(&self, key: &[u8]) -> NodeId {
        self.tokens[self.start(self.hasher.hash_key(key))].1
    }

    /// The `n` distinct nodes that own `key`, primary first, walking clockwise. `n` is clamped
    /// to the cluster size, so asking 3 owners of a 2-node ring gives both nodes.
    pub fn owners(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.owners_of_point(self.hasher.hash_key(key), n)
    }

    /// The `n` distinct nodes that own the keys whose hash is `point`, as [`Ring::owners`].
    pub fn owners_of_point(&self, point: u64, n: usize) -> Vec<NodeId> {
        let n = n.min(self.nodes.len());
        let mut owners = Vec::with_capacity(n);
        let start = self.start(point);
        for step in 0..self.tokens.len() {
            if owners.len() == n {
                break;
            }
            let node = self.tokens[(start + step) % self.tokens.len()].1;
            if !owners.contains(&node) {
                owners.push(node);
            }
        }
        owners
    }

    /// Every vnode token, ascending (ties in node order): the boundaries of the ring's arcs.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.tokens.iter().map(|&(token, _)| token)
    }

    /// The hash of `key` on this ring.
    pub fn point(&self, key: &[u8]) -> u64 {
        self.hasher.hash_key(key)
    }

    /// Each node's share of the hash space (sums to 1): what fraction of uniformly spread keys
    /// it owns as primary.
    pub fn shares(&self) -> Vec<(NodeId, f64)> {
        let mut owned = vec![0u128; self.nodes.len()];
        for (i, &(token, node)) in self.tokens.iter().enumerate() {
            // The arc (previous token, token] belongs to this token's node.
            let previous = if i == 0 {
                self.tokens[self.tokens.len() - 1].0
            } else {
                self.tokens[i - 1].0
            };
            let arc = token.wrapping_sub(previous);
            let arc = if arc == 0 && self.tokens.len() == 1 {
                u128::from(u64::MAX) + 1
            } else {
                u128::from(arc)
            };
            let at = self.nodes.binary_search(&node).unwrap_or_default();
            owned[at] += arc;
        }
        let total = (u128::from(u64::MAX) + 1) as f64;
        self.nodes
            .iter()
            .zip(owned)
            .map(|(&node, arc)| (node, arc as f64 / total))
            .collect()
    }

    /// Index of the first token at or after `point`, wrapping to 0.
    fn start(&self, point: u64) -> usize {
        let i = self.tokens.partition_point(|&(token, _)| token < point);
        if i == self.tokens.len() {
            0
        } else {
            i
        }
    }
}

/// Where virtual node `i` of `node` sits on the ring.
pub fn vnode_token(node: NodeId, i: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&node.to_be_bytes());
    bytes[4..].copy_from_slice(&i.to_be_bytes());
    xxh3_64_with_seed(&bytes, VNODE_SEED)
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
