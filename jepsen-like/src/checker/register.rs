//! The presence register: per uid, the last written `ext.v` (0 = never
//! written). Writes are logins carrying `{"v": n}`, reads are linearizable
//! `GetPresence` calls.

use super::linear::{Entry, Model};
use crate::history::{Op, Outcome};

/// A write of `v` or a read that saw `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// `login` with `ext.v = v`.
    Write(u64),
    /// A read returned `v`.
    Read(u64),
}

/// The register's sequential specification.
#[derive(Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type Op = RegisterOp;
    type State = u64;
    fn init(&self) -> u64 {
        0
    }
    fn step(&self, state: &u64, op: &RegisterOp) -> Vec<u64> {
        match *op {
            RegisterOp::Write(v) => vec![v],
            RegisterOp::Read(v) if v == *state => vec![v],
            RegisterOp::Read(_) => Vec::new(),
        }
    }
}

/// The register operations of one key: ok and info writes, ok reads. Failed
/// operations did nothing and reads without an answer saw nothing.
pub fn entries(ops: &[&Op]) -> Vec<Entry<RegisterOp>> {
    ops.iter()
        .filter_map(|op| {
            let typed = match (op.f.as_str(), op.outcome) {
                ("write", Outcome::Ok | Outcome::Info) => {
                    RegisterOp::Write(op.input.get("v")?.as_u64()?)
                }
                ("read", Outcome::Ok) => {
                    RegisterOp::Read(op.output.get("v").and_then(|v| v.as_u64()).unwrap_or(0))
                }
                _ => return None,
            };
            Some(Entry {
                op: typed,
                id: op.id,
                call: op.invoke_ns,
                ret: op.complete_ns,
            })
        })
        .collect()
}
