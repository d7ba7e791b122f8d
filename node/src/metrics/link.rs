//! Linked-catalog metrics (P-link): selections and purchases by outcome,
//! counted as each replica applies them, and the latency of ranked lookups
//! as the serving node computes them (the index walk, not the network).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::{self, Command, LinkCommand, StateError};

/// `{kind, outcome}` of a count event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CountLabels {
    /// `selection` or `purchase`.
    pub kind: &'static str,
    /// `counted`, `replayed` (a retry, nothing counted) or `rejected`.
    pub outcome: &'static str,
}

/// Linked-catalog metrics (see the module doc).
pub struct LinkDefs {
    /// `herald_link_counts_total{kind,outcome}`.
    pub counts: Family<CountLabels, Counter>,
    /// `herald_link_lookup_seconds`: time to rank one lookup page.
    pub lookup_seconds: Histogram,
}

impl LinkDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            counts: reg!(
                r,
                "herald_link_counts",
                "Applied selections and purchases by outcome",
                Family::default()
            ),
            lookup_seconds: reg!(
                r,
                "herald_link_lookup_seconds",
                "Time to rank one linked-lookup page from the index",
                // 1 µs .. ~65 ms in powers of two.
                Histogram::new(exponential_buckets(0.000_001, 2.0, 17))
            ),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for kind in ["selection", "purchase"] {
            for outcome in ["counted", "replayed", "rejected"] {
                let _ = self.counts.get_or_create(&CountLabels { kind, outcome });
            }
        }
    }

    /// Counts an applied count event.
    pub(super) fn observe_apply(
        &self,
        cmd: &Command,
        result: &Result<state::Response, StateError>,
    ) {
        let Command::Link(LinkCommand::Count(c)) = cmd else {
            return;
        };
        let kind = match c.kind {
            state::CountKind::Selection => "selection",
            state::CountKind::Purchase => "purchase",
        };
        let outcome = match result {
            Ok(state::Response::Link(state::LinkOutcome::Counted { replayed: true, .. })) => {
                "replayed"
            }
            Ok(_) => "counted",
            Err(_) => "rejected",
        };
        self.counts
            .get_or_create(&CountLabels { kind, outcome })
            .inc();
    }
}
