//! A pure RESP2 codec: the commands the bench sends, and a parser for any RESP2 reply.
//!
//! ```text
//! +OK\r\n              simple string        -ERR msg\r\n      error
//! :42\r\n              integer              $3\r\nabc\r\n    bulk string ($-1\r\n: nil)
//! *2\r\n<reply><reply> array (*-1\r\n: nil)
//! ```
//!
//! Lengths are checked against limits before anything is trusted, and nesting is bounded,
//! so a hostile server costs an error, never a panic or a huge allocation.

/// Largest bulk string accepted (Redis' own `proto-max-bulk-len` default).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// Largest array accepted.
pub const MAX_ARRAY: usize = 1 << 20;
/// Longest simple-string, error or integer line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest array nesting accepted.
pub const MAX_DEPTH: usize = 8;

/// One reply, borrowing from the parsed buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(Option<&'a [u8]>),
    Array(Option<Vec<Value<'a>>>),
}

/// Why bytes are not a RESP2 reply.
#[derive(Debug, PartialEq, Eq)]
pub enum RespError {
    UnknownType(u8),
    BadNumber,
    MissingCrlf,
    TooLong,
    TooDeep,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::UnknownType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            RespError::BadNumber => f.write_str("malformed RESP length or integer"),
            RespError::MissingCrlf => f.write_str("RESP bulk string not followed by CRLF"),
            RespError::TooLong => f.write_str("RESP line, bulk string or array over the limit"),
            RespError::TooDeep => f.write_str("RESP arrays nested too deeply"),
        }
    }
}

/// Appends `GET key`.
pub fn encode_get(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
    bulk(key, out);
}

/// Appends `SET key value`, with `PX ttl_ms` when `ttl_ms > 0`.
pub fn encode_set(key: &[u8], value: &[u8], ttl_ms: u64, out: &mut Vec<u8>) {
    if ttl_ms == 0 {
        out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
    } else {
        out.extend_from_slice(b"*5\r\n$3\r\nSET\r\n");
    }
    bulk(key, out);
    bulk(value, out);
    if ttl_ms > 0 {
        out.extend_from_slice(b"$2\r\nPX\r\n");
        bulk(ttl_ms.to_string().as_bytes(), out);
    }
}

fn bulk(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'$');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Parses the reply at the front of `buf`: the reply and the bytes it took, `Ok(None)` when
/// more bytes are needed, or an error when `buf` can never start a valid reply.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value<'_>, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, body)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(line), body))),
        b'-' => Ok(Some((Value::Error(line), body))),
        b':' => Ok(Some((Value::Integer(number(line)?), body))),
        b'$' => {
            let Some(len) = length(line, MAX_BULK)? else {
                return Ok(Some((Value::Bulk(None), body)));
            };
            let Some(data) = buf.get(body..body + len + 2) else {
                return Ok(None);
            };
            if &data[len..] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some((Value::Bulk(Some(&data[..len])), body + len + 2)))
        }
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(RespError::TooDeep);
            }
            let Some(n) = length(line, MAX_ARRAY)? else {
                return Ok(Some((Value::Array(None), body)));
            };
            let mut items = Vec::with_capacity(n.min(64));
            let mut next = body;
            for _ in 0..n {
                let Some((item, end)) = parse_at(buf, next, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                next = end;
            }
            Ok(Some((Value::Array(Some(items)), next)))
        }
        other => Err(RespError::UnknownType(other)),
    }
}

/// The line starting at `from` (without its CRLF) and the index just past the CRLF.
fn line(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &buf[from.min(buf.len())..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > MAX_LINE => Err(RespError::TooLong),
        Some(end) => Ok(Some((&rest[..end], from + end + 2))),
        None if rest.len() > MAX_LINE => Err(RespError::TooLong),
        None => Ok(None),
    }
}

fn number(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::BadNumber)
}

