//! Where an op runs: a pure decision, so it can be tested without executors or sockets.
//!
//! In a cluster the ring decides first (which node owns the key), then the shard hash (which
//! shard of that node): [`route_in_cluster`].

use kvmesh_net::ring::{NodeId, Ring};
use kvmesh_proto::wire::{Op, OpCode};

/// The decision for one op arriving at shard `me`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A keyed op this shard owns.
    Local,
    /// A keyed op owned by another shard of this node.
    Forward(usize),
    /// About this shard itself (stats, topology): answered here, never forwarded.
    Here,
    /// A keyed op owned by another node of the cluster.
    Remote(NodeId),
    /// A peer's handshake: answered here, never forwarded.
    Hello,
    /// A message for this node's topology Raft group: handed to its driver, never forwarded.
    Raft,
    /// A membership change asked of this node (join, leave): answered here, never forwarded.
    Change,
    /// Refused before it reaches any store.
    Reject(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    UnknownOperation(i32),
    KeyTooLarge { len: usize, max: usize },
}

/// What routing looks at in an op, borrowed: a decoded [`Op`] and the local fast path (see
/// `fast`) route through the same functions.
#[derive(Clone, Copy, Debug)]
pub struct Keyed<'a> {
    pub code: i32,
    pub key: &'a [u8],
    /// `Op.replica`.
    pub replica: bool,
}

impl<'a> From<&'a Op> for Keyed<'a> {
    fn from(op: &'a Op) -> Self {
        Keyed {
            code: op.code,
            key: &op.key,
            replica: op.replica,
        }
    }
}

/// Routes `op`, arriving at shard `me` of `nr_shards`, whose keys may be at most `max_key_len`.
pub fn route(op: Keyed<'_>, me: usize, nr_shards: usize, max_key_len: usize) -> Route {
    let code = match OpCode::try_from(op.code) {
        Ok(OpCode::OpUnspecified) | Err(_) => {
            return Route::Reject(Rejection::UnknownOperation(op.code))
        }
        Ok(code) => code,
    };
    match code {
        OpCode::OpStats | OpCode::OpTopology | OpCode::OpSnapshot => Route::Here,
        OpCode::OpHello => Route::Hello,
        OpCode::OpRaft => Route::Raft,
        OpCode::OpJoin | OpCode::OpLeave | OpCode::OpAbort => Route::Change,
        OpCode::OpGet | OpCode::OpPut | OpCode::OpRemove | OpCode::OpTouch | OpCode::OpTtl => {
            if op.key.len() > max_key_len {
                return Route::Reject(Rejection::KeyTooLarge {
                    len: op.key.len(),
                    max: max_key_len,
                });
            }
            match kvmesh_net::shard_for(op.key, nr_shards) {
                owner if owner == me => Route::Local,
                owner => Route::Forward(owner),
            }
        }
        OpCode::OpUnspecified => unreachable!("handled above"),
    }
}

/// Where this node stands in the cluster, for [`route_in_cluster`].
pub struct Place<'a> {
    pub ring: &'a Ring,
    /// This node.
    pub node: NodeId,
    /// Owners per key (`--replicas`).
    pub replicas: usize,
    /// Whether a peer is believed up now (see `cluster::peers`).
    pub live: &'a dyn Fn(NodeId) -> bool,
}

/// Routes `op` arriving at shard `me` (of `nr_shards`) of node `place.node`: a keyed op of
/// which this node is not one of the `replicas` owners goes to the first owner believed live
/// (the first owner when none is), unless it was `forwarded` by a node already or is a
/// replica write (`Op.replica`), which this node serves as owner (so two nodes that disagree
/// about the ring cannot bounce it between them). Everything else routes as [`route`].
pub fn route_in_cluster(
    op: &Op,
    place: &Place<'_>,
    forwarded: bool,
    me: usize,
    nr_shards: usize,
    max_key_len: usize,
) -> Route {
    route_in_cluster_keyed(op.into(), place, forwarded, me, nr_shards, max_key_len)
}

