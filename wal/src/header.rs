//! The segment header codec. Pure: bytes in, header out, no I/O.

use crate::error::{Error, Result};

/// First bytes of every segment.
pub const MAGIC: [u8; 8] = *b"KVMESHWL";
/// The format this crate writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of a header before its zero padding.
pub const HEADER_LEN: usize = 32;

/// What a segment says about itself.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The shard whose log this is.
    pub shard: u32,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// Commits start at multiples of this many bytes; the first at `block` (the header has
    /// block 0 to itself).
    pub block: u32,
}

// Byte layout of a segment header, at offset 0 of every segment; integers are little-endian:
//
//   offset  size  field
//   0       8     magic: "KVMESHWL"
//   8       4     format version: 1
//   12      4     shard id
//   16      8     first seq: the sequence number of the segment's first record
//   24      4     block size: commits start on multiples of it (4096 unless the device's
//                 logical block is larger)
//   28      4     crc: CRC32 (crc32fast) of bytes 0..28
//   32      ..    zero up to the end of block 0; records start at offset `block`

/// The header's bytes.
pub fn encode(header: &Header) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&header.shard.to_le_bytes());
    out[16..24].copy_from_slice(&header.first_seq.to_le_bytes());
    out[24..28].copy_from_slice(&header.block.to_le_bytes());
    let crc = crc32fast::hash(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a header. `Ok(None)` when the bytes are all zero (a segment prepared but never
/// used); an error names what is wrong.
pub fn decode(buf: &[u8]) -> Result<Option<Header>> {
    let Some(bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(Error::BadHeader(format!(
            "the file is {} bytes, shorter than a header",
            buf.len()
        )));
    };
    if bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes[0..8] != MAGIC {
        return Err(Error::BadHeader(
            "no kvmesh WAL magic: not a segment, or its first block is damaged".into(),
        ));
    }
    let (stored, computed) = (u32_at(28), crc32fast::hash(&bytes[0..28]));
    if stored != computed {
        return Err(Error::BadHeader(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let version = u32_at(8);
    if version != VERSION {
        return Err(Error::BadHeader(format!(
            "format version {version}; this kvmesh reads version {VERSION}"
        )));
    }
    let block = u32_at(24);
    if !block.is_power_of_two() || block < 512 {
        return Err(Error::BadHeader(format!(
            "block size {block} is not a power of two >= 512"
        )));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[16..24]);
    Ok(Some(Header {
        shard: u32_at(12),
        first_seq: u64::from_le_bytes(seq),
        block,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let bytes = encode(&Header {
            shard: 3,
            first_seq: 0x42,
            block: 4096,
        });
        let hex: String = bytes[..28].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "4b564d455348574c\
             01000000\
             03000000\
             4200000000000000\
             00100000"
        );
        assert_eq!(&bytes[28..], &crc32fast::hash(&bytes[..28]).to_le_bytes());
    }

    #[test]
    fn decode_table() {
        let good = encode(&Header {
            shard: 1,
            first_seq: 9,
            block: 4096,
        });
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            b
        };
        let mut v2 = good;
        v2[8] = 2;
        let crc = crc32fast::hash(&v2[..28]);
        v2[28..32].copy_from_slice(&crc.to_le_bytes());
        let mut odd_block = good;
        odd_block[24..28].copy_from_slice(&1000u32.to_le_bytes());
        let crc = crc32fast::hash(&odd_block[..28]);
        odd_block[28..32].copy_from_slice(&crc.to_le_bytes());
        // (bytes, expected: Ok(Some(first_seq)), Ok(None) or an error containing the text)
        type Want = Result<Option<u64>, &'static str>;
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (good.to_vec(), Ok(Some(9))),
            (vec![0; 4096], Ok(None)),
            (good[..10].to_vec(), Err("shorter than a header")),
            (with(0, b'X').to_vec(), Err("magic")),
            (with(17, 7).to_vec(), Err("checksum")),
            (v2.to_vec(), Err("version 2")),
            (odd_block.to_vec(), Err("block size 1000")),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            match (decode(&bytes), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.map(|h| h.first_seq), want, "case {i}"),
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }
}
