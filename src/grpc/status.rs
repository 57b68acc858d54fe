//! Every error the gRPC front-end reports becomes a `tonic::Status` here, and nowhere else.

use std::time::Duration;

use kvmesh_proto::wire::{OpResult, Status as WireStatus};
use tonic::{Code, Status};

/// Why a gRPC call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The op ran (or was refused) with this wire status; `message` is the node's detail.
    #[error("{message}")]
    Op { status: WireStatus, message: String },
    #[error("ttl {0} is negative: give seconds until expiry, or 0 for no expiry")]
    NegativeTtl(i64),
    /// A stored value that a `string` field cannot carry.
    #[error(
        "the value stored under this key is not valid UTF-8 (byte {valid_up_to} of {len}), so the \
         string-based DistributedCache API cannot return it unaltered; read it through the bytes \
         API (gRPC front-end II) or kvmesh's wire protocol"
    )]
    NotUtf8 { len: usize, valid_up_to: usize },
    #[error("the request's grpc-timeout of {0:?} passed before it finished")]
    Deadline(Duration),
    #[error(
        "unknown method {0}: kvmesh serves distributed_cache.DistributedCache, \
         distributed_cache.KvMesh, grpc.health.v1.Health and server reflection (list them with \
         grpcurl -plaintext HOST:PORT list)"
    )]
    UnknownMethod(String),
    #[error("a batch of {len} keys is over the limit of {max}: split it into smaller batches")]
    BatchTooLarge { len: usize, max: usize },
    /// Not serving yet: the node is still replaying its log.
    #[error("{0}")]
    NotReady(String),
    /// A health check about a service this server does not serve.
    #[error("unknown service {0:?}: ask about \"\" (the whole server) or a service that reflection lists")]
    UnknownService(String),
}

/// The one mapping from what went wrong to the status a client sees.
pub fn status(e: &Error) -> Status {
    let code = match e {
        Error::Op { status, .. } => match status {
            WireStatus::NotFound => Code::NotFound,
            WireStatus::InvalidArgument => Code::InvalidArgument,
            WireStatus::NoSpace | WireStatus::Busy => Code::ResourceExhausted,
            // The owning shard did not answer: it cannot be reached, whatever the reason.
            // MOVED does not reach a caller in practice: a node's own front-end sends epoch 0
            // (never answered MOVED) and routes again the forwarded reads a newer node answers
            // MOVED once it caught up (`node::change::reroute_moved`: UNAVAILABLE only if it
            // did not within --forward-timeout); the gateway's client refreshes and retries
            // (`kvmesh_net::client`). Should one get through anyway: try again.
            WireStatus::Unavailable | WireStatus::Timeout | WireStatus::Moved => Code::Unavailable,
            WireStatus::Ok
            | WireStatus::UnknownOperation
            | WireStatus::MalformedFrame
            | WireStatus::FrameTooLarge
            | WireStatus::Internal
            | WireStatus::Refused
            | WireStatus::StaleStream
            | WireStatus::Removed => Code::Internal,
        },
        Error::NegativeTtl(_) => Code::InvalidArgument,
        Error::NotUtf8 { .. } => Code::FailedPrecondition,
        Error::Deadline(_) => Code::DeadlineExceeded,
        Error::UnknownMethod(_) => Code::Unimplemented,
        Error::BatchTooLarge { .. } => Code::InvalidArgument,
        Error::NotReady(_) => Code::Unavailable,
        Error::UnknownService(_) => Code::NotFound,
    };
    let message = match e {
        Error::Op {
            status: WireStatus::NotFound,
            message,
        } if message.is_empty() => "key not found".to_string(),
        _ => e.to_string(),
    };
    Status::new(code, message)
}

/// One op's outcome inside a batch reply: a gRPC status code (0 for OK) and its message, as a
/// unary call for that key would have answered.
pub fn per_key(result: &OpResult) -> (i32, String) {
    match result.status() {
        WireStatus::Ok => (Code::Ok as i32, String::new()),
        status => {
            let s = self::status(&Error::Op {
                status,
                message: result.message.clone(),
            });
            (s.code() as i32, s.message().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(status: WireStatus, message: &str) -> Error {
        Error::Op {
            status,
            message: message.to_string(),
        }
    }

    #[test]
    fn table() {
        let cases = [
            (op(WireStatus::NotFound, ""), Code::NotFound),
            (
                op(WireStatus::InvalidArgument, "key"),
                Code::InvalidArgument,
            ),
            (op(WireStatus::NoSpace, "big"), Code::ResourceExhausted),
            (op(WireStatus::Busy, "busy"), Code::ResourceExhausted),
            (op(WireStatus::Unavailable, "gone"), Code::Unavailable),
            (op(WireStatus::Timeout, "slow"), Code::Unavailable),
            (op(WireStatus::Internal, "bug"), Code::Internal),
            (op(WireStatus::UnknownOperation, "?"), Code::Internal),
            (Error::NegativeTtl(-1), Code::InvalidArgument),
            (
                Error::NotUtf8 {
                    len: 3,
                    valid_up_to: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Deadline(Duration::from_millis(5)),
                Code::DeadlineExceeded,
            ),
            (Error::UnknownMethod("/x/Y".into()), Code::Unimplemented),
            (
                Error::BatchTooLarge { len: 2, max: 1 },
                Code::InvalidArgument,
            ),
            (Error::NotReady("recovering".into()), Code::Unavailable),
            (Error::UnknownService("x.Y".into()), Code::NotFound),
        ];
        for (error, code) in cases {
            assert_eq!(status(&error).code(), code, "{error:?}");
        }
    }

    #[test]
    fn per_key_codes_match_unary_calls() {
        assert_eq!(per_key(&OpResult::default()), (0, String::new()));
        let missing = OpResult {
            status: WireStatus::NotFound as i32,
            ..OpResult::default()
        };
        assert_eq!(per_key(&missing), (5, "key not found".to_string()));
        let big = OpResult {
            status: WireStatus::InvalidArgument as i32,
            message: "too big".into(),
            ..OpResult::default()
        };
        assert_eq!(per_key(&big), (3, "too big".to_string()));
    }

    #[test]
    fn messages_say_what_to_do() {
        assert_eq!(
            status(&op(WireStatus::NotFound, "")).message(),
            "key not found"
        );
        assert!(status(&Error::NotUtf8 {
            len: 3,
            valid_up_to: 1
        })
        .message()
        .contains("bytes API"));
        assert!(status(&Error::NegativeTtl(-5)).message().contains("-5"));
        let key = op(WireStatus::InvalidArgument, "key of 9 bytes exceeds 8");
        assert_eq!(status(&key).message(), "key of 9 bytes exceeds 8");
    }
}
