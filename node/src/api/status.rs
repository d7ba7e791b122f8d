//! The one place errors become gRPC statuses (and HTTP codes).
//!
//! The code tells a client what it may do next: `Unavailable` (marked
//! [`NOT_APPLIED`]) is safe to retry anywhere; `Unknown` means the write may
//! or may not have happened; the rest are the state machine's verdicts.

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::node::{NOT_APPLIED, NodeError};
use crate::state::StateError;

/// Maps a state-machine rejection to its gRPC status.
pub fn state_status(e: &StateError) -> Status {
    let msg = e.to_string();
    match e {
        StateError::InvalidArgument { .. } => Status::invalid_argument(msg),
        StateError::NotFound { .. } => Status::not_found(msg),
        StateError::FailedPrecondition { .. } => Status::failed_precondition(msg),
        StateError::ResourceExhausted { .. } => Status::resource_exhausted(msg),
        StateError::AlreadyExists { .. } => Status::already_exists(msg),
        StateError::PermissionDenied { .. } => Status::permission_denied(msg),
    }
}

/// Maps a node error to its gRPC status.
pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::State(s) => state_status(&s),
        NodeError::Unavailable(m) => {
            let mut s = Status::unavailable(m);
            s.metadata_mut()
                .insert(NOT_APPLIED, MetadataValue::from_static("1"));
            s
        }
        NodeError::Indeterminate(m) => Status::unknown(format!("indeterminate: {m}")),
        NodeError::Internal(m) => Status::internal(m),
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        node_status(e)
    }
}

/// Maps an auth refusal to its gRPC status.
pub fn refusal_status(r: &crate::security::Refusal) -> Status {
    match r {
        crate::security::Refusal::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        crate::security::Refusal::PermissionDenied(m) => Status::permission_denied(m.clone()),
    }
}

/// HTTP status for a gRPC code (for the JSON API).
pub fn http_code(code: tonic::Code) -> u16 {
    use tonic::Code::*;
    match code {
        Ok => 200,
        InvalidArgument | OutOfRange => 400,
        NotFound => 404,
        AlreadyExists | Aborted => 409,
        FailedPrecondition => 412,
        ResourceExhausted => 429,
        Unavailable => 503,
        DeadlineExceeded => 504,
        Unimplemented => 501,
        Unauthenticated => 401,
        PermissionDenied => 403,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_is_marked_retryable_and_unknown_is_not() {
        let s = node_status(NodeError::Unavailable("no leader".into()));
        assert!(crate::node::certainly_not_sent(&s));
        let s = node_status(NodeError::Indeterminate("lost".into()));
        assert_eq!(s.code(), tonic::Code::Unknown);
        assert!(!crate::node::certainly_not_sent(&s));
    }

    /// Found by the chaos suite: a forward whose connection dropped after the
    /// request left was taken as "never sent" (its text says "connection"),
    /// so the follower proposed the write again through the next leader and
    /// an old value was applied after newer ones.
    #[test]
    fn a_connection_lost_mid_call_may_have_applied() {
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let mut s = tonic::Status::unavailable("connection reset: connection closed");
            s.set_source(std::sync::Arc::new(std::io::Error::from(kind)));
            assert!(!crate::node::certainly_not_sent(&s), "{s:?}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let s = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert!(crate::node::certainly_not_sent(&s));
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let s = state_status(&StateError::invalid("uid", "must be 1..=128 bytes"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("uid"));
        assert_eq!(http_code(s.code()), 400);
    }
}
