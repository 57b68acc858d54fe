//! Every error the gRPC front-end reports becomes a `tonic::Status` here, and nowhere else.

use std::time::Duration;

use kvmesh_proto::wire::Status as WireStatus;
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
    #[error("unknown method {0}: this node serves /distributed_cache.DistributedCache/{{Get,Put,Remove}}")]
    UnknownMethod(String),
}

/// The one mapping from what went wrong to the status a client sees.
pub fn status(e: &Error) -> Status {
    let code = match e {
        Error::Op { status, .. } => match status {
            WireStatus::NotFound => Code::NotFound,
            WireStatus::InvalidArgument => Code::InvalidArgument,
            WireStatus::NoSpace => Code::ResourceExhausted,
            // The owning shard did not answer: it cannot be reached, whatever the reason.
            WireStatus::Unavailable | WireStatus::Timeout => Code::Unavailable,
            WireStatus::Ok
            | WireStatus::UnknownOperation
            | WireStatus::MalformedFrame
            | WireStatus::FrameTooLarge
            | WireStatus::Internal
            | WireStatus::Refused => Code::Internal,
        },
        Error::NegativeTtl(_) => Code::InvalidArgument,
        Error::NotUtf8 { .. } => Code::FailedPrecondition,
        Error::Deadline(_) => Code::DeadlineExceeded,
        Error::UnknownMethod(_) => Code::Unimplemented,
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
        ];
        for (error, code) in cases {
            assert_eq!(status(&error).code(), code, "{error:?}");
        }
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