/// A bulk or array length: `None` for -1 (nil), checked against `max`.
fn length(line: &[u8], max: usize) -> Result<Option<usize>, RespError> {
    match number(line)? {
        -1 => Ok(None),
        n if n < 0 => Err(RespError::BadNumber),
        n if n as u64 > max as u64 => Err(RespError::TooLong),
        n => Ok(Some(n as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let mut out = Vec::new();
        encode_get(b"k1", &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n");
        out.clear();
        encode_set(b"k", b"hello", 0, &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
        out.clear();
        encode_set(b"k", b"", 1500, &mut out);
        assert_eq!(
            out,
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\nPX\r\n$4\r\n1500\r\n"
        );
    }

    #[test]
    fn replies() {
        type Want = Result<Option<(Value<'static>, usize)>, RespError>;
        let cases: Vec<(&str, &[u8], Want)> = vec![
            ("empty", b"", Ok(None)),
            ("ok", b"+OK\r\n", Ok(Some((Value::Simple(b"OK"), 5)))),
            ("ok, partial", b"+OK\r", Ok(None)),
            (
                "error",
                b"-ERR no\r\n",
                Ok(Some((Value::Error(b"ERR no"), 9))),
            ),
            ("integer", b":-42\r\n", Ok(Some((Value::Integer(-42), 6)))),
            ("bad integer", b":4x\r\n", Err(RespError::BadNumber)),
            (
                "bulk",
                b"$3\r\nabc\r\n",
                Ok(Some((Value::Bulk(Some(b"abc")), 9))),
            ),
            (
                "bulk with CRLF inside",
                b"$4\r\na\r\nb\r\n",
                Ok(Some((Value::Bulk(Some(b"a\r\nb")), 10))),
            ),
            (
                "empty bulk",
                b"$0\r\n\r\n",
                Ok(Some((Value::Bulk(Some(b"")), 6))),
            ),
            ("nil bulk", b"$-1\r\n", Ok(Some((Value::Bulk(None), 5)))),
            ("bulk, body partial", b"$3\r\nab", Ok(None)),
            ("bulk, CRLF partial", b"$3\r\nabc\r", Ok(None)),
            (
                "bulk without CRLF",
                b"$3\r\nabcde",
                Err(RespError::MissingCrlf),
            ),
            ("bulk length -2", b"$-2\r\n", Err(RespError::BadNumber)),
            (
                "bulk too long",
                b"$999999999999\r\n",
                Err(RespError::TooLong),
            ),
            ("nil array", b"*-1\r\n", Ok(Some((Value::Array(None), 5)))),
            (
                "array",
                b"*2\r\n+a\r\n:1\r\n",
                Ok(Some((
                    Value::Array(Some(vec![Value::Simple(b"a"), Value::Integer(1)])),
                    12,
                ))),
            ),
            ("array, item partial", b"*2\r\n+a\r\n:1", Ok(None)),
            ("unknown type", b"%1\r\n", Err(RespError::UnknownType(b'%'))),
            (
                "too deep",
                b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
                Err(RespError::TooDeep),
            ),
        ];
        for (name, buf, want) in cases {
            assert_eq!(parse(buf), want, "{name}");
        }
    }

    #[test]
    fn endless_line_is_an_error_not_a_wait() {
        let mut buf = b"+".to_vec();
        buf.resize(MAX_LINE + 10, b'a');
        assert_eq!(parse(&buf), Err(RespError::TooLong));
    }

    #[test]
    fn back_to_back_replies() {
        let buf = b"+OK\r\n$-1\r\n$1\r\nx\r\n";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((value, used)) = parse(&buf[at..]).unwrap() {
            seen.push(value);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            seen,
            vec![
                Value::Simple(b"OK"),
                Value::Bulk(None),
                Value::Bulk(Some(b"x"))
            ]
        );
    }

    #[test]
    fn arbitrary_prefixes_never_panic() {
        let buf = b"*3\r\n$3\r\nSET\r\n:12\r\n-ERR x\r\n";
        for end in 0..buf.len() {
            let _ = parse(&buf[..end]);
        }
        for byte in 0..=255u8 {
            let _ = parse(&[byte, b'1', b'\r', b'\n', 0xff]);
        }
    }
}
