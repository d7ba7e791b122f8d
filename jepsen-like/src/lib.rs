//! Herald's chaos and partition suite, as a library: the binary
//! `herald-jepsen` and the tests drive it.
//!
//! - [`cluster`] starts `herald-node` processes on loopback, every peer link
//!   through its own [`proxy`], and kills, pauses and restarts them;
//! - [`nemesis`] turns faults into schedules (partitions, kills, pauses,
//!   clock skew, membership changes);
//! - [`workload`] runs clients that record a [`history`];
//! - [`faultfs`] is the FUSE passthrough the disk faults break;
//! - [`checker`] searches each key's history for a linearization and checks
//!   the invariants directly;
//! - [`clockprobe`] measures follower clock offsets under write load;
//! - [`report`] writes `summary.json` and the SVG plots; [`run`] ties it
//!   together.

#![warn(missing_docs)]

pub mod bench;
pub mod checker;
pub mod clockprobe;
pub mod cluster;
pub mod docker;
pub mod faultfs;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod soak;
pub mod workload;
