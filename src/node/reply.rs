//! Every error a node reports becomes a wire status here, and nowhere else.

use kvmesh_engine::Error as StoreError;
use kvmesh_net::frame::PREFIX_LEN;
use kvmesh_net::FrameError;
use kvmesh_proto::wire::{OpResult, Response, Status};
use prost::encoding::encoded_len_varint;
use prost::Message;

use super::router::Rejection;

pub fn status(status: Status, message: impl Into<String>) -> OpResult {
    OpResult {
        status: status as i32,
        message: message.into(),
        ..OpResult::default()
    }
}

pub fn store_error(e: &StoreError) -> OpResult {
    let code = match e {
        StoreError::EntryTooLarge { .. } | StoreError::TooManyEntries { .. } => Status::NoSpace,
        _ => Status::InvalidArgument,
    };
    status(code, e.to_string())
}

/// A write refused, or not acknowledged, because shard `shard`'s write-ahead log failed.
pub fn log_failed(shard: usize, why: &str) -> OpResult {
    status(
        Status::Unavailable,
        format!(
            "write refused: shard {shard}'s write-ahead log failed ({why}); this node serves \
             reads but accepts no writes until it is restarted"
        ),
    )
}

/// An op whose change, or the latest change to its key, was applied but could not be logged
/// because shard `shard`'s log failed: not acknowledged, and gone after a restart.
pub fn not_logged(shard: usize, why: &str) -> OpResult {
    status(
        Status::Unavailable,
        format!(
            "not acknowledged: shard {shard}'s write-ahead log failed before the change this \
             op depends on was logged ({why}); it will not survive a restart. This node serves \
             reads but accepts no writes until it is restarted"
        ),
    )
}

pub fn unknown_operation(code: i32) -> OpResult {
    status(
        Status::UnknownOperation,
        format!("unknown operation code {code}"),
    )
}

pub fn rejection(r: Rejection) -> OpResult {
    match r {
        Rejection::UnknownOperation(code) => unknown_operation(code),
        Rejection::KeyTooLarge { len, max } => status(
            Status::InvalidArgument,
            format!("key of {len} bytes exceeds the limit of {max} bytes"),
        ),
    }
}

/// Why a forwarded op got no answer from its owning shard.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("shard {shard} did not answer within {ms} ms")]
    Timeout { shard: usize, ms: u128 },
    #[error("shard {shard} is not reachable: {why}")]
    Unreachable { shard: usize, why: String },
    /// Its queue stayed full: the owner is saturated.
    #[error("busy: shard {shard}'s queue stayed full for {ms} ms; retry later")]
    Busy { shard: usize, ms: u128 },
}

/// Ops for another node that got no answer (see `cluster::peers`).
pub fn peer_error(e: &crate::cluster::PeerError) -> OpResult {
    use crate::cluster::PeerError;
    let code = match e {
        PeerError::Timeout { .. } => Status::Timeout,
        PeerError::Unreachable { .. } | PeerError::Refused(_) => Status::Unavailable,
    };
    status(code, e.to_string())
}

pub fn forward_error(e: &ForwardError) -> OpResult {
    let code = match e {
        ForwardError::Timeout { .. } => Status::Timeout,
        ForwardError::Unreachable { .. } => Status::Unavailable,
        ForwardError::Busy { .. } => Status::Busy,
    };
    status(code, e.to_string())
}

/// The reply to a frame that is rejected as a whole; the connection closes after it.
pub fn frame_error(e: &FrameError) -> Response {
    let code = match e {
        FrameError::TooLarge { .. } => Status::FrameTooLarge,
        FrameError::Malformed(_) => Status::MalformedFrame,
    };
    Response {
        error: code as i32,
        message: e.to_string(),
        ..Response::default()
    }
}

