//! The node's integration tests, in one binary: each file below used to be
//! its own test binary, and every one of them linked the whole node (nine
//! links of the node on a 2-core machine). Real `herald-node` processes are
//! started through [`common`] (`herald_harness` underneath), so tests share
//! no state in this process beyond the port cursor; the module names keep
//! the old grouping in test names (`cluster::...`, `security::...`).

mod common;

mod api;
mod backup;
mod cluster;
mod dashboards;
mod flows;
mod interop;
mod limits;
mod link;
mod mechanisms;
mod presence;
mod security;
mod share;
mod storage;
mod storage_suite;
mod traces;
