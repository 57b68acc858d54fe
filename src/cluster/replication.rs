//! Replication decisions, pure: who holds a key, how many acknowledgements a write needs, and
//! when a write is done or has failed. No I/O, no clock: `node::replicate` does the sending.
//!
//! The coordinator of a write is the owner (one of the key's `--replicas` nodes on the ring)
//! that receives it, from a client or forwarded by a node that is not an owner. Its owning
//! shard issues the version and applies the write; the coordinator then sends the versioned
//! write to every other owner at once and acknowledges when `--write-ack` of them (itself
//! included) applied it durably.

use kvmesh_net::ring::{NodeId, Ring};

/// How many owners must have applied a write, durably, before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteAck {
    /// The coordinator alone.
    One,
    /// A majority of the key's owners: `owners / 2 + 1`.
    Quorum,
    /// Every owner.
    All,
}

/// How many owners a read asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadFrom {
    /// The first live owner (this node, when it is one).
    One,
    /// A majority of owners; the newest version wins and stale owners are repaired.
    Quorum,
}

/// A node's replication settings (`--replicas`, `--write-ack`, `--read-from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    /// Owners per key, clamped to the cluster size by the ring. Default 3.
    pub replicas: usize,
    /// Default quorum.
    pub write_ack: WriteAck,
    /// Default one.
    pub read_from: ReadFrom,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            replicas: 3,
            write_ack: WriteAck::Quorum,
            read_from: ReadFrom::One,
        }
    }
}

impl Replication {
    /// The owners of `key`, the ring's first owner first.
    pub fn owners(&self, ring: &Ring, key: &[u8]) -> Vec<NodeId> {
        ring.owners(key, self.replicas.max(1))
    }

    /// The owners of `key` other than node `me`, in ring order.
    pub fn other_owners(&self, ring: &Ring, key: &[u8], me: NodeId) -> Vec<NodeId> {
        let mut owners = self.owners(ring, key);
        owners.retain(|&n| n != me);
        owners
    }

    /// Acknowledgements a write to `owners` owners needs.
    pub fn write_acks(&self, owners: usize) -> usize {
        needed(self.write_ack, owners)
    }

    /// The tally of a write to `owners` owners and, during a membership change, `pending`
    /// new owners (owners under the new ring that are not owners now): see [`WriteTally`].
    pub fn tally(&self, owners: usize, pending: usize) -> WriteTally {
        WriteTally {
            owners: Tally::new(owners, self.write_acks(owners)),
            pending: Tally::new(pending, pending),
        }
    }
}

/// Acknowledgements needed from `owners` owners in mode `ack`; at least 1 when there is an
/// owner.
pub fn needed(ack: WriteAck, owners: usize) -> usize {
    match ack {
        WriteAck::One => 1.min(owners),
        WriteAck::Quorum => owners / 2 + (owners > 0) as usize,
        WriteAck::All => owners,
    }
}

/// Where a write stands, from the answers counted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided: more answers are needed.
    Pending,
    /// Enough owners applied it: acknowledge.
    Done,
    /// Too many owners failed for the rest to reach the count: fail it.
    Failed,
}

/// Counts owners' answers to one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    owners: usize,
    needed: usize,
    acked: usize,
    failed: usize,
}

impl Tally {
    pub fn new(owners: usize, needed: usize) -> Tally {
        Tally {
            owners,
            needed: needed.min(owners),
            acked: 0,
            failed: 0,
        }
    }

    /// Counts one owner's answer: applied durably (`true`) or not.
    pub fn record(&mut self, applied: bool) -> Outcome {
        if applied {
            self.acked += 1;
        } else {
            self.failed += 1;
        }
        self.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        if self.acked >= self.needed {
            Outcome::Done
        } else if self.owners - self.failed.min(self.owners) < self.needed {
            Outcome::Failed
        } else {
            Outcome::Pending
        }
    }

    pub fn acked(&self) -> usize {
        self.acked
    }

    pub fn needed(&self) -> usize {
        self.needed
    }
}

/// Counts the answers to one write: `--write-ack`'s count of its owners and, during a
/// membership change, every pending new owner besides (as Cassandra's `blockFor += pending`,
/// but the pending owners' own answers: another old owner's cannot stand in for them), so an
/// acknowledged write is on every new owner before an old owner drops it after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTally {
    owners: Tally,
    pending: Tally,
}

