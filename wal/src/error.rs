//! The crate's one error enum. Messages name the file, the offset and what to do.

use std::io;

/// What went wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record's length field is above what a segment can hold: damage, or not a record at all.
    #[error("record length {len} is above the limit of {max} bytes")]
    RecordTooLong {
        /// The length read.
        len: usize,
        /// The largest payload a segment can hold.
        max: usize,
    },
    /// A record's bytes do not match its CRC32.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC32 stored in the record.
        stored: u32,
        /// The CRC32 of the bytes found.
        computed: u32,
    },
    /// The CRC matched but the payload is not a valid `kvmesh.wal.Record`.
    #[error("record payload does not decode: {0}")]
    Malformed(String),
    /// The file ends inside a record.
    #[error("the file ends inside a record ({have} of {need} bytes present)")]
    Incomplete {
        /// Bytes of the record present.
        have: usize,
        /// Bytes the record needs.
        need: usize,
    },
    /// A segment's header is not one this version of kvmesh wrote.
    #[error("bad segment header: {0}")]
    BadHeader(String),
    /// A record to append would not fit in an empty segment.
    #[error("a record of {len} bytes does not fit in a segment of {segment_size} bytes; raise --wal-segment-size")]
    RecordTooLarge {
        /// Encoded size of the record, framing included.
        len: usize,
        /// The configured segment size.
        segment_size: u64,
    },
    /// Recovery found damage to records that had been synced, and the recovery mode is strict.
    #[error(
        "{file}: damaged log at offset {offset} ({why}); records from seq {first_lost} on had \
         already been synced, so this is corruption, not a torn write. kvmesh refuses to start \
         rather than lose them silently: restore the data directory from a copy, or start with \
         --recovery tolerate-corruption to skip the damaged records (the report names them)"
    )]
    Corruption {
        /// The segment, as a path.
        file: String,
        /// Byte offset of the first damaged byte in that file.
        offset: u64,
        /// What is wrong there.
        why: String,
        /// Sequence number of the first record that cannot be read.
        first_lost: u64,
    },
    /// The newest snapshot does not check, and the recovery mode is strict.
    #[error(
        "{file}: damaged snapshot at offset {offset} ({why}). kvmesh refuses to start rather than \
         lose its entries silently or fall back to an older state: restore the data directory \
         from a copy, or start with --recovery tolerate-corruption to load the chunks that \
         check (the report counts what is lost)"
    )]
    SnapshotCorruption {
        /// The snapshot, as a path.
        file: String,
        /// Byte offset of the first damaged byte.
        offset: u64,
        /// What is wrong there.
        why: String,
    },
    /// A file operation failed.
    #[error("{op} {file}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory, as a path.
        file: String,
        /// The OS error.
        source: io::Error,
    },
    /// The disk is full.
    #[error("{op} {file}: no space left on the device; free space, then restart the node")]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// The file, as a path.
        file: String,
    },
    /// A write stored fewer bytes than asked and a retry stored none.
    #[error("short write to {file} at offset {offset}: {written} of {len} bytes")]
    ShortWrite {
        /// The file, as a path.
        file: String,
        /// Where the write started.
        offset: u64,
        /// Bytes stored.
        written: usize,
        /// Bytes asked.
        len: usize,
    },
    /// The log failed earlier (see the message); it accepts no more records until restart.
    #[error("the write-ahead log failed and accepts no writes until restart: {0}")]
    Failed(String),
    /// The directory cannot hold a log written with O_DIRECT.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// Wraps an OS error from `op` on `file`, telling ENOSPC apart.
    pub fn io(op: &'static str, file: impl Into<String>, source: io::Error) -> Error {
        let file = file.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == io::ErrorKind::StorageFull
        {
            Error::NoSpace { op, file }
        } else {
            Error::Io { op, file, source }
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_told_apart() {
        let e = Error::io(
            "writing",
            "d/1.wal",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, Error::NoSpace { .. }), "{e}");
        assert!(e.to_string().contains("no space left"), "{e}");
        let e = Error::io(
            "writing",
            "d/1.wal",
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(e.to_string().contains("d/1.wal"), "{e}");
    }
}