/// Appends the frame answering request `id` with `results` to `out`: byte for byte what
/// `frame::encode(&Response { id, results, .. })` writes, but each result is measured once
/// (prost measures a nested message twice: for the frame's length and for its own), and no
/// `Response` is built.
///
/// # Panics
/// If the body exceeds `u32::MAX` bytes; a connection bounds what one read starts far below.
pub fn encode_response(id: u64, results: &[OpResult], out: &mut Vec<u8>) {
    let start = begin_response(id, out);
    for result in results {
        push_result(result, out);
    }
    end_response(start, out);
}

/// Starts the frame answering request `id` in `out`, for results appended one by one
/// ([`push_result`], [`push_found`], [`push_version`]) and [`end_response`]; returns where it
/// starts. Together they write what [`encode_response`] writes.
pub fn begin_response(id: u64, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    // The prefix, written by `end_response`, then `id` (field 1, a varint) unless 0, appended
    // at once.
    let mut head = [0u8; PREFIX_LEN + 1 + 10];
    let len = if id == 0 {
        PREFIX_LEN
    } else {
        head[PREFIX_LEN] = 0x08;
        PREFIX_LEN + 1 + write_varint(id, &mut head[PREFIX_LEN + 1..])
    };
    out.extend_from_slice(&head[..len]);
    start
}

/// Appends one result to the frame begun at [`begin_response`], as prost encodes it. A result
/// of scalars and a value (every data op's) is written here field by field; one with a
/// message or a sub-message (stats, topology, snapshot, hello) is left to prost.
pub fn push_result(result: &OpResult, out: &mut Vec<u8>) {
    // Every field by name: a field added to `OpResult` fails to compile here until it is
    // encoded below or left to prost.
    let OpResult {
        status,
        value,
        message,
        found,
        stats,
        topology,
        ttl_ms,
        snapshot,
        hello,
        version_hlc,
        version_node,
        moved_epoch,
    } = result;
    // `results`: field 2 of the response, length-delimited.
    out.push(0x12);
    if !message.is_empty()
        || stats.is_some()
        || topology.is_some()
        || snapshot.is_some()
        || hello.is_some()
    {
        put_varint(result.encoded_len() as u64, out);
        result.encode_raw(out);
        return;
    }
    let (found, ttl_ms, version_hlc, moved_epoch) = (*found, *ttl_ms, *version_hlc, *moved_epoch);
    // An int32 field's negative value is its sign-extended 64 bits, as in prost.
    let status = *status as u64;
    let node = u64::from(*version_node);
    let value_len = value.len() as u64;
    // Everything but the value's bytes is written into `head` first and appended at once
    // (one capacity check, not one per byte): fields in number order, each under its key,
    // (number << 3) | wire type. At most 1 + 10 (status) + 1 + 10 (value length) + 2 (found)
    // + 3 × 11 (ttl, hlc, node) + 2 + 10 (moved epoch) = 69 bytes.
    let mut head = Scratch::new();
    if status != 0 {
        head.push(0x08);
        head.varint(status);
    }
    if !value.is_empty() {
        head.push(0x12);
        head.varint(value_len);
    }
    let fields = head.len;
    if found {
        head.push(0x20);
        head.push(1);
    }
    for (key, v) in [(0x38, ttl_ms), (0x50, version_hlc), (0x58, node)] {
        if v != 0 {
            head.push(key);
            head.varint(v);
        }
    }
    if moved_epoch != 0 {
        // Field 50's key, 400, as a varint.
        head.push(0x90);
        head.push(0x03);
        head.varint(moved_epoch);
    }
    put_varint(head.len as u64 + value_len, out);
    if value.is_empty() {
        out.extend_from_slice(head.bytes());
    } else {
        let (before, after) = head.bytes().split_at(fields);
        out.extend_from_slice(before);
        out.extend_from_slice(value);
        out.extend_from_slice(after);
    }
}

