//! When a failed call may be tried again, and how long to wait first.
//!
//! Herald's servers forward writes to the Raft leader themselves, so the
//! client never chases leaders; it only fails over between endpoints. The one
//! hard question is whether a failed request might have executed, because a
//! write that may have been applied must not be sent again blindly (logout,
//! progress, handoff and pool creation are not idempotent). [`classify`]
//! answers it from the `tonic::Status` alone.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

/// Exponential backoff between attempts: `initial`, doubling, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 = the first retry), without
    /// jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        // 2^20 × 50 ms is far past any sane cap; stop doubling there so the
        // multiplication cannot overflow.
        let factor = 1u32 << retry.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// [`delay`](Backoff::delay) shortened by up to a fifth at random, so that
    /// many clients cut off by the same failure do not retry in lockstep.
    pub(crate) fn jittered(&self, retry: u32) -> Duration {
        let delay = self.delay(retry);
        let cut = rand::random_range(0.0..0.2);
        delay.mul_f64(1.0 - cut)
    }
}

/// What a call does to the cluster, which decides how boldly it is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Changes nothing: retry after any failure.
    Read,
    /// A write whose repetition is harmless (login, heartbeat, permission, a
    /// lease with a request id): retry after any failure, but if some attempt
    /// may have executed and all fail, the outcome is indeterminate.
    IdempotentWrite,
    /// A write that must not be repeated: retry only when it certainly did
    /// not execute.
    Write,
}

/// What a failed attempt tells us about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It certainly did not execute: try the next endpoint.
    NotExecuted,
    /// It was sent and may or may not have executed.
    Indeterminate,
    /// The server answered with a definite error; retrying cannot help.
    Definite,
}

/// Sorts a failed attempt's status into an [`Outcome`].
///
/// A status with a `source` was made by the local transport, not sent by the
/// server: tonic wraps failures to dial in `ConnectError`, which certainly
/// happened before anything was sent. Any other transport failure (reset,
/// keep-alive timeout, `hyper` cancellation) may have come after the request
/// left, so it is indeterminate. A status without a source came from the
/// server: `Unavailable` is Herald's "no leader yet / leader unknown /
/// shutting down", returned before proposing, so nothing executed.
pub(crate) fn classify(status: &Status) -> Outcome {
    if is_connect_error(status) {
        return Outcome::NotExecuted;
    }
    let from_transport = status.source().is_some();
    match status.code() {
        Code::Unavailable if !from_transport => Outcome::NotExecuted,
        // tonic's generated stubs turn a channel that cannot take requests
        // into this message, before the request is handed over.
        Code::Unknown if status.message().starts_with("Service was not ready") => {
            Outcome::NotExecuted
        }
        Code::Unavailable | Code::Internal if from_transport => Outcome::Indeterminate,
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => Outcome::Indeterminate,
        _ => Outcome::Definite,
    }
}

/// True when a failed call certainly did not execute on the server: the
/// connection was never made, or the server refused before acting. Nodes use
/// it too, to decide whether a forwarded write may be sent again.
pub fn never_executed(status: &Status) -> bool {
    classify(status) == Outcome::NotExecuted
}

fn is_connect_error(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn backoff_doubles_from_50ms_and_caps_at_1s() {
        let b = Backoff::default();
        let schedule: Vec<u128> = (0..8).map(|i| b.delay(i).as_millis()).collect();
        assert_eq!(schedule, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens_by_up_to_a_fifth() {
        let b = Backoff::default();
        for retry in 0..10 {
            let full = b.delay(retry);
            let j = b.jittered(retry);
            assert!(j <= full && j >= full.mul_f64(0.8), "{j:?} vs {full:?}");
        }
    }

    #[test]
    fn refused_connections_did_not_execute() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(classify(&status), Outcome::NotExecuted);
    }

    #[test]
    fn server_unavailable_did_not_execute() {
        let status = Status::unavailable("no leader yet");
        assert_eq!(classify(&status), Outcome::NotExecuted);
        let status = Status::unknown("Service was not ready: buffer closed");
        assert_eq!(classify(&status), Outcome::NotExecuted);
    }

    #[test]
    fn lost_connections_and_timeouts_are_indeterminate() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let status = Status::from_error(Box::new(reset));
        assert!(status.source().is_some());
        assert_eq!(classify(&status), Outcome::Indeterminate);

        // A transport-made Unavailable that is not a connect error, e.g. an
        // HTTP/2 keep-alive timeout after the request went out.
        let mut status = Status::unavailable("keep-alive timed out");
        status.set_source(std::sync::Arc::new(io::Error::from(
            io::ErrorKind::TimedOut,
        )));
        assert_eq!(classify(&status), Outcome::Indeterminate);

        for status in [
            Status::deadline_exceeded("proposal timed out"),
            Status::cancelled("Timeout expired"),
            Status::unknown("leader lost while waiting for commit"),
        ] {
            assert_eq!(classify(&status), Outcome::Indeterminate, "{status:?}");
        }
    }

    #[test]
    fn answers_from_the_server_are_definite() {
        for status in [
            Status::invalid_argument("uid: at most 128 bytes"),
            Status::not_found("session 7"),
            Status::failed_precondition("stale seq"),
            Status::resource_exhausted("pool 3 is empty"),
            Status::already_exists("platform tv"),
            Status::permission_denied("no"),
            Status::internal("bug"),
        ] {
            assert_eq!(classify(&status), Outcome::Definite, "{status:?}");
        }
    }
}
