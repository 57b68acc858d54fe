//! The snapshot codec. Pure: bytes in, entries out, no I/O.
//!
//! A snapshot holds one shard's live entries as of a position in its log: every record with a
//! sequence number below the header's `covered_seq` is reflected in it, so recovery loads the
//! snapshot and then replays the records from `covered_seq` on. The entries come in chunks,
//! each with its own CRC32, so damage is found, located and (when asked) skipped chunk by
//! chunk; a trailer counts chunks and entries, so a file cut short is told from a complete one
//! and a loss can be counted.
//!
//! The entries are those of a scan that ran while writes went on (see `kvmesh_engine::scan`):
//! a key may appear twice, with two versions, and a loader keeps the newer one (last writer
//! wins by version), as replaying the log does anyway.

use crate::error::{Error, Result};

/// First bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"KVMESHSN";
/// The format this crate writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 36;
/// First bytes of every chunk.
pub const CHUNK_MAGIC: [u8; 4] = *b"SNCK";
/// Bytes of a chunk's frame before its entries.
pub const CHUNK_FRAME: usize = 16;
/// First bytes of the trailer.
pub const TRAILER_MAGIC: [u8; 4] = *b"SNND";
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 20;
/// Bytes of an entry before its key and value.
pub const ENTRY_FIXED: usize = 28;

/// What a snapshot says about itself.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The shard whose entries these are.
    pub shard: u32,
    /// How many shards the node had when it was written: keys are split by that count.
    pub shards: u32,
    /// Every log record with a lower sequence number is reflected; replay starts at it.
    pub covered_seq: u64,
    /// About how many entries follow (the store's key count when the snapshot began, capped
    /// at `u32::MAX`), so a loader can size its table once; the trailer has the exact count.
    pub entries_hint: u32,
}

/// One entry, borrowed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Absolute deadline, ms since the UNIX epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The version's hybrid-logical-clock part.
    pub version_hlc: u64,
    /// The version's node id.
    pub version_node: u32,
}

// Byte layout of a snapshot file; integers are little-endian:
//
//   header, at offset 0 (HEADER_LEN = 36 bytes)
//     0    8   magic: "KVMESHSN"
//     8    4   format version: 1
//     12   4   shard id
//     16   4   shard count the keys were split by
//     20   4   entries hint: about how many entries follow (the trailer has the count)
//     24   8   covered seq: every log record below it is reflected; replay starts at it
//     32   4   crc: CRC32 (crc32fast) of bytes 0..32
//   chunks, back to back from offset 36
//     0    4   magic: "SNCK"
//     4    4   len: bytes of entries that follow
//     8    4   count: entries in the chunk
//     12   4   crc: CRC32 of bytes 0..12 of the frame, then the `len` bytes of entries
//     16   len entries, back to back:
//                0   4  key length k     4   4  value length v
//                8   8  deadline (ms since the epoch, 0 = never)
//                16  8  version hlc      24  4  version node
//                28  k  key              28+k v value
//   trailer, right after the last chunk (TRAILER_LEN = 20 bytes)
//     0    4   magic: "SNND"
//     4    4   chunks in the file
//     8    8   entries in the file
//     16   4   crc: CRC32 of bytes 0..16 of the trailer
//   zeros up to the end of the file (it is written with direct I/O, in whole blocks)

/// The header's bytes.
pub fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&h.shard.to_le_bytes());
    out[16..20].copy_from_slice(&h.shards.to_le_bytes());
    out[20..24].copy_from_slice(&h.entries_hint.to_le_bytes());
    out[24..32].copy_from_slice(&h.covered_seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..32]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a header; the error says what is wrong.
pub fn decode_header(buf: &[u8]) -> Result<Header> {
    let Some(b) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(Error::BadHeader(format!(
            "the file is {} bytes, shorter than a snapshot header",
            buf.len()
        )));
    };
    if b[0..8] != MAGIC {
        return Err(Error::BadHeader(
            "no kvmesh snapshot magic: not a snapshot, or its header is damaged".into(),
        ));
    }
    let (stored, computed) = (u32_at(b, 32), crc32fast::hash(&b[..32]));
    if stored != computed {
        return Err(Error::BadHeader(format!(
            "snapshot header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(Error::BadHeader(format!(
            "snapshot format version {version}; this kvmesh reads version {VERSION}"
        )));
    }
    Ok(Header {
        shard: u32_at(b, 12),
        shards: u32_at(b, 16),
        covered_seq: u64_at(b, 24),
        entries_hint: u32_at(b, 20),
    })
}