/// Appends the result of a stored put, `OpResult { version_hlc: hlc, version_node: node, .. }`,
/// as [`push_result`] appends it, without building it and with no scratch to clear: `results`
/// (0x12), its length (at most 2 × 11 bytes: one byte), then `version_hlc` (0x50) and
/// `version_node` (0x58), each unless 0.
pub fn push_version(hlc: u64, node: u32, out: &mut Vec<u8>) {
    let mut bytes = [0u8; 2 + 11 + 11];
    bytes[0] = 0x12;
    let mut len = 2;
    for (key, v) in [(0x50, hlc), (0x58, u64::from(node))] {
        if v != 0 {
            bytes[len] = key;
            len += 1 + write_varint(v, &mut bytes[len + 1..len + 11]);
        }
    }
    bytes[1] = (len - 2) as u8;
    out.extend_from_slice(&bytes[..len]);
}

/// A result's fields other than its value's bytes, built on the stack (see [`push_result`]).
struct Scratch {
    /// 69 bytes at most, and room for a varint's 10 bytes at the last one's start.
    bytes: [u8; 80],
    len: usize,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            bytes: [0; 80],
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// `v` as a varint, as prost's `encode_varint` writes it.
    #[inline]
    fn varint(&mut self, v: u64) {
        self.len += write_varint(v, &mut self.bytes[self.len..self.len + 10]);
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes `v`'s varint (at most 10 bytes) at the start of `dst` and returns its length.
#[inline]
fn write_varint(mut v: u64, dst: &mut [u8]) -> usize {
    for (i, byte) in dst.iter_mut().enumerate() {
        if v < 0x80 {
            *byte = v as u8;
            return i + 1;
        }
        *byte = v as u8 | 0x80;
        v >>= 7;
    }
    dst.len()
}

/// Appends the result of a get that found `value`, as [`push_result`] appends
/// `OpResult { value, found: true, .. }`, without building it: the value is copied once,
/// from where it is stored into `out`.
pub fn push_found(value: &[u8], out: &mut Vec<u8>) {
    // `value` (field 2) when not empty, then `found: true` (field 4: key 0x20, then 1).
    let value_len = if value.is_empty() {
        0
    } else {
        1 + encoded_len_varint(value.len() as u64) + value.len()
    };
    out.push(0x12);
    put_varint(value_len as u64 + 2, out);
    if !value.is_empty() {
        out.push(0x12);
        put_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&[0x20, 1]);
}

/// Appends `v` as a varint, as prost's `encode_varint` does.
#[inline]
fn put_varint(v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    let mut bytes = [0u8; 10];
    let n = write_varint(v, &mut bytes);
    out.extend_from_slice(&bytes[..n]);
}

/// Writes the length prefix of the frame begun at `start` by [`begin_response`].
///
/// # Panics
/// If the body exceeds `u32::MAX` bytes.
pub fn end_response(start: usize, out: &mut [u8]) {
    let body = u32::try_from(out.len() - start - PREFIX_LEN).expect("reply exceeds u32::MAX bytes");
    out[start..start + PREFIX_LEN].copy_from_slice(&body.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::{Hello, ShardStats, SnapshotInfo, Topology};
    use proptest::prelude::*;

    #[test]
    fn encode_response_matches_prost() {
        let results = vec![
            OpResult {
                value: vec![7; 300],
                ..OpResult::default()
            },
            status(Status::NotFound, ""),
            OpResult::default(),
            OpResult {
                stats: Some(Box::new(ShardStats {
                    keys: 5,
                    ..ShardStats::default()
                })),
                version_hlc: 1 << 40,
                ..OpResult::default()
            },
        ];
        for (id, results) in [(0, vec![]), (1, results.clone()), (u64::MAX, results)] {
            let mut ours = vec![9];
            encode_response(id, &results, &mut ours);
            let mut theirs = vec![9];
            kvmesh_net::frame::encode(
                &Response {
                    id,
                    results,
                    ..Response::default()
                },
                &mut theirs,
            );
            assert_eq!(ours, theirs, "id {id}");
        }
    }

    fn arbitrary_result() -> impl Strategy<Value = OpResult> {
        (
            (
                -3i32..12,
                proptest::collection::vec(any::<u8>(), 0..200),
                any::<bool>(),
            ),
            (
                prop_oneof![Just(0u64), any::<u64>()],
                prop_oneof![Just(0u64), any::<u64>()],
                prop_oneof![Just(0u32), any::<u32>()],
                prop_oneof![3 => Just(0u64), 1 => any::<u64>()],
            ),
            prop_oneof![4 => Just(""), 1 => Just("why")],
            (
                proptest::bool::weighted(0.1),
                proptest::bool::weighted(0.1),
                proptest::bool::weighted(0.1),
                proptest::bool::weighted(0.1),
            ),
        )
            .prop_map(
                |(
                    (status, value, found),
                    (ttl_ms, version_hlc, version_node, moved_epoch),
                    message,
                    (stats, topology, snapshot, hello),
                )| {
                    OpResult {
                        status,
                        value,
                        found,
                        ttl_ms,
                        version_hlc,
                        version_node,
                        moved_epoch,
                        message: message.into(),
                        stats: stats.then(|| {
                            Box::new(ShardStats {
                                keys: 3,
                                ..ShardStats::default()
                            })
                        }),
                        topology: topology.then(|| {
                            Box::new(Topology {
                                epoch: 4,
                                ..Topology::default()
                            })
                        }),
                        snapshot: snapshot.then(|| {
                            Box::new(SnapshotInfo {
                                shard: 1,
                                file: "snap".into(),
                                ..SnapshotInfo::default()
                            })
                        }),
                        hello: hello.then(|| {
                            Box::new(Hello {
                                cluster: "c".into(),
                                ..Hello::default()
                            })
                        }),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn push_result_matches_prost(
            id in prop_oneof![Just(0u64), any::<u64>()],
            results in proptest::collection::vec(arbitrary_result(), 0..4),
        ) {
            let mut ours = vec![9];
            encode_response(id, &results, &mut ours);
            let mut theirs = vec![9];
            kvmesh_net::frame::encode(
                &Response {
                    id,
                    results,
                    ..Response::default()
                },
                &mut theirs,
            );
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn write_varint_matches_prost() {
        let mut values = vec![0, 1, 0x7f, 0x80, u64::MAX, u64::MAX >> 1];
        values.extend((1..64).map(|bit| 1u64 << bit));
        values.extend((1..64).map(|bit| (1u64 << bit) - 1));
        for v in values {
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(v, &mut theirs);
            let mut ours = [0u8; 10];
            let n = write_varint(v, &mut ours);
            assert_eq!(&ours[..n], &theirs[..], "{v}");
            let mut pushed = Vec::new();
            put_varint(v, &mut pushed);
            assert_eq!(pushed, theirs, "{v}");
        }
    }

    #[test]
    fn push_version_matches_prost() {
        let values = [0, 1, 0x7f, 0x80, 1 << 48, u64::MAX];
        for hlc in values {
            for node in [0, 1, 300, u32::MAX] {
                let mut ours = vec![9];
                let start = begin_response(7, &mut ours);
                push_version(hlc, node, &mut ours);
                end_response(start, &mut ours);
                let mut theirs = vec![9];
                let result = OpResult {
                    version_hlc: hlc,
                    version_node: node,
                    ..OpResult::default()
                };
                kvmesh_net::frame::encode(
                    &Response {
                        id: 7,
                        results: vec![result],
                        ..Response::default()
                    },
                    &mut theirs,
                );
                assert_eq!(ours, theirs, "hlc {hlc}, node {node}");
            }
        }
    }

    #[test]
    fn push_found_matches_push_result() {
        for len in [0, 1, 2, 126, 127, 128, 300, 20_000] {
            let value = vec![3; len];
            let mut ours = vec![9];
            push_found(&value, &mut ours);
            let mut theirs = vec![9];
            let found = OpResult {
                value: value.clone(),
                found: true,
                ..OpResult::default()
            };
            push_result(&found, &mut theirs);
            assert_eq!(ours, theirs, "value of {len} bytes");
        }
    }
}
