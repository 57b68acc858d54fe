//! Recovery: replay a shard's segments in order, and decide what damage means.
//!
//! The rule, in strict mode: the first damaged record is a **torn tail** when no readable
//! record after it states (in a `Synced` record) that it had been synced. A crash can only
//! tear what was never synced, so such a tail is truncated (zeroed) and reported, and any
//! readable records after it, never synced either, are dropped with it. Damage to a record
//! that a later `Synced` record covers is **corruption**: start-up stops and names the file
//! and offset. In tolerate mode every damaged region is skipped and reported, and the records
//! after it are replayed; damage with nothing readable after it is truncated as a torn tail.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{Config, Recovery};
use crate::error::{Error, Result};
use crate::header;
use crate::io::{SegmentDir, SegmentFile};
use crate::record::{Op, Record, FRAME_LEN};
use crate::scan::{self, Item};
use crate::segment;

/// Records that could not be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// The segment, as a path.
    pub file: String,
    /// First damaged byte.
    pub offset: u64,
    /// Damaged bytes.
    pub len: u64,
    /// What was found there.
    pub why: String,
    /// The first record lost.
    pub first_seq: u64,
    /// The last record lost, when a readable record after the damage tells.
    pub last_seq: Option<u64>,
    /// Torn tail only: readable records after the damage, never synced, dropped with it.
    pub dropped_after: u64,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}, {} bytes ({}): ",
            self.file, self.offset, self.len, self.why
        )?;
        match self.last_seq {
            Some(last) if last >= self.first_seq => write!(
                f,
                "records {}..={} lost ({})",
                self.first_seq,
                last,
                last - self.first_seq + 1
            )?,
            Some(_) => write!(f, "no record lost")?,
            None => write!(f, "records from seq {} on lost", self.first_seq)?,
        }
        if self.dropped_after > 0 {
            write!(
                f,
                "; {} readable but never-synced records after it dropped with it",
                self.dropped_after
            )?;
        }
        Ok(())
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The shard.
    pub shard: u32,
    /// Segments read.
    pub segments: usize,
    /// Records replayed (sync markers not counted).
    pub records: u64,
    /// Records read but not replayed because the snapshot already reflects them.
    pub covered: u64,
    /// The snapshot loaded before the segments, if there was one.
    pub snapshot: Option<crate::snapfile::Loaded>,
    /// Bytes read.
    pub bytes: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// A torn tail that was truncated.
    pub torn_tail: Option<Loss>,
    /// Damaged regions skipped (`Recovery::TolerateCorruption` only).
    pub skipped: Vec<Loss>,
    /// Anything else worth telling: files that are not segments, ignored.
    pub notes: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(snapshot) = &self.snapshot {
            let text = snapshot
                .to_string()
                .replace('\n', &format!("\nshard {}: ", self.shard));
            writeln!(f, "shard {}: {text}", self.shard)?;
        }
        write!(
            f,
            "shard {}: replayed {} records from {} segment(s), {} bytes read, in {} ms; next seq {}",
            self.shard,
            self.records,
            self.segments,
            self.bytes,
            self.elapsed.as_millis(),
            self.next_seq
        )?;
        if self.covered > 0 {
            write!(
                f,
                " ({} older records skipped: the snapshot covers them)",
                self.covered
            )?;
        }
        if let Some(torn) = &self.torn_tail {
            write!(f, "\nshard {}: torn tail truncated: {torn}", self.shard)?;
        }
        for loss in &self.skipped {
            write!(
                f,
                "\nshard {}: damage skipped (tolerate-corruption): {loss}",
                self.shard
            )?;
        }
        if !self.skipped.is_empty() {
            let lost: u64 = self
                .skipped
                .iter()
                .map(|l| {
                    l.last_seq
                        .map_or(0, |last| (last + 1).saturating_sub(l.first_seq))
                })
                .sum();
            write!(
                f,
                "\nshard {}: {} damaged region(s) skipped, {lost} record(s) lost; the damage stays \
                 in the log, so later starts need --recovery tolerate-corruption too, until a \
                 snapshot covers it",
                self.shard,
                self.skipped.len()
            )?;
        }
        for note in &self.notes {
            write!(f, "\nshard {}: {note}", self.shard)?;
        }
        Ok(())
    }
}

