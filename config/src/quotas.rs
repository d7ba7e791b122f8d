//! Quotas and retention (`[quotas]` in a node's config): how much of each
//! kind of record the replicated state may hold, and how long idle records
//! are kept.
//!
//! The values live here, with the rest of the file's schema, so tools can
//! write and check a config without the node; the node's state machine
//! (`herald_node::state::quotas`) is what enforces them, and replicates the
//! leader's with a `SetQuotas` command (the same type, so the same bytes in
//! the log). The three field limits a quota is bounded by are defined here
//! for the same reason, and the state machine's `limits` re-exports them.

use serde::{Deserialize, Serialize};

/// Longest TTL of a presence login or a lease: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Largest `provision` and `max_size` of a pool.
pub const MAX_POOL_SIZE: u32 = 100_000;
/// The most `connections_per_user` may be: every connection is a copy in
/// each change of the user's record the watch history keeps.
pub const MAX_CONNECTIONS_PER_USER: u32 = 1024;
/// Units in one platform, at least 1.
pub const MAX_UNITS: usize = 64;

/// A quota with a value no cluster can run with; names the quota
/// (`quotas.users`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct QuotaError {
    /// The quota, as `quotas.<name>`.
    pub field: String,
    /// The bound it breaks and what it got.
    pub reason: String,
}

impl QuotaError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        QuotaError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One day in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The cluster's quotas (`[quotas]` in a node's config). Defaults are sized
/// for the memory target (a million users in well under 1 GiB per node)
/// with room to spare; the docs list each beside its default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Presence records (users ever seen and not forgotten).
    pub users: u64,
    /// Clients (client types) one user may have online at once.
    pub clients_per_user: u32,
    /// Connections (presence entries, each with its own TTL) one user may
    /// have online at once, over all its client types.
    pub connections_per_user: u32,
    /// Sessions in the cluster.
    pub sessions: u64,
    /// Sessions one terminal may create (checked at connect).
    pub sessions_per_terminal: u32,
    /// Terminal bindings (pairs) in the cluster; a terminal has at most one.
    pub bindings: u64,
    /// Platforms.
    pub platforms: u64,
    /// Units in one platform (at most the field limit, 64).
    pub units_per_platform: u32,
    /// Pools in the cluster.
    pub pools: u64,
    /// Pools in one unit.
    pub pools_per_unit: u32,
    /// Temporary accounts in the cluster, over every pool.
    pub accounts: u64,
    /// Accounts one pool may grow to (its `max_size`; at most 100 000).
    pub accounts_per_pool: u32,
    /// Accounts one `CreatePool` may make at once (its `provision`): the
    /// size of one log entry's work.
    pub accounts_per_command: u32,
    /// Bytes of data (keys plus values) one leased account may hold.
    pub data_bytes_per_account: u64,
    /// Registered accounts (viewers' own accounts) in the cluster, over
    /// every unit.
    pub registered_accounts: u64,
    /// Tagged contents (content id -> units) in the cluster.
    pub contents: u64,
    /// Cluster time a session may stay idle (no progress, no handoff)
    /// before it and its work log are deleted; 0 = kept until deleted.
    pub session_retention_ms: u64,
    /// Cluster time an offline user's presence record is kept after its last
    /// change; after it the record is forgotten (a read then answers "never
    /// seen"). 0 = kept for ever.
    pub presence_retention_ms: u64,
    /// Bytes of presence changes each replica keeps for watches that resume
    /// from a revision (also capped at 100 000 events). Older changes are
    /// compacted; a resume before them is told so.
    pub watch_history_bytes: u64,
    /// Storage servers registered for media sharing.
    pub storage_servers: u64,
    /// Media shares (reserved or committed) in the cluster.
    pub shares: u64,
    /// Media shares one user may hold at once.
    pub shares_per_user: u64,
    /// Friends one user may have.
    pub friends_per_user: u64,
    /// Linked catalogs (P-link).
    pub link_catalogs: u64,
    /// Items over every linked catalog.
    pub link_items: u64,
    /// Link rules.
    pub link_rules: u64,
    /// Counted request ids remembered (for exactly-once counting); a count
    /// over it is refused until older ids are forgotten.
    pub link_request_ids: u64,
    /// Cluster time a counted request id is remembered: a retry within it
    /// counts nothing more.
    pub link_request_retention_ms: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            users: 2_000_000,
            clients_per_user: 16,
            connections_per_user: 32,
            sessions: 1_000_000,
            sessions_per_terminal: 16,
            bindings: 1_000_000,
            platforms: 1_000,
            units_per_platform: MAX_UNITS as u32,
            pools: 10_000,
            pools_per_unit: 64,
            accounts: 2_000_000,
            accounts_per_pool: MAX_POOL_SIZE,
            accounts_per_command: 10_000,
            data_bytes_per_account: 256 * 1024,
            registered_accounts: 1_000_000,
            contents: 1_000_000,
            session_retention_ms: 7 * DAY_MS,
            presence_retention_ms: 30 * DAY_MS,
            watch_history_bytes: 64 * 1024 * 1024,
            storage_servers: 1_000,
            shares: 1_000_000,
            shares_per_user: 10_000,
            friends_per_user: 5_000,
            link_catalogs: 1_000,
            link_items: 2_000_000,
            link_rules: 1_000,
            link_request_ids: 2_000_000,
            link_request_retention_ms: 10 * 60 * 1000,
        }
    }
}

