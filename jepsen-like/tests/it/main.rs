//! The chaos suite's own tests, in one binary (each file used to be a binary
//! of its own, linking the suite and the client library again).
//!
//! Each test runs a real cluster under faults and judges timing-sensitive
//! histories on two cores. As separate binaries they ran one after another;
//! in one binary the test harness would run them side by side, so they take
//! [`ONE_CHAOS_RUN`] and still run one at a time.

mod link_cut_ttl;
mod short_run;
mod stale_reads;

/// Held for the whole of each test: one chaos cluster at a time. A tokio
/// mutex, since every test has its own runtime and holds it across awaits.
static ONE_CHAOS_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
