//! The client's deadline: the `grpc-timeout` request header, parsed without I/O.
//!
//! The gRPC over HTTP/2 spec: `grpc-timeout: <1 to 8 ASCII digits><unit>`, with unit `H` hours,
//! `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.

use std::time::Duration;

use http::HeaderMap;

pub const HEADER: &str = "grpc-timeout";

/// The deadline a request asks for, relative to its arrival. `None` when the header is absent
/// or malformed: a malformed header is ignored, as tonic's own server does, rather than failing
/// a request that would otherwise succeed.
pub fn from_headers(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get(HEADER)?.as_bytes())
}

/// Parses one `grpc-timeout` value; `None` if it is not well-formed.
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits, so this neither overflows nor fails.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("0n", Some(Duration::ZERO)),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("", None),
            ("S", None),
            ("123456789S", None),
            ("10s", None),
            ("1.5S", None),
            ("-1S", None),
            (" 1S", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse(value.as_bytes()), *want, "{value:?}");
        }
    }

    #[test]
    fn from_header_map() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert(HEADER, "5m".parse().unwrap());
        assert_eq!(from_headers(&headers), Some(Duration::from_millis(5)));
    }
}
