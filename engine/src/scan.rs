//! Chunked iteration over a store's live entries, for snapshots taken between requests.
//!
//! A scan walks the arena by address. An entry keeps its slot until it is removed or rewritten
//! to another size class (an overwrite with a value of another size, or a `touch` that adds or
//! drops a deadline). Such a move may land behind the scan's cursor, so the store remembers the
//! entries moved behind an unfinished scan and visits them first in its next step. A scan that
//! runs in many steps, with writes in between, thus has a simple contract:
//!
//! - an entry that is live, and keeps its key, from the scan's first step to its last is
//!   visited at least once, with the value it has when it is visited; exactly once if it is
//!   not written (put or touch) during the scan;
//! - an entry written, removed or replaced while the scan runs may or may not be visited,
//!   with the value it had when it was visited; a key written during the scan may be visited
//!   more than once, and then the later visit carries the newer version.
//!
//! Several scans may run at once (a snapshot and a membership change's stream, say): each
//! [`Cursor`] names its scan, and the store notes moves for every unfinished one. A scan
//! that is abandoned before its end should be ended with [`Store::end_scan`]; at most
//! [`MAX_SCANS`] are kept, and a step of a scan dropped to make room for newer ones (the
//! least recently stepped) starts that scan over from the first slot, which keeps the
//! contract: entries are visited again, never missed.
//!
//! So a scan is not a point-in-time image; a snapshot built from one is made exact by
//! replaying every change logged from the moment the scan started (see `kvmesh-wal`).

use crate::block::Block;
use crate::store::Store;
use crate::version::Version;

/// How many unfinished scans a store keeps track of at once (see the module docs).
pub const MAX_SCANS: usize = 8;

/// A scan notes at least this many moves behind its cursor before it may start over.
const MIN_MOVES_NOTED: usize = 1024;

/// Where a scan goes on: which scan it is and the next arena address to look at. Start with
/// [`Cursor::START`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The scan's id; 0 for a scan not begun yet.
    scan: u64,
    /// The next arena address to look at.
    at: u32,
}

impl Cursor {
    /// The first step of a new scan.
    pub const START: Cursor = Cursor { scan: 0, at: 0 };
}

/// One live entry, borrowed from the store for the duration of a visit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Absolute deadline, ms since the UNIX epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The version that wrote it.
    pub version: Version,
}

impl Store {
    /// Makes room in the hash index for `additional` more keys, so that loading that many
    /// (say, from a snapshot) never rehashes. Charges nothing; an index much larger than what
    /// it holds shrinks again after removals.
    pub fn reserve(&mut self, additional: usize) {
        self.index.reserve(&self.arena, additional);
    }

    /// Visits up to `max_slots` slots from `cursor`, calling `visit` for each live entry
    /// (tombstones and entries whose deadline has passed at `now_ms` are skipped); first, the
    /// entries moved behind the cursor since the last step (see the module docs). Returns
    /// where to go on, or `None` once every slot has been looked at. Changes no entry: no LRU
    /// bump, no counter, no reclaim; it only keeps the scan's position, so that later moves
    /// behind it are noted. O(`max_slots` + entries moved since the last step).
    pub fn scan(
        &mut self,
        cursor: Cursor,
        max_slots: usize,
        now_ms: u64,
        mut visit: impl FnMut(EntryRef<'_>),
    ) -> Option<Cursor> {
        self.scans.steps += 1;
        let state = match self.scans.take(cursor.scan) {
            Some(state) => state,
            // A new scan, or one dropped to make room for newer ones: from the first slot.
            None => {
                self.scans.next_id += 1;
                ScanState {
                    id: self.scans.next_id,
                    at: 0,
                    moved: Vec::new(),
                    stepped: 0,
                }
            }
        };
        let mut emit = |block: Block<'_>| {
            if block.is_tombstone() || block.is_dead(now_ms) {
                return;
            }
            visit(EntryRef {
                key: block.key(),
                value: block.value(),
                expires_at_ms: block.deadline(),
                version: block.version(),
            });
        };
        // A noted address may have been freed or reused since: a slot in use there holds a
        // live entry all the same, which the contract allows to be visited.
        for &at in &state.moved {
            if let Some(block) = self.arena.used_block_at(at) {
                emit(block);
            }
        }
        let next = self.arena.walk(state.at, max_slots, emit)?;
        let id = state.id;
        self.scans.keep(ScanState {
            id,
            at: next,
            moved: recycle(state.moved),
            stepped: self.scans.steps,
        });
        Some(Cursor { scan: id, at: next })
    }

    /// Forgets an unfinished scan (one abandoned before [`Store::scan`] returned `None`), so
    /// the store stops noting moves for it. A later step with that cursor starts over.
    pub fn end_scan(&mut self, cursor: Cursor) {
        self.scans.take(cursor.scan);
    }

