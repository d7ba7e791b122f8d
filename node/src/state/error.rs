//! Why the state machine rejected a command.
//!
//! One variant per gRPC status the API maps it to (that mapping lives in the
//! API layer, in one place). A rejected command changed nothing, so every
//! variant is safe to return to the client as is, and to retry after fixing
//! the cause.

use thiserror::Error;

/// A command the state machine refused, or a read it could not answer.
#[derive(Error, Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateError {
    /// A field breaks a limit or a format; names the field and the limit
    /// ("uid: must be 1..=128 bytes of UTF-8, got 300").
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, with its path for nested ones (`units[2].name`).
        field: String,
        /// The limit or format it breaks, and what it got.
        reason: String,
    },
    /// The thing the command is about does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up ("session 42").
        what: String,
    },
    /// The command is well formed but the state does not allow it now
    /// (a fenced terminal, a stale sequence, a lease held by someone else).
    #[error("{reason}")]
    FailedPrecondition {
        /// Why, in terms the caller can act on.
        reason: String,
    },
    /// A bounded resource is used up (no free account, too many data keys).
    #[error("{reason}")]
    ResourceExhausted {
        /// Which resource and its limit.
        reason: String,
    },
    /// A thing with that name exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What collided ("platform \"tv\"").
        what: String,
    },
    /// The caller did not prove it may act on the thing: a wrong lease
    /// secret, or a lease request id replayed by another principal.
    #[error("{reason}")]
    PermissionDenied {
        /// What proof was missing or wrong (never the secret itself).
        reason: String,
    },
}

impl StateError {
    /// An [`StateError::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        StateError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A [`StateError::NotFound`] for `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        StateError::NotFound { what: what.into() }
    }

    /// A [`StateError::FailedPrecondition`] with `reason`.
    pub fn precondition(reason: impl Into<String>) -> Self {
        StateError::FailedPrecondition {
            reason: reason.into(),
        }
    }

    /// A [`StateError::ResourceExhausted`] with `reason`.
    pub fn exhausted(reason: impl Into<String>) -> Self {
        StateError::ResourceExhausted {
            reason: reason.into(),
        }
    }

    /// An [`StateError::AlreadyExists`] for `what`.
    pub fn exists(what: impl Into<String>) -> Self {
        StateError::AlreadyExists { what: what.into() }
    }

    /// A [`StateError::PermissionDenied`] with `reason`.
    pub fn denied(reason: impl Into<String>) -> Self {
        StateError::PermissionDenied {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_field_and_the_limit() {
        let e = StateError::invalid("uid", "must be 1..=128 bytes of UTF-8, got 300");
        assert_eq!(
            e.to_string(),
            "uid: must be 1..=128 bytes of UTF-8, got 300"
        );
        assert_eq!(
            StateError::not_found("session 7").to_string(),
            "session 7 not found"
        );
        assert_eq!(
            StateError::exists("platform \"tv\"").to_string(),
            "platform \"tv\" already exists"
        );
    }
}
