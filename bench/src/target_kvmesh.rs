//! The kvmesh target: the wire protocol, cluster- and topology-aware.
//!
//! Routing: at start the bench asks the node for the cluster's members and each member for its
//! topology (shard count, each shard's own port, the name of the shard hash), and refuses to
//! run if a node routes keys with a different function than `kvmesh_net::routing`. The key
//! space is then split by owner (ring, then shard: [`ClusterMap::endpoint_for`]), and every
//! connection is bound to one shard's own port and only sends keys that shard owns, so no
//! request pays a hop between nodes or shards. With `--via-addr` every key goes to the given
//! port instead, and the node forwards.
//!
//! Requests are encoded by hand (one op per frame, ids counting up from 1) to keep the client
//! allocation-free; a test checks the bytes against prost's own encoding.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use kvmesh_net::frame::{self, DEFAULT_MAX_FRAME, PREFIX_LEN};
use kvmesh_net::routing::SHARD_HASH_NAME;
use kvmesh_net::ClusterMap;
use kvmesh_proto::wire::{OpCode, Response, Status};
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::codec::{Codec, Fatal, Reply};
use crate::workload::OpKind;

/// Asks the node at `addr` for the cluster's members and each member for its topology, and
/// checks that every node routes like this client.
pub fn discover(addr: SocketAddr, timeout: Duration) -> anyhow::Result<ClusterMap> {
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("bench-topology")
        .spawn(move || async move {
            let mut client = kvmesh_net::Client::connect(addr, timeout).await?;
            client.map().await
        })
        .map_err(|e| anyhow::anyhow!("cannot start a glommio executor: {e}"))?;
    let map = handle
        .join()
        .map_err(|e| anyhow::anyhow!("topology thread failed: {e}"))?
        .with_context(|| format!("cannot learn the topology of the kvmesh cluster at {addr}"))?;
    for topology in map.topologies() {
        if topology.shard_hash != SHARD_HASH_NAME {
            bail!(
                "node {} maps keys to shards with `{}`, this bench with `{SHARD_HASH_NAME}`: \
                 rebuild one of them from the same source",
                topology.node_id,
                topology.shard_hash
            );
        }
    }
    Ok(map)
}

/// Speaks kvmesh's wire protocol: one op per request frame, replies checked for their id.
#[derive(Debug)]
pub struct KvmeshCodec {
    next_id: u64,
    expected_id: u64,
}

impl Default for KvmeshCodec {
    fn default() -> Self {
        Self {
            next_id: 1,
            expected_id: 1,
        }
    }
}

