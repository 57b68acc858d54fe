//! Plain counters of one store. The node exports them; this crate knows nothing of metrics.

/// Counters and gauges of one store, updated in place by each operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live entries held, including expired ones not yet reclaimed; tombstones excluded.
    pub keys: u64,
    /// Tombstones held.
    pub tombstones: u64,
    /// Bytes charged for all entries and tombstones (see `Store::entry_charge`).
    pub bytes_used: u64,
    /// Bytes the store's arena holds for blocks: 64 KiB per class page (mapped from the
    /// kernel), and each large block as malloc takes it. At most `max_memory` plus 64 KiB per
    /// size class in use (see `Store::entry_charge`); unlike `bytes_used` it includes free
    /// slots and excludes the hash index.
    pub arena_bytes: u64,
    /// The configured limit, `Config::max_memory`.
    pub max_memory: u64,
    /// `get`s that returned a value.
    pub hits: u64,
    /// `get`s that found nothing live.
    pub misses: u64,
    /// `put`s applied (stale ones are not counted here).
    pub puts: u64,
    /// `remove`s that removed a live key.
    pub removes: u64,
    /// `touch`es applied.
    pub touches: u64,
    /// Writes (put, remove, touch) ignored because the stored version was newer or equal.
    pub stale_writes: u64,
    /// Live entries evicted to make room (each reported as a `Removal`).
    pub evictions: u64,
    /// Live entries reclaimed because their deadline passed (each reported as a `Removal`).
    pub expirations: u64,
    /// Tombstones reclaimed after their grace period or evicted. Not reported: the key was
    /// already absent.
    pub tombstones_dropped: u64,
    /// Units of work done by `expire` since the store was created: one per timer-wheel bucket
    /// visited, per entry moved between wheel levels and per entry reclaimed. It grows with
    /// what expired, never with the size of the store.
    pub expire_steps: u64,
}