    /// Notes that an entry was just moved to `to`: behind a running scan's cursor, the scan's
    /// next step visits it there.
    ///
    /// An abandoned scan must not grow its list forever: once a scan has noted more moves than
    /// the store holds entries (at least [`MIN_MOVES_NOTED`]), it starts over from the first
    /// slot instead, which visits everything again and needs no list.
    pub(crate) fn note_move(&mut self, to: u32) {
        let limit = self.len().max(MIN_MOVES_NOTED);
        for scan in &mut self.scans.running {
            if to < scan.at {
                if scan.moved.len() >= limit {
                    scan.at = 0;
                    scan.moved = Vec::new();
                } else {
                    scan.moved.push(to);
                }
            }
        }
    }
}

/// The unfinished scans of one store.
#[derive(Debug, Default)]
pub(crate) struct Scans {
    running: Vec<ScanState>,
    /// The last scan id given out.
    next_id: u64,
    /// Steps taken, for finding the least recently stepped scan.
    steps: u64,
}

impl Scans {
    fn take(&mut self, id: u64) -> Option<ScanState> {
        let i = self.running.iter().position(|s| s.id == id)?;
        Some(self.running.swap_remove(i))
    }

    fn keep(&mut self, state: ScanState) {
        if self.running.len() >= MAX_SCANS {
            if let Some(oldest) = (0..self.running.len()).min_by_key(|&i| self.running[i].stepped) {
                self.running.swap_remove(oldest);
            }
        }
        self.running.push(state);
    }
}

/// A scan that has not finished: where its next step starts, and the addresses of entries
/// moved behind that point since its last step.
#[derive(Debug, Default)]
struct ScanState {
    id: u64,
    at: u32,
    moved: Vec<u32>,
    /// `Scans::steps` at its last step.
    stepped: u64,
}

