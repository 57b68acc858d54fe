//! The one seam between the load machinery and a protocol: a [`Codec`] turns requests into
//! bytes and bytes into [`Reply`]s. Codecs are pure (no I/O), so every target is driven by the
//! same connection loop, and each codec is tested byte by byte.

use crate::workload::OpKind;

/// What the server said about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done: a SET stored, a GET found its key.
    Ok,
    /// A GET of a missing key.
    Missing,
    /// The server refused this one request; the connection stays usable.
    Error(String),
}

/// The server broke the protocol (a garbled reply, a wrong request id): the connection cannot
/// be trusted any more and must be reopened.
#[derive(Debug, PartialEq, Eq)]
pub struct Fatal(pub String);

/// Encodes requests and decodes their replies, which arrive in request order.
pub trait Codec {
    /// Appends one request to `out`. `ttl_ms` is 0 for no expiry.
    fn encode(&mut self, kind: OpKind, key: &[u8], value: &[u8], ttl_ms: u64, out: &mut Vec<u8>);

    /// Decodes the reply at the front of `buf`: the reply and the bytes it took, `Ok(None)`
    /// when it is not complete yet, or [`Fatal`] when it can never become valid.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<(Reply, usize)>, Fatal>;

    /// Forgets per-connection state, for a fresh connection.
    fn reset(&mut self);
}
