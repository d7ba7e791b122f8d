//! Herald's client library: the generated protobuf types and gRPC stubs
//! (`proto`), and a typed [`Client`] with endpoint fail-over and retries.
//!
//! The same client is used by `heraldctl`, the chaos suite and the benchmark,
//! so it is precise about outcomes: every error says whether the request
//! certainly failed or whether a write *may* have been applied
//! ([`ClientError::is_indeterminate`]). A chaos checker records the first kind
//! as `fail` and the second as `info`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_client::ClientError> {
//! use herald_client::{Client, proto};
//!
//! let client = Client::new(vec!["127.0.0.1:7201".into(), "127.0.0.1:7202".into()])?;
//! let record = client
//!     .login(proto::LoginRequest {
//!         uid: "alice".into(),
//!         sid: 1001,
//!         client_type: "pc".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! assert!(record.online);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod batch;
mod client;
mod cluster;
mod endpoint;
mod error;
#[cfg(test)]
mod fake;
mod retry;
pub mod ring;
mod watch;

pub use batch::batch_reply;
pub use client::{Client, ClientConfig, LEADER_HINT, NOT_APPLIED};
pub use cluster::{ClusterStatus, MemberStatus};
pub use endpoint::{ClientTls, Transport, parse_endpoint, parse_endpoint_for};
pub use error::{ClientError, Detail, ERROR_DOMAIN, reason_of, refusal};
pub use retry::{Backoff, never_executed};
pub use watch::{START_REVISION_HEADER, SessionWatchStream, WatchStream};

/// Generated protobuf messages and gRPC clients/servers for `herald.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("herald.v1");
}

/// The largest gRPC message this library sends or reads, and the default
/// `limits.grpc_max_message_bytes` of a node: 16 MiB. The largest valid
/// request (a `Batch` of 1000 maximal logins) fits with room to spare; list
/// and batch-read answers are paged by the node to stay under 3 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A fresh random request id for [`Client::lease_account`].
///
/// A lease request that carries an id is safe to retry: the cluster returns
/// the lease it granted for that id instead of a second one. 128 random bits,
/// hex encoded, so ids from independent clients never collide in practice.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_random_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
