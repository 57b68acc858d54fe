//! Which keys have a logged change that is not durable yet. Pure: no I/O, no clock.
//!
//! A shard applies a write to its store before the write is durable, so another connection
//! could read it meanwhile, and a crash could then undo what that reader saw. Every keyed op
//! therefore also waits for the latest logged change to its key before it is answered. This
//! table remembers that change's sequence number per hash slot, without storing keys: two
//! keys that share a slot make a read wait for one commit more than it needs, never less.

/// Slots in the table: 16 Ki of 8 bytes, 128 KiB per shard. With the few hundred changes in
/// flight that a busy shard has, a read waits needlessly in well under 1% of cases.
const SLOTS: usize = 1 << 14;

/// The latest logged change per key-hash slot.
pub struct Pending {
    slots: Box<[u64]>,
    hasher: ahash::RandomState,
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            slots: vec![0; SLOTS].into_boxed_slice(),
            hasher: ahash::RandomState::with_seeds(0x6b76, 0x6d65, 0x7368, 0x7761),
        }
    }

    /// Notes that record `seq` changed `key`. Sequence numbers only grow.
    pub fn note(&mut self, key: &[u8], seq: u64) {
        let slot = self.slot(key);
        self.slots[slot] = self.slots[slot].max(seq);
    }

    /// The latest record that changed `key`, or a key sharing its slot; 0 when none did.
    pub fn latest(&self, key: &[u8]) -> u64 {
        self.slots[self.slot(key)]
    }

    fn slot(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize & (SLOTS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_change_per_key() {
        let mut p = Pending::new();
        assert_eq!(p.latest(b"a"), 0);
        p.note(b"a", 3);
        p.note(b"b", 4);
        p.note(b"a", 9);
        assert_eq!((p.latest(b"a"), p.latest(b"b")), (9, 4));
        // Never forgets a later change: an older seq does not lower the slot.
        p.note(b"a", 5);
        assert_eq!(p.latest(b"a"), 9);
    }

    #[test]
    fn collisions_are_rare_and_only_conservative() {
        let mut p = Pending::new();
        for i in 0..200u64 {
            p.note(format!("written-{i}").as_bytes(), i + 1);
        }
        let waits = (0..10_000)
            .filter(|i| p.latest(format!("other-{i}").as_bytes()) != 0)
            .count();
        assert!(waits < 300, "{waits} of 10000 unrelated keys would wait");
    }
}
