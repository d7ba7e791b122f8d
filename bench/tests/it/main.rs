//! The benchmark's tests, in one binary (each file used to be a binary of
//! its own, each linking the bench library, etcd-client and the Herald
//! client). They are pure: parsing, statistics and report rendering.

mod overload;
mod payload;
mod report;
mod stats;
