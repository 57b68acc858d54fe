//! LEB128 lengths for the block header (block.rs): 7 bits per byte, high bit = more follows.
//! Lengths below 128 take one byte, so a small entry's header stays at 23 bytes.

/// Bytes `n` takes encoded.
pub(crate) fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Encodes `n` at the start of `buf` (at least `varint_len(n)` bytes) and returns its length.
pub(crate) fn put_varint(buf: &mut [u8], mut n: usize) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        buf[i] = n as u8 | 0x80;
        n >>= 7;
        i += 1;
    }
    buf[i] = n as u8;
    i + 1
}

/// Decodes the varint at `buf[*at..]` and moves `*at` past it. Decoding stops at its last
/// byte (the first below 0x80). Panics if `buf` ends inside it: blocks only hold varints that
/// `put_varint` wrote.
#[inline]
pub(crate) fn read(buf: &[u8], at: &mut usize) -> usize {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let byte = buf[*at];
        *at += 1;
        n |= ((byte & 0x7f) as usize) << shift;
        if byte < 0x80 {
            return n;
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_at_the_boundaries_round_trip() {
        let table = [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (1 << 21, 4),
            (1 << 28, 5),
            (usize::MAX, 10),
        ];
        for (n, len) in table {
            assert_eq!(varint_len(n), len, "{n}");
            let mut buf = [0u8; 10];
            assert_eq!(put_varint(&mut buf, n), len);
            let mut at = 0;
            assert_eq!(read(&buf, &mut at), n);
            assert_eq!(at, len);
        }
    }
}
