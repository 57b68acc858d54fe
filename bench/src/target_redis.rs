//! The redis target: RESP2 `GET`/`SET` through the shared [`Codec`] seam.

use crate::codec::{Codec, Fatal, Reply};
use crate::resp::{self, Value};
use crate::workload::OpKind;

/// Speaks RESP2 to redis-server (or anything RESP2). No per-connection state.
#[derive(Debug, Default)]
pub struct RedisCodec;

impl Codec for RedisCodec {
    fn encode(&mut self, kind: OpKind, key: &[u8], value: &[u8], ttl_ms: u64, out: &mut Vec<u8>) {
        match kind {
            OpKind::Get => resp::encode_get(key, out),
            OpKind::Set => resp::encode_set(key, value, ttl_ms, out),
        }
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<(Reply, usize)>, Fatal> {
        let Some((value, used)) = resp::parse(buf).map_err(|e| Fatal(e.to_string()))? else {
            return Ok(None);
        };
        let reply = match value {
            Value::Simple(_) | Value::Bulk(Some(_)) => Reply::Ok,
            Value::Bulk(None) | Value::Array(None) => Reply::Missing,
            Value::Error(message) => Reply::Error(String::from_utf8_lossy(message).into_owned()),
            Value::Integer(_) | Value::Array(Some(_)) => {
                Reply::Error(format!("unexpected reply to GET/SET: {value:?}"))
            }
        };
        Ok(Some((reply, used)))
    }

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_outcomes() {
        let mut codec = RedisCodec;
        let cases: [(&[u8], Reply); 5] = [
            (b"+OK\r\n", Reply::Ok),
            (b"$2\r\nhi\r\n", Reply::Ok),
            (b"$-1\r\n", Reply::Missing),
            (
                b"-OOM command not allowed\r\n",
                Reply::Error("OOM command not allowed".into()),
            ),
            (
                b":1\r\n",
                Reply::Error("unexpected reply to GET/SET: Integer(1)".into()),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(codec.decode(bytes), Ok(Some((want, bytes.len()))));
        }
        assert_eq!(codec.decode(b"$5\r\nab"), Ok(None));
        assert!(codec.decode(b"!x\r\n").is_err());
    }
}
