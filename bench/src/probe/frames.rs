//! The probe's codec: kvmesh's wire frames (`proto/kvmesh/wire.proto`), decoded in place and
//! answered straight into the output buffer. Pure: bytes in, bytes out, no I/O.
//!
//! Every field of a `Request` and of each `Op` is parsed and checked as prost would (wire types,
//! varints, lengths, unknown fields skipped); nothing is copied but the bytes a SET stores. The
//! replies are byte-identical to prost's encoding of the same `Response` (a test checks it).

use kvmesh_net::frame::{FrameError, PREFIX_LEN};
use kvmesh_proto::wire::Hello;
use prost::Message;

/// `OpCode` values the probe serves; any other gets `STATUS_UNKNOWN_OPERATION`.
pub const OP_GET: u64 = 1;
pub const OP_PUT: u64 = 2;
pub const OP_TOPOLOGY: u64 = 6;

/// `Status` values the probe answers with.
pub const STATUS_NOT_FOUND: u64 = 1;
pub const STATUS_UNKNOWN_OPERATION: u64 = 3;
pub const STATUS_MALFORMED_FRAME: u64 = 6;
pub const STATUS_FRAME_TOO_LARGE: u64 = 7;

/// One op of a request, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct OpRef<'a> {
    pub code: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub ttl_ms: u64,
}

/// A whole, valid request frame: its id and its body, whose ops [`RequestRef::ops`] walks.
#[derive(Debug, Clone, Copy)]
pub struct RequestRef<'a> {
    pub id: u64,
    body: &'a [u8],
}

/// What one op is answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// `OpResult {}`: a stored SET.
    Ok,
    /// `OpResult { value }`: a GET that found its key.
    Value(&'a [u8]),
    /// `OpResult { status }`, with `message` when not empty.
    Status(u64, &'a str),
    /// `OpResult { topology }`: an already encoded `Topology` message.
    Topology(&'a [u8]),
}

/// The body is not a valid `Request`: kvmesh answers `MALFORMED_FRAME` and closes.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Why a frame is refused as a whole: kvmesh answers with a frame-level error and closes.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The length prefix exceeds the limit.
    TooLarge { len: usize, max: usize },
    /// The body is not a valid `Request`.
    Malformed,
}

/// Decodes the request frame at the front of `buf`: the request and the bytes it took,
/// `Ok(None)` while it is incomplete, or why it can never be valid.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(RequestRef<'_>, usize)>, Refused> {
    let len = match kvmesh_net::frame::peek_len(buf, max) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(FrameError::TooLarge { len, max }) => return Err(Refused::TooLarge { len, max }),
        Err(FrameError::Malformed(_)) => return Err(Refused::Malformed),
    };
    let Some(body) = buf.get(PREFIX_LEN..PREFIX_LEN + len) else {
        return Ok(None);
    };
    let id = validate_request(body).map_err(|Malformed| Refused::Malformed)?;
    Ok(Some((RequestRef { id, body }, PREFIX_LEN + len)))
}

impl<'a> RequestRef<'a> {
    /// The ops, in order. The body was validated by [`decode`], so every op parses.
    pub fn ops(&self) -> impl Iterator<Item = OpRef<'a>> + 'a {
        let mut fields = Fields { rest: self.body };
        std::iter::from_fn(move || loop {
            match fields.next()? {
                Ok((2, Field::Bytes(op))) => return parse_op(op).ok(),
                Ok(_) => continue,
                Err(Malformed) => return None,
            }
        })
    }
}

/// Checks every field of a `Request` body, each op's included; returns its id.
fn validate_request(body: &[u8]) -> Result<u64, Malformed> {
    let mut id = 0;
    for field in (Fields { rest: body }) {
        match field? {
            (1, Field::Varint(v)) => id = v,
            (2, Field::Bytes(op)) => {
                parse_op(op)?;
            }
            (3, Field::Varint(_)) => {}
            (1..=3, _) => return Err(Malformed),
            _ => {}
        }
    }
    Ok(id)
}

