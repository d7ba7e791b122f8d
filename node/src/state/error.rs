//! Why the state machine rejected a command.
//!
//! One variant per gRPC status the API maps it to (that mapping lives in the
//! API layer, in one place). A rejected command changed nothing, so every
//! variant is safe to return to the client as is, and to retry after fixing
//! the cause.
//!
//! The message is for people; the [`Reason`] is for programs. Callers (the
//! chaos checker, the metrics, clients in any language) branch on the reason,
//! which the API layer sends as a `google.rpc.ErrorInfo`, never on the words.

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
        /// Which precondition, for programs.
        code: Reason,
    },
    /// A bounded resource is used up (no free account, too many data keys).
    #[error("{reason}")]
    ResourceExhausted {
        /// Which resource and its limit.
        reason: String,
        /// Which kind of resource, for programs.
        code: Reason,
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
        /// Which proof, for programs.
        code: Reason,
    },
}

/// Why a command was refused, as a stable code: the API layer sends it as
/// `google.rpc.ErrorInfo.reason` (the names of `herald.v1.ErrorReason`), so
/// programs never have to read the message.
///
/// Adding a code is compatible; renaming or reusing one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reason {
    /// A field breaks a limit or a format.
    InvalidField,
    /// The thing the command is about does not exist.
    NotFound,
    /// A thing with that name exists already.
    AlreadyExists,
    /// A precondition without a more specific code.
    FailedPrecondition,
    /// A session write from a terminal or epoch that no longer holds it.
    Fenced,
    /// A session progress whose sequence number is not past the last one.
    StaleSequence,
    /// The caller does not hold the session or the lease it acts on.
    NotHolder,
    /// The lease has ended (released or expired).
    LeaseEnded,
    /// A time-driven command judged on state that has changed since
    /// (an expiry after a new login, a decision under an old ownership epoch).
    Stale,
    /// Watch history up to the asked revision is no longer kept.
    Compacted,
    /// The thing cannot be deleted while others use it.
    InUse,
    /// A node id already known under another incarnation (data dir).
    Incarnation,
    /// The user does not have the role to revoke.
    NoSuchRole,
    /// A configured quota or hard limit is reached.
    QuotaExceeded,
    /// A pool has no free account and may not grow.
    PoolExhausted,
    /// The node has too many writes in flight.
    Overloaded,
    /// The free-space alarm is on.
    NoSpace,
    /// A lease secret or request id that belongs to someone else.
    WrongSecret,
    /// A handoff offer that has ended (declined, expired, replaced, or the
    /// session moved).
    OfferEnded,
    /// The unit is outside its service period.
    OutOfService,
    /// The unit's access policy is closed.
    UnitClosed,
    /// Media sharing: the user is not a friend of the sharer.
    NotFriend,
    /// Media sharing: no storage server is up.
    StorageDown,
    /// Media sharing: no storage server that is up has room.
    StorageFull,
    /// Media sharing: the share has ended (deleted, or its reservation
    /// expired).
    ShareEnded,
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

    /// A [`StateError::FailedPrecondition`] with `reason` and code `code`.
    pub fn precondition(code: Reason, reason: impl Into<String>) -> Self {
        StateError::FailedPrecondition {
            reason: reason.into(),
            code,
        }
    }

    /// A [`StateError::ResourceExhausted`] with `reason` and code `code`.
    pub fn exhausted(code: Reason, reason: impl Into<String>) -> Self {
        StateError::ResourceExhausted {
            reason: reason.into(),
            code,
        }
    }

    /// An [`StateError::AlreadyExists`] for `what`.
    pub fn exists(what: impl Into<String>) -> Self {
        StateError::AlreadyExists { what: what.into() }
    }

    /// A [`StateError::PermissionDenied`] with `reason` and code `code`.
    pub fn denied(code: Reason, reason: impl Into<String>) -> Self {
        StateError::PermissionDenied {
            reason: reason.into(),
            code,
        }
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> Reason {
        match self {
            StateError::InvalidArgument { .. } => Reason::InvalidField,
            StateError::NotFound { .. } => Reason::NotFound,
            StateError::AlreadyExists { .. } => Reason::AlreadyExists,
            StateError::FailedPrecondition { code, .. }
            | StateError::ResourceExhausted { code, .. }
            | StateError::PermissionDenied { code, .. } => *code,
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