/// Bytes `entry` takes inside a chunk.
pub fn entry_len(entry: &Entry<'_>) -> usize {
    ENTRY_FIXED + entry.key.len() + entry.value.len()
}

/// Builds one chunk at a time.
#[derive(Debug, Default)]
pub struct Chunk {
    entries: Vec<u8>,
    count: u32,
}

impl Chunk {
    /// Adds an entry.
    pub fn push(&mut self, e: &Entry<'_>) {
        let out = &mut self.entries;
        out.reserve(entry_len(e));
        out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&e.version_hlc.to_le_bytes());
        out.extend_from_slice(&e.version_node.to_le_bytes());
        out.extend_from_slice(e.key);
        out.extend_from_slice(e.value);
        self.count += 1;
    }

    /// Bytes of entries so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when no entry was added since the last seal.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the framed chunk to `out` and starts a new one. Returns the entries sealed.
    pub fn seal(&mut self, out: &mut Vec<u8>) -> u32 {
        let mut frame = [0u8; CHUNK_FRAME];
        frame[0..4].copy_from_slice(&CHUNK_MAGIC);
        frame[4..8].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        frame[8..12].copy_from_slice(&self.count.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[..12]);
        crc.update(&self.entries);
        frame[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&frame);
        out.extend_from_slice(&self.entries);
        self.entries.clear();
        std::mem::take(&mut self.count)
    }
}

/// The trailer's bytes.
pub fn encode_trailer(chunks: u32, entries: u64) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[0..4].copy_from_slice(&TRAILER_MAGIC);
    out[4..8].copy_from_slice(&chunks.to_le_bytes());
    out[8..16].copy_from_slice(&entries.to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A damaged region of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// First damaged byte.
    pub offset: u64,
    /// Where reading resumed (a valid chunk or the trailer), or the end of the data.
    pub end: u64,
    /// What was found at `offset`.
    pub why: String,
}

/// What reading a snapshot found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The header.
    pub header: Header,
    /// Chunks read with a valid CRC.
    pub chunks: u64,
    /// Entries visited.
    pub entries: u64,
    /// The trailer's counts `(chunks, entries)`, when a valid trailer was found.
    pub trailer: Option<(u32, u64)>,
    /// Damaged regions skipped (tolerant reading only).
    pub damage: Vec<Damage>,
}

impl Summary {
    /// Entries the file held but that could not be read: exact when the trailer is intact.
    pub fn lost_entries(&self) -> Option<u64> {
        self.trailer
            .map(|(_, total)| total.saturating_sub(self.entries))
    }
}

