//! Herald's harness: real `herald-node` processes on loopback, the way
//! etcd's `tests/framework/e2e` runs etcd.
//!
//! It owns everything about a node as a process, so the playground
//! (`heraldctl playground`), the chaos suite, the benchmark and the node's
//! integration tests start, stop and break nodes the same way:
//!
//! - [`process`]: one node process — start, stop (SIGTERM, grace, SIGKILL),
//!   kill (SIGKILL), pause and resume (SIGSTOP/SIGCONT), restart on the same
//!   config and data, wipe the data dir, wait for it to exit, its log;
//! - [`cluster`]: a local cluster of them in one directory (certificates,
//!   configs from `herald_config::local`), what the playground runs, with
//!   `cluster init` and waiting for a leader;
//! - [`ports`]: loopback ports free for a node to bind;
//! - [`binary`]: where the `herald-node` binary is;
//! - [`duration`]: the duration syntax of the tools that drive nodes.
//!
//! The node's config file is `herald_config`'s; the harness only writes it.

#![warn(missing_docs)]

pub mod binary;
pub mod cluster;
pub mod duration;
pub mod ports;
pub mod process;

pub use binary::locate_node_binary;
pub use cluster::{LocalCluster, Options, agreed_leader};
pub use ports::{free_addr, free_port, free_ports};
pub use process::NodeProcess;