fn recycle(mut moved: Vec<u32>) -> Vec<u32> {
    moved.clear();
    moved
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::Config;
    use crate::store::Store;
    use crate::version::Version;

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    type Seen = BTreeMap<Vec<u8>, (Vec<u8>, u64, Version)>;

    fn scan_all(store: &mut Store, step: usize, now: u64) -> (Seen, usize) {
        let (mut seen, mut steps, mut cursor) = (Seen::new(), 0, Some(Cursor::START));
        while let Some(c) = cursor {
            steps += 1;
            cursor = store.scan(c, step, now, |e| {
                let old = seen.insert(
                    e.key.to_vec(),
                    (e.value.to_vec(), e.expires_at_ms, e.version),
                );
                assert!(old.is_none(), "visited twice: {:?}", e.key);
            });
        }
        (seen, steps)
    }

    #[test]
    fn reserve_then_fill() {
        let mut s = Store::new(Config::default());
        s.reserve(10_000);
        for i in 0..10_000u64 {
            s.put(&i.to_le_bytes(), b"v", 0, Version::new(i + 1, 1), T0)
                .unwrap();
        }
        assert_eq!(scan_all(&mut s, 4096, T0).0.len(), 10_000);
    }

    #[test]
    fn empty_store_is_one_step() {
        let mut store = Store::new(Config::default());
        assert_eq!(store.scan(Cursor::START, 10, T0, |_| panic!("empty")), None);
    }

    #[test]
    fn visits_live_entries_once_skipping_dead_ones() {
        let mut s = Store::new(Config {
            tombstone_grace_ms: 60_000,
            ..Config::default()
        });
        for i in 0..100u64 {
            let key = format!("k{i}");
            let deadline = if i % 10 == 0 { T0 + 5 } else { 0 };
            s.put(key.as_bytes(), b"v", deadline, Version::new(i + 1, 1), T0)
                .unwrap();
        }
        s.remove(b"k1", Version::new(500, 1), T0).unwrap(); // leaves a tombstone
        let (seen, steps) = scan_all(&mut s, 7, T0);
        assert_eq!(seen.len(), 99);
        assert!(!seen.contains_key(&b"k1"[..]));
        assert_eq!(
            seen[&b"k10"[..]],
            (b"v".to_vec(), T0 + 5, Version::new(11, 1))
        );
        assert_eq!(steps, 100usize.div_ceil(7));
        // Once the deadlines pass, those entries are skipped too (not reclaimed: &self).
        let (later, _) = scan_all(&mut s, 1000, T0 + 5);
        assert_eq!(later.len(), 89);
        assert_eq!(s.len(), 99);
    }

    #[test]
    fn entries_live_throughout_are_seen_despite_writes_between_steps() {
        let mut s = Store::new(Config::default());
        let stable: Vec<String> = (0..500).map(|i| format!("stable-{i}")).collect();
        for (i, key) in stable.iter().enumerate() {
            s.put(key.as_bytes(), b"s", 0, Version::new(i as u64 + 1, 1), T0)
                .unwrap();
        }
        let mut churn = 0u64;
        let mut seen = Seen::new();
        let mut cursor = Some(Cursor::START);
        let mut hlc = 10_000;
        while let Some(c) = cursor {
            cursor = s.scan(c, 16, T0, |e| {
                seen.insert(e.key.to_vec(), (e.value.to_vec(), 0, e.version));
            });
            // Between steps: new keys, removals of churned keys, overwrites of stable ones.
            for _ in 0..8 {
                hlc += 1;
                let key = format!("churn-{churn}");
                s.put(key.as_bytes(), b"c", 0, Version::new(hlc, 1), T0)
                    .unwrap();
                if churn % 2 == 0 {
                    hlc += 1;
                    s.remove(key.as_bytes(), Version::new(hlc, 1), T0).unwrap();
                }
                churn += 1;
            }
            hlc += 1;
            let key = &stable[(hlc % 500) as usize];
            s.put(key.as_bytes(), b"S", 0, Version::new(hlc, 1), T0)
                .unwrap();
        }
        for key in &stable {
            assert!(seen.contains_key(key.as_bytes()), "{key} missed");
        }
    }

    /// Entries that a touch or an overwrite moves to another size class between steps, from
    /// ahead of the cursor to free slots behind it, are still seen, with their newest value.
    #[test]
    fn entries_moved_behind_the_cursor_are_seen() {
        let mut s = Store::new(Config::default());
        let key = |i: u64| format!("key-{i:010}"); // 14 bytes: 136-byte blocks, 152 with a deadline
        let value = [7u8; 100];
        let mut hlc = 0;
        let mut next = || {
            hlc += 1;
            Version::new(hlc, 1)
        };
        // Free slots of the 152- and 160-byte classes at the lowest addresses...
        for i in 0..400 {
            s.put(key(i).as_bytes(), &value, T0 + 60_000, next(), T0)
                .unwrap();
            s.put(format!("z{i}").as_bytes(), &[1; 120], 0, next(), T0)
                .unwrap();
        }
        for i in 0..400 {
            s.remove(key(i).as_bytes(), next(), T0).unwrap();
            s.remove(format!("z{i}").as_bytes(), next(), T0).unwrap();
        }
        // ...then the entries, all in 136-byte slots after them.
        let n = 2_000u64;
        for i in 0..n {
            s.put(key(i).as_bytes(), &value, 0, next(), T0).unwrap();
        }
        let mut seen = BTreeMap::new();
        let (mut cursor, mut step) = (Some(Cursor::START), 0u64);
        while let Some(c) = cursor {
            cursor = s.scan(c, 64, T0, |e| {
                seen.insert(e.key.to_vec(), (e.value.len(), e.expires_at_ms));
            });
            if cursor.is_none() {
                break;
            }
            // Between steps, move entries from the far end: a touch adding a deadline, one
            // dropping it again, an overwrite with a longer value.
            for j in 0..3 {
                let i = n - 1 - (3 * step + j) % n;
                let k = key(i);
                match j {
                    0 => assert_eq!(s.touch(k.as_bytes(), T0 + 60_000, next(), T0), Ok(true)),
                    1 => {
                        assert_eq!(s.touch(k.as_bytes(), T0 + 60_000, next(), T0), Ok(true));
                        assert_eq!(s.touch(k.as_bytes(), 0, next(), T0), Ok(true));
                    }
                    _ => {
                        s.put(k.as_bytes(), &[9; 120], 0, next(), T0).unwrap();
                    }
                }
            }
            step += 1;
        }
        for i in 0..n {
            let k = key(i);
            let Some(&(len, deadline)) = seen.get(k.as_bytes()) else {
                panic!("{k} missed (scan of {step} steps)");
            };
            let now = (
                s.get(k.as_bytes(), T0).map(<[u8]>::len),
                s.expires_at(k.as_bytes(), T0),
            );
            assert_eq!(
                (Some(len), Some(deadline)),
                now,
                "{k}: the last visit is the newest"
            );
        }
    }

    /// The same for large blocks, which move to a freed large-block address when a touch
    /// changes their length.
    #[test]
    fn large_entries_moved_behind_the_cursor_are_seen() {
        let mut s = Store::new(Config::default());
        let value = [3u8; 2_000];
        s.put(b"a", &value, 0, Version::new(1, 1), T0).unwrap();
        s.put(b"b", &value, 0, Version::new(2, 1), T0).unwrap();
        s.remove(b"a", Version::new(3, 1), T0).unwrap(); // frees the first large address
        let mut seen = Vec::new();
        // No class page: the first step looks at the first large address only.
        let cursor = s.scan(Cursor::START, 1, T0, |e| seen.push(e.key.to_vec()));
        assert!(seen.is_empty());
        assert_eq!(s.touch(b"b", T0 + 1_000, Version::new(4, 1), T0), Ok(true));
        let mut cursor = cursor;
        while let Some(c) = cursor {
            cursor = s.scan(c, 1, T0, |e| seen.push(e.key.to_vec()));
        }
        assert_eq!(seen, [b"b".to_vec()]);
    }

    /// A store of `n` 14-byte keys in 136-byte slots, after freed 152-byte slots at the lowest
    /// addresses, so a touch adding a deadline moves an entry behind any cursor.
    fn store_with_free_slots_first(n: u64) -> Store {
        let mut s = Store::new(Config::default());
        for i in 0..n {
            let k = format!("old-{i:010}");
            s.put(
                k.as_bytes(),
                &[1; 100],
                T0 + 60_000,
                Version::new(i + 1, 1),
                T0,
            )
            .unwrap();
        }
        for i in 0..n {
            let k = format!("old-{i:010}");
            s.remove(k.as_bytes(), Version::new(n + i + 1, 1), T0)
                .unwrap();
        }
        for i in 0..n {
            let k = format!("key-{i:010}");
            s.put(
                k.as_bytes(),
                &[2; 100],
                0,
                Version::new(2 * n + i + 1, 1),
                T0,
            )
            .unwrap();
        }
        s
    }

    fn touch_from_the_end(s: &mut Store, n: u64, round: u64, hlc: u64) {
        let k = format!("key-{:010}", n - 1 - round % n);
        assert_eq!(
            s.touch(k.as_bytes(), T0 + 60_000 + round, Version::new(hlc, 1), T0),
            Ok(true)
        );
    }

    #[test]
    fn concurrent_scans_each_see_every_entry_despite_moves() {
        let n = 600;
        let mut s = store_with_free_slots_first(n);
        let (mut a, mut b) = (Some(Cursor::START), None);
        let (mut seen_a, mut seen_b) = (BTreeMap::new(), BTreeMap::new());
        let mut round = 0;
        while a.is_some() || b.is_some() || round == 0 {
            if let Some(c) = a {
                a = s.scan(c, 50, T0, |e| {
                    seen_a.insert(e.key.to_vec(), ());
                });
            }
            // The second scan starts a little later and steps at another pace.
            if round == 2 {
                b = Some(Cursor::START);
            }
            if let Some(c) = b {
                b = s.scan(c, 30, T0, |e| {
                    seen_b.insert(e.key.to_vec(), ());
                });
            }
            touch_from_the_end(&mut s, n, round, 10 * n + round);
            round += 1;
        }
        for i in 0..n {
            let k = format!("key-{i:010}").into_bytes();
            assert!(seen_a.contains_key(&k), "scan a missed {i}");
            assert!(seen_b.contains_key(&k), "scan b missed {i}");
        }
    }

    #[test]
    fn a_scan_dropped_for_newer_ones_or_abandoned_starts_over_and_misses_nothing() {
        let n = 300;
        let mut s = store_with_free_slots_first(n);
        let mut seen = BTreeMap::new();
        let mut cursor = s.scan(Cursor::START, 40, T0, |e| {
            seen.insert(e.key.to_vec(), ());
        });
        // MAX_SCANS newer scans, stepped once and abandoned: the first one is dropped.
        for _ in 0..MAX_SCANS {
            let other = s.scan(Cursor::START, 1, T0, |_| {});
            assert!(other.is_some());
        }
        let mut round = 0;
        while let Some(c) = cursor {
            touch_from_the_end(&mut s, n, round, 10 * n + round);
            cursor = s.scan(c, 40, T0, |e| {
                seen.insert(e.key.to_vec(), ());
            });
            round += 1;
        }
        assert_eq!(seen.len() as u64, n, "every entry, some of them twice");
        // The abandoned ones, ended or not, note no more than a bounded number of moves.
        for round in 0..(4 * MIN_MOVES_NOTED as u64) {
            touch_from_the_end(&mut s, n, round, 20 * n + round);
        }
        assert!(s
            .scans
            .running
            .iter()
            .all(|scan| scan.moved.len() <= MIN_MOVES_NOTED));
        let running = s.scans.running.len();
        if let Some(c) = s.scan(Cursor::START, 1, T0, |_| {}) {
            s.end_scan(c);
        }
        assert_eq!(s.scans.running.len(), running);
    }
}