/// Reads a whole snapshot, calling `visit` for each entry of each valid chunk, in file order.
///
/// Strict (`tolerate == false`): the first damage (a bad header, a chunk whose CRC or entries
/// do not check, a missing or wrong trailer) is returned as `Err` with its offset; entries
/// visited before it must be discarded by the caller. Tolerant: a bad header is still an
/// error (without it nothing can be trusted), every other damaged region is skipped (reading
/// resumes at the next chunk or trailer whose CRC checks) and listed in the summary.
pub fn read(
    bytes: &[u8],
    tolerate: bool,
    visit: impl FnMut(&Entry<'_>),
) -> std::result::Result<Summary, (Damage, Option<Header>)> {
    read_with(bytes, tolerate, |_| {}, visit)
}

/// [`read`], calling `start` with the header before the first entry.
pub fn read_with(
    bytes: &[u8],
    tolerate: bool,
    start: impl FnOnce(&Header),
    mut visit: impl FnMut(&Entry<'_>),
) -> std::result::Result<Summary, (Damage, Option<Header>)> {
    let header = decode_header(bytes).map_err(|e| (damage(0, 0, e.to_string()), None))?;
    start(&header);
    let mut summary = Summary {
        header,
        ..Summary::default()
    };
    let end_of_data = crate::scan::end_of_data(bytes);
    let mut pos = HEADER_LEN;
    let fail = |d: Damage| Err((d, Some(header)));
    loop {
        let at = &bytes[pos.min(bytes.len())..];
        if at.starts_with(&TRAILER_MAGIC) && trailer_at(at).is_some() {
            let (chunks, entries) = trailer_at(at).unwrap_or_default();
            summary.trailer = Some((chunks, entries));
            let after = pos + TRAILER_LEN;
            if summary.damage.is_empty()
                && (chunks as u64, entries) != (summary.chunks, summary.entries)
            {
                let why = format!(
                    "the trailer counts {chunks} chunks and {entries} entries, {} and {} were read",
                    summary.chunks, summary.entries
                );
                if !tolerate {
                    return fail(damage(pos, after, why));
                }
                summary.damage.push(damage(pos, after, why));
            }
            if after < end_of_data {
                let d = damage(after, end_of_data, "data after the trailer".to_string());
                if !tolerate {
                    return fail(d);
                }
                summary.damage.push(d);
            }
            return Ok(summary);
        }
        match chunk_at(at, &mut visit) {
            Ok((used, count)) => {
                summary.chunks += 1;
                summary.entries += u64::from(count);
                pos += used;
            }
            Err(why) => {
                let next = resync(bytes, pos + 1);
                let d = damage(pos, next.unwrap_or(end_of_data.max(pos)), why);
                if !tolerate {
                    return fail(d);
                }
                summary.damage.push(d);
                match next {
                    Some(next) => pos = next,
                    None => return Ok(summary),
                }
            }
        }
    }
}

/// Decodes the chunk at the front of `at`, visiting its entries only once all of them check.
/// Returns the bytes it takes and its entry count, or what is wrong.
fn chunk_at(
    at: &[u8],
    visit: &mut impl FnMut(&Entry<'_>),
) -> std::result::Result<(usize, u32), String> {
    let Some(frame) = at.first_chunk::<CHUNK_FRAME>() else {
        return Err("the file ends without a trailer".into());
    };
    if frame[0..4] != CHUNK_MAGIC {
        return Err(if frame.iter().all(|&b| b == 0) {
            "zeros where a chunk or the trailer should be: the file is cut short".into()
        } else {
            "no chunk magic where a chunk should start".into()
        });
    }
    let len = u32_at(frame, 4) as usize;
    let count = u32_at(frame, 8);
    let Some(entries) = at.get(CHUNK_FRAME..CHUNK_FRAME + len) else {
        return Err(format!(
            "a chunk of {len} bytes runs past the end of the file"
        ));
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..12]);
    crc.update(entries);
    let (stored, computed) = (u32_at(frame, 12), crc.finalize());
    if stored != computed {
        return Err(format!(
            "chunk checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    // Check every entry's bounds before visiting any, so a chunk is all or nothing.
    let parse = |visit: &mut dyn FnMut(&Entry<'_>)| -> std::result::Result<(), String> {
        let (mut p, mut n) = (0usize, 0u32);
        while p < entries.len() {
            let Some(fixed) = entries.get(p..p + ENTRY_FIXED) else {
                return Err(format!("entry {n} of the chunk is cut short"));
            };
            let (k, v) = (u32_at(fixed, 0) as usize, u32_at(fixed, 4) as usize);
            let Some(kv) = entries.get(p + ENTRY_FIXED..p + ENTRY_FIXED + k + v) else {
                return Err(format!("entry {n} of the chunk runs past its end"));
            };
            visit(&Entry {
                key: &kv[..k],
                value: &kv[k..],
                expires_at_ms: u64_at(fixed, 8),
                version_hlc: u64_at(fixed, 16),
                version_node: u32_at(fixed, 24),
            });
            p += ENTRY_FIXED + k + v;
            n += 1;
        }
        if n != count {
            return Err(format!("the chunk says {count} entries but holds {n}"));
        }
        Ok(())
    };
    parse(&mut |_| {})?;
    parse(visit)?;
    Ok((CHUNK_FRAME + len, count))
}

/// The trailer's counts, when `at` starts with a valid trailer.
fn trailer_at(at: &[u8]) -> Option<(u32, u64)> {
    let t = at.first_chunk::<TRAILER_LEN>()?;
    if t[0..4] != TRAILER_MAGIC || u32_at(t, 16) != crc32fast::hash(&t[..16]) {
        return None;
    }
    Some((u32_at(t, 4), u64_at(t, 8)))
}

/// The first offset at or after `from` where a chunk or the trailer checks.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + 4 <= bytes.len() {
        let here = &bytes[at..];
        if here.starts_with(&CHUNK_MAGIC) && chunk_at(here, &mut |_| {}).is_ok()
            || here.starts_with(&TRAILER_MAGIC) && trailer_at(here).is_some()
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn damage(offset: usize, end: usize, why: String) -> Damage {
    Damage {
        offset: offset as u64,
        end: end as u64,
        why,
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