impl WriteTally {
    /// Counts one answer: from a `pending` new owner or an owner; applied durably or not.
    pub fn record(&mut self, pending: bool, applied: bool) -> Outcome {
        if pending {
            self.pending.record(applied);
        } else {
            self.owners.record(applied);
        }
        self.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        match (self.owners.outcome(), self.pending.outcome()) {
            (Outcome::Failed, _) | (_, Outcome::Failed) => Outcome::Failed,
            (Outcome::Done, Outcome::Done) => Outcome::Done,
            _ => Outcome::Pending,
        }
    }

    pub fn acked(&self) -> usize {
        self.owners.acked() + self.pending.acked()
    }

    pub fn needed(&self) -> usize {
        self.owners.needed() + self.pending.needed()
    }

    /// The pending new owners whose acknowledgements it needs.
    pub fn pending(&self) -> usize {
        self.pending.needed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_needed() {
        // (mode, owners, needed)
        let table = [
            (WriteAck::One, 3, 1),
            (WriteAck::Quorum, 3, 2),
            (WriteAck::All, 3, 3),
            (WriteAck::Quorum, 2, 2),
            (WriteAck::Quorum, 1, 1),
            (WriteAck::Quorum, 5, 3),
            (WriteAck::Quorum, 4, 3),
            (WriteAck::One, 0, 0),
            (WriteAck::Quorum, 0, 0),
        ];
        for (ack, owners, want) in table {
            assert_eq!(needed(ack, owners), want, "{ack:?} of {owners}");
        }
    }

    #[test]
    fn tally_decides_as_soon_as_it_can() {
        use Outcome::*;
        // (owners, needed, answers, outcomes after each)
        let table: [(usize, usize, &[bool], &[Outcome]); 6] = [
            (3, 2, &[true, true], &[Pending, Done]),
            (3, 2, &[true, false, true], &[Pending, Pending, Done]),
            (3, 2, &[false, false], &[Pending, Failed]),
            (2, 2, &[true, false], &[Pending, Failed]),
            (3, 1, &[false, false, true], &[Pending, Pending, Done]),
            (3, 3, &[true, true, false], &[Pending, Pending, Failed]),
        ];
        for (owners, needed, answers, want) in table {
            let mut t = Tally::new(owners, needed);
            let got: Vec<Outcome> = answers.iter().map(|&a| t.record(a)).collect();
            assert_eq!(got, want, "{owners} owners, {needed} needed, {answers:?}");
        }
    }

    #[test]
    fn owners_are_clamped_to_the_cluster() {
        let ring = Ring::new(&[1, 2]).unwrap();
        let r = Replication::default();
        let owners = r.owners(&ring, b"k");
        assert_eq!(owners.len(), 2);
        assert_eq!(r.write_acks(owners.len()), 2);
        let three = Ring::new(&[1, 2, 3]).unwrap();
        let owners = r.owners(&three, b"k");
        assert_eq!(owners[0], three.owner(b"k"));
    }

    #[test]
    fn other_owners_leave_out_only_this_node() {
        let ring = Ring::new(&[1, 2, 3]).unwrap();
        let r = Replication::default();
        for key in [&b"a"[..], b"k", b"user:42"] {
            let all = r.owners(&ring, key);
            for me in [1, 2, 3, 4] {
                let others = r.other_owners(&ring, key, me);
                let want: Vec<NodeId> = all.iter().copied().filter(|&n| n != me).collect();
                assert_eq!(others, want, "key {key:?}, node {me}");
            }
        }
    }

    #[test]
    fn pending_owners_add_to_the_acknowledgements_needed() {
        let settings = |write_ack| Replication {
            replicas: 2,
            write_ack,
            read_from: ReadFrom::One,
        };
        // --write-ack one, two owners, one pending new owner: the coordinator and the new
        // owner must both have it; the other old owner cannot stand in for the new one.
        let mut t = settings(WriteAck::One).tally(2, 1);
        assert_eq!(
            t.record(false, true),
            Outcome::Pending,
            "the coordinator alone"
        );
        assert_eq!(
            t.record(false, true),
            Outcome::Pending,
            "and the other old owner"
        );
        assert_eq!(
            t.record(true, true),
            Outcome::Done,
            "the new owner applied it"
        );
        let mut t = settings(WriteAck::One).tally(2, 1);
        t.record(false, true);
        assert_eq!(
            t.record(true, false),
            Outcome::Failed,
            "the new owner failed"
        );
        // Quorum of 3 owners (2) plus 2 pending: 4 of 5.
        assert_eq!(settings(WriteAck::Quorum).tally(3, 2).needed(), 4);
        // No change running: as before.
        let mut t = settings(WriteAck::Quorum).tally(3, 0);
        assert_eq!(t.record(false, true), Outcome::Pending);
        assert_eq!(t.record(false, true), Outcome::Done);
    }
}
