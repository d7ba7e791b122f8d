//! The reusable parts of `heraldctl`: starting and stopping local clusters
//! (their config files come from `herald_config::local`), and duration
//! syntax. The chaos suite
//! and the benchmark start their clusters with these, so that every local
//! cluster in the project looks the same.

#![warn(missing_docs)]

pub mod context;
pub mod duration;
pub mod playground;