fn parse_op(body: &[u8]) -> Result<OpRef<'_>, Malformed> {
    let mut op = OpRef {
        code: 0,
        key: &[],
        value: &[],
        ttl_ms: 0,
    };
    for field in (Fields { rest: body }) {
        match field? {
            (1, Field::Varint(v)) => op.code = v as i32 as u64,
            (2, Field::Bytes(b)) => op.key = b,
            (3, Field::Bytes(b)) => op.value = b,
            (4, Field::Varint(v)) => op.ttl_ms = v,
            // The probe never serves a hello, but refuses a malformed one as kvmesh does.
            (5, Field::Bytes(hello)) => {
                Hello::decode(hello).map_err(|_| Malformed)?;
            }
            // replica (6) is a bool, the version (7, 8) varints.
            (6..=8, Field::Varint(_)) => {}
            (1..=8, _) => return Err(Malformed),
            _ => {}
        }
    }
    Ok(op)
}

/// How deep groups may nest, as prost's decoder allows.
const MAX_GROUP_DEPTH: usize = 100;

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message body, in order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    /// One field: its number and its payload. A group (wire types 3 and 4, which prost skips
    /// when their field is unknown) is skipped whole and reported as [`Field::Fixed`].
    fn field(&mut self) -> Result<(u32, Field<'a>), Malformed> {
        let (number, wire) = self.key()?;
        let field = match wire {
            3 => {
                self.skip_group(number)?;
                Field::Fixed
            }
            4 => return Err(Malformed),
            _ => self.payload(wire)?,
        };
        Ok((number, field))
    }

    fn key(&mut self) -> Result<(u32, u64), Malformed> {
        let key = u32::try_from(self.varint()?).map_err(|_| Malformed)?;
        if key >> 3 == 0 {
            return Err(Malformed);
        }
        Ok((key >> 3, u64::from(key & 7)))
    }

    fn payload(&mut self, wire: u64) -> Result<Field<'a>, Malformed> {
        Ok(match wire {
            0 => Field::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                if len > self.rest.len() {
                    return Err(Malformed);
                }
                let (bytes, rest) = self.rest.split_at(len);
                self.rest = rest;
                Field::Bytes(bytes)
            }
            5 => self.skip(4)?,
            _ => return Err(Malformed),
        })
    }

    /// Skips to the end of the group `number` just started, nested groups included, at most
    /// [`MAX_GROUP_DEPTH`] deep (prost's recursion limit).
    fn skip_group(&mut self, number: u32) -> Result<(), Malformed> {
        let mut open = [0u32; MAX_GROUP_DEPTH];
        open[0] = number;
        let mut depth = 1;
        while depth > 0 {
            let (n, wire) = self.key()?;
            match wire {
                3 if depth == MAX_GROUP_DEPTH => return Err(Malformed),
                3 => {
                    open[depth] = n;
                    depth += 1;
                }
                4 if open[depth - 1] == n => depth -= 1,
                4 => return Err(Malformed),
                _ => {
                    self.payload(wire)?;
                }
            }
        }
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<Field<'a>, Malformed> {
        self.rest = self.rest.get(n..).ok_or(Malformed)?;
        Ok(Field::Fixed)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    return Err(Malformed);
                }
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(Malformed)
    }
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes of `OpResult` for `answer`, without its own tag and length.
fn result_len(answer: &Answer<'_>) -> usize {
    let bytes = |tag_len: usize, b: &[u8]| {
        if b.is_empty() {
            0
        } else {
            tag_len + varint_len(b.len() as u64) + b.len()
        }
    };
    match answer {
        Answer::Ok => 0,
        Answer::Value(v) => bytes(1, v),
        Answer::Status(s, m) => 1 + varint_len(*s) + bytes(1, m.as_bytes()),
        Answer::Topology(t) => 1 + varint_len(t.len() as u64) + t.len(),
    }
}

/// Writes a `Response` frame, one answer at a time: [`ResponseWriter::start`], then
/// [`ResponseWriter::answer`] per op, then [`ResponseWriter::finish`], which fills in the length.
///
/// ```text
/// u32 BE body length
/// 0x08 varint(id)                    Response.id        (omitted when 0)
/// 0x12 varint(len) OpResult          Response.results[i], each:
///   0x08 varint(status)                OpResult.status  (omitted when OK)
///   0x12 varint(len) value             OpResult.value   (omitted when empty)
///   0x1a varint(len) message           OpResult.message (omitted when empty)
///   0x32 varint(len) Topology          OpResult.topology
/// ```
pub struct ResponseWriter {
    start: usize,
}

