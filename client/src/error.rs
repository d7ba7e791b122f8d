//! What can go wrong with a Herald call, sorted by what the caller can do
//! about it, and which rule refused it.
//!
//! The code says what the caller may do next; the reason (a
//! `google.rpc.ErrorInfo` in the status details, domain [`ERROR_DOMAIN`],
//! one of the names of [`ErrorReason`]) says which rule refused, so programs
//! branch on it and never on the message text. Both sides of that contract
//! live here: [`refusal`] builds such a status (the node uses it) and
//! [`reason_of`] reads one.

use std::fmt;
use std::ops::Deref;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::proto::ErrorReason;

/// The `google.rpc.ErrorInfo.domain` of every reason a Herald node sends.
pub const ERROR_DOMAIN: &str = "herald";

/// A status with `code`, the human `message`, and `reason` as a
/// `google.rpc.ErrorInfo` in its details.
pub fn refusal(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    refusal_named(code, message, reason.as_str_name())
}

/// [`refusal`] by the reason's name, as a batch reply carries it.
pub(crate) fn refusal_named(code: Code, message: impl Into<String>, reason: &str) -> Status {
    let info =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, message, info)
}

/// The reason a Herald node gave in `status`'s details (`"FENCED"`), if any.
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN && !info.reason.is_empty())
        .map(|info| info.reason)
}

/// What a server (or this library) said about an error: the human text,
/// and the machine-readable reason when a node gave one.
///
/// Reads as the text (`Deref<Target = str>`, `Display`), so code that only
/// shows or logs the message need not know the reason exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detail {
    text: String,
    reason: Option<String>,
}

impl Detail {
    /// A detail with `text` and the reason name `reason` (`"FENCED"`).
    pub fn new(text: impl Into<String>, reason: Option<String>) -> Self {
        Detail {
            text: text.into(),
            reason,
        }
    }

    /// The human text, exactly as the server sent it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The reason name the node gave (`"FENCED"`), even one this library
    /// does not know yet.
    pub fn reason_name(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl Deref for Detail {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<String> for Detail {
    fn from(text: String) -> Self {
        Detail { text, reason: None }
    }
}

impl From<&str> for Detail {
    fn from(text: &str) -> Self {
        Detail::from(text.to_string())
    }
}

impl PartialEq<str> for Detail {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Detail {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// Errors returned by [`Client`](crate::Client).
///
/// The variants that mirror gRPC codes carry the server's message verbatim,
/// because Herald's servers name the offending field and its limit there
/// ("uid: at most 128 bytes"), and the reason code beside it
/// ([`ClientError::reason`]). [`Unavailable`](ClientError::Unavailable) and
/// [`Unknown`](ClientError::Unknown) are the client's own verdicts after
/// fail-over: the first means the request certainly did not execute, the
/// second that a write may or may not have been applied.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request was rejected by validation and changed nothing.
    #[error("invalid argument: {0}")]
    InvalidArgument(Detail),
    /// The user, session, pool or lease does not exist.
    #[error("not found: {0}")]
    NotFound(Detail),
    /// The request is valid but the state forbids it (stale sequence number,
    /// fenced epoch, wrong lease holder, ...). Nothing changed.
    #[error("failed precondition: {0}")]
    FailedPrecondition(Detail),
    /// A pool has no free account and may not grow, or a quota is reached.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(Detail),
    /// The thing to create exists already.
    #[error("already exists: {0}")]
    AlreadyExists(Detail),
    /// No endpoint could serve the request: every attempt certainly failed
    /// before executing (connection refused, no leader yet, shutting down) or
    /// the retries or the deadline ran out. Safe to retry later.
    #[error("unavailable: {0}")]
    Unavailable(Detail),
    /// No usable credential: present a client certificate from the
    /// cluster's CA or a bearer token. Nothing was executed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(Detail),
    /// The caller lacks the role the call needs (the message names it).
    /// Nothing was executed.
    #[error("permission denied: {0}")]
    PermissionDenied(Detail),
    /// Indeterminate: the request was sent but no answer came back (timeout,
    /// connection lost), so the write may or may not have been applied.
    #[error("indeterminate: {0}")]
    Unknown(Detail),
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

    /// Which rule refused, as the node named it in the status details
    /// (`google.rpc.ErrorInfo.reason`); `None` for the client's own verdicts,
    /// statuses without one, and names newer than this library.
    pub fn reason(&self) -> Option<ErrorReason> {
        match self {
            ClientError::Other(status) => {
                reason_of(status).and_then(|name| ErrorReason::from_str_name(&name))
            }
            _ => self.reason_name().and_then(ErrorReason::from_str_name),
        }
    }

    /// The reason name as the node sent it (`"FENCED"`), known or not
    /// (`None` for [`ClientError::Other`]: read its status with [`reason_of`]).
    pub fn reason_name(&self) -> Option<&str> {
        match self {
            ClientError::Other(_) => None,
            ClientError::InvalidArgument(d)
            | ClientError::NotFound(d)
            | ClientError::FailedPrecondition(d)
            | ClientError::ResourceExhausted(d)
            | ClientError::AlreadyExists(d)
            | ClientError::Unavailable(d)
            | ClientError::Unauthenticated(d)
            | ClientError::PermissionDenied(d)
            | ClientError::Unknown(d) => d.reason_name(),
        }
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
            | ClientError::Unknown(m) => m.text(),
            ClientError::Other(status) => status.message(),
        }
    }
}

/// Maps a *definite* answer by its code. The call path decides before this
/// whether a status means "not executed" or "indeterminate" (see
/// `retry::classify`); this only names the code.
impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = Detail::new(status.message(), reason_of(&status));
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            // tonic's own decoder refusing an answer over this library's
            // limit says OUT_OF_RANGE; it is a size limit like any other.
            Code::OutOfRange if message.contains("message length too large") => {
                ClientError::ResourceExhausted(
                    format!(
                        "{message} (herald_client::MAX_MESSAGE_BYTES = {})",
                        crate::MAX_MESSAGE_BYTES
                    )
                    .into(),
                )
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
        assert_eq!(err.reason(), None);
    }

    #[test]
    fn the_reason_comes_from_the_error_info_not_the_text() {
        let status = refusal(
            Code::FailedPrecondition,
            "fenced: session 1 is at epoch 2 on terminal 3",
            ErrorReason::Fenced,
        );
        assert_eq!(reason_of(&status).as_deref(), Some("FENCED"));
        let err = ClientError::from(status);
        assert_eq!(err.reason(), Some(ErrorReason::Fenced));
        assert_eq!(
            err.message(),
            "fenced: session 1 is at epoch 2 on terminal 3"
        );
        assert_eq!(
            err.to_string(),
            "failed precondition: fenced: session 1 is at epoch 2 on terminal 3"
        );
        // A reason this library does not know yet is kept by name.
        let info = ErrorDetails::with_error_info(
            "FROM_THE_FUTURE",
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        let err = ClientError::from(Status::with_error_details(
            Code::FailedPrecondition,
            "x",
            info,
        ));
        assert_eq!(err.reason(), None);
        assert_eq!(err.reason_name(), Some("FROM_THE_FUTURE"));
    }
}