/// Appends one length-prefixed `Request { id, ops: [Op { code, key, value, ttl_ms }] }`,
/// byte-identical to prost's encoding:
///
/// ```text
/// u32 BE body length
/// 0x08 varint(id)                      Request.id       (omitted when 0)
/// 0x12 varint(len) Op:                 Request.ops[0]
///   0x08 varint(code)                  Op.code          (omitted when 0)
///   0x12 varint(len) key               Op.key           (omitted when empty)
///   0x1a varint(len) value             Op.value         (omitted when empty)
///   0x20 varint(ttl_ms)                Op.ttl_ms        (omitted when 0)
/// ```
pub fn encode_request(
    id: u64,
    code: OpCode,
    key: &[u8],
    value: &[u8],
    ttl_ms: u64,
    out: &mut Vec<u8>,
) {
    let code = code as i32 as u64;
    let bytes_len = |b: &[u8]| {
        if b.is_empty() {
            0
        } else {
            1 + encoded_len_varint(b.len() as u64) + b.len()
        }
    };
    let varint_len = |v: u64| if v == 0 { 0 } else { 1 + encoded_len_varint(v) };
    let op_len = varint_len(code) + bytes_len(key) + bytes_len(value) + varint_len(ttl_ms);
    let body = varint_len(id) + 1 + encoded_len_varint(op_len as u64) + op_len;
    out.reserve(PREFIX_LEN + body);
    out.extend_from_slice(&(body as u32).to_be_bytes());
    let varint_field = |tag: u8, v: u64, out: &mut Vec<u8>| {
        if v != 0 {
            out.push(tag);
            encode_varint(v, out);
        }
    };
    let bytes_field = |tag: u8, b: &[u8], out: &mut Vec<u8>| {
        if !b.is_empty() {
            out.push(tag);
            encode_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
    };
    varint_field(0x08, id, out);
    out.push(0x12);
    encode_varint(op_len as u64, out);
    varint_field(0x08, code, out);
    bytes_field(0x12, key, out);
    bytes_field(0x1a, value, out);
    varint_field(0x20, ttl_ms, out);
}

impl Codec for KvmeshCodec {
    fn encode(&mut self, kind: OpKind, key: &[u8], value: &[u8], ttl_ms: u64, out: &mut Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        match kind {
            OpKind::Get => encode_request(id, OpCode::OpGet, key, &[], 0, out),
            OpKind::Set => encode_request(id, OpCode::OpPut, key, value, ttl_ms, out),
        }
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<(Reply, usize)>, Fatal> {
        let decoded =
            frame::decode::<Response>(buf, DEFAULT_MAX_FRAME).map_err(|e| Fatal(e.to_string()))?;
        let Some((response, used)) = decoded else {
            return Ok(None);
        };
        if response.error() != Status::Ok {
            return Err(Fatal(format!(
                "node refused the frame: {:?}: {}",
                response.error(),
                response.message
            )));
        }
        if response.id != self.expected_id || response.results.len() != 1 {
            return Err(Fatal(format!(
                "expected the reply to request {} with 1 result, got request {} with {} results",
                self.expected_id,
                response.id,
                response.results.len()
            )));
        }
        self.expected_id += 1;
        let result = &response.results[0];
        let reply = match result.status() {
            Status::Ok => Reply::Ok,
            Status::NotFound => Reply::Missing,
            status => Reply::Error(format!("{}: {}", status.as_str_name(), result.message)),
        };
        Ok(Some((reply, used)))
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_proto::wire::{Op, OpResult, Request};

    #[test]
    fn hand_encoding_matches_prost() {
        type Case = (u64, OpCode, &'static [u8], &'static [u8], u64);
        let cases: [Case; 5] = [
            (1, OpCode::OpGet, b"key:0000000001", b"", 0),
            (300, OpCode::OpPut, b"k", &[7u8; 200], 0),
            (u64::MAX, OpCode::OpPut, b"k", b"v", 1500),
            (0, OpCode::OpGet, b"", b"", 0),
            (5, OpCode::OpPut, b"k", b"", u64::MAX),
        ];
        for (id, code, key, value, ttl_ms) in cases {
            let want = Request {
                id,
                ops: vec![Op {
                    code: code as i32,
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ttl_ms,
                    ..Op::default()
                }],
                ..Request::default()
            };
            let mut prost_bytes = Vec::new();
            frame::encode(&want, &mut prost_bytes);
            let mut ours = Vec::new();
            encode_request(id, code, key, value, ttl_ms, &mut ours);
            assert_eq!(ours, prost_bytes, "request {id}");
        }
    }

    fn response(id: u64, status: Status) -> Vec<u8> {
        let mut out = Vec::new();
        let result = OpResult {
            status: status as i32,
            message: "why".into(),
            ..OpResult::default()
        };
        frame::encode(
            &Response {
                id,
                results: vec![result],
                ..Response::default()
            },
            &mut out,
        );
        out
    }

    #[test]
    fn replies_are_checked_in_order() {
        let mut codec = KvmeshCodec::default();
        let mut out = Vec::new();
        for _ in 0..4 {
            codec.encode(OpKind::Get, b"k", b"", 0, &mut out);
        }
        let ok = response(1, Status::Ok);
        assert_eq!(codec.decode(&ok), Ok(Some((Reply::Ok, ok.len()))));
        let missing = response(2, Status::NotFound);
        assert_eq!(
            codec.decode(&missing),
            Ok(Some((Reply::Missing, missing.len())))
        );
        let full = response(3, Status::NoSpace);
        assert_eq!(codec.decode(&full[..full.len() - 1]), Ok(None));
        assert_eq!(
            codec.decode(&full),
            Ok(Some((
                Reply::Error("STATUS_NO_SPACE: why".into()),
                full.len()
            )))
        );
        assert!(
            codec.decode(&response(9, Status::Ok)).is_err(),
            "out-of-order id"
        );
    }

    #[test]
    fn frame_level_refusal_is_fatal() {
        let mut out = Vec::new();
        let refusal = Response {
            error: Status::MalformedFrame as i32,
            message: "bad".into(),
            ..Response::default()
        };
        frame::encode(&refusal, &mut out);
        assert!(KvmeshCodec::default().decode(&out).is_err());
        assert!(KvmeshCodec::default()
            .decode(&[0xff, 0xff, 0xff, 0xff])
            .is_err());
    }
}
