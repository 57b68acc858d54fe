//! Every error a node reports becomes a wire status here, and nowhere else.

use kvmesh_engine::Error as StoreError;
use kvmesh_net::FrameError;
use kvmesh_proto::wire::{OpResult, Response, Status};

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
