//! How a log syncs, rotates and recovers.

use std::time::Duration;

/// When the log calls `fdatasync`. In every mode a record is acknowledged only after its write
/// has completed, so it survives the process being killed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// A record is acknowledged after an `fdatasync` that covers it. Concurrent records share
    /// one (group commit). Survives power loss.
    Always,
    /// `fdatasync` at least every [`Config::fsync_interval`]; a record is acknowledged when
    /// written. A power loss can lose the records of the last interval.
    Interval,
    /// Never (except when a segment is closed). A power loss can lose any record the kernel
    /// and the device had not yet flushed on their own.
    Never,
}

/// What recovery does with damage to records that had been synced.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Refuse to start, naming the file and offset. (A torn, never-synced tail is always
    /// truncated and reported: that is what a crash leaves.)
    Strict,
    /// Skip damaged records, report each region and how many records it held, and start.
    TolerateCorruption,
}

/// A log's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// When to sync. Default: `Always`.
    pub fsync: Fsync,
    /// With `Fsync::Interval`, the longest time between syncs. Default: 10 ms.
    pub fsync_interval: Duration,
    /// Size of each segment file in bytes, preallocated and zeroed before use; a multiple of
    /// `block`. Default: 64 MiB.
    pub segment_size: u64,
    /// Commits start on multiples of this many bytes, in bytes; raised to the device's direct
    /// I/O alignment if that is larger. Default: 4096.
    pub block: u64,
    /// Largest single write, in bytes; a larger commit is written in several. Default: 1 MiB.
    pub max_write: usize,
    /// What recovery does with damage. Default: `Strict`.
    pub recovery: Recovery,
    /// With `Fsync::Always`, how many `fdatasync` calls may be in flight at once (at least
    /// one). A record is acknowledged once a sync that started after its write completed has
    /// returned, and every sync started before that one too; with two, a record never waits
    /// for an older sync to finish before a sync covering it can start. Default: 2.
    pub syncs_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fsync: Fsync::Always,
            fsync_interval: Duration::from_millis(10),
            segment_size: 64 << 20,
            block: 4096,
            max_write: 1 << 20,
            recovery: Recovery::Strict,
            syncs_in_flight: 2,
        }
    }
}

impl Config {
    /// The largest record payload a segment can hold, in bytes.
    pub fn max_payload(&self) -> usize {
        (self.segment_size.saturating_sub(self.block) as usize)
            .saturating_sub(crate::record::FRAME_LEN)
    }

    /// Checks the values against each other, with one message per problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !self.block.is_power_of_two() || self.block < 512 {
            problems.push(format!(
                "WAL block size {} is not a power of two >= 512",
                self.block
            ));
        } else if self.segment_size % self.block != 0 || self.segment_size < 4 * self.block {
            problems.push(format!(
                "--wal-segment-size {} must be a multiple of {} bytes and at least {}",
                self.segment_size,
                self.block,
                4 * self.block
            ));
        }
        if self.fsync == Fsync::Interval && self.fsync_interval.is_zero() {
            problems.push("--fsync-interval must be above zero".to_string());
        }
        if self.syncs_in_flight == 0 {
            problems.push("--wal-syncs-in-flight must be at least 1".to_string());
        }
        if self.max_write < self.block as usize {
            problems.push(format!(
                "max write {} is below the block size",
                self.max_write
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}
