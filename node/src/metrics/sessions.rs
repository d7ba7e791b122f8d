//! Session metrics: handoffs by outcome and progress writes refused by
//! fencing, counted as each replica applies them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::state::{self, Command, StateError};

/// `{outcome}`: how a handoff ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted`, `refused` (no compatible terminal) or `rejected` (bad
    /// request: not the holder, unknown session, ...).
    pub outcome: &'static str,
}

/// Session metrics (see the module doc).
pub struct SessionDefs {
    /// `herald_session_handoffs_total{outcome}`.
    pub handoffs: Family<OutcomeLabel, Counter>,
    /// `herald_session_fenced_writes_total`: progress writes refused because
    /// the writer no longer holds the session (old terminal or epoch).
    pub fenced_writes: Counter,
}

impl SessionDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            handoffs: reg!(
                r,
                "herald_session_handoffs",
                "Applied session handoffs by outcome",
                Family::default()
            ),
            fenced_writes: reg!(
                r,
                "herald_session_fenced_writes",
                "Progress writes refused by fencing (old terminal or epoch)",
                Counter::default()
            ),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for outcome in ["accepted", "refused", "rejected"] {
            let _ = self.handoffs.get_or_create(&OutcomeLabel { outcome });
        }
    }

    /// Counts an applied handoff or a fenced progress write.
    pub(super) fn observe_apply(
        &self,
        cmd: &Command,
        result: &Result<state::Response, StateError>,
    ) {
        match (cmd, result) {
            (Command::Handoff(_), r) => {
                let outcome = match r {
                    Ok(state::Response::Handoff(o)) if o.accepted => "accepted",
                    Ok(_) => "refused",
                    Err(_) => "rejected",
                };
                self.handoffs.get_or_create(&OutcomeLabel { outcome }).inc();
            }
            // Stale sequences are not fencing.
            (Command::Progress(_), Err(e)) if e.reason() == state::Reason::Fenced => {
                self.fenced_writes.inc();
            }
            _ => {}
        }
    }
}
