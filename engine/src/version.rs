//! Versions and the hybrid logical clock that issues them.
//!
//! A version orders writes to one key across nodes: last writer wins, ties broken by node id.
//! The clock is pure: wall time is passed in, so tests and recovery control it.

/// Bits of the logical counter in [`Version::hlc`]; the physical milliseconds sit above them.
const LOGICAL_BITS: u32 = 16;
/// Largest wall time the clock represents (2^48 ms, beyond the year 10 000); later is clamped.
const MAX_WALL_MS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// The version of a write. Totally ordered by `(hlc, node)`: field order makes the derived
/// `Ord` compare `hlc` first.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// `(physical ms << 16) | logical counter`, see [`Hlc`].
    pub hlc: u64,
    /// Id of the node that issued it; breaks ties between equal `hlc`s.
    pub node: u32,
}

impl Version {
    /// Older than every version a clock issues.
    pub const ZERO: Version = Version { hlc: 0, node: 0 };

    /// A version from its parts.
    pub const fn new(hlc: u64, node: u32) -> Version {
        Version { hlc, node }
    }

    /// The physical part: milliseconds since the UNIX epoch (may run ahead of the wall clock
    /// by the logical overflow, see [`Hlc::now`]).
    pub const fn physical_ms(&self) -> u64 {
        self.hlc >> LOGICAL_BITS
    }

    /// The logical counter within one millisecond.
    pub const fn logical(&self) -> u16 {
        self.hlc as u16
    }
}

/// Hybrid logical clock of one node: `hlc = (physical ms << 16) | logical counter`.
///
/// Each [`now`](Hlc::now) is strictly greater than every version this clock issued or
/// [`observe`](Hlc::observe)d, whatever the wall clock does. It stays close to wall time: when
/// wall time is ahead, `hlc` jumps to it with a zero counter.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: u32,
    last: u64,
}

impl Hlc {
    /// A clock for `node` that has issued nothing yet.
    pub fn new(node: u32) -> Self {
        Hlc { node, last: 0 }
    }

    /// The next version. If wall time stalls or goes backwards the logical counter counts up;
    /// after 65 536 versions in one millisecond it carries into the physical part, so the
    /// clock runs ahead of wall time until wall time catches up. (Strictly increasing up to
    /// `u64::MAX`, which no clock reaches in practice.)
    #[inline]
    pub fn now(&mut self, wall_ms: u64) -> Version {
        let physical = wall_ms.min(MAX_WALL_MS) << LOGICAL_BITS;
        self.last = physical.max(self.last.saturating_add(1));
        Version {
            hlc: self.last,
            node: self.node,
        }
    }

    /// Takes note of a version seen elsewhere (a replica write, or the largest version found
    /// by recovery): every later [`now`](Hlc::now) is greater than `seen`.
    pub fn observe(&mut self, seen: Version) {
        self.last = self.last.max(seen.hlc);
    }

    /// The last `hlc` issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// This clock's node id.
    pub fn node(&self) -> u32 {
        self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_orders_by_hlc_then_node() {
        let cases = [
            (Version::new(1, 9), Version::new(2, 0)),
            (Version::new(5, 1), Version::new(5, 2)),
            (Version::ZERO, Version::new(0, 1)),
        ];
        for (older, newer) in cases {
            assert!(older < newer, "{older:?} < {newer:?}");
        }
    }

    #[test]
    fn now_follows_wall_time_and_is_strictly_increasing() {
        // (wall ms fed in, expected physical part, expected logical part)
        let table = [
            (1_000, 1_000, 0),
            (1_000, 1_000, 1), // stalled wall clock: counter counts
            (1_000, 1_000, 2),
            (1_005, 1_005, 0), // wall moved on: counter resets
            (990, 1_005, 1),   // wall went backwards: keep physical, count
            (1_006, 1_006, 0),
            (u64::MAX, MAX_WALL_MS, 0), // clamped, not wrapped
        ];
        let mut clock = Hlc::new(7);
        let mut prev = Version::ZERO;
        for (wall, physical, logical) in table {
            let v = clock.now(wall);
            assert_eq!(
                (v.physical_ms(), v.logical(), v.node),
                (physical, logical, 7)
            );
            assert!(v > prev);
            prev = v;
        }
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let mut clock = Hlc::new(1);
        let mut last = Version::ZERO;
        for _ in 0..=u16::MAX as u32 + 1 {
            let v = clock.now(50);
            assert!(v > last);
            last = v;
        }
        assert_eq!((last.physical_ms(), last.logical()), (51, 0));
        // Wall time catching up does not go back.
        assert!(clock.now(51) > last);
    }

    #[test]
    fn observe_keeps_later_versions_above_what_was_seen() {
        let table = [
            // (seen hlc, wall ms at the next now)
            (Version::new(10_000 << 16 | 3, 2), 5_000),
            (Version::new(100 << 16, 9), 5_000), // older than our own: no effect
            (Version::new(u64::MAX - 1, 1), 0),
        ];
        let mut clock = Hlc::new(4);
        for (seen, wall) in table {
            let before = clock.last();
            clock.observe(seen);
            let v = clock.now(wall);
            assert!(v.hlc > seen.hlc && v.hlc > before, "{v:?} after {seen:?}");
        }
    }
}
