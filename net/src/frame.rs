//! The length-prefixed frame codec. Pure: bytes in, messages out, no I/O.
//!
//! ```text
//! +----------------------+---------------------------------+
//! | length N: u32, BE    | N bytes: one protobuf message   |
//! +----------------------+---------------------------------+
//! ```
//!
//! The length counts the body only. It is checked against the caller's maximum before anything
//! is allocated, so a hostile prefix such as `0xFFFF_FFFF` costs nothing but an error.

use prost::Message;

/// Bytes taken by the length prefix.
pub const PREFIX_LEN: usize = 4;

/// The largest body the format can express.
pub const MAX_ENCODABLE: usize = u32::MAX as usize;

/// Default cap on a frame body: room for the largest legal value (16 MiB) and key (64 KiB) plus
/// generous protobuf overhead.
pub const DEFAULT_MAX_FRAME: usize = 17 * 1024 * 1024;

/// Why a buffer does not hold a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The body is not a valid protobuf message of the expected type.
    #[error("malformed frame body: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Reads the length prefix, if all of it is buffered, and checks it against `max`.
///
/// `Ok(None)` means fewer than [`PREFIX_LEN`] bytes are buffered.
pub fn peek_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// Decodes one frame from the front of `buf`.
///
/// Returns the message and the number of bytes it took, `Ok(None)` when the frame is not complete
/// yet (read more and call again), or an error when the frame can never become valid.
pub fn decode<M: Message + Default>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(M, usize)>, FrameError> {
    decode_with(buf, max, |body| M::decode(body))
}

/// [`decode`], with the body decoded by `body_decoder` (e.g. [`crate::request::decode`]).
pub fn decode_with<M>(
    buf: &[u8],
    max: usize,
    body_decoder: impl FnOnce(&[u8]) -> Result<M, prost::DecodeError>,
) -> Result<Option<(M, usize)>, FrameError> {
    let Some(len) = peek_len(buf, max)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(PREFIX_LEN..PREFIX_LEN + len) else {
        return Ok(None);
    };
    let msg = body_decoder(body)?;
    Ok(Some((msg, PREFIX_LEN + len)))
}

/// Appends `msg` as one frame to `out`.
///
/// # Panics
/// If the encoded message exceeds [`MAX_ENCODABLE`] bytes, which the format cannot express.
/// Callers bound what they encode (keys, values, batches) far below that.
pub fn encode<M: Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    let prefix = u32::try_from(len).expect("frame body exceeds u32::MAX bytes");
    out.reserve(PREFIX_LEN + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    msg.encode_raw(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::{Op, OpCode, Request};
    use proptest::prelude::*;

    fn request(id: u64, key: &[u8]) -> Request {
        Request {
            id,
            ops: vec![Op {
                code: OpCode::OpGet as i32,
                key: key.to_vec(),
                ..Op::default()
            }],
            ..Request::default()
        }
    }

    /// What `decode` makes of a buffer: the bytes a whole frame takes, or why it cannot.
    type Outcome = Result<Option<usize>, FrameError>;

    #[test]
    fn table() {
        let mut one = Vec::new();
        encode(&request(7, b"k"), &mut one);
        let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
            ("empty", vec![], Ok(None)),
            ("partial prefix", vec![0, 0], Ok(None)),
            ("prefix only", vec![0, 0, 0, 9], Ok(None)),
            (
                "empty body is an empty message",
                vec![0, 0, 0, 0],
                Ok(Some(4)),
            ),
            ("whole frame", one.clone(), Ok(Some(one.len()))),
            ("truncated frame", one[..one.len() - 1].to_vec(), Ok(None)),
            (
                "largest prefix",
                vec![0xFF, 0xFF, 0xFF, 0xFF],
                Err(FrameError::TooLarge {
                    len: MAX_ENCODABLE,
                    max: 1024,
                }),
            ),
            (
                "just over the limit",
                vec![0, 0, 4, 1],
                Err(FrameError::TooLarge {
                    len: 1025,
                    max: 1024,
                }),
            ),
        ];
        for (name, buf, want) in cases {
            let got = decode::<Request>(&buf, 1024).map(|o| o.map(|(_, n)| n));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn garbage_body_is_malformed() {
        // Field 1 as a length-delimited field of 200 bytes, with only 1 byte present.
        let buf = [0, 0, 0, 3, 0x0A, 200, 1];
        assert!(matches!(
            decode::<Request>(&buf, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn frames_decode_back_to_back() {
        let mut buf = Vec::new();
        encode(&request(1, b"a"), &mut buf);
        encode(&request(2, b"b"), &mut buf);
        let (first, n) = decode::<Request>(&buf, 1024).unwrap().unwrap();
        let (second, m) = decode::<Request>(&buf[n..], 1024).unwrap().unwrap();
        assert_eq!((first.id, second.id), (1, 2));
        assert_eq!(n + m, buf.len());
    }

    proptest! {
        #[test]
        fn round_trip(id: u64, key in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..400) {
            let msg = request(id, &key);
            let mut buf = Vec::new();
            encode(&msg, &mut buf);
            let (back, used) = decode::<Request>(&buf, 4096).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, buf.len());
            // Any strict prefix is "incomplete", never an error.
            let cut = cut.min(buf.len() - 1);
            prop_assert!(decode::<Request>(&buf[..cut], 4096).unwrap().is_none());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Request>(&bytes, 64);
        }
    }
}
