//! The protobuf varint as prost reads it, for the hand-written decoders ([`crate::request`],
//! [`crate::simple`]): at most 10 bytes, and a tenth byte above 1 (a value past 64 bits) is
//! refused, as prost refuses it.

/// Reads the varint at the start of `buf` and advances `buf` past it; `None` (and `buf` as
/// it was) for a truncated or overlong one.
#[inline]
pub(crate) fn read(buf: &mut &[u8]) -> Option<u64> {
    // Most varints (field keys, lengths, op codes, epochs) take one byte.
    if let Some((&byte, rest)) = buf.split_first() {
        if byte < 0x80 {
            *buf = rest;
            return Some(u64::from(byte));
        }
    }
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn reads_what_prost_writes_and_refuses_what_prost_refuses(
            v in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let mut encoded = Vec::new();
            prost::encoding::encode_varint(v, &mut encoded);
            encoded.push(0xaa);
            let mut buf = &encoded[..];
            prop_assert_eq!(read(&mut buf), Some(v));
            prop_assert_eq!(buf, &[0xaa][..]);

            let mut ours = &bytes[..];
            let theirs = prost::encoding::decode_varint(&mut &bytes[..]).ok();
            prop_assert_eq!(read(&mut ours), theirs);
        }
    }
}
