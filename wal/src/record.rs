//! The record codec. Pure: bytes in, records out, no I/O.
//!
//! A shard's log is a sequence of records, each framed with its length and a CRC32, its payload
//! a `kvmesh.wal.Record` protobuf message (`proto/kvmesh/wal.proto`). The encoder writes the
//! protobuf fields itself, straight from borrowed key and value bytes, so appending copies the
//! value once; a test checks that its bytes are exactly what prost encodes.

use std::sync::OnceLock;

use kvmesh_proto::wal::{Record as Proto, RecordOp};
use prost::encoding::encoded_len_varint;
use prost::Message;

use crate::error::{Error, Result};

/// Bytes of framing before each payload: length and CRC32.
pub const FRAME_LEN: usize = 8;
/// Bytes of the length field that opens a record's frame (`peek_len`).
pub const LEN_FIELD: usize = 4;

/// What a record says happened to the store.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `key` now holds `value`, with a deadline and a version.
    Put,
    /// A client removed `key`.
    Remove,
    /// `key` got a new deadline and version.
    Touch,
    /// The store evicted `key`, which held `version`.
    Evict,
    /// `key`, which held `version`, expired.
    Expire,
    /// No change: every record below `synced_below` was durable before this one was written.
    Synced,
}

impl Op {
    fn to_proto(self) -> RecordOp {
        match self {
            Op::Put => RecordOp::Put,
            Op::Remove => RecordOp::Remove,
            Op::Touch => RecordOp::Touch,
            Op::Evict => RecordOp::Evict,
            Op::Expire => RecordOp::Expire,
            Op::Synced => RecordOp::Synced,
        }
    }

    fn from_proto(code: i32) -> Option<Op> {
        Some(match RecordOp::try_from(code).ok()? {
            RecordOp::Put => Op::Put,
            RecordOp::Remove => Op::Remove,
            RecordOp::Touch => Op::Touch,
            RecordOp::Evict => Op::Evict,
            RecordOp::Expire => Op::Expire,
            RecordOp::Synced => Op::Synced,
            RecordOp::Unspecified => return None,
        })
    }
}

/// A record to append, borrowing its bytes. Fields an op does not use are left at zero/empty.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// What happened.
    pub op: Op,
    /// The key (empty for `Synced`).
    pub key: &'a [u8],
    /// The value (`Put` only).
    pub value: &'a [u8],
    /// Absolute deadline, ms since the UNIX epoch; 0 = never (`Put`, `Touch`).
    pub expires_at_ms: u64,
    /// The version's hybrid-logical-clock part.
    pub version_hlc: u64,
    /// The version's node id.
    pub version_node: u32,
    /// `Synced` only: every record with a lower seq was durable when this one was written.
    pub synced_below: u64,
}

impl<'a> Entry<'a> {
    /// A record of `op` on `key`, every other field zero or empty.
    pub fn new(op: Op, key: &'a [u8]) -> Entry<'a> {
        Entry {
            op,
            key,
            value: b"",
            expires_at_ms: 0,
            version_hlc: 0,
            version_node: 0,
            synced_below: 0,
        }
    }

    /// Bytes this entry takes in the log with sequence number `seq`, framing included.
    pub fn encoded_len(&self, seq: u64) -> usize {
        FRAME_LEN + self.payload_len(seq)
    }

    /// An upper bound of [`Entry::encoded_len`] for any sequence number, cheaper to compute:
    /// the framing, the key and value bytes, and for each of the eight fields a one-byte tag
    /// and a varint of at most ten bytes.
    pub fn max_encoded_len(&self) -> usize {
        FRAME_LEN + self.key.len() + self.value.len() + 8 * (1 + 10)
    }

    fn payload_len(&self, seq: u64) -> usize {
        let varint = |tag_len: usize, v: u64| {
            if v == 0 {
                0
            } else {
                tag_len + encoded_len_varint(v)
            }
        };
        let bytes = |b: &[u8]| {
            if b.is_empty() {
                0
            } else {
                1 + encoded_len_varint(b.len() as u64) + b.len()
            }
        };
        varint(1, seq)
            + varint(1, self.op.to_proto() as u64)
            + bytes(self.key)
            + bytes(self.value)
            + varint(1, self.expires_at_ms)
            + varint(1, self.version_hlc)
            + varint(1, u64::from(self.version_node))
            + varint(1, self.synced_below)
    }
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the shard's log: consecutive from 1, across segments.
    pub seq: u64,
    /// What happened.
    pub op: Op,
    /// The key.
    pub key: Vec<u8>,
    /// The value (`Put`).
    pub value: Vec<u8>,
    /// Absolute deadline, ms since the UNIX epoch; 0 = never.
    pub expires_at_ms: u64,
    /// The version's hybrid-logical-clock part.
    pub version_hlc: u64,
    /// The version's node id.
    pub version_node: u32,
    /// `Synced` only: every record with a lower seq was durable when this one was written.
    pub synced_below: u64,
}

impl Record {
    /// This record's fields, borrowed.
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            op: self.op,
            key: &self.key,
            value: &self.value,
            expires_at_ms: self.expires_at_ms,
            version_hlc: self.version_hlc,
            version_node: self.version_node,
            synced_below: self.synced_below,
        }
    }
}

