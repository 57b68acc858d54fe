//! Recognising a plain client request in place, for a node's local fast path. Pure.
//!
//! [`SimpleRequest::parse`] reads a `Request` body without allocating: its keys and values are
//! slices of the body. It accepts only the plain shape a client sends for data ops: fields `id`,
//! `ops`, `forwarded` (false) and `epoch`, and ops made of `code`, `key`, `value` and `ttl_ms`
//! alone, at most [`MAX_OPS`] of them, each field under its one-byte key (two bytes for
//! `epoch`), and every varint in at most 10 bytes. For every body it accepts, what it reads is
//! exactly what [`crate::request::decode`] (and so prost) decodes (a property test checks it);
//! anything else (a replica write, a hello, an unknown field, a malformed field, more ops, an
//! unusual but valid encoding) is refused, and the caller decodes the body in full, so its
//! errors and behaviour stay prost's.

use smallvec::SmallVec;

/// The most ops a request may carry to be parsed here; a larger batch takes the general path.
pub const MAX_OPS: usize = 8;

/// One op of a plain request, borrowed from the body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimpleOp<'a> {
    /// `Op.code` as prost reads it (an `int32`: a larger varint is truncated).
    pub code: i32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub ttl_ms: u64,
}

/// A plain request, borrowed from the body.
///
/// The ops live inline (never on the heap: a request of more than [`MAX_OPS`] is refused),
/// and a new request writes none of its op slots (an array of 8 default ops, 384 bytes, was
/// written for every request).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimpleRequest<'a> {
    pub id: u64,
    pub epoch: u64,
    ops: SmallVec<[SimpleOp<'a>; MAX_OPS]>,
}

impl<'a> SimpleRequest<'a> {
    /// The ops, in order.
    #[inline]
    pub fn ops(&self) -> &[SimpleOp<'a>] {
        &self.ops
    }

    /// Reads `body` into `self` if it is a plain request (see the module docs); `false`: it is
    /// not, and what `self` holds is unspecified. Parsing into a request the caller holds
    /// spares moving it.
    pub fn parse(&mut self, body: &'a [u8]) -> bool {
        self.id = 0;
        self.epoch = 0;
        self.ops.clear();
        self.read(body).is_some()
    }

    fn read(&mut self, body: &'a [u8]) -> Option<()> {
        let mut body = Cursor(body);
        while let Some(key) = body.byte() {
            match key {
                // id (1, varint)
                0x08 => self.id = body.varint()?,
                // ops (2, length-delimited)
                0x12 => {
                    if self.ops.len() == MAX_OPS {
                        return None;
                    }
                    self.ops.push(read_op(body.bytes()?)?);
                }
                // forwarded (3, varint): only false
                0x18 if body.varint()? == 0 => {}
                // epoch (50, varint): the key 400 as a varint
                0x90 if body.byte()? == 0x03 => self.epoch = body.varint()?,
                _ => return None,
            }
        }
        Some(())
    }
}

/// The body as a plain request, or `None` ([`SimpleRequest::parse`], returning the request).
pub fn parse(body: &[u8]) -> Option<SimpleRequest<'_>> {
    let mut request = SimpleRequest::default();
    request.parse(body).then_some(request)
}

fn read_op(body: &[u8]) -> Option<SimpleOp<'_>> {
    let mut op = SimpleOp::default();
    let mut body = Cursor(body);
    while let Some(key) = body.byte() {
        match key {
            0x08 => op.code = body.varint()? as i32,
            // A repeated bytes field replaces the earlier value, as in prost.
            0x12 => op.key = body.bytes()?,
            0x1a => op.value = body.bytes()?,
            0x20 => op.ttl_ms = body.varint()?,
            _ => return None,
        }
    }
    Some(op)
}

