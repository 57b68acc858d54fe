//! Snapshot files: writing one beside a shard's segments, loading the newest at recovery, and
//! releasing what a durable snapshot covers.
//!
//! A snapshot of shard *n* covering the log up to (not including) seq *S* is the file
//! `DIR/shard-n/<S, 20 digits>.snap`. It is written as `<name>.tmp` through the same direct
//! I/O as the segments, synced, read back and checked in full, renamed into place, and the
//! directory synced; only then are the segments it covers and the older snapshots removed
//! ([`release`]). A crash at any point leaves either the old state (a `.tmp` that the next
//! start removes) or the new one (covered segments that the next snapshot or start removes).

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{Config, Recovery};
use crate::error::{Error, Result};
use crate::header;
use crate::io::{SegmentDir, SegmentFile};
use crate::segment;
use crate::snapshot::{self, Chunk, Entry, Header, Summary};

/// Bytes of entries per chunk before it is sealed.
const CHUNK_BYTES: usize = 64 << 10;
/// Bytes buffered before a write is issued.
const WRITE_BYTES: usize = 1 << 20;
/// Block size of snapshot writes, raised to the device's alignment.
const BLOCK: u64 = 4096;

/// The file name of a snapshot covering the log below `covered_seq`.
pub fn name(covered_seq: u64) -> String {
    format!("{covered_seq:020}.snap")
}

/// The covered seq in a snapshot's file name, or `None` for any other file.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// True for a snapshot left unfinished by a crash.
pub fn is_temporary(name: &str) -> bool {
    name.ends_with(".snap.tmp")
}

/// A snapshot written, checked and renamed into place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The file, as a path.
    pub file: String,
    /// Replay starts at this seq.
    pub covered_seq: u64,
    /// Entries in it.
    pub entries: u64,
    /// Its size in bytes, padding included.
    pub bytes: u64,
}

/// Writes one snapshot. Entries go in with [`Writer::push`] (no I/O), buffered writes go out
/// with [`Writer::flush`], and [`Writer::finish`] makes it durable and visible.
pub struct Writer<D: SegmentDir> {
    dir: D,
    file: D::File,
    tmp: String,
    header: Header,
    out: Vec<u8>,
    chunk: Chunk,
    pos: u64,
    block: u64,
    chunks: u32,
    entries: u64,
}

impl<D: SegmentDir> Writer<D> {
    /// Starts `<name>.tmp` in `dir`, removing what unfinished snapshots left (one snapshot of
    /// a directory is written at a time).
    pub async fn create(dir: D, header: Header) -> Result<Writer<D>> {
        let tmp = format!("{}.tmp", name(header.covered_seq));
        let names = dir
            .list()
            .map_err(|e| Error::io("listing", dir.path(""), e))?;
        for leftover in names.iter().filter(|n| is_temporary(n)) {
            dir.remove(leftover)
                .map_err(|e| Error::io("removing", dir.path(leftover), e))?;
        }
        let file = dir
            .create(&tmp)
            .await
            .map_err(|e| Error::io("creating", dir.path(&tmp), e))?;
        let block = BLOCK.max(file.alignment());
        Ok(Writer {
            dir,
            file,
            tmp,
            header,
            out: snapshot::encode_header(&header).to_vec(),
            chunk: Chunk::default(),
            pos: 0,
            block,
            chunks: 0,
            entries: 0,
        })
    }

