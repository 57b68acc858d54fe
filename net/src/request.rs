//! Decoding a `Request` body for a node's hot path. Pure.
//!
//! [`decode`] returns exactly what prost's `Request::decode` returns, value or error, for every
//! input (a property test checks it). It walks the fields itself and copies each key and value
//! once, straight from the body into its `Vec`; prost copies every bytes field twice (through
//! an intermediate `Bytes`), which a GET or SET pays on each request. Anything it does not walk
//! itself (an op's `hello`, a field it does not know, groups, an unknown wire type, any
//! malformed field) goes to prost whole, so prost's rules and error messages stay the contract.

use kvmesh_proto::wire::{Op, Request};
use prost::{DecodeError, Message};

/// Decodes one `Request` body, as `Request::decode(body)` would.
pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
    match walk(body) {
        Some(request) => Ok(request),
        None => Request::decode(body),
    }
}

/// The request, or `None` when prost must decide.
fn walk(body: &[u8]) -> Option<Request> {
    let mut request = Request::default();
    let mut fields = Fields(body);
    while let Some((number, field)) = fields.next()? {
        match (number, field) {
            (1, Field::Varint(v)) => request.id = v,
            (2, Field::Bytes(op)) => request.ops.push(walk_op(op)?),
            (3, Field::Varint(v)) => request.forwarded = v != 0,
            (50, Field::Varint(v)) => request.epoch = v,
            // Any other field, known to prost or not: prost decides.
            _ => return None,
        }
    }
    Some(request)
}

fn walk_op(body: &[u8]) -> Option<Op> {
    let mut op = Op::default();
    let mut fields = Fields(body);
    while let Some((number, field)) = fields.next()? {
        match (number, field) {
            (1, Field::Varint(v)) => op.code = v as i32,
            (2, Field::Bytes(b)) => replace(&mut op.key, b),
            (3, Field::Bytes(b)) => replace(&mut op.value, b),
            (4, Field::Varint(v)) => op.ttl_ms = v,
            (6, Field::Varint(v)) => op.replica = v != 0,
            (7, Field::Varint(v)) => op.version_hlc = v,
            (8, Field::Varint(v)) => op.version_node = v as u32,
            (50, Field::Varint(v)) => op.force = v != 0,
            // A stream's copies carry it: walked, as they are many.
            (91, Field::Varint(v)) => op.stream_epoch = v,
            // `hello` (5) is a message of its own, and any other field, known to prost or
            // not: prost decodes such a request.
            _ => return None,
        }
    }
    Some(op)
}

/// A repeated bytes field replaces the earlier value, as in prost.
fn replace(field: &mut Vec<u8>, bytes: &[u8]) {
    field.clear();
    field.extend_from_slice(bytes);
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message body, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// `Some(None)` at the end, `None` for anything prost must decide.
    fn next(&mut self) -> Option<Option<(u32, Field<'a>)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let key = u32::try_from(self.varint()?).ok()?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                if len > self.0.len() {
                    return None;
                }
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Field::Bytes(bytes)
            }
            5 => self.skip(4)?,
            _ => return None,
        };
        Some(Some((number, field)))
    }

    fn skip(&mut self, n: usize) -> Option<Field<'a>> {
        self.0 = self.0.get(n..)?;
        Some(Field::Fixed)
    }

    fn varint(&mut self) -> Option<u64> {
        crate::varint::read(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::{Hello, OpCode};
    use proptest::prelude::*;

    fn same_as_prost(body: &[u8]) {
        let ours = decode(body).map_err(|e| e.to_string());
        let theirs = Request::decode(body).map_err(|e| e.to_string());
        assert_eq!(ours, theirs, "body {body:02x?}");
    }

    #[test]
    fn table() {
        let full = Request {
            id: u64::MAX,
            ops: vec![
                Op {
                    code: OpCode::OpPut as i32,
                    key: b"key:0000000001".to_vec(),
                    value: vec![7; 300],
                    ttl_ms: 1500,
                    replica: true,
                    version_hlc: 1 << 50,
                    version_node: 3,
                    hello: None,
                    force: true,
                    leave_id: 7,
                    stream_epoch: 9,
                    abort_epoch: 0,
                },
                Op {
                    code: -5,
                    ..Op::default()
                },
                Op {
                    code: OpCode::OpHello as i32,
                    hello: Some(Box::new(Hello {
                        cluster: "c".into(),
                        ..Hello::default()
                    })),
                    ..Op::default()
                },
            ],
            forwarded: true,
            epoch: 7,
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("prost's own", full.encode_to_vec()),
            ("no hello", {
                let mut r = full.clone();
                r.ops.pop();
                r.encode_to_vec()
            }),
            ("key twice", vec![0x12, 6, 0x12, 1, b'a', 0x12, 1, b'b']),
            (
                "unknown fields",
                vec![0x79, 1, 2, 3, 4, 5, 6, 7, 8, 0x45, 1, 2, 3, 4],
            ),
            ("op cut short", vec![0x12, 5, 0x08]),
            ("id as bytes", vec![0x0a, 0]),
            ("group", vec![0x23, 0x08, 1, 0x24]),
            ("field 0", vec![0x00, 1]),
            (
                "long varint",
                vec![
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
            ),
            ("key too large", vec![0xff, 0xff, 0xff, 0xff, 0x7f, 0]),
        ];
        for (name, body) in cases {
            let ours = decode(&body).map_err(|e| e.to_string());
            let theirs = Request::decode(&body[..]).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{name}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            same_as_prost(&body);
        }

        #[test]
        fn arbitrary_requests(
            id: u64,
            forwarded: bool,
            epoch: u64,
            ops in proptest::collection::vec(
                (any::<i32>(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..40), any::<u64>(), any::<bool>(), any::<u64>(), any::<u32>()),
                0..4,
            ),
            cut in 0usize..200,
        ) {
            let request = Request {
                id,
                forwarded,
                epoch,
                ops: ops
                    .into_iter()
                    .map(|(code, key, value, ttl_ms, replica, version_hlc, version_node)| Op {
                        code,
                        key,
                        value,
                        ttl_ms,
                        replica,
                        version_hlc,
                        version_node,
                        hello: None,
                        force: replica && version_node % 2 == 0,
                        leave_id: version_node % 3,
                        stream_epoch: version_hlc % 5,
                        abort_epoch: 0,
                    })
                    .collect(),
            };
            let body = request.encode_to_vec();
            prop_assert_eq!(decode(&body).unwrap(), request);
            // A body cut anywhere decodes, or fails, as prost says.
            same_as_prost(&body[..cut.min(body.len())]);
        }
    }
}
