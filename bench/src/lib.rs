//! The parts of `herald-bench` worth testing on their own: latency
//! statistics, the results table and plot, `/proc` readings, and the load
//! driver with its two targets (Herald through `herald_client`, etcd through
//! `etcd-client`), issue 20's linked-catalog scenario (`link`), and the overload test (`overload`). `main.rs` is the
//! orchestration of the suite: which cluster runs when.

#![warn(missing_docs)]

pub mod driver;
pub mod etcd;
pub mod herald;
pub mod link;
pub mod overload;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod target;