    /// Adds an entry. No I/O: call [`Writer::flush`] now and then.
    pub fn push(&mut self, entry: &Entry<'_>) {
        self.chunk.push(entry);
        if self.chunk.len() >= CHUNK_BYTES {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if !self.chunk.is_empty() {
            self.entries += u64::from(self.chunk.seal(&mut self.out));
            self.chunks += 1;
        }
    }

    /// Writes the whole blocks buffered, once enough are.
    pub async fn flush(&mut self) -> Result<()> {
        if self.out.len() < WRITE_BYTES {
            return Ok(());
        }
        let whole = self.out.len() / self.block as usize * self.block as usize;
        self.write(whole).await
    }

    async fn write(&mut self, len: usize) -> Result<()> {
        let path = self.dir.path(&self.tmp);
        let written =
            segment::write_padded(&self.file, &path, &self.out[..len], self.pos, self.block)
                .await?;
        self.pos += written;
        self.out.drain(..len);
        Ok(())
    }

    /// Seals the last chunk, writes the trailer, syncs, reads the file back and checks every
    /// chunk, renames it into place and syncs the directory.
    pub async fn finish(mut self) -> Result<Written> {
        self.seal();
        self.out
            .extend_from_slice(&snapshot::encode_trailer(self.chunks, self.entries));
        let len = self.out.len();
        self.write(len).await?;
        let path = self.dir.path(&self.tmp);
        self.file
            .sync()
            .await
            .map_err(|e| Error::io("syncing", path.clone(), e))?;
        let bytes = self
            .file
            .read_all()
            .await
            .map_err(|e| Error::io("reading back", path.clone(), e))?;
        let summary =
            snapshot::read(&bytes, false, |_| {}).map_err(|(d, _)| Error::SnapshotCorruption {
                file: path.clone(),
                offset: d.offset,
                why: format!("just written, it does not read back: {}", d.why),
            })?;
        if (summary.header, summary.entries) != (self.header, self.entries) {
            return Err(Error::SnapshotCorruption {
                file: path,
                offset: 0,
                why: format!(
                    "just written with {} entries, it reads back {}",
                    self.entries, summary.entries
                ),
            });
        }
        let final_name = name(self.header.covered_seq);
        self.dir
            .rename(&self.tmp, &final_name)
            .map_err(|e| Error::io("renaming", path, e))?;
        let file = self.dir.path(&final_name);
        self.dir
            .sync()
            .map_err(|e| Error::io("syncing the directory of", file.clone(), e))?;
        Ok(Written {
            file,
            covered_seq: self.header.covered_seq,
            entries: self.entries,
            bytes: bytes.len() as u64,
        })
    }
}

/// What was removed once a snapshot was durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Segments whose records all lie below the snapshot's covered seq.
    pub segments: Vec<String>,
    /// Older snapshots.
    pub snapshots: Vec<String>,
}

/// Removes what the durable snapshot covering `covered_seq` makes unnecessary: older
/// snapshots, and each segment whose successor starts at or below `covered_seq` (so every
/// record in it is covered). The active segment and a prepared spare are never removed: a
/// segment is removed only when the next one has a header.
pub async fn release<D: SegmentDir>(dir: &D, covered_seq: u64) -> Result<Released> {
    let mut released = Released::default();
    let names = dir
        .list()
        .map_err(|e| Error::io("listing", dir.path(""), e))?;
    let mut segments: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| segment::parse_name(n).map(|i| (i, n)))
        .collect();
    segments.sort();
    for pair in segments.windows(2) {
        let (current, next) = (pair[0].1, pair[1].1);
        let path = dir.path(next);
        let file = dir
            .open(next)
            .await
            .map_err(|e| Error::io("opening", path.clone(), e))?;
        let head = file
            .read_head(header::HEADER_LEN)
            .await
            .map_err(|e| Error::io("reading", path.clone(), e))?;
        match header::decode(&head) {
            Ok(Some(h)) if h.first_seq <= covered_seq => {
                dir.remove(current)
                    .map_err(|e| Error::io("removing", dir.path(current), e))?;
                released.segments.push(dir.path(current));
            }
            _ => break,
        }
    }
    for n in &names {
        if parse_name(n).is_some_and(|seq| seq < covered_seq) {
            dir.remove(n)
                .map_err(|e| Error::io("removing", dir.path(n), e))?;
            released.snapshots.push(dir.path(n));
        }
    }
    if !(released.segments.is_empty() && released.snapshots.is_empty()) {
        dir.sync()
            .map_err(|e| Error::io("syncing the directory", dir.path(""), e))?;
    }
    Ok(released)
}