// Byte layout of one record; integers are little-endian:
//
//   offset  size  field
//   0       4     len: payload length in bytes, >= 1. A zero here is not a record but padding:
//                 the rest of the block is zero and the next commit starts at the next block.
//   4       4     crc: CRC32 (crc32fast, IEEE polynomial) of the 4 len bytes, then the payload
//   8       len   payload: one `kvmesh.wal.Record` protobuf message, fields in tag order,
//                 zero-valued fields omitted (exactly what prost encodes)
//
// Records follow each other with no gap inside a commit. Every commit starts on a fresh
// block, so the bytes between a commit's last record and the next block boundary are zero.
// There may be fewer of them than a len field (1 to 3): a reader that finds no record there
// takes them as padding when they are zero (`scan`).

/// Appends the record `seq` holding `entry` to `out`.
pub fn encode(seq: u64, entry: &Entry<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + entry.max_encoded_len(), 0);
    let len = encode_into(seq, entry, &mut out[start..]);
    out.truncate(start + len);
}

/// Writes the record `seq` holding `entry` at the front of `out` and returns its length
/// ([`Entry::encoded_len`]); the bytes of `out` after it are left as they were. `out` must
/// hold at least that length ([`Entry::max_encoded_len`] always does); a shorter `out` panics.
///
/// It writes the fields into room reserved for their largest encoding and computes the length
/// from what it wrote, so the payload is walked once; the bytes are exactly what prost
/// encodes (a property test checks it).
pub fn encode_into(seq: u64, entry: &Entry<'_>, out: &mut [u8]) -> usize {
    let mut payload = Cursor {
        buf: &mut out[FRAME_LEN..],
        at: 0,
    };
    payload.varint(1, seq);
    payload.varint(2, entry.op.to_proto() as u64);
    payload.bytes(3, entry.key);
    payload.bytes(4, entry.value);
    payload.varint(5, entry.expires_at_ms);
    payload.varint(6, entry.version_hlc);
    payload.varint(7, u64::from(entry.version_node));
    payload.varint(8, entry.synced_below);
    let payload_len = payload.at;
    let len = (payload_len as u32).to_le_bytes();
    // The CRC covers the len field, then the payload. The len is staged in the CRC's slot,
    // right before the payload, so one call hashes both: for a record this small a separate
    // call for the 4 bytes (its dispatch and crc32fast's short-input path) cost about a third
    // of the CRC.
    out[LEN_FIELD..FRAME_LEN].copy_from_slice(&len);
    let mut crc = crc_hasher();
    crc.update(&out[LEN_FIELD..FRAME_LEN + payload_len]);
    out[..LEN_FIELD].copy_from_slice(&len);
    out[LEN_FIELD..FRAME_LEN].copy_from_slice(&crc.finalize().to_le_bytes());
    FRAME_LEN + payload_len
}

