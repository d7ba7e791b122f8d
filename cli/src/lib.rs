//! The reusable parts of `heraldctl`: the saved context that finds a running
//! playground. Local clusters themselves (the playground's processes) are
//! `herald_harness`'s and their config files `herald_config`'s, shared with
//! the chaos suite, the benchmark and the tests.

#![warn(missing_docs)]

pub mod context;
/// Duration syntax, shared with the other tools that drive nodes.
pub use herald_harness::duration;