/// [`route_in_cluster`] of a borrowed op.
pub fn route_in_cluster_keyed(
    op: Keyed<'_>,
    place: &Place<'_>,
    forwarded: bool,
    me: usize,
    nr_shards: usize,
    max_key_len: usize,
) -> Route {
    let here = route(op, me, nr_shards, max_key_len);
    match here {
        Route::Local | Route::Forward(_)
            if !forwarded && !op.replica && place.ring.nodes().len() > 1 =>
        {
            if place.replicas <= 1 {
                return match place.ring.owner(op.key) {
                    owner if owner != place.node => Route::Remote(owner),
                    _ => here,
                };
            }
            let owners = place.ring.owners(op.key, place.replicas);
            if owners.contains(&place.node) {
                return here;
            }
            let live = owners.iter().copied().find(|&n| (place.live)(n));
            Route::Remote(live.unwrap_or(owners[0]))
        }
        _ => here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(code: i32, key: &[u8]) -> Op {
        Op {
            code,
            key: key.to_vec(),
            ..Op::default()
        }
    }

    #[test]
    fn table() {
        // "user:42" is owned by shard 1 of 2 (see kvmesh-net's routing test vectors).
        let get = OpCode::OpGet as i32;
        let cases = [
            (op(get, b"user:42"), 1, Route::Local),
            (op(get, b"user:42"), 0, Route::Forward(1)),
            (op(get, b"\x00\xff\x10"), 0, Route::Local),
            (op(OpCode::OpStats as i32, b""), 0, Route::Here),
            (op(OpCode::OpTopology as i32, b"user:42"), 0, Route::Here),
            (
                op(0, b"k"),
                0,
                Route::Reject(Rejection::UnknownOperation(0)),
            ),
            (
                op(99, b"k"),
                0,
                Route::Reject(Rejection::UnknownOperation(99)),
            ),
            (
                op(OpCode::OpPut as i32, &[b'x'; 9]),
                0,
                Route::Reject(Rejection::KeyTooLarge { len: 9, max: 8 }),
            ),
        ];
        for (op, me, want) in cases {
            assert_eq!(route((&op).into(), me, 2, 8), want, "{op:?} at shard {me}");
        }
    }

    #[test]
    fn ring_first_then_shard() {
        // On the ring over nodes 1, 2, 3 with 4 vnodes each, "user:42" belongs to node 2 and
        // "a" to node 3 (kvmesh-net's ring test vectors); "user:42" is shard 1's of 2.
        let ring = Ring::with_hasher(&[1, 2, 3], 4, kvmesh_net::ring::RingHash).unwrap();
        let get = |key: &[u8]| op(OpCode::OpGet as i32, key);
        let all_live = |_| true;
        let at = |node, forwarded, me, op: &Op| {
            let place = Place {
                ring: &ring,
                node,
                replicas: 1,
                live: &all_live,
            };
            route_in_cluster(op, &place, forwarded, me, 2, 8)
        };
        assert_eq!(at(1, false, 0, &get(b"user:42")), Route::Remote(2));
        assert_eq!(at(3, false, 1, &get(b"user:42")), Route::Remote(2));
        assert_eq!(at(2, false, 0, &get(b"user:42")), Route::Forward(1));
        assert_eq!(at(2, false, 1, &get(b"user:42")), Route::Local);
        assert_eq!(at(1, false, 0, &get(b"a")), Route::Remote(3));
        // A forwarded op is served by whichever node receives it, never sent on.
        assert_eq!(at(1, true, 0, &get(b"user:42")), Route::Forward(1));
        assert_eq!(at(1, true, 1, &get(b"user:42")), Route::Local);
        // Not keyed: never leaves the shard.
        assert_eq!(
            at(1, false, 0, &op(OpCode::OpHello as i32, b"")),
            Route::Hello
        );
        assert_eq!(
            at(1, false, 0, &op(OpCode::OpStats as i32, b"a")),
            Route::Here
        );
        // Rejections come before the ring.
        assert_eq!(
            at(1, false, 0, &op(OpCode::OpGet as i32, &[b'x'; 9])),
            Route::Reject(Rejection::KeyTooLarge { len: 9, max: 8 })
        );
        // One node: the ring is not consulted.
        let one = Ring::new(&[1]).unwrap();
        let place = Place {
            ring: &one,
            node: 1,
            replicas: 1,
            live: &all_live,
        };
        assert_eq!(
            route_in_cluster(&get(b"user:42"), &place, false, 0, 2, 8),
            Route::Forward(1)
        );
    }

    #[test]
    fn any_owner_serves_and_others_go_to_a_live_owner() {
        let ring = Ring::with_hasher(&[1, 2, 3, 4], 4, kvmesh_net::ring::RingHash).unwrap();
        let key = b"user:42";
        let owners = ring.owners(key, 2);
        let other = *[1, 2, 3, 4].iter().find(|n| !owners.contains(n)).unwrap();
        let get = op(OpCode::OpGet as i32, key);
        let at = |node, live: &dyn Fn(NodeId) -> bool, op: &Op| {
            let place = Place {
                ring: &ring,
                node,
                replicas: 2,
                live,
            };
            route_in_cluster(op, &place, false, 1, 2, 8)
        };
        let all = |_| true;
        for &owner in &owners {
            assert_eq!(at(owner, &all, &get), Route::Local);
        }
        assert_eq!(at(other, &all, &get), Route::Remote(owners[0]));
        let first_down = |n| n != owners[0];
        assert_eq!(at(other, &first_down, &get), Route::Remote(owners[1]));
        let none = |_| false;
        assert_eq!(at(other, &none, &get), Route::Remote(owners[0]));
        // A replica write is served where it arrives.
        let replica = Op {
            replica: true,
            ..op(OpCode::OpPut as i32, key)
        };
        assert_eq!(at(other, &all, &replica), Route::Local);
    }
}