impl ResponseWriter {
    pub fn start(id: u64, out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; PREFIX_LEN]);
        if id != 0 {
            out.push(0x08);
            put_varint(id, out);
        }
        Self { start }
    }

    pub fn answer(&self, answer: &Answer<'_>, out: &mut Vec<u8>) {
        let bytes = |tag: u8, b: &[u8], out: &mut Vec<u8>| {
            if !b.is_empty() {
                out.push(tag);
                put_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
        };
        out.push(0x12);
        put_varint(result_len(answer) as u64, out);
        match answer {
            Answer::Ok => {}
            Answer::Value(v) => bytes(0x12, v, out),
            Answer::Status(s, m) => {
                out.push(0x08);
                put_varint(*s, out);
                bytes(0x1a, m.as_bytes(), out);
            }
            Answer::Topology(t) => {
                out.push(0x32);
                put_varint(t.len() as u64, out);
                out.extend_from_slice(t);
            }
        }
    }

    pub fn finish(self, out: &mut [u8]) {
        let body = (out.len() - self.start - PREFIX_LEN) as u32;
        out[self.start..self.start + PREFIX_LEN].copy_from_slice(&body.to_be_bytes());
    }
}

/// Appends the frame-level refusal kvmesh sends before closing: `Response { error, message }`.
pub fn refusal(e: &Refused, out: &mut Vec<u8>) {
    let (status, message) = match e {
        Refused::TooLarge { len, max } => (
            STATUS_FRAME_TOO_LARGE,
            FrameError::TooLarge {
                len: *len,
                max: *max,
            }
            .to_string(),
        ),
        Refused::Malformed => (STATUS_MALFORMED_FRAME, "malformed frame body".to_string()),
    };
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    out.push(0x18);
    put_varint(status, out);
    out.push(0x22);
    put_varint(message.len() as u64, out);
    out.extend_from_slice(message.as_bytes());
    let body = (out.len() - start - PREFIX_LEN) as u32;
    out[start..start + PREFIX_LEN].copy_from_slice(&body.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_net::frame;
    use kvmesh_proto::wire::{Op, OpCode, OpResult, Request, Response, Status, Topology};
    use proptest::prelude::*;

    fn request_bytes(request: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode(request, &mut out);
        out
    }

    fn op(code: OpCode, key: &[u8], value: &[u8], ttl_ms: u64) -> Op {
        Op {
            code: code as i32,
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms,
            ..Op::default()
        }
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let request = Request {
            id: 300,
            ops: vec![
                op(OpCode::OpGet, b"key:1", b"", 0),
                op(OpCode::OpPut, b"k", &[7; 200], 1500),
                Op {
                    replica: true,
                    version_hlc: 9,
                    hello: Some(Default::default()),
                    ..op(OpCode::OpRemove, b"gone", b"", 0)
                },
            ],
            forwarded: true,
            ..Request::default()
        };
        let bytes = request_bytes(&request);
        let (got, used) = decode(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!((got.id, used), (300, bytes.len()));
        let ops: Vec<OpRef<'_>> = got.ops().collect();
        assert_eq!(ops.len(), 3);
        for (ours, theirs) in ops.iter().zip(&request.ops) {
            assert_eq!(ours.code, theirs.code as u64);
            assert_eq!(ours.key, &theirs.key[..]);
            assert_eq!(ours.value, &theirs.value[..]);
            assert_eq!(ours.ttl_ms, theirs.ttl_ms);
        }
    }

    #[test]
    fn table() {
        type Outcome = Result<Option<usize>, &'static str>;
        let one = request_bytes(&Request {
            id: 1,
            ops: vec![op(OpCode::OpGet, b"k", b"", 0)],
            ..Request::default()
        });
        let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
            ("empty", vec![], Ok(None)),
            ("partial prefix", vec![0, 0], Ok(None)),
            ("empty body", vec![0, 0, 0, 0], Ok(Some(4))),
            ("whole", one.clone(), Ok(Some(one.len()))),
            ("truncated", one[..one.len() - 1].to_vec(), Ok(None)),
            ("too large", vec![0, 0, 4, 1], Err("large")),
            (
                "op cut short",
                vec![0, 0, 0, 3, 0x12, 5, 0x08],
                Err("malformed"),
            ),
            ("id as bytes", vec![0, 0, 0, 2, 0x0a, 0], Err("malformed")),
            ("group wire type", vec![0, 0, 0, 1, 0x0b], Err("malformed")),
            ("field 0", vec![0, 0, 0, 2, 0x00, 1], Err("malformed")),
            (
                "unknown fields skipped",
                vec![0, 0, 0, 9, 0x79, 1, 2, 3, 4, 5, 6, 7, 8],
                Ok(Some(13)),
            ),
        ];
        for (name, buf, want) in cases {
            let got = match decode(&buf, 1024) {
                Ok(o) => Ok(o.map(|(_, n)| n)),
                Err(Refused::TooLarge { .. }) => Err("large"),
                Err(Refused::Malformed) => Err("malformed"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn replies_match_prost() {
        let topology = Topology {
            node_id: 1,
            shards: 1,
            shard_ports: vec![7000],
            ..Topology::default()
        };
        let encoded_topology = topology.encode_to_vec();
        let answers = [
            Answer::Ok,
            Answer::Value(&[9; 300]),
            Answer::Status(STATUS_NOT_FOUND, ""),
            Answer::Status(STATUS_UNKNOWN_OPERATION, "unknown operation code 42"),
            Answer::Topology(&encoded_topology),
        ];
        let want = Response {
            id: 77_777,
            results: vec![
                OpResult::default(),
                OpResult {
                    value: vec![9; 300],
                    ..OpResult::default()
                },
                OpResult {
                    status: Status::NotFound as i32,
                    ..OpResult::default()
                },
                OpResult {
                    status: Status::UnknownOperation as i32,
                    message: "unknown operation code 42".into(),
                    ..OpResult::default()
                },
                OpResult {
                    topology: Some(Box::new(topology)),
                    ..OpResult::default()
                },
            ],
            ..Response::default()
        };
        let mut ours = vec![1, 2, 3];
        let writer = ResponseWriter::start(77_777, &mut ours);
        for answer in &answers {
            writer.answer(answer, &mut ours);
        }
        writer.finish(&mut ours);
        let mut theirs = vec![1, 2, 3];
        frame::encode(&want, &mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn refusal_matches_prost() {
        let e = FrameError::TooLarge { len: 5, max: 4 };
        let mut ours = Vec::new();
        refusal(&Refused::TooLarge { len: 5, max: 4 }, &mut ours);
        let mut theirs = Vec::new();
        let want = Response {
            error: Status::FrameTooLarge as i32,
            message: e.to_string(),
            ..Response::default()
        };
        frame::encode(&want, &mut theirs);
        assert_eq!(ours, theirs);
    }

    proptest! {
        /// Whatever prost accepts, the probe accepts with the same id and ops, and the other
        /// way round.
        #[test]
        fn agrees_with_prost(body in proptest::collection::vec(any::<u8>(), 0..48)) {
            let mut buf = (body.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(&body);
            let theirs = Request::decode(&body[..]);
            match decode(&buf, 1024) {
                Ok(Some((ours, _))) => {
                    let theirs = theirs.expect("prost accepts what the probe accepts");
                    prop_assert_eq!(ours.id, theirs.id);
                    let ops: Vec<OpRef<'_>> = ours.ops().collect();
                    prop_assert_eq!(ops.len(), theirs.ops.len());
                    for (a, b) in ops.iter().zip(&theirs.ops) {
                        prop_assert_eq!(a.code, b.code as u64);
                        prop_assert_eq!(a.key, &b.key[..]);
                        prop_assert_eq!(a.value, &b.value[..]);
                    }
                }
                Ok(None) => prop_assert!(false, "a whole frame is never incomplete"),
                Err(_) => prop_assert!(theirs.is_err(), "prost accepted {:?}", theirs),
            }
        }

        #[test]
        fn varint_lengths(v: u64) {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            prop_assert_eq!(out.len(), varint_len(v));
            prop_assert_eq!(out.len(), prost::encoding::encoded_len_varint(v));
        }
    }
}