impl Quotas {
    /// Values a cluster can run with: every count at least 1, the per-thing
    /// quotas within the field limits, retentions at most a year.
    pub fn validate(&self) -> Result<(), QuotaError> {
        let counts: [(&str, u64); 23] = [
            ("users", self.users),
            ("clients_per_user", self.clients_per_user.into()),
            ("connections_per_user", self.connections_per_user.into()),
            ("sessions", self.sessions),
            ("sessions_per_terminal", self.sessions_per_terminal.into()),
            ("bindings", self.bindings),
            ("platforms", self.platforms),
            ("units_per_platform", self.units_per_platform.into()),
            ("pools", self.pools),
            ("pools_per_unit", self.pools_per_unit.into()),
            ("accounts", self.accounts),
            ("accounts_per_pool", self.accounts_per_pool.into()),
            ("accounts_per_command", self.accounts_per_command.into()),
            ("registered_accounts", self.registered_accounts),
            ("contents", self.contents),
            ("storage_servers", self.storage_servers),
            ("shares", self.shares),
            ("shares_per_user", self.shares_per_user),
            ("friends_per_user", self.friends_per_user),
            ("link_catalogs", self.link_catalogs),
            ("link_items", self.link_items),
            ("link_rules", self.link_rules),
            ("link_request_ids", self.link_request_ids),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(QuotaError::invalid(
                    format!("quotas.{name}"),
                    "must be at least 1",
                ));
            }
        }
        if self.units_per_platform as usize > MAX_UNITS {
            return Err(QuotaError::invalid(
                "quotas.units_per_platform",
                format!(
                    "must be at most {MAX_UNITS}, got {}",
                    self.units_per_platform
                ),
            ));
        }
        if self.connections_per_user > MAX_CONNECTIONS_PER_USER {
            return Err(QuotaError::invalid(
                "quotas.connections_per_user",
                format!(
                    "must be at most {MAX_CONNECTIONS_PER_USER}, got {}",
                    self.connections_per_user
                ),
            ));
        }
        if self.accounts_per_pool > MAX_POOL_SIZE {
            return Err(QuotaError::invalid(
                "quotas.accounts_per_pool",
                format!(
                    "must be at most {MAX_POOL_SIZE}, got {}",
                    self.accounts_per_pool
                ),
            ));
        }
        for (name, value) in [
            ("session_retention_ms", self.session_retention_ms),
            ("presence_retention_ms", self.presence_retention_ms),
        ] {
            if value > 12 * MAX_TTL_MS {
                return Err(QuotaError::invalid(
                    format!("quotas.{name}"),
                    format!(
                        "must be at most {} ms (a year), got {value}",
                        12 * MAX_TTL_MS
                    ),
                ));
            }
        }
        if self.presence_retention_ms != 0 && self.presence_retention_ms < MAX_TTL_MS {
            // A TTL client may be silent for up to its TTL while online; an
            // offline record younger than the longest TTL is never forgotten
            // by accident, but keep the rule simple to state.
            return Err(QuotaError::invalid(
                "quotas.presence_retention_ms",
                format!("must be 0 or at least {MAX_TTL_MS} ms (30 days)"),
            ));
        }
        if !(1000..=MAX_TTL_MS).contains(&self.link_request_retention_ms) {
            return Err(QuotaError::invalid(
                "quotas.link_request_retention_ms",
                format!(
                    "must be 1000..={MAX_TTL_MS} ms, got {}",
                    self.link_request_retention_ms
                ),
            ));
        }
        if self.watch_history_bytes < 1024 * 1024 {
            return Err(QuotaError::invalid(
                "quotas.watch_history_bytes",
                format!("must be at least 1 MiB, got {}", self.watch_history_bytes),
            ));
        }
        Ok(())
    }
}
