//! Reading a segment's records back. Pure: the segment's bytes in, records and damage out.
//!
//! Commits start on block boundaries and records follow each other inside a commit, so after
//! damage the scanner can find its feet again: it tries the end of the damaged record (when
//! its length field looks sane), then each following block boundary, and resumes at the first
//! place where a record decodes with a valid CRC.

use crate::record::{self, Record, LEN_FIELD};

/// Something found in a segment, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A record that decoded with a valid CRC, at this byte offset.
    Record {
        /// Where its length field starts.
        offset: u64,
        /// The record.
        record: Record,
    },
    /// Bytes that hold no readable record although data follows or the file ends inside it.
    Damage(Damage),
}

/// A damaged region of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// First damaged byte.
    pub offset: u64,
    /// Where reading resumed, or the end of the data when nothing readable follows.
    pub end: u64,
    /// What was found at `offset`.
    pub why: String,
}

/// Everything readable in one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Records and damage, in file order.
    pub items: Vec<Item>,
    /// One past the last non-zero byte of the file (the header included).
    pub end_of_data: u64,
}

impl Scan {
    /// One past the last valid record, or `None` when there is none.
    pub fn end_of_records(&self) -> Option<u64> {
        self.items.iter().rev().find_map(|item| match item {
            Item::Record { offset, record } => {
                Some(offset + record.entry().encoded_len(record.seq) as u64)
            }
            Item::Damage(_) => None,
        })
    }
}

/// Scans the records of a segment whose bytes are `bytes`, starting at offset `block` (block
/// 0 holds the header). Payloads above `max_len` bytes count as damage.
pub fn scan(bytes: &[u8], block: usize, max_len: usize) -> Scan {
    let end_of_data = end_of_data(bytes);
    let mut items = Vec::new();
    let mut pos = block;
    while pos < end_of_data {
        match record::peek_len(&bytes[pos..]) {
            Some(0) => {
                if pos % block == 0 {
                    // No commit starts here, yet data follows: a hole.
                    let data = pos + bytes[pos..].iter().position(|&b| b != 0).unwrap_or(0);
                    let end = resync(bytes, align_down(data, block), block, max_len, end_of_data);
                    items.push(damage(pos, end, "zero bytes where a commit should start"));
                    pos = end;
                } else {
                    pos = past_padding(bytes, pos, block, max_len, end_of_data, &mut items);
                }
            }
            _ => match record::decode(&bytes[pos..], max_len) {
                // A commit that ends within a length field of its block's end leaves padding
                // too short to hold one: the length read here runs into the next commit.
                Err(_) | Ok(None) if short_tail(pos, block) => {
                    pos = past_padding(bytes, pos, block, max_len, end_of_data, &mut items);
                }
                Ok(Some((record, used))) => {
                    items.push(Item::Record {
                        offset: pos as u64,
                        record,
                    });
                    pos += used;
                }
                Ok(None) => {
                    items.push(damage(pos, end_of_data, "the file ends inside a record"));
                    pos = end_of_data;
                }
                Err(e) => {
                    let end = match record::peek_len(&bytes[pos..]) {
                        Some(len)
                            if (len as usize) <= max_len
                                && readable_at(
                                    bytes,
                                    pos + record::FRAME_LEN + len as usize,
                                    block,
                                    max_len,
                                ) =>
                        {
                            pos + record::FRAME_LEN + len as usize
                        }
                        _ => resync(bytes, align_up(pos + 1, block), block, max_len, end_of_data),
                    }
                    .min(end_of_data);
                    items.push(damage(pos, end, &e.to_string()));
                    pos = end;
                }
            },
        }
    }
    Scan {
        items,
        end_of_data: end_of_data as u64,
    }
}

/// One past the last non-zero byte of `bytes` (0 when all are zero). Segments are mostly
/// preallocated zeros, so this looks at 4 KiB at a time, a word at a time.
pub fn end_of_data(bytes: &[u8]) -> usize {
    const STEP: usize = 4096;
    for (i, chunk) in bytes.chunks(STEP).enumerate().rev() {
        if !is_zero(chunk) {
            let last = chunk.iter().rposition(|&b| b != 0).unwrap_or(0);
            return i * STEP + last + 1;
        }
    }
    0
}

/// True when every byte is zero; vectorizes (no early exit inside a 64-byte group).
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut groups = bytes.chunks_exact(64);
    for group in &mut groups {
        if group.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    groups.remainder().iter().all(|&b| b == 0)
}

/// The first block boundary at or after `from` where a record decodes, or `end_of_data`.
fn resync(bytes: &[u8], from: usize, block: usize, max_len: usize, end_of_data: usize) -> usize {
    let mut at = from;
    while at < end_of_data {
        if matches!(record::decode(&bytes[at..], max_len), Ok(Some(_))) {
            return at;
        }
        at += block;
    }
    end_of_data
}

/// True when a record decodes at `at`, or `at` starts zero padding to the end of its block.
fn readable_at(bytes: &[u8], at: usize, block: usize, max_len: usize) -> bool {
    if at >= bytes.len() {
        return at == bytes.len();
    }
    match record::peek_len(&bytes[at..]) {
        Some(0) if at % block != 0 => {
            let next = align_up(at, block).min(bytes.len());
            bytes[at..next].iter().all(|&b| b == 0)
        }
        _ => {
            matches!(record::decode(&bytes[at..], max_len), Ok(Some(_)))
                || short_padding(bytes, at, block)
        }
    }
}

/// Where the scan goes on after the padding that starts at `pos` (inside a block): the next
/// block when the padding is all zero; otherwise, past the damage it reports in `items`.
fn past_padding(
    bytes: &[u8],
    pos: usize,
    block: usize,
    max_len: usize,
    end_of_data: usize,
    items: &mut Vec<Item>,
) -> usize {
    let next = align_up(pos, block);
    if bytes[pos..next.min(bytes.len())].iter().all(|&b| b == 0) {
        return next;
    }
    let end = resync(bytes, next, block, max_len, end_of_data);
    items.push(damage(
        pos,
        end,
        "non-zero bytes in the padding after a commit",
    ));
    end
}

/// True when `at` is inside a block with fewer bytes than a record's length field left before
/// the block's end: where no record decodes there (its CRC included), they are the padding
/// after a commit.
fn short_tail(at: usize, block: usize) -> bool {
    at % block != 0 && align_up(at, block) - at < LEN_FIELD
}

/// True when `at` starts padding shorter than a length field (see [`short_tail`]): all zero.
fn short_padding(bytes: &[u8], at: usize, block: usize) -> bool {
    let next = align_up(at, block).min(bytes.len());
    short_tail(at, block) && bytes[at..next].iter().all(|&b| b == 0)
}

fn damage(offset: usize, end: usize, why: &str) -> Item {
    Item::Damage(Damage {
        offset: offset as u64,
        end: end as u64,
        why: why.to_string(),
    })
}

fn align_up(v: usize, block: usize) -> usize {
    v.div_ceil(block) * block
}

fn align_down(v: usize, block: usize) -> usize {
    v / block * block
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
