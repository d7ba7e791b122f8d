//! What can go wrong with a Herald call, sorted by what the caller can do
//! about it.

use tonic::{Code, Status};

/// Errors returned by [`Client`](crate::Client).
///
/// The variants that mirror gRPC codes carry the server's message verbatim,
/// because Herald's servers name the offending field and its limit there
/// ("uid: at most 128 bytes"). [`Unavailable`](ClientError::Unavailable) and
/// [`Unknown`](ClientError::Unknown) are the client's own verdicts after
/// fail-over: the first means the request certainly did not execute, the
/// second that a write may or may not have been applied.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request was rejected by validation and changed nothing.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The user, session, pool or lease does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is valid but the state forbids it (stale sequence number,
    /// fenced epoch, wrong lease holder, ...). Nothing changed.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A pool has no free account and may not grow, or a quota is reached.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The thing to create exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// No endpoint could serve the request: every attempt certainly failed
    /// before executing (connection refused, no leader yet, shutting down) or
    /// the retries or the deadline ran out. Safe to retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No usable credential: present a client certificate from the
    /// cluster's CA or a bearer token. Nothing was executed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller lacks the role the call needs (the message names it).
    /// Nothing was executed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Indeterminate: the request was sent but no answer came back (timeout,
    /// connection lost), so the write may or may not have been applied.
    #[error("indeterminate: {0}")]
    Unknown(String),
    /// Any other gRPC status, passed through as the server sent it.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Other(Status),
}

impl ClientError {
    /// The gRPC code that best describes this error.
    pub fn code(&self) -> Code {
        match self {
            ClientError::InvalidArgument(_) => Code::InvalidArgument,
            ClientError::NotFound(_) => Code::NotFound,
            ClientError::FailedPrecondition(_) => Code::FailedPrecondition,
            ClientError::ResourceExhausted(_) => Code::ResourceExhausted,
            ClientError::AlreadyExists(_) => Code::AlreadyExists,
            ClientError::Unavailable(_) => Code::Unavailable,
            ClientError::Unauthenticated(_) => Code::Unauthenticated,
            ClientError::PermissionDenied(_) => Code::PermissionDenied,
            ClientError::Unknown(_) => Code::Unknown,
            ClientError::Other(status) => status.code(),
        }
    }

    /// True when a write may or may not have been applied.
    ///
    /// Every other error is definite: the request did not change anything.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClientError::Unknown(_))
    }

    /// The message without the code prefix: for the errors that mirror a
    /// gRPC code, exactly what the server said.
    pub fn message(&self) -> &str {
        match self {
            ClientError::InvalidArgument(m)
            | ClientError::NotFound(m)
            | ClientError::FailedPrecondition(m)
            | ClientError::ResourceExhausted(m)
            | ClientError::AlreadyExists(m)
            | ClientError::Unavailable(m)
            | ClientError::Unauthenticated(m)
            | ClientError::PermissionDenied(m)
            | ClientError::Unknown(m) => m,
            ClientError::Other(status) => status.message(),
        }
    }
}

/// Maps a *definite* answer by its code. The call path decides before this
/// whether a status means "not executed" or "indeterminate" (see
/// `retry::classify`); this only names the code.
impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            // tonic's own decoder refusing an answer over this library's
            // limit says OUT_OF_RANGE; it is a size limit like any other.
            Code::OutOfRange if message.contains("message length too large") => {
                ClientError::ResourceExhausted(format!(
                    "{message} (herald_client::MAX_MESSAGE_BYTES = {})",
                    crate::MAX_MESSAGE_BYTES
                ))
            }
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            Code::Unknown => ClientError::Unknown(message),
            _ => ClientError::Other(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_variants_and_back() {
        let cases = [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::AlreadyExists,
            Code::Unavailable,
            Code::Unknown,
            Code::PermissionDenied,
            Code::Internal,
        ];
        for code in cases {
            let err = ClientError::from(Status::new(code, "uid: at most 128 bytes"));
            assert_eq!(err.code(), code);
            assert_eq!(err.message(), "uid: at most 128 bytes");
            assert_eq!(err.is_indeterminate(), code == Code::Unknown);
        }
    }

    #[test]
    fn display_keeps_the_server_message_verbatim() {
        let err = ClientError::from(Status::invalid_argument("ext: at most 4096 bytes"));
        assert_eq!(err.to_string(), "invalid argument: ext: at most 4096 bytes");
        let err = ClientError::from(Status::permission_denied("no"));
        assert!(err.to_string().ends_with(": no"));
    }
}