/// Where the log continues after recovery.
pub(crate) struct Recovered<F> {
    pub report: Report,
    pub next_seq: u64,
    /// The last segment, to append to: `(index, file, block, end of its records)`.
    pub tail: Option<(u64, F, u64, u64, u64)>,
    /// Index for a new segment.
    pub next_index: u64,
}

/// What recovery keeps about a segment it has read.
struct Seen {
    index: u64,
    name: String,
    /// The block size of a valid header; `None` when the header is damaged.
    block: Option<u64>,
    size: u64,
    /// One past the last record accepted from it.
    end_of_records: u64,
    /// Whether any record of it was accepted.
    accepted: bool,
}

/// Where damage was found, with what is needed to truncate it.
struct Damaged {
    loss: Loss,
    segment: usize,
    bytes: Vec<u8>,
    end_of_data: u64,
}

/// Replays the segments of `dir`, calling `apply` for each record in log order (sync markers
/// excluded), then repairs a torn tail. With a snapshot covering the records below
/// `snapshot_seq`, those records are read (to find the log's end) but not replayed, and a gap
/// in the log below that seq is no loss.
pub(crate) async fn recover<D: SegmentDir>(
    dir: &D,
    shard: u32,
    config: &Config,
    snapshot_seq: Option<u64>,
    apply: &mut impl FnMut(&Record),
) -> Result<Recovered<D::File>> {
    let started = Instant::now();
    let from_seq = snapshot_seq.unwrap_or(0);
    let mut report = Report {
        shard,
        ..Report::default()
    };
    let mut names: Vec<(u64, String)> = Vec::new();
    let listed = dir
        .list()
        .map_err(|e| Error::io("listing", dir.path(""), e))?;
    for name in listed {
        match segment::parse_name(&name) {
            Some(index) => names.push((index, name)),
            None if crate::snapfile::parse_name(&name).is_some() => {}
            None => report
                .notes
                .push(format!("ignored {}: not a segment", dir.path(&name))),
        }
    }
    names.sort();

    let strict = config.recovery == Recovery::Strict;
    let mut seen: Vec<Seen> = Vec::new();
    let mut expected: Option<u64> = None; // the seq the next record must have
    let mut next_seq: Option<u64> = None; // one past the last record accepted
    let mut damage = Tracker {
        strict,
        first: None,
        tail: None,
        skipped_since_readable: 0,
    };
    let mut damaged_since_record = false;
    let mut marker_after = 0; // strict: the largest `synced_below` stated after the damage
    let mut dropped_after = 0;

    for (i, (index, name)) in names.iter().enumerate() {
        let path = dir.path(name);
        let file = dir
            .open(name)
            .await
            .map_err(|e| Error::io("opening", path.clone(), e))?;
        let bytes = file
            .read_all()
            .await
            .map_err(|e| Error::io("reading", path.clone(), e))?;
        drop(file);
        if i + 1 == names.len() && scan::is_zero(&bytes) {
            // Prepared for the next rotation and never used, or its preparation was cut
            // short: nothing in it. It is prepared again in the background.
            dir.remove(name)
                .map_err(|e| Error::io("removing", path.clone(), e))?;
            continue;
        }
        report.segments += 1;
        report.bytes += bytes.len() as u64;
        let mut damages: Vec<Loss> = Vec::new();
        let block = match header::decode(&bytes) {
            Ok(Some(h)) if h.shard != shard => {
                return Err(Error::BadHeader(format!(
                    "{path} belongs to shard {}, not shard {shard}: segment files were moved \
                     between shard directories",
                    h.shard
                )))
            }
            Ok(Some(h)) => {
                expected.get_or_insert(snapshot_seq.map_or(h.first_seq, |s| s.min(h.first_seq)));
                Some(u64::from(h.block))
            }
            Ok(None) => {
                damages.push(loss(
                    &path,
                    0,
                    config.block,
                    "the header is all zeros",
                    expected,
                ));
                None
            }
            Err(e) => {
                damages.push(loss(&path, 0, config.block, &e.to_string(), expected));
                None
            }
        };
        let scan_block = block.unwrap_or(config.block) as usize;
        let max_len = bytes.len().saturating_sub(scan_block + FRAME_LEN);
        let scanned = scan::scan(&bytes, scan_block, max_len);
        seen.push(Seen {
            index: *index,
            name: name.clone(),
            block,
            size: bytes.len() as u64,
            end_of_records: scan_block as u64,
            accepted: false,
        });
        let at = seen.len() - 1;
        let mut items = damages.into_iter().map(Event::Damage).collect::<Vec<_>>();
        items.extend(scanned.items.into_iter().map(|item| match item {
            Item::Record { offset, record } => Event::Record(offset, record),
            Item::Damage(d) => {
                Event::Damage(loss(&path, d.offset, d.end - d.offset, &d.why, expected))
            }
        }));
        for event in items {
            let (offset, record) = match event {
                Event::Damage(mut l) => {
                    damaged_since_record = true;
                    l.first_seq = expected.unwrap_or(l.first_seq);
                    damage.note(l, at, &bytes, scanned.end_of_data, &mut report);
                    continue;
                }
                Event::Record(offset, record) => (offset, record),
            };
            if let Some(exp) = expected {
                // After damage, a jump in seq is what the damage destroyed, not a new loss;
                // nor is a jump below what the snapshot covers.
                let gap_from = exp.max(from_seq.min(record.seq));
                if record.seq < exp || (record.seq > gap_from && !damaged_since_record) {
                    let why = if record.seq > exp {
                        format!("records {exp}..={} are missing", record.seq - 1)
                    } else {
                        format!("record seq {} where {exp} was expected", record.seq)
                    };
                    let mut l = loss(&path, offset, 0, &why, Some(exp));
                    if record.seq < exp {
                        l.first_seq = record.seq;
                        l.last_seq = Some(record.seq);
                        damage.note(l, at, &bytes, scanned.end_of_data, &mut report);
                        continue; // out of order: never replayed
                    }
                    damage.note(l, at, &bytes, scanned.end_of_data, &mut report);
                }
            }
            // A readable record bounds the losses before it.
            for l in report.skipped.iter_mut().filter(|l| l.last_seq.is_none()) {
                l.last_seq = Some(record.seq - 1);
            }
            damage.readable();
            damaged_since_record = false;
            expected = Some(record.seq + 1);
            if record.seq <= from_seq {
                // Everything before this record is covered by the snapshot: damage there
                // loses nothing.
                if let Some(d) = damage.first.take() {
                    report.notes.push(format!(
                        "{} at offset {} ({}): damage inside records the snapshot covers; \
                         nothing lost",
                        d.loss.file, d.loss.offset, d.loss.why
                    ));
                    (marker_after, dropped_after) = (0, 0);
                }
            }
            if damage.first.is_some() {
                if record.op == Op::Synced {
                    marker_after = marker_after.max(record.synced_below);
                } else {
                    dropped_after += 1;
                }
                continue;
            }
            if record.op != Op::Synced && record.seq < from_seq {
                report.covered += 1;
            } else if record.op != Op::Synced {
                apply(&record);
                report.records += 1;
            }
            next_seq = Some(record.seq + 1);
            seen[at].end_of_records = offset + record.entry().encoded_len(record.seq) as u64;
            seen[at].accepted = true;
        }
    }

    // A torn tail: the first damage in strict mode (unless proven synced), the damage with
    // nothing readable after it in tolerate mode.
    let torn = match damage.first {
        Some(d) if marker_after > d.loss.first_seq => {
            return Err(Error::Corruption {
                file: d.loss.file,
                offset: d.loss.offset,
                why: d.loss.why,
                first_lost: d.loss.first_seq,
            })
        }
        Some(mut d) => {
            d.loss.dropped_after = dropped_after;
            Some(d)
        }
        None => {
            let keep = report.skipped.len() - damage.skipped_since_readable;
            report.skipped.truncate(keep);
            damage.tail
        }
    };
    if let Some(d) = torn {
        truncate(dir, &mut seen, &d, config.block).await?;
        next_seq = Some(d.loss.first_seq);
        report.torn_tail = Some(d.loss);
    }
    let logged_below = next_seq.or(expected).unwrap_or(1);
    // The log may end below the snapshot (its tail was never synced, and a power loss took it
    // while the snapshot survived): continue above the snapshot, in a new segment.
    let below_snapshot = logged_below < from_seq;
    let next_seq = logged_below.max(from_seq).max(1);
    report.next_seq = next_seq;
    report.elapsed = started.elapsed();

    let next_index = seen.last().map_or(1, |s| s.index + 1);
    let tail = match seen.last() {
        Some(last) if last.block.is_some() && !below_snapshot => {
            let path = dir.path(&last.name);
            let file = dir
                .open(&last.name)
                .await
                .map_err(|e| Error::io("opening", path.clone(), e))?;
            // What was read is durable from here on, whatever the mode it was written in.
            file.sync()
                .await
                .map_err(|e| Error::io("syncing", path, e))?;
            let block = last.block.unwrap_or(config.block);
            // A segment cut short (by hand) grows back as it is written.
            let size = last.size.max(config.segment_size);
            Some((last.index, file, block, size, last.end_of_records))
        }
        _ => None,
    };
    Ok(Recovered {
        report,
        next_seq,
        tail,
        next_index,
    })
}