/// What is left of a message body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// A varint, as prost reads it (`crate::varint`, shared with `request.rs`).
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        crate::varint::read(&mut self.0)
    }

    #[inline]
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::{Op, OpCode, Request};
    use proptest::prelude::*;
    use prost::Message;

    /// `parse`'s answer must be what the full decoder says, whenever it answers.
    fn agrees(body: &[u8]) -> bool {
        let Some(simple) = parse(body) else {
            return false;
        };
        let full = crate::request::decode(body).expect("parse accepted a malformed body");
        assert!(!full.forwarded, "body {body:02x?}");
        assert_eq!((simple.id, simple.epoch), (full.id, full.epoch));
        assert_eq!(simple.ops().len(), full.ops.len());
        for (ours, theirs) in simple.ops().iter().zip(&full.ops) {
            let owned = Op {
                code: ours.code,
                key: ours.key.to_vec(),
                value: ours.value.to_vec(),
                ttl_ms: ours.ttl_ms,
                ..Op::default()
            };
            assert_eq!(&owned, theirs, "body {body:02x?}");
        }
        true
    }

    fn get(key: &[u8]) -> Op {
        Op {
            code: OpCode::OpGet as i32,
            key: key.to_vec(),
            ..Op::default()
        }
    }

    #[test]
    fn table() {
        let plain = Request {
            id: 9,
            ops: vec![
                get(b"k"),
                Op {
                    code: OpCode::OpPut as i32,
                    key: b"k".to_vec(),
                    value: vec![1; 200],
                    ttl_ms: 5,
                    ..Op::default()
                },
            ],
            forwarded: false,
            epoch: 3,
        };
        assert!(agrees(&plain.encode_to_vec()));
        assert!(agrees(&[]), "an empty request is plain");
        assert!(
            agrees(&[0x12, 6, 0x12, 1, b'a', 0x12, 1, b'b']),
            "key twice"
        );
        assert!(agrees(&[0x18, 0]), "forwarded: false, written out");
        assert!(
            agrees(&[0x08, 0x81, 0x00]),
            "a varint in more bytes than needed"
        );
        assert!(agrees(&[0x90, 0x03, 7]), "epoch");
        // Varints of 10 bytes: values from 2^63, and negative codes.
        let wide = Request {
            id: u64::MAX,
            epoch: 1 << 63,
            ops: vec![Op {
                code: -1,
                ttl_ms: u64::MAX,
                ..get(b"k")
            }],
            ..Request::default()
        };
        assert!(agrees(&wide.encode_to_vec()), "10-byte varints");
        let mut tenth_is_one = vec![0x08];
        tenth_is_one.extend([0xFF; 9]);
        tenth_is_one.push(0x01);
        assert!(agrees(&tenth_is_one), "a tenth byte of 1: u64::MAX");
        let mut overlong = vec![0x08];
        overlong.extend([0x80; 9]);
        overlong.push(0x00);
        assert!(agrees(&overlong), "0 in 10 bytes");
        let not_plain: Vec<(&str, Vec<u8>)> = vec![
            ("forwarded", {
                let mut r = plain.clone();
                r.forwarded = true;
                r.encode_to_vec()
            }),
            ("replica", {
                let mut r = plain.clone();
                r.ops[1].replica = true;
                r.encode_to_vec()
            }),
            ("versioned", {
                let mut r = plain.clone();
                r.ops[0].version_hlc = 1;
                r.encode_to_vec()
            }),
            ("too many ops", {
                let mut r = plain.clone();
                r.ops = vec![get(b"k"); MAX_OPS + 1];
                r.encode_to_vec()
            }),
            ("unknown field", vec![0x79, 1, 2, 3, 4, 5, 6, 7, 8]),
            ("op cut short", vec![0x12, 5, 0x08]),
            ("group", vec![0x23, 0x08, 1, 0x24]),
            ("a varint past 64 bits", {
                let mut body = vec![0x08];
                body.extend([0xFF; 9]);
                body.push(0x02);
                body
            }),
            ("a varint in 11 bytes", {
                let mut body = vec![0x08];
                body.extend([0x80; 10]);
                body.push(0x00);
                body
            }),
            ("a key in two bytes", vec![0x88, 0x00, 1]),
            ("epoch cut short", vec![0x90]),
        ];
        for (name, body) in not_plain {
            assert!(parse(&body).is_none(), "{name}");
        }
        let most = Request {
            ops: vec![get(b"k"); MAX_OPS],
            ..Request::default()
        };
        assert!(agrees(&most.encode_to_vec()));
    }

    /// `v` as a varint, padded to `pad` more bytes than needed (an overlong but valid
    /// encoding) while it stays within 10 bytes.
    fn varint(v: u64, pad: usize, out: &mut Vec<u8>) {
        let start = out.len();
        prost::encoding::encode_varint(v, out);
        let pad = pad.min(10 - (out.len() - start));
        if pad > 0 {
            *out.last_mut().expect("a varint has a byte") |= 0x80;
            out.extend(std::iter::repeat_n(0x80, pad - 1));
            out.push(0);
        }
    }

    /// One field of a plain body or op, validly encoded: `(key bytes, varint or bytes)`.
    fn field(keys: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::sample::select(keys),
            prop_oneof![Just(0u64), 0u64..300, any::<u64>()],
            proptest::collection::vec(any::<u8>(), 0..6),
            prop_oneof![3 => Just(0usize), 1 => 0usize..10],
        )
            .prop_map(|(key, v, bytes, pad)| {
                let mut out = key.to_vec();
                // Keys 0x12 and 0x1a (in an op) are bytes fields; the rest varints.
                if key == [0x12] || key == [0x1a] {
                    varint(bytes.len() as u64, pad, &mut out);
                    out.extend(bytes);
                } else if key == [0x18] {
                    // `forwarded`: only false is plain.
                    varint(0, pad, &mut out);
                } else {
                    varint(v, pad, &mut out);
                }
                out
            })
    }

    /// A plain body built from valid field encodings in any order, repeats allowed.
    fn plain_body() -> impl Strategy<Value = (Vec<u8>, usize)> {
        let op = proptest::collection::vec(field(&[&[0x08], &[0x12], &[0x1a], &[0x20]]), 0..6)
            .prop_map(|fields| fields.concat());
        let top = prop_oneof![
            3 => field(&[&[0x08], &[0x18], &[0x90, 0x03]]).prop_map(|f| (f, 0)),
            4 => (op, prop_oneof![3 => Just(0usize), 1 => 0usize..3]).prop_map(|(op, pad)| {
                let mut out = vec![0x12];
                varint(op.len() as u64, pad, &mut out);
                out.extend(op);
                (out, 1)
            }),
        ];
        proptest::collection::vec(top, 0..12).prop_map(|fields| {
            let ops = fields.iter().map(|f| f.1).sum();
            (fields.into_iter().flat_map(|f| f.0).collect(), ops)
        })
    }

    proptest! {
        #[test]
        fn plain_bodies_in_any_valid_encoding((body, ops) in plain_body()) {
            prop_assert_eq!(agrees(&body), ops <= MAX_OPS, "body {:02x?}", body);
        }

        #[test]
        fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            agrees(&body);
        }

        #[test]
        fn arbitrary_requests(
            id: u64,
            forwarded in proptest::bool::weighted(0.1),
            epoch in prop_oneof![Just(0u64), any::<u64>()],
            ops in proptest::collection::vec(
                (-1i32..9, proptest::collection::vec(any::<u8>(), 0..20),
                 proptest::collection::vec(any::<u8>(), 0..40), prop_oneof![Just(0u64), any::<u64>()],
                 proptest::bool::weighted(0.1)),
                0..10,
            ),
            cut in 0usize..300,
        ) {
            let request = Request {
                id,
                forwarded,
                epoch,
                ops: ops
                    .into_iter()
                    .map(|(code, key, value, ttl_ms, replica)| Op {
                        code,
                        key,
                        value,
                        ttl_ms,
                        replica,
                        ..Op::default()
                    })
                    .collect(),
            };
            let body = request.encode_to_vec();
            let plain = !forwarded
                && request.ops.len() <= MAX_OPS
                && request.ops.iter().all(|op| !op.replica);
            prop_assert_eq!(agrees(&body), plain);
            agrees(&body[..cut.min(body.len())]);
        }
    }
}
