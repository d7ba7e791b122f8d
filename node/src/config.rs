//! Node configuration: the types, defaults and checks live in the
//! `herald-config` crate, shared with heraldctl, the chaos suite, the
//! benchmark and the harness; re-exported here so the node's modules (and
//! code that imports `herald_node::config::...`) keep their paths.

pub use herald_config::*;