enum Event {
    Record(u64, Record),
    Damage(Loss),
}

fn loss(file: &str, offset: u64, len: u64, why: &str, first_seq: Option<u64>) -> Loss {
    Loss {
        file: file.to_string(),
        offset,
        len,
        why: why.to_string(),
        first_seq: first_seq.unwrap_or(1),
        last_seq: None,
        dropped_after: 0,
    }
}

/// The damage seen so far.
struct Tracker {
    strict: bool,
    /// Strict: the first damage; nothing after it is replayed.
    first: Option<Damaged>,
    /// Tolerate: the first damage since the last readable record.
    tail: Option<Damaged>,
    /// Tolerate: entries of `Report::skipped` since the last readable record.
    skipped_since_readable: usize,
}

impl Tracker {
    fn note(
        &mut self,
        loss: Loss,
        segment: usize,
        bytes: &[u8],
        end_of_data: u64,
        report: &mut Report,
    ) {
        let damaged = |loss: Loss| Damaged {
            loss,
            segment,
            bytes: bytes.to_vec(),
            end_of_data,
        };
        if self.strict {
            if self.first.is_none() {
                self.first = Some(damaged(loss));
            }
            return;
        }
        report.skipped.push(loss.clone());
        self.skipped_since_readable += 1;
        if self.tail.is_none() {
            self.tail = Some(damaged(loss));
        }
    }