/// A fresh CRC32 hasher. `crc32fast::Hasher::new` checks the CPU's features on every call;
/// a clone of one made once does not.
fn crc_hasher() -> crc32fast::Hasher {
    static PROTOTYPE: OnceLock<crc32fast::Hasher> = OnceLock::new();
    PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone()
}

/// Protobuf fields written into a slice with room for them (see [`Entry::max_encoded_len`]).
///
/// Its methods are inlined into [`encode_into`] on purpose: left to itself, the compiler kept
/// `bytes` out of line, and for a record of ~140 bytes the two calls cost about as much as
/// the bytes they copy (bench/PERFORMANCE.md, "A durable SET's encoder and CRC").
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    /// Field `tag` (below 16: a one-byte key) as a varint; nothing when `v` is zero.
    #[inline(always)]
    fn varint(&mut self, tag: u8, v: u64) {
        if v != 0 {
            self.buf[self.at] = tag << 3;
            self.at += 1;
            self.raw_varint(v);
        }
    }

    /// Field `tag` (below 16) as length-delimited bytes; nothing when `b` is empty.
    #[inline(always)]
    fn bytes(&mut self, tag: u8, b: &[u8]) {
        if !b.is_empty() {
            self.buf[self.at] = (tag << 3) | 2;
            self.at += 1;
            self.raw_varint(b.len() as u64);
            self.buf[self.at..self.at + b.len()].copy_from_slice(b);
            self.at += b.len();
        }
    }

    /// `v` as a varint: below 0x80, one byte; otherwise its length is computed first, so the
    /// bytes go into a slice of exactly that length: one bounds check, not one per byte.
    #[inline(always)]
    fn raw_varint(&mut self, mut v: u64) {
        // Most fields (the op, lengths, the node id) take one byte.
        if v < 0x80 {
            self.buf[self.at] = v as u8;
            self.at += 1;
            return;
        }
        let len = encoded_len_varint(v);
        let bytes = &mut self.buf[self.at..self.at + len];
        // At least one byte: every byte but the last has the continuation bit.
        let last = len - 1;
        for byte in &mut bytes[..last] {
            *byte = v as u8 | 0x80;
            v >>= 7;
        }
        bytes[last] = v as u8;
        self.at += len;
    }
}

/// The length field at the front of `buf`: `None` when fewer than 4 bytes are there.
/// Zero means padding, not a record.
pub fn peek_len(buf: &[u8]) -> Option<u32> {
    buf.first_chunk::<LEN_FIELD>()
        .map(|b| u32::from_le_bytes(*b))
}

/// Decodes the record at the front of `buf`, whose payload may be at most `max_len` bytes.
///
/// Returns the record and the bytes it took, `Ok(None)` when `buf` ends inside it, or why the
/// bytes are not a record. The length is checked against `max_len` before anything is
/// allocated; a zero length is [`Error::Malformed`] (callers check for padding first).
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Record, usize)>> {
    let Some(len) = peek_len(buf) else {
        return Ok(None);
    };
    let len = len as usize;
    if len == 0 {
        return Err(Error::Malformed(
            "zero length: padding, not a record".into(),
        ));
    }
    if len > max_len {
        return Err(Error::RecordTooLong { len, max: max_len });
    }
    let Some(payload) = buf.get(FRAME_LEN..FRAME_LEN + len) else {
        return Ok(None);
    };
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[..4]);
    crc.update(payload);
    let computed = crc.finalize();
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    let proto = Proto::decode(payload).map_err(|e| Error::Malformed(e.to_string()))?;
    let op = Op::from_proto(proto.op)
        .ok_or_else(|| Error::Malformed(format!("unknown record op {}", proto.op)))?;
    if proto.seq == 0 {
        return Err(Error::Malformed("sequence number 0".into()));
    }
    let record = Record {
        seq: proto.seq,
        op,
        key: proto.key,
        value: proto.value,
        expires_at_ms: proto.expires_at_ms,
        version_hlc: proto.version_hlc,
        version_node: proto.version_node,
        synced_below: proto.synced_below,
    };
    Ok(Some((record, FRAME_LEN + len)))
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
