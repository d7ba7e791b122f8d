//! The cluster's policies, pure: numbered failover and the takeover
//! ([`failover`]), liveness and TTL ownership ([`owner`]), storage-server
//! heartbeats ([`storage_beats`]), and the clock's rules ([`stratum`],
//! [`discipline`]).
//!
//! Each takes observations and the time as arguments and returns decisions,
//! in the way of ntp-proto: nothing here does I/O, reads a clock, awaits or
//! knows the [`Herald`](crate::node::Herald) handle, so each is tested with
//! tables of observations instead of sleeps. The thin async shells that feed
//! them and carry out what they decide depend on the handle, not the other
//! way round: `failover.rs`, `owner.rs` and `timesync.rs` at the crate root.

pub mod discipline;
pub mod failover;
pub mod owner;
pub mod storage_beats;
pub mod stratum;