    fn readable(&mut self) {
        self.tail = None;
        self.skipped_since_readable = 0;
    }
}

/// Zeroes the torn tail in its segment and removes every later segment.
async fn truncate<D: SegmentDir>(
    dir: &D,
    seen: &mut Vec<Seen>,
    d: &Damaged,
    default_block: u64,
) -> Result<()> {
    for later in seen.drain(d.segment + 1..).rev() {
        dir.remove(&later.name)
            .map_err(|e| Error::io("removing", dir.path(&later.name), e))?;
    }
    let s = &seen[d.segment];
    let path = dir.path(&s.name);
    if s.block.is_none() && !s.accepted {
        // Nothing readable before the damage in a segment without a header: drop it.
        dir.remove(&s.name)
            .map_err(|e| Error::io("removing", path.clone(), e))?;
        seen.pop();
        return dir
            .sync()
            .map_err(|e| Error::io("syncing the directory of", path, e));
    }
    let block = s.block.unwrap_or(default_block);
    let from = d.loss.offset.max(s.end_of_records);
    let start = from / block * block;
    let end = d.end_of_data.div_ceil(block) * block;
    if start < end {
        let mut image = vec![0u8; (end - start) as usize];
        let keep = (from - start) as usize;
        image[..keep].copy_from_slice(&d.bytes[start as usize..from as usize]);
        let file = dir
            .open(&s.name)
            .await
            .map_err(|e| Error::io("opening", path.clone(), e))?;
        segment::write_padded(&file, &path, &image, start, block).await?;
        file.sync()
            .await
            .map_err(|e| Error::io("syncing", path.clone(), e))?;
    }
    dir.sync()
        .map_err(|e| Error::io("syncing the directory of", path, e))
}
