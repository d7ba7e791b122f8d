//! A Herald node.
//!
//! - [`state`]: the pure replicated state machine (presence, sessions,
//!   account pools): `apply(entry, command) -> response`, no I/O, no clock.
//! - [`raft`]: openraft glue: types, the log store (segment files), the
//!   state store (snapshot files), the gRPC network and Raft's own runtime.
//! - [`api`]: the tonic client/admin/auth/peer services and the HTTP JSON API.
//! - [`security`]: TLS on every listener, and the one guard that decides
//!   who each caller is and what it may do.
//! - [`node`]: the handle every service shares: propose, linearize.
//! - [`peer`]: the node-to-node API's wire types and its typed client.
//! - [`backup`]: what a backup file holds, and restoring one into the
//!   data dirs of a new cluster.
//! - [`server`]: start and stop a node; [`config`], [`clock`], [`expiry`],
//!   [`compaction`] (snapshots by log bytes),
//!   [`metrics`] (Prometheus), [`telemetry`] (logs and traces).
//! - The P-publish cluster mechanisms: their pure policies in [`cluster`]
//!   (observations and time in, decisions out), and the async shells that
//!   feed them: [`timesync`] (SNTP server and leader-based sync of the
//!   cluster clock), [`failover`] (numbered failover, the takeover),
//!   [`owner`] (liveness probes, the ownership ring, TTL expiry).

pub mod api;
pub mod backup;
pub mod clock;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod expiry;
pub mod failover;
pub mod members;
pub mod metrics;
pub mod node;
pub mod owner;
pub mod peer;
pub mod raft;
pub mod security;
pub mod server;
pub mod stamp;
pub mod state;
pub mod telemetry;
pub mod timesync;
