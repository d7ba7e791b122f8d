//! The reusable parts of `heraldctl`: node config files for local clusters,
//! starting and stopping such clusters, and duration syntax. The chaos suite
//! and the benchmark start their clusters with these, so that every local
//! cluster in the project looks the same.

#![warn(missing_docs)]

pub mod config;
pub mod context;
pub mod duration;
pub mod playground;