/// What recovery loaded from a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The file, as a path.
    pub file: String,
    /// Its header.
    pub header: Header,
    /// Entries loaded.
    pub entries: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Damaged regions skipped (`Recovery::TolerateCorruption` only), with what was lost.
    pub damage: Vec<snapshot::Damage>,
    /// Entries lost to that damage, when the trailer tells.
    pub lost_entries: Option<u64>,
    /// How long loading took.
    pub elapsed: Duration,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded snapshot {} ({} entries, {} bytes, covers seq < {}) in {} ms",
            self.file,
            self.entries,
            self.bytes,
            self.header.covered_seq,
            self.elapsed.as_millis()
        )?;
        for d in &self.damage {
            write!(
                f,
                "\ndamaged snapshot region skipped (tolerate-corruption): {} at offset {}, {} \
                 bytes ({})",
                self.file,
                d.offset,
                d.end.saturating_sub(d.offset),
                d.why
            )?;
        }
        if !self.damage.is_empty() {
            match self.lost_entries {
                Some(n) => write!(f, "\n{n} snapshot entries lost to that damage")?,
                None => write!(
                    f,
                    "\nthe snapshot's trailer is damaged too: how many entries were lost is \
                     unknown ({} were loaded)",
                    self.entries
                )?,
            }
        }
        Ok(())
    }
}

/// Loads the newest snapshot of `dir`, if any, calling `start` with its header, then `load`
/// for each entry; removes
/// leftovers of unfinished snapshots. A damaged newest snapshot is an error unless the
/// config tolerates corruption: there is no silent fall back to an older one.
pub async fn load_newest<D: SegmentDir>(
    dir: &D,
    shard: u32,
    config: &Config,
    notes: &mut Vec<String>,
    start: impl FnOnce(&Header),
    mut load: impl FnMut(&Entry<'_>),
) -> Result<Option<Loaded>> {
    let started = Instant::now();
    let names = dir
        .list()
        .map_err(|e| Error::io("listing", dir.path(""), e))?;
    for n in names.iter().filter(|n| is_temporary(n)) {
        dir.remove(n)
            .map_err(|e| Error::io("removing", dir.path(n), e))?;
        notes.push(format!(
            "removed {}: a snapshot left unfinished by a crash (the log still holds its records)",
            dir.path(n)
        ));
    }
    let Some((_, newest)) = names
        .iter()
        .filter_map(|n| parse_name(n).map(|seq| (seq, n)))
        .max()
    else {
        return Ok(None);
    };
    let path = dir.path(newest);
    let file = dir
        .open(newest)
        .await
        .map_err(|e| Error::io("opening", path.clone(), e))?;
    let bytes = file
        .read_all()
        .await
        .map_err(|e| Error::io("reading", path.clone(), e))?;
    drop(file);
    let tolerate = config.recovery == Recovery::TolerateCorruption;
    let summary: Summary =
        snapshot::read_with(&bytes, tolerate, start, &mut load).map_err(|(d, _)| {
            Error::SnapshotCorruption {
                file: path.clone(),
                offset: d.offset,
                why: d.why,
            }
        })?;
    if summary.header.shard != shard {
        return Err(Error::BadHeader(format!(
            "{path} belongs to shard {}, not shard {shard}: snapshot files were moved between \
             shard directories",
            summary.header.shard
        )));
    }
    if parse_name(newest) != Some(summary.header.covered_seq) {
        return Err(Error::SnapshotCorruption {
            file: path,
            offset: 24,
            why: format!(
                "its header covers seq < {}, its name says otherwise",
                summary.header.covered_seq
            ),
        });
    }
    Ok(Some(Loaded {
        file: path,
        header: summary.header,
        entries: summary.entries,
        bytes: bytes.len() as u64,
        lost_entries: summary.lost_entries(),
        damage: summary.damage,
        elapsed: started.elapsed(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_log_order() {
        assert_eq!(name(42), "00000000000000000042.snap");
        assert_eq!(parse_name(&name(42)), Some(42));
        assert_eq!(parse_name(&name(u64::MAX)), Some(u64::MAX));
        for other in [
            "42.snap",
            "000000000042.wal",
            "00000000000000000042.snap.tmp",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(is_temporary("00000000000000000042.snap.tmp"));
        assert!(name(9) < name(10));
    }
}
