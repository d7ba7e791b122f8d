//! The one place errors become gRPC statuses (and HTTP codes).
//!
//! The code tells a client what it may do next: `Unavailable` (marked
//! [`NOT_APPLIED`]) is safe to retry anywhere; `Unknown` means the write may
//! or may not have happened; the rest are the state machine's verdicts.

use herald_client::proto::ErrorReason;
use herald_client::refusal;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::node::{NOT_APPLIED, NodeError};
use crate::state::{Reason, StateError};

/// The wire name of a state-machine reason (`herald.v1.ErrorReason`).
pub fn wire_reason(r: Reason) -> ErrorReason {
    match r {
        Reason::InvalidField => ErrorReason::InvalidField,
        Reason::NotFound => ErrorReason::NotFound,
        Reason::AlreadyExists => ErrorReason::AlreadyExists,
        Reason::FailedPrecondition => ErrorReason::FailedPrecondition,
        Reason::Fenced => ErrorReason::Fenced,
        Reason::StaleSequence => ErrorReason::StaleSequence,
        Reason::NotHolder => ErrorReason::NotHolder,
        Reason::LeaseEnded => ErrorReason::LeaseEnded,
        Reason::Stale => ErrorReason::Stale,
        Reason::Compacted => ErrorReason::Compacted,
        Reason::InUse => ErrorReason::InUse,
        Reason::Incarnation => ErrorReason::Incarnation,
        Reason::NoSuchRole => ErrorReason::NoSuchRole,
        Reason::QuotaExceeded => ErrorReason::QuotaExceeded,
        Reason::PoolExhausted => ErrorReason::PoolExhausted,
        Reason::Overloaded => ErrorReason::Overloaded,
        Reason::NoSpace => ErrorReason::NoSpace,
        Reason::WrongSecret => ErrorReason::WrongSecret,
        Reason::OfferEnded => ErrorReason::OfferEnded,
        Reason::OutOfService => ErrorReason::OutOfService,
        Reason::UnitClosed => ErrorReason::UnitClosed,
        Reason::NotFriend => ErrorReason::NotFriend,
        Reason::StorageDown => ErrorReason::StorageDown,
        Reason::StorageFull => ErrorReason::StorageFull,
        Reason::ShareEnded => ErrorReason::ShareEnded,
    }
}

/// A refusal made at the API edge rather than by the state machine, with the
/// general reason its code implies: every status a node sends carries a
/// reason a generated stub can switch on, not only the state machine's.
pub fn refuse(code: Code, message: impl Into<String>) -> Status {
    refusal(code, message, edge_reason(code))
}

/// The reason an edge refusal of `code` carries.
pub fn edge_reason(code: Code) -> ErrorReason {
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorReason::InvalidField,
        Code::NotFound => ErrorReason::NotFound,
        Code::AlreadyExists => ErrorReason::AlreadyExists,
        Code::FailedPrecondition | Code::Aborted => ErrorReason::FailedPrecondition,
        Code::ResourceExhausted => ErrorReason::QuotaExceeded,
        Code::PermissionDenied => ErrorReason::RoleRequired,
        Code::Unauthenticated => ErrorReason::NoCredential,
        Code::Unavailable => ErrorReason::NodeUnavailable,
        Code::DeadlineExceeded => ErrorReason::TimedOut,
        Code::Unknown => ErrorReason::Indeterminate,
        _ => ErrorReason::NodeInternal,
    }
}

/// Maps a state-machine rejection to its gRPC status, its reason in the
/// details.
pub fn state_status(e: &StateError) -> Status {
    let code = match e {
        StateError::InvalidArgument { .. } => Code::InvalidArgument,
        StateError::NotFound { .. } => Code::NotFound,
        StateError::FailedPrecondition { .. } => Code::FailedPrecondition,
        StateError::ResourceExhausted { .. } => Code::ResourceExhausted,
        StateError::AlreadyExists { .. } => Code::AlreadyExists,
        StateError::PermissionDenied { .. } => Code::PermissionDenied,
    };
    refusal(code, e.to_string(), wire_reason(e.reason()))
}

/// Maps a node error to its gRPC status, its reason in the details.
pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::State(s) => state_status(&s),
        NodeError::NoLeader(m) => not_applied(refusal(Code::Unavailable, m, ErrorReason::NoLeader)),
        NodeError::Unavailable(m) => {
            not_applied(refusal(Code::Unavailable, m, ErrorReason::NodeUnavailable))
        }
        NodeError::Indeterminate(m) => refusal(
            Code::Unknown,
            format!("indeterminate: {m}"),
            ErrorReason::Indeterminate,
        ),
        NodeError::Internal(m) => refusal(Code::Internal, m, ErrorReason::NodeInternal),
    }
}

/// Marks `s` certainly not executed: safe to retry anywhere.
fn not_applied(mut s: Status) -> Status {
    s.metadata_mut()
        .insert(NOT_APPLIED, MetadataValue::from_static("1"));
    s
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        node_status(e)
    }
}

/// Maps an auth refusal to its gRPC status.
pub fn refusal_status(r: &crate::security::Refusal) -> Status {
    match r {
        crate::security::Refusal::Unauthenticated(m) => {
            refusal(Code::Unauthenticated, m.clone(), ErrorReason::NoCredential)
        }
        crate::security::Refusal::PermissionDenied(m) => {
            refusal(Code::PermissionDenied, m.clone(), ErrorReason::RoleRequired)
        }
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
        assert_eq!(
            herald_client::reason_of(&s).as_deref(),
            Some("INVALID_FIELD")
        );
    }

    /// The reason travels as a google.rpc.ErrorInfo any gRPC stub decodes;
    /// the message stays the human text it always was.
    #[test]
    fn refusals_carry_their_reason_in_the_details() {
        use tonic_types::StatusExt;
        let cases = [
            (
                StateError::precondition(Reason::Fenced, "fenced: session 1 is at epoch 2"),
                Code::FailedPrecondition,
                "FENCED",
            ),
            (
                StateError::exhausted(Reason::QuotaExceeded, "quota max_users = 1 reached"),
                Code::ResourceExhausted,
                "QUOTA_EXCEEDED",
            ),
            (
                StateError::denied(Reason::WrongSecret, "lease_secret: does not match"),
                Code::PermissionDenied,
                "WRONG_SECRET",
            ),
            (
                StateError::not_found("session 7"),
                Code::NotFound,
                "NOT_FOUND",
            ),
            (
                StateError::exists("pool 1"),
                Code::AlreadyExists,
                "ALREADY_EXISTS",
            ),
        ];
        for (e, code, reason) in cases {
            let s = state_status(&e);
            assert_eq!(s.code(), code);
            assert_eq!(s.message(), e.to_string());
            let info = s.get_details_error_info().expect("an ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, "herald");
        }
        let s = node_status(NodeError::NoLeader("no leader elected".into()));
        assert_eq!(herald_client::reason_of(&s).as_deref(), Some("NO_LEADER"));
        assert!(crate::node::certainly_not_sent(&s));
    }
}
